"""Model building and the training recipe (schedules, class weights, time budget) on tiny data."""
import copy
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from ferpipe import CLASS_NAMES, training
from ferpipe.model import build_model, members_of

TRAIN = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"]


def recipe(**changes):
    train = copy.deepcopy(TRAIN)
    augment = changes.pop("augment", {})
    train.update(changes, precision="float32", time_budget_minutes=0)
    train["augment"].update(augment)
    return train


@pytest.mark.parametrize("name, width, low, high", [("seed", 64, 4.2e6, 4.6e6), ("compact", 32, 1.5e6, 2.0e6),
                                                    ("small", 16, 4e5, 6e5), ("lean", 16, 6e5, 9e5),
                                                    ("strided", 24, 8e5, 1.3e6), ("residual", 32, 5e5, 7e5),
                                                    ("vgg", 64, 8e6, 12e6)])
def test_models_have_the_documented_size_and_output(name, width, low, high):
    model = build_model(recipe(model=name, width=width, augment={"crop": False}))  # sizes documented at 48x48
    assert low < model.count_params() < high
    cropped = build_model(recipe(model=name, width=width, augment={"crop": True}))
    if name == "residual":  # its three strides take 44 px and 48 px alike to 6 px
        assert cropped.count_params() == model.count_params()
    else:
        assert cropped.count_params() < model.count_params()  # 44x44 crops shrink the dense layer's input
    probs = model.predict(np.full((3, 48, 48, 1), 128, "float32"), verbose=0)
    assert probs.shape == (3, len(CLASS_NAMES))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("fused, expected", [
    (False, ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomErasing")),
    (True, ("RandomAffine", "RandomErasing"))])
def test_augmentation_only_acts_on_training_batches(fused, expected):
    model = build_model(recipe(width=8, augment={"translate": 0.1, "erasing": 0.5, "fused": fused}))
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype("float32")
    assert np.array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    trained = [model(x, training=True) for _ in range(2)]
    assert not np.allclose(keras.ops.convert_to_numpy(trained[0]), keras.ops.convert_to_numpy(trained[1]))
    names = [layer.__class__.__name__ for layer in model.layers]
    assert set(expected) | {"Rescaling"} <= set(names)
    assert {name for name in names if name.startswith("Random")} == set(expected)


@pytest.mark.parametrize("fused", [False, True])
def test_crop_takes_random_crops_in_training_and_the_centre_crop_at_inference(fused):
    from ferpipe import CROP_SIZE

    keras.utils.set_random_seed(0)  # before building: the layers take their seeds then; same draws every run
    model = build_model(recipe(width=8, augment={"rotation": 0, "zoom": 0, "flip": False, "crop": True,
                                                 "fused": fused}))
    crop = next(layer for layer in model.layers if layer.__class__.__name__ == "Cropping2D")
    assert crop.output.shape[1:3] == (CROP_SIZE, CROP_SIZE)
    to_crop = keras.Model(model.input, crop.output)
    x = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 1)).astype("float32")
    m = (48 - CROP_SIZE) // 2
    centre = x[0, m:m + CROP_SIZE, m:m + CROP_SIZE, 0] / 255
    np.testing.assert_allclose(keras.ops.convert_to_numpy(to_crop(x, training=False))[0, ..., 0], centre, atol=1e-6)
    # in training: whole-pixel crops from anywhere within the margin, so every output is one of the (2m+1)^2 crops
    crops = {(r, c): x[0, r:r + CROP_SIZE, c:c + CROP_SIZE, 0] / 255 for r in range(2 * m + 1) for c in range(2 * m + 1)}
    outs = keras.ops.convert_to_numpy(to_crop(np.repeat(x, 2000, axis=0), training=True))[..., 0]
    drawn = []
    for out in outs:
        match = [k for k, crop_ in crops.items() if np.allclose(out, crop_, atol=1e-6)]
        assert len(match) == 1
        drawn.append(match[0])
    # every crop drawn, and with the same chance: then 16 of the 25 touch an edge of the margin
    # (0.64); extreme shifts drawn half as often as the others would give 0.44
    assert set(drawn) == set(crops)
    on_edge = np.mean([r in (0, 2 * m) or c in (0, 2 * m) for r, c in drawn])
    assert 0.58 < on_edge < 0.70
    assert model.predict(x, verbose=0).shape == (1, len(CLASS_NAMES))


@pytest.mark.parametrize("fused", [False, True])
def test_augmentation_can_be_switched_off(fused):
    model = build_model(recipe(width=8, augment={"rotation": 0, "zoom": 0, "flip": False, "translate": 0,
                                                 "erasing": 0, "crop": False, "fused": fused}))
    assert not [l for l in model.layers if l.__class__.__name__.startswith("Random")]


def test_fused_augmentation_draws_what_the_params_say():
    from ferpipe.model import RandomAffine

    keras.utils.set_random_seed(0)
    layer = RandomAffine(flip=True, rotation=20, zoom=0.2, translate=0.1, crop_margin=2)
    a0, a1, a2, b0, b1, b2 = keras.ops.convert_to_numpy(layer.transforms(20000))[:, :6].T
    scale = np.hypot(a1, b1)  # the unmirrored column: scale x (-sin, cos)
    angle = np.degrees(np.arctan2(-a1, b1))
    mirrored = a0 * b1 - a1 * b0 < 0
    assert 0.8 <= scale.min() < 0.81 and 1.19 < scale.max() <= 1.2
    assert -20 <= angle.min() < -19.5 and 19.5 < angle.max() <= 20
    assert 0.48 < mirrored.mean() < 0.52
    # the shift before scaling and turning: translate (+-4.8 px) plus the whole-pixel crop offset (+-2 px)
    centre = 23.5
    moved = np.stack([a0 * centre + a1 * centre + a2 - centre, b0 * centre + b1 * centre + b2 - centre], axis=1)
    matrices = np.stack([np.stack([a0, a1], 1), np.stack([b0, b1], 1)], axis=1)
    shift = np.linalg.solve(matrices, moved[..., None])[..., 0]
    assert 6.5 < np.abs(shift).max() <= 6.8 + 1e-4 and np.abs(shift.mean(axis=0)).max() < 0.1


def test_fused_augmentation_flips_exactly_and_only_in_training():
    from ferpipe.model import RandomAffine

    x = np.random.default_rng(0).integers(0, 256, (200, 48, 48, 1)).astype("float32")
    layer = RandomAffine(flip=True)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    same = [np.array_equal(o, i) for o, i in zip(out, x)]
    mirror = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, x)]
    assert all(s != m for s, m in zip(same, mirror)) and 70 < sum(mirror) < 130
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_fused_model_saves_and_loads(tmp_path):
    model = build_model(recipe(model="strided", width=8, augment={"fused": True, "erasing": 0.3}))
    names = [layer.__class__.__name__ for layer in model.layers]
    assert "RandomAffine" in names and "RandomErasing" in names
    assert not {"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"} & set(names)
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype("float32")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    affine = [layer.get_config() for m in (model, loaded) for layer in m.layers if layer.name.startswith("random_affine")]
    assert len(affine) == 2 and affine[0] == affine[1] and affine[0]["rotation"] == TRAIN["augment"]["rotation"]
    # a fresh Python that imports only what `ferpipe predict` imports must load it too (the layer registers itself)
    code = f"from ferpipe.inference import load_classifier; print(load_classifier({str(tmp_path / 'm.keras')!r})[1])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "m.keras (Keras" in result.stdout


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_start_high_and_end_near_zero(schedule):
    train = recipe(schedule=schedule, epochs=20, lr=0.01)
    rates = [training.lr_at_epoch(train, e) for e in range(20)]
    assert max(rates) == pytest.approx(0.01, rel=0.01)
    assert rates[-1] < 0.001
    if schedule == "onecycle":
        assert rates[0] == pytest.approx(0.001) and rates.index(max(rates)) == 6


def test_balanced_class_weights_favour_rare_classes():
    labels = np.array([0] * 90 + [1] * 10 + list(range(2, 7)) * 20)
    weights = training.class_weights(recipe(class_weight="balanced"), labels)
    assert weights[1] > weights[0] and weights[1] == pytest.approx(len(labels) / (7 * 10))
    assert training.class_weights(recipe(class_weight="none"), labels) is None


def test_optimizers():
    sgd = training.make_optimizer(recipe(optimizer="sgd", lr=0.01, weight_decay=0.0005))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9
    assert sgd.weight_decay == 0.0005
    assert isinstance(training.make_optimizer(recipe(optimizer="adam")), keras.optimizers.Adam)
    assert not training.make_optimizer(recipe(ema=0.0)).use_ema
    for name in ("adam", "sgd"):
        averaging = training.make_optimizer(recipe(optimizer=name, ema=0.999))
        assert averaging.use_ema and averaging.ema_momentum == 0.999 and averaging.ema_overwrite_frequency is None


def tiny_data(n=56, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    images = np.clip(rng.normal(25 + 30 * labels[:, None, None], 10, (n, 48, 48)), 0, 255).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("changes", [
    {"schedule": "plateau"},
    {"schedule": "cosine", "optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0001, "label_smoothing": 0.1},
    {"schedule": "onecycle", "class_weight": "balanced", "augment": {"erasing": 0.3}},
])
def test_fit_logs_the_learning_rate_and_restores_best_weights(changes):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=3, batch_size=16, **changes)
    model, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0)
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert len(history.history["loss"]) == 3
    if train["schedule"] != "plateau":
        assert history.history["learning_rate"][0] == pytest.approx(training.lr_at_epoch(train, 0), rel=1e-4)


@pytest.mark.parametrize("deterministic", [False, True])
def test_deterministic_param_switches_on_deterministic_kernels(monkeypatch, deterministic):
    calls = []
    monkeypatch.setattr(training, "enable_determinism", lambda: calls.append(True))
    images, labels = tiny_data()
    training.fit(recipe(width=8, epochs=1, batch_size=16, deterministic=deterministic), (images, labels),
                 tiny_data(14, 1), verbose=0)
    assert calls == ([True] if deterministic else [])


def test_time_budget_stops_after_the_epoch_that_exhausts_it():
    images, labels = tiny_data()
    train = recipe(width=8, epochs=50, batch_size=16)
    train["time_budget_minutes"] = 1e-6
    _, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0)
    assert len(history.history["loss"]) == 1


def test_fit_traces_the_training_step_once(monkeypatch):
    """Optimizer, loss and metric variables exist before fit(): a step that creates them is traced twice."""
    traces, compile_model = [], training.compile_model

    def counting(train):
        model = compile_model(train)
        step = model.train_step
        model.train_step = lambda data: traces.append(1) or step(data)
        return model

    monkeypatch.setattr(training, "compile_model", counting)
    _, history = training.fit(recipe(width=8, epochs=2, batch_size=16), tiny_data(48), tiny_data(16, 1), verbose=0)
    assert len(history.history["loss"]) == 2 and len(traces) == 1  # 48 images: full batches, one shape


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_run_ahead_to_the_share_of_the_time_budget_spent(schedule):
    train = recipe(schedule=schedule, epochs=20, lr=0.01)
    assert training.lr_at_epoch(train, 2, budget_used=0.5) == training.lr_at_epoch(train, 10)
    assert training.lr_at_epoch(train, 12, budget_used=0.5) == training.lr_at_epoch(train, 12)
    assert training.lr_at_epoch(train, 2, budget_used=3.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("anneal", [False, True])
def test_fit_follows_the_time_budget_only_when_asked(monkeypatch, anneal):
    monkeypatch.setattr(training.TimeBudget, "share_used", lambda self: 0.5)  # half the budget spent from the start
    images, labels = tiny_data()
    train = recipe(width=8, epochs=3, batch_size=16, lr=0.01, anneal_within_budget=anneal)
    train["time_budget_minutes"] = 60
    _, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0)
    effective_epochs = [1.5, 1.5, 2] if anneal else [0, 1, 2]
    assert history.history["learning_rate"] == pytest.approx(
        [training.lr_at_epoch(train, e) for e in effective_epochs], rel=1e-4)


def test_time_budget_share_used():
    budget = training.TimeBudget(1)
    budget.start = time.monotonic() - 30
    assert 0.5 <= budget.share_used() < 0.6
    assert training.TimeBudget(0).share_used() == 0.0


def run_budget_epochs(monkeypatch, budget, epoch_seconds, epochs):
    """Drive a TimeBudget through epochs of the given lengths on a fake clock."""
    clock = [1000.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    budget.set_params({"epochs": epochs})
    budget.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    budget.model.stop_training = False  # as fit() sets it
    budget.on_train_begin()
    for epoch, seconds in enumerate(epoch_seconds):
        clock[0] += seconds
        budget.on_epoch_end(epoch)
        if budget.model.stop_training:
            return epoch + 1
    return len(epoch_seconds)


@pytest.mark.parametrize("anneal, advice", [(False, "cosine schedule will not have annealed by then"),
                                            (True, "the learning rate follows the budget")])
def test_time_budget_says_early_when_the_epochs_will_not_fit(monkeypatch, capsys, anneal, advice):
    train = recipe(epochs=100, anneal_within_budget=anneal)
    budget = training.TimeBudget(10, training._budget_advice(train))  # 10 min; 90 s epochs after a 126 s first one
    ran = run_budget_epochs(monkeypatch, budget, [126] + [90] * 99, epochs=100)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("time budget: at 90 s an epoch, 100 epochs need about 151 min, more than the "
                             "budget's 10 min; training will stop after about epoch 7 of 100")
    assert advice in out[0]
    assert ran == 7 and out[-1] == "time budget of 10 min used up after epoch 7; stopping"


@pytest.mark.parametrize("minutes", [0, 160])
def test_time_budget_is_silent_when_the_epochs_fit(monkeypatch, capsys, minutes):
    budget = training.TimeBudget(minutes, training._budget_advice(recipe(epochs=100)))
    assert run_budget_epochs(monkeypatch, budget, [126] + [90] * 99, epochs=100) == 100
    assert capsys.readouterr().out == ""


def test_time_budget_used_up_by_the_second_epoch_says_only_that(monkeypatch, capsys):
    budget = training.TimeBudget(3, "")  # 3 min, two 100 s epochs
    assert run_budget_epochs(monkeypatch, budget, [100, 100, 100], epochs=10) == 2
    assert capsys.readouterr().out == "time budget of 3 min used up after epoch 2; stopping\n"


def test_time_budget_advice_names_no_schedule_for_plateau():
    assert training._budget_advice(recipe(schedule="plateau")) == ""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN default is for x86")
@pytest.mark.parametrize("env, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_ferpipe_turns_onednn_on_before_tensorflow_unless_the_user_chose(env, expected):
    """TensorFlow leaves its oneDNN kernels off on AVX2-only CPUs unless TF_ENABLE_ONEDNN_OPTS=1 is set before it
    loads; importing ferpipe sets it, and keeps a value the user set."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env is not None:
        environment["TF_ENABLE_ONEDNN_OPTS"] = env
    script = "import os, ferpipe; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == expected


def test_cpu_flags_reads_this_machine():
    flags = training._cpu_flags()
    assert flags == set() or "fpu" in flags  # x86 /proc/cpuinfo lists fpu; elsewhere no flags line


def test_precision_auto_resolves_to_a_concrete_policy():
    assert training.resolve_precision("auto") in ("float32", "bfloat16")
    assert training.resolve_precision("float32") == "float32"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's device list")
def test_precision_auto_takes_bfloat16_on_a_gpu_seen_by_tensorflow(monkeypatch):
    import tensorflow as tf

    assert training.accelerator_name() is None  # the CPU machines that run these tests
    assert training.resolve_precision("auto") == ("bfloat16" if training._cpu_has_bf16() else "float32")
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: {"device_name": "NVIDIA H200"})
    monkeypatch.setattr(training, "_cpu_has_bf16", lambda: False)
    assert training.resolve_precision("auto") == "bfloat16"
    assert training.accelerator_name() == "NVIDIA H200"


def test_saved_model_keeps_the_weights_but_not_the_optimizer_state(tmp_path):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=1, batch_size=16)
    model, _ = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0)
    full, slim = tmp_path / "full.keras", tmp_path / "slim.keras"
    model.save(full)
    training.inference_model(model, train).save(slim)
    loaded = keras.saving.load_model(slim)
    x = training.as_model_input(images)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert slim.stat().st_size < 0.6 * full.stat().st_size


def test_best_epoch_follows_select_by():
    history = {"val_loss": [1.0, 0.8, 0.9, 0.8], "val_accuracy": [0.5, 0.6, 0.7, 0.7]}
    assert training.best_epoch(history, "val_loss") == 1          # first of the ties
    assert training.best_epoch(history, "val_accuracy") == 2


class TrainedWeights(keras.callbacks.Callback):
    """The weights being trained, after each epoch (callbacks placed after early stopping see those)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


@pytest.mark.parametrize("select_by", ["val_loss", "val_accuracy"])
def test_fit_keeps_the_weights_of_the_epoch_chosen_by_select_by(select_by):
    images, labels = tiny_data()
    # pinned: this tiny run's two criteria must disagree (below), whatever params.yaml's default network
    train = recipe(model="compact", width=8, dropout=0.25, augment={"fused": False}, epochs=5, batch_size=8, lr=0.01,
                   early_stopping_patience=10, select_by=select_by)
    recorder = TrainedWeights()
    model, history = training.fit(train, (images, labels), tiny_data(28, 1), extra_callbacks=[recorder], verbose=0)
    best = training.best_epoch(history.history, select_by)
    for kept, recorded in zip(model.get_weights(), recorder.weights[best]):
        np.testing.assert_array_equal(kept, recorded)
    other = training.best_epoch(history.history, "val_accuracy" if select_by == "val_loss" else "val_loss")
    assert best != other  # this tiny run's two criteria disagree, so the kept weights tell them apart


def test_members_get_their_own_seed_and_an_equal_share_of_the_time_budget():
    train = recipe(members=3, seed=7)
    train["time_budget_minutes"] = 90
    members = [training.member_params(train, index) for index in range(3)]
    assert [m["seed"] for m in members] == [7, 8, 9]
    assert [m["time_budget_minutes"] for m in members] == [30, 30, 30]
    assert train["seed"] == 7 and train["time_budget_minutes"] == 90  # the recipe itself is left as it was


def test_members_take_their_models_from_a_list_in_turn():
    train = recipe(members=2)
    assert [training.member_params(train, i)["model"] for i in range(2)] == [train["model"]] * 2
    train["model"] = ["small", "lean"]
    assert [training.member_params(train, i)["model"] for i in range(2)] == ["small", "lean"]
    assert training.describe_models(train) == "small + lean"
    assert training.member_models(train) == ["small", "lean"]
    assert training.member_models(recipe(members=3, model="small")) == ["small"] * 3
    assert training.describe_models(recipe(members=2, model="small")) == "2 x small"
    assert training.describe_models(recipe(model="compact")) == "compact"


def test_an_ensemble_averages_its_members_and_survives_saving(tmp_path):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=1, batch_size=16, members=2)
    seeds = []
    original_fit = training.fit

    def recording_fit(member, *args, **kwargs):
        seeds.append(member["seed"])
        return original_fit(member, *args, **kwargs)

    training.fit, saved_fit = recording_fit, training.fit
    try:
        model, runs = training.fit_members(train, (images, labels), tiny_data(14, 1), verbose=0)
    finally:
        training.fit = saved_fit
    assert seeds == [train["seed"], train["seed"] + 1]
    assert [run.epochs for run in runs] == [1, 1]
    assert [member.name for member in members_of(model)] == ["member_1", "member_2"]
    x = training.as_model_input(images)
    member_probs = [run.model.predict(x, verbose=0) for run in runs]
    assert not np.allclose(member_probs[0], member_probs[1], atol=1e-3)  # different seeds, different networks
    np.testing.assert_allclose(model.predict(x, verbose=0), np.mean(member_probs, axis=0), atol=1e-6)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_a_single_member_is_saved_as_a_plain_network():
    images, labels = tiny_data()
    model, runs = training.fit_members(recipe(width=8, epochs=1, batch_size=16, members=1), (images, labels),
                                       tiny_data(14, 1), verbose=0)
    assert len(runs) == 1 and model is runs[0].model and members_of(model) == [model]


def saved_teacher(path: Path, crop=True) -> Path:
    keras.utils.set_random_seed(3)
    build_model(recipe(width=4, augment={"crop": crop})).save(path)
    return path


def test_without_a_teacher_the_targets_are_the_labels():
    images, labels = tiny_data()
    assert training.training_targets(recipe(), images, labels) is None


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_distillation_mixes_the_teachers_probabilities_into_the_targets(tmp_path, weight):
    from ferpipe.evaluation import predict_probabilities

    images, labels = tiny_data()
    teacher = saved_teacher(tmp_path / "teacher.keras")
    train = recipe(distill={"teacher": str(teacher), "weight": weight, "tta": "flip"})
    targets = training.training_targets(train, images, labels)
    probs = predict_probabilities(keras.saving.load_model(teacher), images, "flip", batch_size=256)
    assert targets.shape == (len(labels), len(CLASS_NAMES))
    np.testing.assert_allclose(targets, (1 - weight) * training.one_hot(labels) + weight * probs, atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(probs, training.one_hot(labels), atol=0.05)  # the untrained teacher disagrees


def test_every_member_trains_on_the_distilled_targets_weighted_by_label(tmp_path, monkeypatch):
    images, labels = tiny_data()
    labels[:20] = 0  # an imbalance, so that balanced class weights differ between classes
    teacher = saved_teacher(tmp_path / "teacher.keras")
    train = recipe(width=8, epochs=1, batch_size=16, members=2, class_weight="balanced",
                   distill={"teacher": str(teacher), "weight": 1.0, "tta": "flip"})
    calls = []
    original_fit = keras.Model.fit

    def recording_fit(model, x, y, **kwargs):
        calls.append((np.array(y), kwargs))
        return original_fit(model, x, y, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    training.fit_members(train, (images, labels), tiny_data(14, 1), verbose=0)
    targets = training.training_targets(train, images, labels)
    assert len(calls) == 2
    for y, kwargs in calls:
        np.testing.assert_allclose(y, targets, atol=1e-6)
        # class weights by each image's label, even where the teacher's class outweighs it in the target
        weights = training.class_weights(train, labels)
        assert kwargs.get("class_weight") is None
        np.testing.assert_allclose(kwargs["sample_weight"], [weights[label] for label in labels])
    assert (targets.argmax(1) != labels).any()


@pytest.mark.parametrize("problem, expected", [
    ("missing", "teacher.keras not found"),
    ("garbage", "is not a readable Keras model"),
    ("ten_crop_without_crops", "train.distill.tta: tta ten_crop needs a model trained with train.augment.crop: true"),
    ("three_classes", r"outputs \[None, 3\]; a model of this pipeline takes \[batch, 48, 48, 1\] faces and outputs "
                      r"\[batch, 7\]"),
    ("colour_faces", r"takes inputs of shape \[None, 64, 64, 3\]"),
])
def test_a_bad_teacher_is_refused_with_a_clear_message(tmp_path, problem, expected):
    from ferpipe import FerError

    path, tta = tmp_path / "teacher.keras", "flip"
    if problem == "garbage":
        path.write_bytes(b"not a model")
    elif problem == "ten_crop_without_crops":
        saved_teacher(path, crop=False)
        tta = "ten_crop"
    elif problem == "three_classes":
        inputs = keras.Input((48, 48, 1))
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))).save(path)
    elif problem == "colour_faces":
        inputs = keras.Input((64, 64, 3))
        keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))).save(path)
    images, labels = tiny_data()
    with pytest.raises(FerError, match=expected):
        training.training_targets(recipe(distill={"teacher": str(path), "weight": 0.5, "tta": tta}), images, labels)


def test_an_interrupted_run_is_not_resumed_with_another_teacher(tmp_path):
    teacher = saved_teacher(tmp_path / "teacher.keras")
    train = recipe(distill={"teacher": str(teacher), "weight": 0.5, "tta": "flip"})
    before = training.fingerprint(train)
    assert training.fingerprint(train) == before
    saved_teacher(teacher, crop=False)  # same path, another model
    assert training.fingerprint(train) != before


def test_weight_averaging_scores_and_keeps_the_average_without_changing_the_training():
    images, labels = tiny_data()
    val = tiny_data(28, 1)
    train = recipe(width=8, epochs=4, batch_size=8, lr=0.01, early_stopping_patience=10, deterministic=True)
    plain_model, plain = training.fit(train, (images, labels), val, verbose=0)
    trained = TrainedWeights()
    averaged_model, averaged = training.fit(dict(train, ema=0.9), (images, labels), val, verbose=0,
                                            extra_callbacks=[trained])
    # the weights being trained follow the same path: Keras' scores of them are the plain run's
    np.testing.assert_allclose(averaged.history["val_raw_loss"], plain.history["val_loss"], rtol=1e-6)
    assert averaged.history["val_raw_accuracy"] == plain.history["val_accuracy"]
    # ... while val_loss and val_accuracy score the average, and the kept model is the best epoch's average
    assert averaged.history["val_loss"] != averaged.history["val_raw_loss"]
    best = training.best_epoch(averaged.history, train["select_by"])
    scores = averaged_model.evaluate(training.as_model_input(val[0]), training.one_hot(val[1]), verbose=0,
                                     return_dict=True)
    assert scores["loss"] == pytest.approx(averaged.history["val_loss"][best], rel=1e-5)
    assert scores["accuracy"] == averaged.history["val_accuracy"][best]
    assert any(not np.array_equal(kept, raw) for kept, raw in zip(averaged_model.get_weights(), trained.weights[best]))


def test_weight_averaging_carries_over_an_interruption(tmp_path):
    class InterruptAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    images, labels = tiny_data()
    val = tiny_data(28, 1)
    train = recipe(width=8, epochs=4, batch_size=8, lr=0.01, early_stopping_patience=10, ema=0.9)
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), val, verbose=0, resume_dir=tmp_path, extra_callbacks=[InterruptAfter()])
    state = json.loads((tmp_path / "state.json").read_text())
    # the checkpoint's model holds the weights being trained, and its optimizer state the average
    saved = training.load_model(tmp_path / state["model_file"])
    x, y = training.as_model_input(val[0]), training.one_hot(val[1])
    trained = saved.evaluate(x, y, verbose=0, return_dict=True)
    assert trained["loss"] == pytest.approx(state["logs"]["val_raw_loss"][1], rel=1e-5)
    saved.optimizer.finalize_variable_values(saved.trainable_variables)
    averaged = saved.evaluate(x, y, verbose=0, return_dict=True)
    assert averaged["loss"] == pytest.approx(state["logs"]["val_loss"][1], rel=1e-5)
    assert averaged["loss"] != pytest.approx(trained["loss"], rel=1e-5)
    _, resumed = training.fit(train, (images, labels), val, verbose=0, resume_dir=tmp_path)
    assert resumed.resumed_after == 2 and len(resumed.history["val_raw_accuracy"]) == 4

"""Fit a model with the recipe in params['train']; used by the train stage and the benchmark."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from ferpipe import CLASS_NAMES, IMAGE_SIZE, FerError, require_face_classifier
from ferpipe.model import build_model, ensemble, load_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it lists none, e.g. off Linux or x86)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_has_bf16() -> bool:
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _has_gpu() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return jax.devices()[0].platform == "gpu"
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # an unusable accelerator is the same as none
        return False
    return False


def accelerator_name() -> str | None:
    """The GPU that the backend computes on (e.g. 'NVIDIA H200'), or None on a CPU."""
    if not _has_gpu():
        return None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
    import torch

    return torch.cuda.get_device_name(0)


def resolve_precision(precision: str) -> str:
    """'auto' -> bfloat16 where the hardware computes it natively (BF16 CPUs, GPUs), else float32."""
    if precision == "auto":
        precision = "bfloat16" if _has_gpu() or _cpu_has_bf16() else "float32"
    return precision


def set_precision(precision: str) -> str:
    precision = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    return precision


def enable_determinism() -> None:
    """Deterministic kernels for the active backend, so that a run repeats bit for bit on the same
    machine (fit() sets the seeds). TensorFlow: op determinism; PyTorch: deterministic algorithms;
    JAX: deterministic XLA GPU ops (read when JAX starts; JAX on CPU is deterministic anyway)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def make_optimizer(train: dict) -> keras.optimizers.Optimizer:
    """Adam or SGD; with train.ema, it also keeps a moving average of the weights (see AveragedEarlyStopping)."""
    lr, wd = train["lr"], train["weight_decay"] or None
    # ema_overwrite_frequency None: the average never replaces the weights being trained
    averaging = {"use_ema": True, "ema_momentum": train["ema"], "ema_overwrite_frequency": None} if train["ema"] else {}
    if train["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd, **averaging)
    return keras.optimizers.Adam(lr, weight_decay=wd, **averaging)


def lr_at_epoch(train: dict, epoch: int, budget_used: float = 0.0) -> float:
    """Per-epoch learning rate of the 'cosine' and 'onecycle' schedules. `budget_used` (share of the
    time budget spent when the epoch starts) moves the schedule on to that share of `epochs` when it
    is further along, so that a run the budget stops has still annealed (train.anneal_within_budget)."""
    lr, epochs = train["lr"], train["epochs"]
    epoch = min(max(epoch, budget_used * epochs), epochs)
    if train["schedule"] == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    warmup = max(1, round(0.3 * epochs))  # onecycle: linear warm-up from lr/10, then cosine to ~0
    if epoch < warmup:
        return lr * (0.1 + 0.9 * epoch / warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def schedule_callbacks(train: dict, validation=None) -> tuple:
    """(LR schedule, early stopping on train.select_by with the best weights restored, time budget). With
    train.ema, early stopping scores the averaged weights on `validation` (model inputs, one-hot targets)."""
    budget = TimeBudget(train["time_budget_minutes"], _budget_advice(train))
    if train["schedule"] == "plateau":
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train["plateau_factor"], patience=train["plateau_patience"], verbose=1
        )
    else:
        follow = train["anneal_within_budget"]
        schedule = keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: lr_at_epoch(train, epoch, budget.share_used() if follow else 0.0))
    stopping = {"monitor": train["select_by"], "patience": train["early_stopping_patience"],
                "restore_best_weights": True, "verbose": 1}
    if train["ema"]:
        if validation is None:
            raise ValueError("train.ema needs the validation data")
        stop = AveragedEarlyStopping(validation, train["batch_size"], **stopping)
    else:
        stop = keras.callbacks.EarlyStopping(**stopping)
    return schedule, stop, budget


class AveragedEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping on the optimizer's moving average of the weights (train.ema).

    After each epoch it puts the average in place of the trained weights, scores it on `validation`
    (val_loss, val_accuracy; Keras' own scores of the trained weights are kept as val_raw_loss and
    val_raw_accuracy), decides and keeps the best weights as early stopping does, then puts the trained
    weights back for the next epoch. Place it before the callbacks that read val_loss or val_accuracy:
    the logs, the kept epoch and the plateau schedule (the only one that reads val_loss) then follow the average.
    """

    def __init__(self, validation, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.validation, self.batch_size = validation, batch_size

    def on_epoch_end(self, epoch, logs=None):
        trained = [variable.numpy() for variable in self.model.trainable_variables]
        for metric in ("loss", "accuracy"):
            logs[f"val_raw_{metric}"] = logs[f"val_{metric}"]
        self.model.optimizer.finalize_variable_values(self.model.trainable_variables)  # the average in place
        try:
            x, y = self.validation
            scores = self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)
            logs.update(val_loss=float(scores["loss"]), val_accuracy=float(scores["accuracy"]))
            super().on_epoch_end(epoch, logs)
        finally:  # training goes on from the trained weights, also after an interruption here
            for variable, value in zip(self.model.trainable_variables, trained):
                variable.assign(value)


def _budget_advice(train: dict) -> str:
    """What TimeBudget adds when the epochs will not fit: whether the LR schedule will have annealed, and
    what would let it."""
    if train["schedule"] == "plateau":
        return ""
    if train["anneal_within_budget"]:
        return "; the learning rate follows the budget (train.anneal_within_budget), so it anneals all the same"
    return (f"; the {train['schedule']} schedule will not have annealed by then: set "
            f"train.anneal_within_budget: true, fewer train.epochs, a larger train.time_budget_minutes or a "
            f"faster train.model (`ferpipe bench`)")


def best_epoch(history: dict, select_by: str) -> int:
    """Index of the epoch that early stopping keeps: lowest val_loss or highest val_accuracy (first of ties)."""
    values = history[select_by]
    pick = max if select_by == "val_accuracy" else min
    return pick(range(len(values)), key=values.__getitem__)


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch that exhausts `minutes` of wall time (0 = no limit). After the second epoch
    (the first also traces the training step) it says so when, at that epoch's speed, the run's epochs
    will not fit: on a slower CPU than the recipe was sized for, the user learns it minutes into the run,
    with `advice`, rather than at the end."""

    def __init__(self, minutes: float, advice: str = ""):
        super().__init__()
        self.seconds = minutes * 60
        self.advice = advice
        self.exhausted = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()
        self.epoch_ends = []

    def share_used(self) -> float:
        """Share of the budget spent so far (0 without a budget)."""
        return (time.monotonic() - self.start) / self.seconds if self.seconds else 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.monotonic())
        if len(self.epoch_ends) == 2 and 0 < self.share_used() < 1:  # at 1 or more, the stop below says it
            self._forecast(epoch + 1)
        if self.share_used() >= 1:
            self.exhausted = True
            self.model.stop_training = True
            print(f"time budget of {self.seconds / 60:g} min used up after epoch {epoch + 1}; stopping", flush=True)

    def _forecast(self, epochs_done: int) -> None:
        epochs, elapsed = self.params["epochs"], self.epoch_ends[-1] - self.start
        per_epoch = self.epoch_ends[-1] - self.epoch_ends[-2]
        needed = elapsed + (epochs - epochs_done) * per_epoch
        if needed <= self.seconds:
            return
        last = min(epochs, epochs_done + math.ceil((self.seconds - elapsed) / per_epoch))
        print(f"time budget: at {per_epoch:.0f} s an epoch, {epochs} epochs need about {needed / 60:.0f} min, more "
              f"than the budget's {self.seconds / 60:g} min; training will stop after about epoch {last} of "
              f"{epochs}{self.advice}", flush=True)


def class_weights(train: dict, labels: np.ndarray) -> dict[int, float] | None:
    if train["class_weight"] == "none":
        return None
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(float)
    return {i: float(len(labels) / (len(CLASS_NAMES) * c)) if c else 0.0 for i, c in enumerate(counts)}


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASS_NAMES), dtype="float32")[labels]


def teacher_path(train: dict) -> Path | None:
    """The distillation teacher's file (train.distill.teacher), or None when distillation is off."""
    teacher = train["distill"]["teacher"]
    return None if teacher == "none" else Path(teacher)


def training_targets(train: dict, images: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Knowledge distillation (train.distill): the one-hot labels mixed with the teacher's class
    probabilities on the training images (without training augmentation, with the views of
    distill.tta), weighted by distill.weight; None without a teacher."""
    path, distill = teacher_path(train), train["distill"]
    if path is None:
        return None
    from ferpipe.evaluation import TTA_VIEWS, check_tta, predict_probabilities

    if not path.is_file():
        raise FerError(f"train.distill.teacher: {path} not found; put the trained model there (see docs/experiments.md, "
                       f"'Distillation') or set train.distill.teacher: none")
    try:
        teacher = load_model(path, compile=False)
    except Exception as err:
        raise FerError(f"train.distill.teacher: {path} is not a readable Keras model ({type(err).__name__}: {err})") \
            from None
    require_face_classifier(teacher.input_shape, teacher.output_shape, f"train.distill.teacher: {path}")
    try:
        check_tta(teacher, distill["tta"], f"the teacher {path}")
    except FerError as err:
        raise FerError(f"train.distill.tta: {err}") from None
    start = time.monotonic()
    views = len(TTA_VIEWS[distill["tta"]])
    print(f"distilling from {path}: its {distill['tta']} probabilities on {len(images)} training images "
          f"({views} view{'s' if views > 1 else ''} of each, predicted once before training), "
          f"weight {distill['weight']:g}", flush=True)
    probs = predict_probabilities(teacher, images, distill["tta"], batch_size=256)
    agree = float(np.mean(probs.argmax(1) == labels))
    print(f"teacher: {agree:.4f} of the training labels as its first choice ({time.monotonic() - start:.0f} s)",
          flush=True)
    weight = distill["weight"]
    return ((1 - weight) * one_hot(labels) + weight * probs).astype("float32")


def as_model_input(images: np.ndarray) -> np.ndarray:
    """(n, 48, 48) uint8 -> (n, 48, 48, 1) float32 in 0-255 (the model rescales to [0,1])."""
    return images.astype("float32")[..., None]


def compile_model(train: dict) -> keras.Model:
    model = build_model(train)
    model.compile(
        optimizer=make_optimizer(train),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=train["label_smoothing"]),
        metrics=["accuracy"],
    )
    return model


def build_training_state(model: keras.Model) -> None:
    """Create the optimizer's, loss's and metrics' variables before fit(). Keras otherwise creates them
    inside the first traced training step, and TensorFlow traces a step that creates variables twice:
    ~5 s more at the start of every fit (the same weights and losses either way). Keras' own symbolic
    build, which fit() skips on TensorFlow without a distribution strategy."""
    symbolic_build = getattr(model, "_symbolic_build", None)  # private in Keras 3.15: skipped if it goes
    if symbolic_build is not None:
        images = keras.KerasTensor((None, IMAGE_SIZE, IMAGE_SIZE, 1), "float32")
        symbolic_build(data_batch=(images, keras.KerasTensor((None, len(CLASS_NAMES)), "float32"), None))


def inference_model(model: keras.Model, train: dict, name: str | None = None) -> keras.Model:
    """The trained network without its optimizer state: a third of the file size, all that inference needs."""
    copy = build_model(train, name)
    copy.set_weights(model.get_weights())
    return copy


class Checkpoint(keras.callbacks.Callback):
    """Saves, after every epoch, what an interrupted run needs to go on from there.

    In `directory`: the model with its optimizer state (learning rate included), the LR schedule's
    and early stopping's counters, early stopping's best weights, the wall time used and the
    per-epoch logs so far. `state.json` is replaced atomically and written last, so a kill at any
    moment leaves the last complete epoch. Place it after the callbacks whose state it restores.
    """

    def __init__(self, directory: Path, fingerprint: str, schedule, stop, budget):
        super().__init__()
        self.directory, self.fingerprint = Path(directory), fingerprint
        self.schedule, self.stop, self.budget = schedule, stop, budget
        self.saved_model, self.saved_best = None, None  # read by _load() from a usable state
        self.state = self._load()
        self.epochs_done_at_start = self.epochs_done
        self.seconds_at_start = self.state["seconds"] if self.state else 0.0
        self.logs = {k: list(v) for k, v in self.state["logs"].items()} if self.state else {}

    @property
    def epochs_done(self) -> int:
        return self.state["epochs_done"] if self.state else 0

    def _load(self) -> dict | None:
        try:
            state = json.loads((self.directory / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != self.fingerprint:
            print(f"ignoring the interrupted run's state in {self.directory}: params, data or code have changed "
                  "since", flush=True)
            self.clear()
            return None
        try:
            self.saved_model = load_model(self.directory / state["model_file"])
            self.saved_best = self._read_best_weights(state)
        except Exception as err:  # a truncated file (full disk, power cut), a file from elsewhere
            print(f"ignoring the interrupted run's state in {self.directory}: it cannot be read "
                  f"({type(err).__name__}: {err}); starting afresh", flush=True)
            self.clear()
            return None
        return state

    def resumed_model(self) -> keras.Model:
        return self.saved_model

    def past_epochs(self):
        """(epoch, logs) of the epochs done before the interruption."""
        for epoch in range(self.epochs_done):
            yield epoch, {name: values[epoch] for name, values in self.logs.items()}

    def on_train_begin(self, logs=None):
        if not self.state:
            return
        if isinstance(self.schedule, keras.callbacks.ReduceLROnPlateau):
            self.schedule.wait, self.schedule.best, self.schedule.cooldown_counter = self.state["plateau"]
        stop = self.state["early_stopping"]
        self.stop.wait, self.stop.best, self.stop.best_epoch = stop["wait"], stop["best"], stop["best_epoch"]
        self.stop.best_weights = self.saved_best
        self.budget.start -= self.state["seconds"]

    def best_weights(self) -> list[np.ndarray] | None:
        return self.saved_best

    def _read_best_weights(self, state) -> list[np.ndarray] | None:
        name = state["early_stopping"]["weights_file"]
        if not name:
            return None
        with np.load(self.directory / name) as weights:
            return [weights[f"arr_{i}"] for i in range(len(weights.files))]

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.logs.setdefault(name, []).append(float(value))
        self.directory.mkdir(parents=True, exist_ok=True)
        done = epoch + 1
        model_file, weights_file = f"model-{done}.keras", None
        self.model.save(self.directory / model_file)
        _sync(self.directory / model_file)
        if self.stop.best_weights is not None:
            weights_file = f"best-{done}.npz"
            np.savez(self.directory / weights_file, *self.stop.best_weights)
            _sync(self.directory / weights_file)
        state = {
            "fingerprint": self.fingerprint,
            "epochs_done": done,
            "stopped": bool(self.model.stop_training),
            "model_file": model_file,
            "plateau": [int(self.schedule.wait), _number(self.schedule.best), int(self.schedule.cooldown_counter)]
            if isinstance(self.schedule, keras.callbacks.ReduceLROnPlateau) else None,
            "early_stopping": {"wait": int(self.stop.wait), "best": _number(self.stop.best),
                               "best_epoch": int(self.stop.best_epoch), "weights_file": weights_file},
            "seconds": time.monotonic() - self.budget.start,
            "logs": self.logs,
        }
        partial = self.directory / "state.json.partial"
        partial.write_text(json.dumps(state))
        _sync(partial)  # the files on disk before the state that names them
        os.replace(partial, self.directory / "state.json")
        _sync(self.directory)
        self.state = state
        for old in self.directory.iterdir():
            if old.name not in ("state.json", model_file, weights_file):
                old.unlink()

    def clear(self):
        clear_resume_state(self.directory)


def _sync(path: Path):
    """Flush a file's (or a folder's) data to disk, so that a power cut cannot leave it half written."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _number(value):
    return None if value is None else float(value)


CODE_FILES = (Path(__file__), Path(__file__).with_name("model.py"))


def fingerprint(train: dict, *arrays: np.ndarray) -> str:
    """What must not change between an interrupted run and its resumption: params, data, the model
    and training code, Keras and its backend, the distillation teacher."""
    digest = hashlib.sha256(json.dumps([train, keras.backend.backend(), keras.__version__], sort_keys=True).encode())
    teacher = teacher_path(train)
    for path in (*CODE_FILES, *([teacher] if teacher else [])):
        digest.update(path.read_bytes())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fit(train: dict, train_data, val_data, extra_callbacks=(), verbose=None, resume_dir=None, targets=None):
    """Seed, build, compile and fit; returns (model, history). Data are (uint8 images, int labels);
    `targets` (training_targets) replaces the training labels' one-hot vectors.

    With `resume_dir`, the run is checkpointed there after every epoch, and a run interrupted
    with the same params and data goes on from its last completed epoch; `extra_callbacks` first
    see the completed epochs replayed (DVCLive's curves stay whole). The caller clears the state
    (`clear_resume_state`) once it has saved the model. history.history covers all epochs;
    history.resumed_after counts those done before the interruption (0 for a fresh run).
    """
    if train["deterministic"]:
        enable_determinism()
    keras.utils.set_random_seed(train["seed"])
    set_precision(train["precision"])
    (x_train, y_train), (x_val, y_val) = train_data, val_data
    validation = (as_model_input(x_val), one_hot(y_val))
    schedule, stop, budget = schedule_callbacks(train, validation)
    callbacks = [stop, schedule, budget]  # early stopping first: with train.ema it rewrites the epoch's val scores
    checkpoint = None
    if resume_dir is not None:
        checkpoint = Checkpoint(resume_dir, fingerprint(train, x_train, y_train, x_val, y_val), schedule, stop, budget)
        callbacks.append(checkpoint)
    resuming = checkpoint is not None and checkpoint.state is not None
    model = checkpoint.resumed_model() if resuming else compile_model(train)
    build_training_state(model)
    if resuming:
        print(f"resuming after epoch {checkpoint.epochs_done} from the interrupted run's state in "
              f"{checkpoint.directory}", flush=True)
        for epoch, logs in checkpoint.past_epochs():
            for callback in extra_callbacks:
                callback.on_epoch_end(epoch, logs)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # one line per epoch in logs
    if resuming and checkpoint.state["stopped"]:
        # Interrupted after its last epoch, before the model was saved: only restore the best weights.
        best = checkpoint.best_weights()
        if best is not None:
            model.set_weights(best)
        history = keras.callbacks.History()
    else:
        history = model.fit(
            as_model_input(x_train),
            one_hot(y_train) if targets is None else targets,
            validation_data=validation,
            epochs=train["epochs"],
            initial_epoch=checkpoint.epochs_done if checkpoint else 0,
            batch_size=train["batch_size"],
            **_weighting(class_weights(train, y_train), y_train, targets),
            callbacks=[*callbacks, *extra_callbacks],
            verbose=verbose,
        )
    history.resumed_after = checkpoint.epochs_done_at_start if checkpoint else 0
    history.seconds_before_resuming = checkpoint.seconds_at_start if checkpoint else 0.0
    if checkpoint is not None:
        history.history = checkpoint.logs
    return model, history


def _weighting(weights: dict | None, labels: np.ndarray, targets) -> dict:
    """fit()'s class weighting. Keras weights an image by its target's argmax, which for a distilled
    target can be the teacher's class: then weight each image by its label's class instead."""
    if weights is None or targets is None:
        return {"class_weight": weights}
    return {"sample_weight": np.array([weights[label] for label in labels], dtype="float32")}


def clear_resume_state(directory: Path):
    """Forget an interrupted run's state (a finished run must not leave any behind)."""
    shutil.rmtree(directory, ignore_errors=True)


def member_models(train: dict) -> list[str]:
    """The network of each member: train.model's list, or its one name train.members times."""
    return list(train["model"]) if isinstance(train["model"], list) else [train["model"]] * train["members"]


def member_params(train: dict, index: int) -> dict:
    """The recipe of ensemble member `index` (from 0): its own seed, its own model when train.model is a
    list, and an equal share of the time budget."""
    return dict(train, model=member_models(train)[index], seed=train["seed"] + index,
                time_budget_minutes=train["time_budget_minutes"] / train["members"])


def describe_models(train: dict) -> str:
    """'compact', '2 x small' or 'small + lean': the networks train.model and train.members ask for."""
    if isinstance(train["model"], list):
        return " + ".join(train["model"])
    return (f"{train['members']} x " if train["members"] > 1 else "") + train["model"]


class MemberRun:
    """One trained member: its inference model, per-epoch logs and wall time."""

    def __init__(self, model, logs: dict, resumed_after: int, seconds: float, seconds_before_resuming: float):
        self.model, self.logs, self.resumed_after = model, logs, resumed_after
        self.seconds, self.seconds_before_resuming = seconds, seconds_before_resuming

    @property
    def epochs(self) -> int:
        return len(self.logs["val_loss"])


def fit_members(train: dict, train_data, val_data, extra_callbacks=(), verbose=None, resume_dir=None):
    """Fit train['members'] networks in turn (member_params) and average them into one model.

    Returns (model, [MemberRun]). `extra_callbacks` see every member's epochs one after another.
    With `resume_dir`, each member is checkpointed in its own folder there and a finished member is
    kept (model and logs), so an interrupted run goes on inside the member it had reached.
    """
    runs = []
    targets = training_targets(train, *train_data)
    for index in range(train["members"]):
        member = member_params(train, index)
        name = f"member_{index + 1}" if train["members"] > 1 else None
        if train["members"] > 1:
            print(f"member {index + 1} of {train['members']} ({member['model']}, seed {member['seed']})", flush=True)
        run = _finished_member(resume_dir, index, member, train_data, val_data)
        if run is not None:
            print(f"member {index + 1} was finished before the interruption: kept", flush=True)
            for epoch in range(run.epochs):
                for callback in extra_callbacks:
                    callback.on_epoch_end(epoch, {k: v[epoch] for k, v in run.logs.items()})
        else:
            start = time.monotonic()
            model, history = fit(member, train_data, val_data, extra_callbacks=extra_callbacks, verbose=verbose,
                                 resume_dir=_member_paths(resume_dir, index)[0] if resume_dir else None,
                                 targets=targets)
            run = MemberRun(inference_model(model, member, name), history.history, history.resumed_after,
                            time.monotonic() - start, history.seconds_before_resuming)
            if resume_dir is not None:
                _keep_finished_member(resume_dir, index, member, train_data, val_data, run)
        runs.append(run)
    return ensemble([run.model for run in runs]), runs


def _member_paths(resume_dir, index: int) -> tuple[Path, Path, Path]:
    """A member's epoch-checkpoint folder, and its kept model and record once it has finished."""
    base = Path(resume_dir) / f"member-{index + 1}"
    return base, base.with_suffix(".keras"), base.with_suffix(".json")


def _keep_finished_member(resume_dir, index, member, train_data, val_data, run: MemberRun):
    checkpoint_dir, model_file, record_file = _member_paths(resume_dir, index)
    run.model.save(model_file)
    _sync(model_file)
    record = {"fingerprint": fingerprint(member, *train_data, *val_data), "logs": run.logs, "seconds": run.seconds,
              "seconds_before_resuming": run.seconds_before_resuming}
    partial = record_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(record))
    _sync(partial)
    os.replace(partial, record_file)  # written last: it vouches for the model file
    clear_resume_state(checkpoint_dir)


def _finished_member(resume_dir, index, member, train_data, val_data) -> MemberRun | None:
    if resume_dir is None:
        return None
    _, model_file, record_file = _member_paths(resume_dir, index)
    try:
        record = json.loads(record_file.read_text())
        if record["fingerprint"] != fingerprint(member, *train_data, *val_data):
            return None
        model = load_model(model_file)
    except Exception:  # absent, from other params or data, or unreadable: train the member again
        return None
    # all of its epochs were done before this process (its logs hold them all, also when it had itself been
    # resumed); the wall time before the interruption is in seconds_before_resuming
    return MemberRun(model, record["logs"], len(record["logs"]["val_loss"]), 0.0,
                     record["seconds"] + record["seconds_before_resuming"])


def kept_epochs(train: dict, runs: list[MemberRun]) -> list[int]:
    """The epoch (from 1) whose weights each member keeps, by train.select_by."""
    return [best_epoch(run.logs, train["select_by"]) + 1 for run in runs]


def describe_kept(train: dict, runs: list[MemberRun]) -> str:
    """'epoch 88' or 'epoch 55 of member 1, epoch 38 of member 2'."""
    return ", ".join(f"epoch {epoch}" + (f" of member {index + 1}" if len(runs) > 1 else "")
                     for index, epoch in enumerate(kept_epochs(train, runs)))


def run_summary(train: dict, runs: list[MemberRun], val: dict, seconds: float, train_images: int) -> dict:
    """What a finished training reports: the kept epochs, the saved model's validation accuracy and loss
    without TTA (`val`, from evaluation.summarize), epochs, wall time and speed over `train_images` images."""
    starts = list(itertools.accumulate((run.epochs for run in runs), initial=0))  # along the curves
    images = train_images * sum(run.epochs - run.resumed_after for run in runs)
    return {
        # numbered along the curves, which run through the members in turn
        "kept_epochs": [start + epoch for start, epoch in zip(starts, kept_epochs(train, runs))],
        "val_accuracy": val["accuracy"],  # the saved model's (members averaged), without TTA
        "val_loss": val["loss"],
        "epochs_run": starts[-1],
        "resumed_after_epoch": sum(run.resumed_after for run in runs),
        "train_minutes": round(seconds / 60, 1),  # of this process, when resumed
        "train_minutes_total": round((seconds + sum(run.seconds_before_resuming for run in runs)) / 60, 1),
        "train_images_per_second": round(images / sum(run.seconds for run in runs), 1) if images else None,
    }

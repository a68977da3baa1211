"""Every param is validated before work starts, with a message naming the key and what is allowed."""
import copy
import re
import time
from pathlib import Path

import pytest
import yaml

from ferpipe import params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def good():
    return yaml.safe_load(REPO_PARAMS.read_text())


def test_repository_params_are_valid(good):
    assert params.validate(good) is good


def with_value(good, dotted, value):
    bad = copy.deepcopy(good)
    node = bad
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return bad


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("train.lr", -1, "train.lr: got -1, expected a number > 0"),
        ("train.lr", 0, "train.lr"),
        ("train.lr", "fast", "train.lr: got 'fast'"),
        ("train.epochs", 2.5, "train.epochs: got 2.5, expected an integer"),
        ("train.epochs", 0, "train.epochs"),
        ("train.batch_size", True, "train.batch_size"),
        ("train.model", "resnet", "train.model: got 'resnet', expected one of 'seed', 'compact', 'small', 'lean', 'strided', 'residual', 'vgg'"),
        ("train.model", ["small", "resnet"], "train.model: got ['small', 'resnet'], expected one of"),
        ("train.model", [], "train.model: got [], expected one of"),
        ("train.model", [["small"]], "or a list of them (one per member)"),
        ("train.optimizer", "rmsprop", "train.optimizer"),
        ("train.schedule", "step", "train.schedule"),
        ("train.class_weight", "auto", "train.class_weight"),
        ("train.precision", "float16", "train.precision"),
        ("train.deterministic", "on", "train.deterministic: got 'on', expected true or false"),
        ("train.dropout", 1.5, "train.dropout"),
        ("train.label_smoothing", -0.1, "train.label_smoothing"),
        ("train.weight_decay", 1, "train.weight_decay"),
        ("train.width", 2, "train.width"),
        ("train.members", 0, "train.members: got 0, expected an integer >= 1 and <= 20"),
        ("train.members", 1.5, "train.members"),
        ("train.time_budget_minutes", -5, "train.time_budget_minutes"),
        ("train.plateau_factor", 1, "train.plateau_factor: got 1, expected a number > 0 and < 1"),
        ("train.plateau_factor", 0, "train.plateau_factor"),
        ("train.ema", 1, "train.ema: got 1, expected a number >= 0 and < 1"),
        ("train.ema", -0.1, "train.ema"),
        ("train.ema", "0.999", "train.ema"),
        ("train.anneal_within_budget", "yes", "train.anneal_within_budget: got 'yes', expected true or false"),
        ("train.augment.flip", "yes", "train.augment.flip: got 'yes', expected true or false"),
        ("train.augment.rotation", 400, "train.augment.rotation"),
        ("train.augment.zoom", 1.0, "train.augment.zoom"),
        ("train.augment.translate", 0.9, "train.augment.translate"),
        ("train.augment.erasing", 2, "train.augment.erasing"),
        ("train.distill.teacher", "teachers/compact.h5", "train.distill.teacher: got 'teachers/compact.h5', "
                                                         "expected 'none' or a trained Keras model inside teachers/"),
        ("train.distill.teacher", "models/model.keras", "train.distill.teacher: got 'models/model.keras'"),
        ("train.distill.teacher", "/tmp/teacher.keras", "train.distill.teacher"),
        ("train.distill.teacher", "teachers/../models/model.keras", "train.distill.teacher"),
        ("train.distill.teacher", " teachers/compact.keras", "train.distill.teacher"),
        ("train.distill.teacher", "teachers/", "train.distill.teacher"),
        ("train.distill.teacher", "", "train.distill.teacher"),
        ("train.distill.teacher", None, "train.distill.teacher"),
        ("train.distill.weight", 1.5, "train.distill.weight: got 1.5, expected a number >= 0 and <= 1"),
        ("train.distill.weight", -0.1, "train.distill.weight"),
        ("train.distill.tta", "five_crop", "train.distill.tta: got 'five_crop', expected one of 'none', 'flip'"),
        ("prepare.val_fraction", 0, "prepare.val_fraction: got 0, expected a number > 0 and <= 0.9"),
        ("prepare.val_fraction", 1.0, "prepare.val_fraction"),
        ("prepare.data_root", "", "prepare.data_root"),
        ("prepare.seed", -1, "prepare.seed"),
        ("prepare.drop_defects", "no", "prepare.drop_defects: got 'no', expected true or false"),
        ("evaluate.tta", "five_crop", "evaluate.tta"),
        ("train.augment.crop", 44, "train.augment.crop: got 44, expected true or false"),
        ("train.augment.fused", "yes", "train.augment.fused: got 'yes', expected true or false"),
        ("train.select_by", "accuracy", "train.select_by: got 'accuracy', expected one of 'val_loss', 'val_accuracy'"),
        ("evaluate.batch_size", 0, "evaluate.batch_size"),
        ("visualize.grid_images", 0, "visualize.grid_images"),
        ("visualize.sample_images", 500, "visualize.sample_images"),
        ("visualize.seed", "x", "visualize.seed"),
        ("train.lr", float("nan"), "train.lr: got nan, expected a number > 0 and <= 1"),
        ("prepare.val_fraction", float("nan"), "prepare.val_fraction: got nan"),
        ("train.time_budget_minutes", float("inf"), "train.time_budget_minutes: got inf, expected a number >= 0"),
        ("train.seed", 2**32, "train.seed: got 4294967296, expected an integer >= 0 and <= 4294967295"),
    ],
)
def test_bad_value_is_rejected_with_key_and_rule(good, dotted, value, expected):
    with pytest.raises(params.ParamsError, match=None) as err:
        params.validate(with_value(good, dotted, value))
    assert expected in str(err.value)


def test_a_list_of_models_names_one_per_member(good):
    good["train"].update(model=["small", "lean"], members=2)
    assert params.validate(good) is good
    good["train"]["members"] = 3
    message = str(pytest.raises(params.ParamsError, params.validate, good).value)
    assert "train.model: a list of 2 models needs train.members: 2 (one model per member), got train.members: 3" \
        in message


@pytest.mark.parametrize("changes", [{"schedule": "plateau"}, {"time_budget_minutes": 0}])
def test_annealing_within_the_budget_needs_a_budget_and_an_annealing_schedule(good, changes):
    good["train"].update(anneal_within_budget=True, schedule="cosine", time_budget_minutes=60)
    assert params.validate(copy.deepcopy(good))
    good["train"].update(changes)
    with pytest.raises(params.ParamsError, match="train.anneal_within_budget: true needs train.schedule cosine or "
                                                 "onecycle and a train.time_budget_minutes above 0"):
        params.validate(good)


def test_unknown_key_is_rejected_naming_allowed_keys(good):
    good["train"]["lrr"] = 0.1
    with pytest.raises(params.ParamsError) as err:
        params.validate(good)
    assert "train.lrr: unknown key" in str(err.value)
    assert "lr" in str(err.value).split("allowed keys here:")[1]


def test_unknown_section_and_nested_key_are_rejected(good):
    good["trian"] = {}
    good["train"]["augment"]["shear"] = 0.1
    message = str(pytest.raises(params.ParamsError, params.validate, good).value)
    assert "trian: unknown key" in message
    assert "train.augment.shear: unknown key" in message


def test_missing_key_is_reported(good):
    del good["train"]["seed"]
    assert "train.seed: missing" in str(pytest.raises(params.ParamsError, params.validate, good).value)


def test_all_problems_are_reported_at_once(good):
    good["train"]["lr"] = -1
    good["evaluate"]["tta"] = "x"
    message = str(pytest.raises(params.ParamsError, params.validate, good).value)
    assert "train.lr" in message and "evaluate.tta" in message


def test_the_members_seeds_stay_within_kerass_range(good):
    good["train"].update(seed=2**32 - 2, members=2)
    assert params.validate(copy.deepcopy(good))
    good["train"]["members"] = 3
    message = str(pytest.raises(params.ParamsError, params.validate, good).value)
    assert "train.seed: 3 members use seeds 4294967294 to 4294967296, above 4294967295" in message


def test_ten_crop_needs_a_model_trained_on_crops(good):
    good["evaluate"]["tta"] = "ten_crop"
    assert params.validate(copy.deepcopy(good))  # crops are on in params.yaml
    good["train"]["augment"]["crop"] = False
    message = str(pytest.raises(params.ParamsError, params.validate, good).value)
    assert "evaluate.tta: ten_crop needs train.augment.crop: true" in message


def test_exponents_without_a_dot_are_numbers_as_dvc_reads_them(tmp_path):
    """YAML 1.1 (PyYAML) reads 5e-4 as a string, YAML 1.2 (DVC: -S, params diff) as a number."""
    text, edits = re.subn(r"(?m)^  lr: .*$", "  lr: 5e-4", REPO_PARAMS.read_text(), count=1)
    assert edits == 1
    (tmp_path / "params.yaml").write_text(text)
    assert params.load(tmp_path / "params.yaml")["train"]["lr"] == 0.0005


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(params.ParamsError, match="params file not found"):
        params.load(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(params.ParamsError, match="not valid YAML"):
        params.load(broken)


def test_load_reports_a_file_that_is_not_utf8_text(tmp_path):
    for name, data in [("utf16.yaml", "train:\n  lr: 0.001\n".encode("utf-16")), ("pack.npz", b"PK\x03\x04\xff\xfe\x00")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(params.ParamsError, match=f"{name}: not a text file in UTF-8"):
            params.load(tmp_path / name)


def test_a_plateau_factor_just_under_1_is_accepted_and_keras_takes_it(good):
    import keras

    good["train"]["plateau_factor"] = 0.99
    params.validate(good)
    keras.callbacks.ReduceLROnPlateau(factor=good["train"]["plateau_factor"])
    with pytest.raises(ValueError):  # what the bound guards against
        keras.callbacks.ReduceLROnPlateau(factor=1.0)


@pytest.mark.parametrize("text", ["5\n", "- train\n- evaluate\n", "just words\n"])
@pytest.mark.parametrize("sections", [None, ["train"]])
def test_load_reports_a_file_that_is_not_a_mapping_of_sections(tmp_path, text, sections):
    """A params file of one number, a list or a sentence (a wrong --params) is named, not a TypeError."""
    path = tmp_path / "other.yaml"
    path.write_text(text)
    with pytest.raises(params.ParamsError, match=f"invalid {re.escape(str(path))}: expected a mapping of sections"):
        params.load(path, sections)


def test_typo_fails_fast_through_a_stage(project):
    """A stage given a typo'd param stops in well under the time of any real work, naming the key."""
    from conftest import run_stage

    text, edits = re.subn(r"(?m)^  lr: ", "  lrr: ", (project / "params.yaml").read_text(), count=1)
    assert edits == 1
    (project / "params.yaml").write_text(text)
    start = time.monotonic()
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2
    assert "train.lrr: unknown key" in result.stderr
    assert "train.lr: missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - start < 10

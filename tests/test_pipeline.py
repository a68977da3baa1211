"""End to end: dvc repro on tiny data, the no-op second repro, a visualize-only change, dvc exp run."""
import json
import subprocess
import sys

import keras
import pytest
import yaml

from conftest import REPO, load_stage, run_stage, set_params, stage_env
from ferpipe import TTA_MODES, FerError
from ferpipe.model import build_model, members_of

STAGES = ("prepare", "train", "evaluate", "export", "visualize")


def sh(project, *args, check=True):
    result = subprocess.run(list(args), cwd=project, env=stage_env(project), capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def dvc(project, *args, check=True):
    return sh(project, sys.executable, "-m", "dvc", *args, check=check)


def stages_run(output):
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


@pytest.fixture
def repo(project):
    sh(project, "git", "init", "-q")
    sh(project, "git", "config", "user.email", "test@example.com")
    sh(project, "git", "config", "user.name", "test")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "project")
    return project


@pytest.mark.slow
def test_repro_noop_visualize_only_and_experiment(repo, fer_tree):
    out = dvc(repo, "repro")
    assert stages_run(out) == set(STAGES)

    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    for key in ("accuracy", "loss", "macro_f1"):
        assert 0 <= metrics[key] and (key == "loss" or metrics[key] <= 1)
    assert metrics["images"] == 14
    assert metrics["public_test"]["images"] == 7 and metrics["private_test"]["images"] == 7
    assert set(metrics["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    tta = metrics["tta"]
    assert set(tta["validation"]) == set(tta["test"]) == set(TTA_MODES)
    assert tta["test"][tta["used"]]["accuracy"] == metrics["accuracy"]
    assert (repo / "plots/confusion.csv").read_text().startswith("actual,predicted\n")
    for png in ("training_curves", "train_samples", "prediction_grid", "confusion_matrix"):
        assert (repo / f"plots/{png}.png").stat().st_size > 1000
    train_summary = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert train_summary["epochs_run"] == 1
    assert (repo / "models/model.keras").is_file()
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["images"] == 14 and export["float32"]["parity"]["max_probability_difference"] < 1e-4
    assert export["float32"]["parity"]["label_agreement"] == 1.0 and 0 <= export["int8"]["accuracy"] <= 1
    assert (repo / "models/model.int8.onnx").is_file()
    predicted = sh(repo, sys.executable, "-m", "ferpipe", "predict", "--format", "csv", str(fer_tree / "test"))
    assert predicted.count("\n") >= 15 and "models/model.onnx (ONNX Runtime" in predicted  # header + 14 crops
    assert "confusion" in dvc(repo, "plots", "show", "--json")

    # A second repro re-checks the data (prepare) but recomputes nothing downstream.
    lock = (repo / "dvc.lock").read_text()
    out = dvc(repo, "repro")
    assert stages_run(out) <= {"prepare"}
    assert (repo / "dvc.lock").read_text() == lock

    # A visualize param re-runs visualize only.
    set_params(repo, **{"visualize.seed": 3})
    out = dvc(repo, "repro")
    assert stages_run(out) - {"prepare"} == {"visualize"}

    # Any file put in (or changed in) teachers/ makes the train stage stale, distilling or not.
    (repo / "teachers/new.keras").write_bytes(b"a teacher")
    assert "teachers" in dvc(repo, "status", "train")
    (repo / "teachers/new.keras").unlink()
    assert "teachers" not in dvc(repo, "status", "train")

    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline run")
    out = dvc(repo, "exp", "run", "-S", "train.lr=0.0005")
    assert {"train", "evaluate", "export", "visualize"} <= stages_run(out)
    show = json.loads(dvc(repo, "exp", "show", "--json"))
    lrs = [exp["data"]["params"]["params.yaml"]["data"]["train"]["lr"]
           for commit in show for exp in (commit.get("experiments") or []) for exp in exp["revs"]]
    assert 0.0005 in lrs
    assert "train.lr" in dvc(repo, "params", "diff")
    assert "metrics/evaluate.json" in dvc(repo, "metrics", "diff", "--all")


@pytest.mark.slow
def test_stages_write_only_into_data_models_metrics_and_plots(project, tmp_path):
    """Keras' config, Matplotlib's font cache, ONNX Runtime's device id and temporary files would
    otherwise land in the home directory and /tmp."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    # with the fused augmentation's custom layer: each stage that loads the model must know it
    set_params(project, **{"train.model": "strided", "train.width": 8, "train.augment.fused": True})
    before = {p for p in project.rglob("*") if p.is_file()}
    for stage in STAGES:
        run_stage(project, stage, HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME="", MPLCONFIGDIR="",
                  KERAS_HOME="")
    assert list(home.iterdir()) == [] and list(tmp.iterdir()) == []
    written = {p.relative_to(project) for p in project.rglob("*") if p.is_file()} - {
        p.relative_to(project) for p in before}
    outside = [p for p in written if p.parts[0] not in ("data", "models", "metrics", "plots")
               and "__pycache__" not in p.parts]
    assert written and outside == []


def train_in_this_process(project, monkeypatch, capsys) -> str:
    """The train stage's main() here, not in a process of its own (whose TensorFlow import costs more than
    training on tiny data); returns its standard output."""
    run_stage(project, "prepare")
    monkeypatch.chdir(project)
    load_stage(project, "train").main()
    return capsys.readouterr().out


@pytest.mark.slow
def test_two_members_are_trained_in_turn_and_their_kept_epochs_reported(project, monkeypatch, capsys):
    set_params(project, **{"train.members": 2, "train.epochs": 2, "train.model": ["small", "lean"], "train.width": 8})
    output = train_in_this_process(project, monkeypatch, capsys)
    assert "training small + lean (width 8)" in output
    assert "member 1 of 2 (small, seed 42)" in output and "member 2 of 2 (lean, seed 43)" in output
    train = yaml.safe_load((project / "params.yaml").read_text())["train"]
    saved = keras.saving.load_model(project / "models/model.keras")
    sizes = [member.count_params() for member in members_of(saved)]
    assert sizes == [build_model({**train, "model": name}).count_params() for name in ("small", "lean")]
    assert sizes[0] != sizes[1]
    summary = json.loads((project / "metrics/train/metrics.json").read_text())
    first, second = summary["kept_epochs"]  # numbered along the curves: member 2's epochs are 3 and 4
    assert summary["epochs_run"] == 4 and first in (1, 2) and second in (3, 4)
    assert f"weights of epoch {first} of member 1, epoch {second - 2} of member 2;" in output


def test_train_distils_from_the_teacher_named_in_params(project, monkeypatch, capsys):
    train = yaml.safe_load((project / "params.yaml").read_text())["train"]
    build_model({**train, "width": 4}).save(project / "teachers/teacher.keras")  # untrained: any model will do
    set_params(project, **{"train.width": 8, "train.distill.teacher": "teachers/teacher.keras",
                           "train.distill.tta": "flip"})
    output = train_in_this_process(project, monkeypatch, capsys)
    assert ("distilling from teachers/teacher.keras: its flip probabilities on 35 training images (2 views of each, "
            "predicted once before training), weight 0.5") in output
    assert "of the training labels as its first choice" in output
    assert (project / "models/model.keras").is_file()


def test_train_with_a_missing_teacher_fails_before_training_with_a_clear_message(project, monkeypatch, capsys):
    set_params(project, **{"train.distill.teacher": "teachers/absent.keras"})
    # a FerError: the stage's wrapper prints it as one line, without a traceback (test_params)
    with pytest.raises(FerError, match="train.distill.teacher: teachers/absent.keras not found") as raised:
        train_in_this_process(project, monkeypatch, capsys)
    assert "Epoch 1" not in capsys.readouterr().out and not (project / "models/model.keras").exists()
    assert "(see docs/experiments.md, 'Distillation')" in str(raised.value)  # the section it names exists:
    assert "\n## Distillation" in (REPO / "docs/experiments.md").read_text()


@pytest.mark.parametrize("stage, missing, run_first", [("evaluate", "models/model.keras", "train"),
                                                       ("visualize", "data/evaluate/predictions.csv", "evaluate")])
def test_a_stage_without_its_input_names_the_stage_to_run(project, monkeypatch, stage, missing, run_first):
    monkeypatch.chdir(project)
    with pytest.raises(FerError, match=f"^{missing} not found: run the {run_first} stage first "
                                       rf"\(dvc repro {run_first}\)$"):
        load_stage(project, stage).main()

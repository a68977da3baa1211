"""train.deterministic: two runs with the same params and seed give identical results (tiny data)."""
import json
import subprocess
import sys

import pytest

from conftest import load_stage, run_stage, set_params, stage_env


@pytest.mark.slow
def test_deterministic_runs_give_identical_evaluate_json_and_model(project, monkeypatch):
    set_params(project, **{"train.deterministic": True, "train.epochs": 2})
    run_stage(project, "prepare")
    monkeypatch.chdir(project)
    evaluate_stage = load_stage(project, "evaluate")
    outputs = []
    for _ in range(2):
        run_stage(project, "train")  # a fresh process each time, as dvc repro starts one
        evaluate_stage.main()  # in this process: the stage's import of TensorFlow costs more than its work here
        outputs.append(((project / "metrics/evaluate.json").read_text(),
                        (project / "metrics/train/metrics.json").read_text()))
    evaluate = json.loads(outputs[0][0])
    assert 0 <= evaluate["accuracy"] <= 1
    assert outputs[0][0] == outputs[1][0]
    # the training curves match too (the summary's timing fields aside)
    for name in ("kept_epochs", "val_loss", "val_accuracy", "epochs_run"):
        assert json.loads(outputs[0][1])[name] == json.loads(outputs[1][1])[name]


def repeat(project, *args):
    return subprocess.run([sys.executable, "-m", "ferpipe", "repeat", *args], cwd=project, env=stage_env(project),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_repeat_reports_the_spread_of_fresh_runs(project):
    run_stage(project, "prepare")
    done = repeat(project, "--runs", "2", "--epochs", "1", "--train-images", "30", "--modes", "on",
                  "--output", "runs.json")
    assert done.returncode == 0, done.stderr
    assert "deterministic on: test accuracy" in done.stdout
    assert "1 distinct final weights in 2 runs" in done.stdout
    runs = json.loads((project / "runs.json").read_text())["on"]
    assert len(runs) == 2 and runs[0]["train_images"] == 30
    assert runs[0]["test"] == runs[1]["test"]


def test_repeat_trains_the_first_member_when_models_are_listed(project):
    set_params(project, **{"train.model": ["small", "lean"], "train.members": 2, "train.width": 8})
    run_stage(project, "prepare")
    done = repeat(project, "--runs", "1", "--epochs", "1", "--train-images", "30", "--modes", "off")
    assert done.returncode == 0, done.stderr
    assert "model small (width 8), up to 1 epochs" in done.stdout
    assert "deterministic off: one run (test accuracy" in done.stdout


def test_repeat_rejects_bad_arguments_missing_data_and_bad_params_before_any_run(project, monkeypatch, capsys):
    from ferpipe import repeat as repeat_command

    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as usage_error:
        repeat_command.main(["--runs", "0"])
    assert usage_error.value.code == 2 and "--runs must be at least 1" in capsys.readouterr().err
    for output, said in (("stages", "--output stages is a folder"), ("nowhere/runs.json", "folder nowhere does not exist")):
        with pytest.raises(SystemExit) as usage_error:
            repeat_command.main(["--output", output])
        assert usage_error.value.code == 2 and said in capsys.readouterr().err

    def no_run(*args):
        raise AssertionError("a run was started")

    monkeypatch.setattr(repeat_command, "run_in_fresh_process", no_run)
    assert repeat_command.main(["--runs", "1", "--modes", "off"]) == 2
    assert "ferpipe repeat: error: data/prepared/index.csv not found: run the prepare stage first" in capsys.readouterr().err
    run_stage(project, "prepare")
    set_params(project, **{"train.lr": -1})
    assert repeat_command.main(["--runs", "1", "--modes", "off"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_repeat_claims_no_spread_from_a_single_run():
    from ferpipe.repeat import spread_line

    run = {"test": {"accuracy": 0.5}, "train_images_per_second": 100.0, "weights_sha256": "ab"}
    assert "spread n/a" in spread_line("off", [run])
    line = spread_line("off", [run, run | {"test": {"accuracy": 0.52}, "weights_sha256": "cd"}])
    assert "spread 0.0200" in line and "2 distinct final weights in 2 runs" in line

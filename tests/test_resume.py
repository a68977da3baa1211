"""Resuming an interrupted training: in-process (Ctrl-C) and a SIGKILLed train stage under dvc repro."""
import json
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import load_stage, set_params, stage_env
from ferpipe import TTA_MODES, training
from test_model_and_training import recipe, tiny_data
from test_pipeline import dvc, repo  # noqa: F401  (repo is a fixture)


class InterruptAfter(keras.callbacks.Callback):
    """Ctrl-C after `epochs` epochs (a KeyboardInterrupt, as Python raises on SIGINT)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((epoch, round(logs["loss"], 6)))


def test_an_interrupted_fit_goes_on_from_its_last_completed_epoch(tmp_path):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=4, batch_size=16, early_stopping_patience=10)
    first = EpochRecorder()
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume",
                     extra_callbacks=[first, InterruptAfter(2)])
    state = json.loads((tmp_path / "resume/state.json").read_text())
    assert state["epochs_done"] == 2 and len(state["logs"]["loss"]) == 2

    second = EpochRecorder()
    model, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0,
                                  resume_dir=tmp_path / "resume", extra_callbacks=[second])
    assert history.resumed_after == 2
    assert len(history.history["loss"]) == 4
    # The completed epochs are replayed to the callbacks first, then training goes on at epoch 3.
    assert [epoch for epoch, _ in second.epochs] == [0, 1, 2, 3]
    assert second.epochs[:2] == first.epochs
    steps_per_epoch = -(-len(images) // 16)
    assert int(model.optimizer.iterations) == 4 * steps_per_epoch  # optimizer state carried over


def test_resumed_schedule_and_early_stopping_keep_their_counters(tmp_path):
    images, labels = tiny_data()
    val = tiny_data(14, 1)
    train = recipe(width=8, epochs=4, batch_size=16, early_stopping_patience=10, schedule="plateau")
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), val, verbose=0, resume_dir=tmp_path / "resume",
                     extra_callbacks=[InterruptAfter(3)])
    state = json.loads((tmp_path / "resume/state.json").read_text())

    plateau, stop, budget = training.schedule_callbacks(train)
    checkpoint = training.Checkpoint(tmp_path / "resume", training.fingerprint(train, images, labels, *val),
                                     plateau, stop, budget)
    before = time.monotonic()
    for callback in (plateau, stop, budget, checkpoint):  # the order fit() uses
        callback.on_train_begin()
    after = time.monotonic()
    assert [plateau.wait, plateau.best, plateau.cooldown_counter] == state["plateau"]
    assert (stop.wait, stop.best, stop.best_epoch) == (state["early_stopping"]["wait"],
                                                       state["early_stopping"]["best"],
                                                       state["early_stopping"]["best_epoch"])
    assert stop.best is not None and stop.best_weights is not None
    # the time budget counts the interrupted run's time too
    assert state["seconds"] > 0 and before - state["seconds"] <= budget.start <= after - state["seconds"]


@pytest.mark.parametrize("change", ["params", "code"])
def test_state_from_other_params_or_code_is_ignored_with_a_message(tmp_path, capsys, monkeypatch, change):
    code = tmp_path / "model.py"
    code.write_text("version 1")
    monkeypatch.setattr(training, "CODE_FILES", (code,))
    images, labels = tiny_data()
    train = recipe(width=8, epochs=3, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume",
                     extra_callbacks=[InterruptAfter(1)])
    if change == "params":
        train["lr"] *= 2  # a change whatever params.yaml's lr
    else:
        code.write_text("version 2")
    _, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume")
    assert history.resumed_after == 0 and len(history.history["loss"]) == 3
    assert "params, data or code have changed" in capsys.readouterr().out


def test_an_unreadable_state_is_dropped_and_training_starts_afresh(tmp_path, capsys):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=3, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume",
                     extra_callbacks=[InterruptAfter(1)])
    state = json.loads((tmp_path / "resume/state.json").read_text())
    saved = tmp_path / "resume" / state["model_file"]
    saved.write_bytes(saved.read_bytes()[:200])  # as a full disk or a power cut could leave it
    _, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume")
    assert history.resumed_after == 0 and len(history.history["loss"]) == 3
    assert "cannot be read" in capsys.readouterr().out


def test_a_run_interrupted_after_its_last_epoch_ends_with_the_best_weights(tmp_path):
    images, labels = tiny_data()
    train = recipe(width=8, epochs=2, batch_size=16, early_stopping_patience=10)
    with pytest.raises(KeyboardInterrupt):
        training.fit(train, (images, labels), tiny_data(14, 1), verbose=0, resume_dir=tmp_path / "resume",
                     extra_callbacks=[InterruptAfter(2)])
    state = json.loads((tmp_path / "resume/state.json").read_text())
    assert state["epochs_done"] == 2
    with np.load(tmp_path / "resume" / state["early_stopping"]["weights_file"]) as saved:
        best = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    model, history = training.fit(train, (images, labels), tiny_data(14, 1), verbose=0,
                                  resume_dir=tmp_path / "resume")
    assert history.resumed_after == 2 and len(history.history["loss"]) == 2
    for got, want in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(got, want)


KILL_AFTER_EPOCHS = """
import os, runpy, signal, sys
import keras
from ferpipe import training

epochs_seen = []

class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        epochs_seen.append(epoch)
        if len(epochs_seen) == {epochs}:
            os.kill(os.getpid(), signal.SIGKILL)

original_fit = training.fit
def fit(*args, extra_callbacks=(), **kwargs):
    return original_fit(*args, extra_callbacks=[*extra_callbacks, Kill()], **kwargs)
training.fit = fit
sys.argv = ["stages/train.py"]
runpy.run_path("stages/train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_dvc_repro_resumes_a_killed_train_stage_and_leaves_no_state_behind(repo):  # noqa: F811
    set_params(repo, **{"train.epochs": 4, "train.early_stopping_patience": 10})
    dvc(repo, "repro", "prepare")
    killer = repo / "kill_after_epochs.py"
    killer.write_text(KILL_AFTER_EPOCHS.format(epochs=2))
    killed = subprocess.run([sys.executable, str(killer)], cwd=repo, env=stage_env(repo), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((repo / "models/.resume/member-1/state.json").read_text())["epochs_done"] == 2

    out = dvc(repo, "repro", "train")
    assert "resuming after epoch 2" in out
    summary = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert summary["epochs_run"] == 4 and summary["resumed_after_epoch"] == 2
    loss_rows = (repo / "metrics/train/plots/metrics/train/loss.tsv").read_text().strip().splitlines()
    assert [row.split("\t")[0] for row in loss_rows[1:]] == ["0", "1", "2", "3"]  # header, then steps 0-3
    assert not (repo / "models/.resume").exists()
    assert (repo / "models/model.keras").is_file()


@pytest.mark.slow
def test_a_killed_ensemble_keeps_its_finished_member_and_resumes_the_next(repo, monkeypatch):  # noqa: F811
    set_params(repo, **{"train.members": 2, "train.epochs": 3, "train.early_stopping_patience": 10})
    dvc(repo, "repro", "prepare")
    killer = repo / "kill_after_epochs.py"
    killer.write_text(KILL_AFTER_EPOCHS.format(epochs=5))  # member 1's 3 epochs, then 2 of member 2's
    killed = subprocess.run([sys.executable, str(killer)], cwd=repo, env=stage_env(repo), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (repo / "models/.resume/member-1.keras").is_file()
    assert not (repo / "models/.resume/member-1").exists()  # its epoch checkpoints went once it was kept
    assert json.loads((repo / "models/.resume/member-2/state.json").read_text())["epochs_done"] == 2

    out = dvc(repo, "repro", "train")
    assert "member 1 was finished before the interruption: kept" in out
    assert "resuming after epoch 2" in out
    summary = json.loads((repo / "metrics/train/metrics.json").read_text())
    assert summary["epochs_run"] == 6 and summary["resumed_after_epoch"] == 5
    assert len(summary["kept_epochs"]) == 2 and summary["kept_epochs"][1] > 3
    loss_rows = (repo / "metrics/train/plots/metrics/train/loss.tsv").read_text().strip().splitlines()
    assert [row.split("\t")[0] for row in loss_rows[1:]] == ["0", "1", "2", "3", "4", "5"]
    assert not (repo / "models/.resume").exists()
    model = keras.saving.load_model(repo / "models/model.keras")
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == ["member_1", "member_2"]

    # The resumed ensemble is evaluated like a single network (in this process: the stage's import of TensorFlow
    # costs more than its work here; the ensemble's ONNX export is in test_export).
    monkeypatch.chdir(repo)
    load_stage(repo, "evaluate").main()
    assert set(json.loads((repo / "metrics/evaluate.json").read_text())["tta"]["test"]) == set(TTA_MODES)


def test_a_kept_member_counts_all_its_epochs_as_done_before_this_run(tmp_path):
    """A member finished (after being resumed once) before an interruption in the next member: all of its epochs
    were done before the run that keeps it, not more."""
    images, labels = tiny_data()
    train_data, val_data = (images, labels), tiny_data(14, 1)
    member = recipe(width=8, epochs=3)
    model = training.build_model(member)
    logs = {"loss": [1.0, 0.9, 0.8], "val_loss": [1.0, 0.9, 0.8]}
    finished = training.MemberRun(model, logs, resumed_after=2, seconds=5.0, seconds_before_resuming=7.0)
    training._keep_finished_member(tmp_path, 0, member, train_data, val_data, finished)
    kept = training._finished_member(tmp_path, 0, member, train_data, val_data)
    assert kept.resumed_after == 3 and kept.epochs == 3
    assert kept.seconds == 0.0 and kept.seconds_before_resuming == 12.0

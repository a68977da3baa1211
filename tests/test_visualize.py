"""The visualize stage's training curves mark the epoch the train stage kept."""
import json

import matplotlib.axes
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, load_stage
from ferpipe import FerError


@pytest.fixture
def visualize(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return load_stage(REPO, "visualize")


def history(eval_loss, eval_accuracy):
    epochs = range(1, len(eval_loss) + 1)
    return pd.DataFrame({"train_accuracy": eval_accuracy, "eval_accuracy": eval_accuracy,
                         "train_loss": eval_loss, "eval_loss": eval_loss,
                         "train_learning_rate": [1e-3] * len(eval_loss)}, index=epochs)


def test_the_kept_epoch_is_marked_even_when_it_is_not_the_lowest_val_loss(visualize, tmp_path, monkeypatch):
    marked = []
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, x, y, **kw: marked.append((list(x), [round(v, 2) for v in y])))
    # val loss is lowest at epoch 2, val accuracy highest at epoch 4 (kept under select_by: val_accuracy)
    curves = history(eval_loss=[1.3, 1.1, 1.2, 1.15], eval_accuracy=[0.50, 0.60, 0.62, 0.65])
    visualize.plot_curves(curves, [4], tmp_path / "curves.png")
    assert marked == [([4], [0.65]), ([4], [1.15])]
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_each_members_kept_epoch_is_marked(visualize, tmp_path, monkeypatch):
    marked = []
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, x, y, **kw: marked.append((list(x), [round(v, 2) for v in y])))
    # two members of 3 epochs each, one after the other on the curves
    curves = history(eval_loss=[1.3, 1.1, 1.2, 1.4, 1.0, 1.05], eval_accuracy=[0.50, 0.60, 0.55, 0.45, 0.66, 0.64])
    visualize.plot_curves(curves, [2, 5], tmp_path / "curves.png")
    assert marked == [([2, 5], [0.60, 0.66]), ([2, 5], [1.1, 1.0])]


def test_the_kept_epochs_come_from_the_train_summary(visualize, tmp_path):
    summary = tmp_path / "metrics" / "train" / "metrics.json"
    with pytest.raises(FerError, match="not found: run the train stage first"):
        visualize.kept_epochs()
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"kept_epochs": [7], "step": 9}))
    assert visualize.kept_epochs() == [7]
    summary.write_text(json.dumps({"kept_epochs": [7, 15], "step": 19}))
    assert visualize.kept_epochs() == [7, 15]
    for bad in ({"step": 9}, {"kept_epochs": None}, {"kept_epochs": []}, {"kept_epochs": [7, "x"]}, "not json"):
        summary.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(FerError, match="no usable kept_epochs"):
            visualize.kept_epochs()


def test_a_kept_epoch_outside_the_history_is_refused(visualize, tmp_path):
    with pytest.raises(FerError, match="names epoch 9 as kept"):
        visualize.plot_curves(history([1.0, 0.9], [0.5, 0.6]), [2, 9], tmp_path / "curves.png")


def with_lr(curves, lr):
    curves["train_learning_rate"] = lr
    return curves


def test_plateau_steps_are_marked_and_a_cosine_schedule_is_not(visualize):
    curves = history([1.0] * 8, [0.5] * 8)
    plateau = [1e-3, 1e-3, 1e-3, 2e-4, 2e-4, 2e-4, 4e-5, 4e-5]
    assert visualize.step_drops(with_lr(curves, plateau)) == [4, 7]
    cosine = [1e-3 * (1 + np.cos(np.pi * e / 8)) / 2 for e in range(8)]  # falls every epoch
    assert visualize.step_drops(with_lr(curves, cosine)) == []
    assert visualize.step_drops(with_lr(curves, [1e-3] * 8)) == []
    for epochs in (1, 2):  # too short for a step
        assert visualize.step_drops(with_lr(history([1.0] * epochs, [0.5] * epochs), [1e-3, 2e-4][:epochs])) == []


def test_the_curves_show_the_learning_rate(visualize, tmp_path, monkeypatch):
    lines, drawn = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline", lambda self, x, **kw: lines.append(x))
    original_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: drawn.append(list(y)) or original_plot(self, x, y, **kw))
    plateau = [1e-3, 1e-3, 1e-3, 2e-4, 2e-4, 2e-4]
    visualize.plot_curves(with_lr(history([1.0] * 6, [0.5] * 6), plateau), [3], tmp_path / "curves.png")
    assert plateau in drawn
    assert lines == [4, 4]  # the step, on the accuracy and loss panels


@pytest.mark.parametrize("averaged", [False, True])
def test_the_curves_show_the_trained_weights_beside_their_average(visualize, tmp_path, monkeypatch, averaged):
    from dvclive import Live

    logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.55, "learning_rate": 1e-3}
    if averaged:  # what the train stage logs with train.ema
        logs.update(val_raw_loss=1.2, val_raw_accuracy=0.52)
    with Live(str(visualize.HISTORY_DIR.parents[1]), dvcyaml=False, save_dvc_exp=False) as live:
        callback = load_stage(REPO, "train").LiveLogger(live)  # the train stage's own logger
        for epoch in range(3):
            callback.on_epoch_end(epoch, logs)
    history = visualize.read_history()
    assert list(history.index) == [1, 2, 3]
    labels = []
    original_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, x, y, **kw: labels.append((kw.get("label"), list(y))) or original_plot(self, x, y, **kw))
    visualize.plot_curves(history, [2], tmp_path / "curves.png")
    if averaged:
        assert ("val accuracy (weights' average)", [0.55] * 3) in labels
        assert ("val accuracy (trained weights)", [0.52] * 3) in labels
        assert ("val loss (trained weights)", [1.2] * 3) in labels
    else:
        assert ("val accuracy", [0.55] * 3) in labels and not any("trained" in str(label) for label, _ in labels)

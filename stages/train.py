"""train: fit the CNN named in params (augmentation, LR schedule, early stopping) and save it.

train.members networks are trained in turn, each with its own seed. Per-epoch loss, accuracy,
val loss, val accuracy and learning rate go to DVCLive (metrics/train/, the members one after
another); of each member the epoch chosen by train.select_by (lowest val loss or highest val
accuracy) is kept. The saved model (models/model.keras, without optimizer state: 6 MB a member)
averages the members' class probabilities.
After every epoch the run's state goes to models/.resume/, so that an interrupted run
(Ctrl-C, SIGTERM, SIGKILL, a power cut) goes on from its last completed epoch at the next
`dvc repro`; a finished run deletes it.
"""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import itertools
import time
from pathlib import Path

import keras
from dvclive import Live
from dvclive.utils import standardize_metric_name

from ferpipe import params
from ferpipe.data import PreparedData
from ferpipe.evaluation import predict_probabilities, summarize
from ferpipe.training import (best_epoch, clear_resume_state, cpu_name, describe_models, enable_determinism,
                              fit_members, resolve_precision)

PREPARED_DIR = Path("data/prepared")
LIVE_DIR = Path("metrics/train")
MODEL_FILE = Path("models/model.keras")
RESUME_DIR = Path("models/.resume")


class LiveLogger(keras.callbacks.Callback):
    """Send each epoch's logs to DVCLive (Keras-3 only, unlike dvclive.keras which imports TensorFlow)."""

    def __init__(self, live: Live):
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.live.log_metric(standardize_metric_name(name, "dvclive.keras"), float(value))
        self.live.next_step()


def main():
    train = params.load()["train"]
    if train["deterministic"]:
        enable_determinism()  # before anything starts the backend (JAX reads its XLA flags then)
    data = PreparedData(PREPARED_DIR)
    x_train, y_train, _ = data.split("train")
    x_val, y_val, _ = data.split("val")
    print(f"training {describe_models(train)} (width {train['width']}) on {len(x_train)} images, "
          f"validating on {len(x_val)}; backend {keras.backend.backend()}, "
          f"precision {resolve_precision(train['precision'])}, CPU {cpu_name()}", flush=True)

    start = time.monotonic()
    with Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        model, runs = fit_members(train, (x_train, y_train), (x_val, y_val), extra_callbacks=[LiveLogger(live)],
                                  resume_dir=RESUME_DIR)
        val = summarize(y_val, predict_probabilities(model, x_val, "none", batch_size=256))
        seconds = time.monotonic() - start
        kept_in_member = [best_epoch(run.logs, train["select_by"]) + 1 for run in runs]
        starts = list(itertools.accumulate((run.epochs for run in runs), initial=0))  # along the curves
        kept = [start + epoch for start, epoch in zip(starts, kept_in_member)]
        images = len(x_train) * sum(run.epochs - run.resumed_after for run in runs)
        live.summary.update({
            "kept_epochs": kept,  # numbered along the curves, which run through the members in turn
            "val_accuracy": val["accuracy"],  # the saved model's (members averaged), without TTA
            "val_loss": val["loss"],
            "epochs_run": starts[-1],
            "resumed_after_epoch": sum(run.resumed_after for run in runs),
            "train_minutes": round(seconds / 60, 1),  # of this process, when resumed
            "train_minutes_total": round((seconds + sum(run.seconds_before_resuming for run in runs)) / 60, 1),
            "train_images_per_second": round(images / sum(run.seconds for run in runs), 1) if images else None,
        })
    MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
    model.save(MODEL_FILE)
    clear_resume_state(RESUME_DIR)
    weights = ", ".join(f"epoch {epoch}" + (f" of member {index + 1}" if len(runs) > 1 else "")
                        for index, epoch in enumerate(kept_in_member))
    print(f"saved {MODEL_FILE} (weights of {weights}; val accuracy {val['accuracy']:.4f} without TTA) "
          f"after {seconds / 60:.1f} min")


if __name__ == "__main__":
    run_stage(main)

"""train: fit the CNN named in params (augmentation, LR schedule, early stopping) and save it.

Per-epoch loss, accuracy, val loss, val accuracy and learning rate go to DVCLive
(metrics/train/); the model of the epoch chosen by train.select_by (lowest val loss or highest
val accuracy) is saved, without optimizer
state (7 MB for the default net, small enough for git), to models/model.keras.
After every epoch the run's state goes to models/.resume/, so that an interrupted run
(Ctrl-C, SIGTERM, SIGKILL, a power cut) goes on from its last completed epoch at the next
`dvc repro`; a finished run deletes it.
"""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import time
from pathlib import Path

import keras
from dvclive import Live
from dvclive.utils import standardize_metric_name

from ferpipe import params
from ferpipe.data import PreparedData
from ferpipe.training import (best_epoch, clear_resume_state, cpu_name, enable_determinism, fit, inference_model,
                              resolve_precision)

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
    print(f"training {train['model']} (width {train['width']}) on {len(x_train)} images, "
          f"validating on {len(x_val)}; backend {keras.backend.backend()}, "
          f"precision {resolve_precision(train['precision'])}, CPU {cpu_name()}", flush=True)

    start = time.monotonic()
    with Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        model, history = fit(train, (x_train, y_train), (x_val, y_val), extra_callbacks=[LiveLogger(live)],
                             resume_dir=RESUME_DIR)
        val_loss = history.history["val_loss"]
        best = best_epoch(history.history, train["select_by"])
        seconds = time.monotonic() - start
        epochs_here = len(val_loss) - history.resumed_after
        live.summary.update({
            "best_epoch": best + 1,
            "best_val_loss": val_loss[best],
            "best_val_accuracy": history.history["val_accuracy"][best],
            "epochs_run": len(val_loss),
            "resumed_after_epoch": history.resumed_after,
            "train_minutes": round(seconds / 60, 1),  # of this process, when resumed
            "train_minutes_total": round((seconds + history.seconds_before_resuming) / 60, 1),
            "train_images_per_second": round(len(x_train) * epochs_here / seconds, 1) if epochs_here else None,
        })
    MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
    inference_model(model, train).save(MODEL_FILE)
    clear_resume_state(RESUME_DIR)
    print(f"saved {MODEL_FILE} (weights of epoch {best + 1}, val accuracy "
          f"{history.history['val_accuracy'][best]:.4f}) after {seconds / 60:.1f} min")


if __name__ == "__main__":
    run_stage(main)

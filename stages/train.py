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
import time
from pathlib import Path

import keras
from dvclive import Live
from dvclive.utils import standardize_metric_name

from ferpipe import params
from ferpipe.data import PreparedData
from ferpipe.evaluation import predict_probabilities, summarize
from ferpipe.training import (clear_resume_state, cpu_name, describe_kept, describe_models, enable_determinism,
                              fit_members, resolve_precision, run_summary)

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
        live.summary.update(run_summary(train, runs, val, seconds, len(x_train)))
    MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
    model.save(MODEL_FILE)
    clear_resume_state(RESUME_DIR)
    print(f"saved {MODEL_FILE} (weights of {describe_kept(train, runs)}; val accuracy {val['accuracy']:.4f} "
          f"without TTA) after {seconds / 60:.1f} min")


if __name__ == "__main__":
    run_stage(main)

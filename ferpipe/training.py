"""Fit a model with the recipe in params['train']; used by the train stage and the benchmark."""
from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np

from ferpipe import CLASS_NAMES
from ferpipe.model import build_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_gpu() -> bool:
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            return jax.devices()[0].platform == "gpu"
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
    except Exception:  # an unusable accelerator is the same as none
        return False
    return False


def resolve_precision(precision: str) -> str:
    """'auto' -> bfloat16 where the hardware computes it natively (BF16 CPUs, GPUs), else float32."""
    if precision == "auto":
        precision = "bfloat16" if _has_gpu() or _cpu_has_bf16() else "float32"
    return precision


def set_precision(precision: str) -> str:
    precision = resolve_precision(precision)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    return precision


def make_optimizer(train: dict) -> keras.optimizers.Optimizer:
    lr, wd = train["lr"], train["weight_decay"] or None
    if train["optimizer"] == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    return keras.optimizers.Adam(lr, weight_decay=wd)


def lr_at_epoch(train: dict, epoch: int) -> float:
    """Per-epoch learning rate of the 'cosine' and 'onecycle' schedules."""
    lr, epochs = train["lr"], train["epochs"]
    if train["schedule"] == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    warmup = max(1, round(0.3 * epochs))  # onecycle: linear warm-up from lr/10, then cosine to ~0
    if epoch < warmup:
        return lr * (0.1 + 0.9 * epoch / warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))


def schedule_callbacks(train: dict) -> list[keras.callbacks.Callback]:
    """LR schedule, then early stopping on validation loss (best weights restored)."""
    if train["schedule"] == "plateau":
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train["plateau_factor"], patience=train["plateau_patience"], verbose=1
        )
    else:
        schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr_at_epoch(train, epoch))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=train["early_stopping_patience"], restore_best_weights=True, verbose=1
    )
    return [schedule, stop, TimeBudget(train["time_budget_minutes"])]


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch that exhausts `minutes` of wall time (0 = no limit)."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60
        self.exhausted = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if self.seconds and time.monotonic() - self.start >= self.seconds:
            self.exhausted = True
            self.model.stop_training = True
            print(f"time budget of {self.seconds / 60:g} min used up after epoch {epoch + 1}; stopping", flush=True)


def class_weights(train: dict, labels: np.ndarray) -> dict[int, float] | None:
    if train["class_weight"] == "none":
        return None
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(float)
    return {i: float(len(labels) / (len(CLASS_NAMES) * c)) if c else 0.0 for i, c in enumerate(counts)}


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASS_NAMES), dtype="float32")[labels]


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


def inference_model(model: keras.Model, train: dict) -> keras.Model:
    """The trained network without its optimizer state: a third of the file size, all that inference needs."""
    copy = build_model(train)
    copy.set_weights(model.get_weights())
    return copy


def fit(train: dict, train_data, val_data, extra_callbacks=(), verbose=None):
    """Seed, build, compile and fit; returns (model, history). Data are (uint8 images, int labels)."""
    keras.utils.set_random_seed(train["seed"])
    set_precision(train["precision"])
    model = compile_model(train)
    (x_train, y_train), (x_val, y_val) = train_data, val_data
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # one line per epoch in logs
    history = model.fit(
        as_model_input(x_train),
        one_hot(y_train),
        validation_data=(as_model_input(x_val), one_hot(y_val)),
        epochs=train["epochs"],
        batch_size=train["batch_size"],
        class_weight=class_weights(train, y_train),
        callbacks=[*schedule_callbacks(train), *extra_callbacks],
        verbose=verbose,
    )
    return model, history

"""Classification metrics from predicted probabilities (NumPy only), and test-time augmentation."""
from __future__ import annotations

import numpy as np

from ferpipe import CLASS_NAMES


def predict_probabilities(model, images: np.ndarray, tta: str, batch_size: int, plain=None) -> np.ndarray:
    """Class probabilities for (n, 48, 48) uint8 images; tta='flip' averages with the mirror image.

    `plain`: the images' probabilities without TTA, if already computed (saves predicting them again).
    """
    x = images.astype("float32")[..., None]
    probs = plain if plain is not None else model.predict(x, batch_size=batch_size, verbose=0)
    if tta == "flip":
        probs = (probs + model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0)) / 2
    return np.asarray(probs, dtype="float64")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def _safe_ratio(num, den):
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def summarize(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, mean cross-entropy loss, macro-F1 and per-class precision/recall/F1/support."""
    y_pred = probs.argmax(axis=1)
    counts = confusion_matrix(y_true, y_pred)
    tp = np.diag(counts).astype(float)
    precision = _safe_ratio(tp, counts.sum(axis=0))
    recall = _safe_ratio(tp, counts.sum(axis=1))
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-7, 1.0)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "loss": float(-np.log(p_true).mean()),
        "macro_f1": float(f1.mean()),
        "images": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(counts[i].sum()),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }

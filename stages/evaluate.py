"""evaluate: test accuracy, loss, macro-F1, per-class scores and the PublicTest/PrivateTest subsets.

Writes metrics/evaluate.json, plots/confusion.csv (for DVC's confusion template) and
data/evaluate/predictions.csv (one row per test image, for the visualize stage).
"""
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from ferpipe import CLASS_NAMES, FerError, params
from ferpipe.data import PreparedData, test_subset
from ferpipe.evaluation import predict_probabilities, summarize
from ferpipe.stage import run_stage

PREPARED_DIR = Path("data/prepared")
MODEL_FILE = Path("models/model.keras")
METRICS_FILE = Path("metrics/evaluate.json")
CONFUSION_FILE = Path("plots/confusion.csv")
PREDICTIONS_FILE = Path("data/evaluate/predictions.csv")


def main():
    evaluate = params.load()["evaluate"]
    if not MODEL_FILE.is_file():
        raise FerError(f"{MODEL_FILE} not found: run the train stage first (dvc repro train)")
    x_test, y_test, paths = PreparedData(PREPARED_DIR).split("test")
    model = keras.saving.load_model(MODEL_FILE)
    print(f"predicting {len(x_test)} test images (tta: {evaluate['tta']})", flush=True)
    plain = predict_probabilities(model, x_test, "none", evaluate["batch_size"])
    probs = predict_probabilities(model, x_test, evaluate["tta"], evaluate["batch_size"], plain=plain)

    overall = summarize(y_test, probs)
    subsets = np.array([test_subset(p) for p in paths])
    metrics = {key: overall[key] for key in ("accuracy", "loss", "macro_f1", "images")}
    for subset, key in (("PublicTest", "public_test"), ("PrivateTest", "private_test")):
        rows = subsets == subset
        if rows.any():
            part = summarize(y_test[rows], probs[rows])
            metrics[key] = {k: part[k] for k in ("accuracy", "loss", "macro_f1", "images")}
    if evaluate["tta"] != "none":
        without = summarize(y_test, plain)
        metrics["without_tta"] = {k: without[k] for k in ("accuracy", "loss", "macro_f1")}
    metrics["per_class"] = overall["per_class"]

    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(metrics, indent=2) + "\n")
    predicted = probs.argmax(axis=1)
    names = np.array(CLASS_NAMES)
    CONFUSION_FILE.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": names[y_test], "predicted": names[predicted]}).to_csv(CONFUSION_FILE, index=False)
    PREDICTIONS_FILE.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"path": paths, "subset": subsets, "label": names[y_test],
                          "predicted": names[predicted], "confidence": probs.max(axis=1).round(6)})
    for i, name in enumerate(CLASS_NAMES):
        table[f"p_{name}"] = probs[:, i].round(6)
    table.to_csv(PREDICTIONS_FILE, index=False)
    summary = f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    for key in ("public_test", "private_test"):
        if key in metrics:
            summary += f"; {key} {metrics[key]['accuracy']:.4f}"
    print(summary)


if __name__ == "__main__":
    run_stage(main)

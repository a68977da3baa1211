"""evaluate: test accuracy, loss, macro-F1, per-class scores and the PublicTest/PrivateTest subsets.

Headline figures use `evaluate.tta`; every TTA mode is also scored on the validation split (where
the mode is chosen) and, for reference, on the test folder (ten_crop only for a model trained with crops).

Writes metrics/evaluate.json, plots/confusion.csv (for DVC's confusion template) and
data/evaluate/predictions.csv (one row per test image, for the visualize stage).
"""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ferpipe import CLASS_NAMES, params, require_stage_output
from ferpipe.data import PreparedData, test_subset
from ferpipe.evaluation import check_tta, probabilities_by_tta, subset_scores, summarize, tta_modes_for
from ferpipe.model import load_model

PREPARED_DIR = Path("data/prepared")
MODEL_FILE = Path("models/model.keras")
METRICS_FILE = Path("metrics/evaluate.json")
CONFUSION_FILE = Path("plots/confusion.csv")
PREDICTIONS_FILE = Path("data/evaluate/predictions.csv")


def main():
    evaluate = params.load()["evaluate"]
    require_stage_output(MODEL_FILE, "train")
    data = PreparedData(PREPARED_DIR)
    x_test, y_test, paths = data.split("test")
    x_val, y_val, _ = data.split("val")
    model = load_model(MODEL_FILE)
    check_tta(model, evaluate["tta"], str(MODEL_FILE))
    modes = tta_modes_for(model)
    print(f"predicting {len(x_test)} test and {len(x_val)} validation images under each TTA mode "
          f"({', '.join(modes)}); reporting {evaluate['tta']}", flush=True)
    test_by_tta = probabilities_by_tta(model, x_test, evaluate["batch_size"], modes)
    val_by_tta = probabilities_by_tta(model, x_val, evaluate["batch_size"], modes) if len(x_val) else {}
    probs = test_by_tta[evaluate["tta"]]

    overall = summarize(y_test, probs)
    subsets = np.array([test_subset(p) for p in paths])
    metrics = {key: overall[key] for key in ("accuracy", "loss", "macro_f1", "images")}
    metrics.update(subset_scores(y_test, probs, subsets))
    # The TTA mode is chosen on validation; the test figures of the other modes are for reference.
    metrics["tta"] = {"used": evaluate["tta"]}
    for split, labels, by_tta in (("validation", y_val, val_by_tta), ("test", y_test, test_by_tta)):
        metrics["tta"][split] = {}
        for mode, mode_probs in by_tta.items():
            summary = summarize(labels, mode_probs)
            metrics["tta"][split][mode] = {k: summary[k] for k in ("accuracy", "loss", "macro_f1")}
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
    if val_by_tta:
        print("validation accuracy by TTA mode: " + ", ".join(
            f"{mode} {acc['accuracy']:.4f}" for mode, acc in metrics["tta"]["validation"].items()))


if __name__ == "__main__":
    run_stage(main)

"""export: the trained model as ONNX for ONNX Runtime, checked against Keras on the test set.

Writes models/model.onnx (used by `ferpipe predict`) and metrics/export.json: the largest
probability difference and the label agreement between ONNX Runtime and Keras on every test
image, and the test accuracy of the exported model. Fails if the two disagree.
"""
import json
from pathlib import Path

import keras
import onnxruntime

from ferpipe import FerError
from ferpipe.data import PreparedData
from ferpipe.evaluation import predict_probabilities, summarize
from ferpipe.export import export_onnx, parity
from ferpipe.inference import KERAS_FILE, ONNX_FILE, OnnxModel
from ferpipe.stage import run_stage

PREPARED_DIR = Path("data/prepared")
METRICS_FILE = Path("metrics/export.json")
# ONNX Runtime and Keras run the same float32 graph; only the order of float operations differs.
MAX_PROBABILITY_DIFFERENCE = 1e-4
MIN_LABEL_AGREEMENT = 0.999
BATCH_SIZE = 256


def main():
    if not KERAS_FILE.is_file():
        raise FerError(f"{KERAS_FILE} not found: run the train stage first (dvc repro train)")
    trained = keras.saving.load_model(KERAS_FILE)
    graph = export_onnx(trained, ONNX_FILE)
    print(f"exported {ONNX_FILE} ({ONNX_FILE.stat().st_size / 1e6:.1f} MB); checking it on the test set", flush=True)

    x_test, y_test, _ = PreparedData(PREPARED_DIR).split("test")
    exported = OnnxModel(ONNX_FILE)
    onnx_probs = predict_probabilities(exported, x_test, "none", BATCH_SIZE)
    float32_probs = predict_probabilities(graph, x_test, "none", BATCH_SIZE)
    saved_probs = predict_probabilities(trained, x_test, "none", BATCH_SIZE)
    check = parity(float32_probs, onnx_probs)
    metrics = {
        "format": "onnx",
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "file_megabytes": round(ONNX_FILE.stat().st_size / 1e6, 2),
        "images": len(x_test),
        "parity": check | {"reference": "Keras, same weights in float32",
                           "max_allowed_difference": MAX_PROBABILITY_DIFFERENCE,
                           "min_label_agreement": MIN_LABEL_AGREEMENT},
        "parity_with_saved_precision": parity(saved_probs, onnx_probs)
        | {"reference": f"Keras as saved (dtype policy {trained.dtype_policy.name})"},
        "accuracy": summarize(y_test, onnx_probs)["accuracy"],
        "accuracy_flip_tta": summarize(y_test, predict_probabilities(exported, x_test, "flip", BATCH_SIZE,
                                                                     plain=onnx_probs))["accuracy"],
        "keras_accuracy": summarize(y_test, saved_probs)["accuracy"],
    }
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"ONNX vs Keras (float32): max probability difference {check['max_probability_difference']:.2e}, "
          f"label agreement {check['label_agreement']:.4%}; ONNX test accuracy {metrics['accuracy']:.4f} "
          f"(Keras as saved: {metrics['keras_accuracy']:.4f})")
    if check["max_probability_difference"] > MAX_PROBABILITY_DIFFERENCE or check["label_agreement"] < MIN_LABEL_AGREEMENT:
        ONNX_FILE.unlink()  # predict must not pick up an export that failed its check
        raise FerError(f"the ONNX export disagrees with Keras beyond the allowed "
                       f"{MAX_PROBABILITY_DIFFERENCE:g} / {MIN_LABEL_AGREEMENT:.1%}; see {METRICS_FILE}")


if __name__ == "__main__":
    run_stage(main)

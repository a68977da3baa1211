"""export: the trained model as ONNX for ONNX Runtime, checked against Keras on the test set.

Writes models/model.onnx (float32: the same predictions as Keras, used by `ferpipe predict`),
models/model.int8.onnx (int8, about 2.5x faster on CPUs with VNNI) and metrics/export.json:
for each, the largest probability difference and the label agreement with Keras on every
test image, and its test accuracy. Fails, and removes the file, if an export disagrees.
"""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import json
from pathlib import Path

import numpy as np
import onnxruntime

from ferpipe import FerError, require_stage_output
from ferpipe.data import PreparedData
from ferpipe.evaluation import predict_probabilities, probabilities_by_tta, summarize
from ferpipe.export import compute_dtype, export_onnx, parity, quantize_int8
from ferpipe.inference import INT8_FILE, KERAS_FILE, ONNX_FILE, OnnxModel
from ferpipe.model import load_model

PREPARED_DIR = Path("data/prepared")
METRICS_FILE = Path("metrics/export.json")
# ONNX Runtime and Keras run the same float32 graph; only the order of float operations differs.
MAX_PROBABILITY_DIFFERENCE = 1e-4
MIN_LABEL_AGREEMENT = 0.999
# int8 rounds weights and activations: labels may flip only where two classes are nearly tied
# (top-two margin under 0.1); elsewhere they must agree. Probabilities are bounded on 99% of the
# images, not all: a small net's int8 export (`small`, width 16) differed by up to 0.24 on a few
# images while its labels and accuracy held.
INT8_MAX_P99_PROBABILITY_DIFFERENCE = 0.15
INT8_MIN_DECIDED_AGREEMENT = 0.99
CALIBRATION_IMAGES = 512
BATCH_SIZE = 256


def scores(model, x_test, y_test, reference) -> tuple[dict, np.ndarray]:
    by_tta = probabilities_by_tta(model, x_test, BATCH_SIZE, modes=("none", "flip"))
    probs, flipped = by_tta["none"], by_tta["flip"]
    return {"parity": parity(reference, probs), "accuracy": summarize(y_test, probs)["accuracy"],
            "accuracy_flip_tta": summarize(y_test, flipped)["accuracy"]}, probs


def main():
    require_stage_output(KERAS_FILE, "train")
    data = PreparedData(PREPARED_DIR)
    x_test, y_test, _ = data.split("test")
    x_train, _, _ = data.split("train")
    trained = load_model(KERAS_FILE)
    graph = export_onnx(trained, ONNX_FILE)
    calibration = x_train[np.random.default_rng(0).choice(len(x_train), min(CALIBRATION_IMAGES, len(x_train)),
                                                          replace=False)]
    quantize_int8(ONNX_FILE, INT8_FILE, calibration)
    print(f"exported {ONNX_FILE} and {INT8_FILE}; checking them on {len(x_test)} test images", flush=True)

    reference = predict_probabilities(graph, x_test, "none", BATCH_SIZE)
    saved = predict_probabilities(trained, x_test, "none", BATCH_SIZE)
    float32, float32_probs = scores(OnnxModel(ONNX_FILE), x_test, y_test, reference)
    int8, _ = scores(OnnxModel(INT8_FILE), x_test, y_test, reference)
    float32["parity_with_saved_model"] = parity(saved, float32_probs) | {"saved_dtype_policy": compute_dtype(trained)}
    int8["calibration_images"] = len(calibration)
    metrics = {
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "parity_reference": "Keras, same weights in float32, no TTA",
        "keras_accuracy": summarize(y_test, saved)["accuracy"],
        "float32": {"file_megabytes": round(ONNX_FILE.stat().st_size / 1e6, 2)} | float32,
        "int8": {"file_megabytes": round(INT8_FILE.stat().st_size / 1e6, 2)} | int8,
        "images": len(x_test),
    }
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(metrics, indent=2) + "\n")
    for name, result in (("float32", float32), ("int8", int8)):
        print(f"{name}: max probability difference {result['parity']['max_probability_difference']:.2e}, label "
              f"agreement {result['parity']['label_agreement']:.2%}, test accuracy {result['accuracy']:.4f}")

    failures = []
    if (float32["parity"]["max_probability_difference"] > MAX_PROBABILITY_DIFFERENCE
            or float32["parity"]["label_agreement"] < MIN_LABEL_AGREEMENT):
        failures.append((ONNX_FILE, f"beyond {MAX_PROBABILITY_DIFFERENCE:g} / {MIN_LABEL_AGREEMENT:.1%} agreement"))
    if (int8["parity"]["p99_probability_difference"] > INT8_MAX_P99_PROBABILITY_DIFFERENCE
            or int8["parity"]["label_agreement_where_margin_0.1"] < INT8_MIN_DECIDED_AGREEMENT):
        failures.append((INT8_FILE, f"beyond {INT8_MAX_P99_PROBABILITY_DIFFERENCE:g} on 1% of the images or more, or "
                                    f"below {INT8_MIN_DECIDED_AGREEMENT:.0%} agreement where the top two classes differ by 0.1"))
    for path, _ in failures:
        path.unlink()  # predict must not pick up an export that failed its check
    if failures:
        raise FerError("; ".join(f"{path} disagrees with Keras {why}" for path, why in failures)
                       + f" (figures in {METRICS_FILE})")


if __name__ == "__main__":
    run_stage(main)

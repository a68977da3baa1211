"""Export a trained Keras model to ONNX (float32, and int8 for speed), and compare the predictions."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from ferpipe.inference import CROPS_FACES_KEY
from ferpipe.model import members_of

INPUT_NAME = "pixels"


def inference_graph(model: keras.Model) -> keras.Model:
    """The same network in float32 without its augmentation layers (they only act in training).

    ONNX export needs a float32 graph, and the random layers would otherwise be traced into it.
    Each trained network is rebuilt with float32 copies of its layers and their weights, its random
    layers passed over; an ensemble's members are rebuilt side by side and their probabilities averaged again.
    """
    inputs = keras.Input(model.input_shape[1:], name=INPUT_NAME)
    members = members_of(model)
    outputs = [_float32_copy(member, inputs, prefix=f"{member.name}_" if len(members) > 1 else "")
               for member in members]
    x = outputs[0] if len(outputs) == 1 else keras.layers.Average(dtype="float32", name="probabilities")(outputs)
    return keras.Model(inputs, x, name=f"{model.name}_inference")


def _is_random(layer) -> bool:
    return layer.__class__.__name__.startswith("Random")


def _float32_copy(network: keras.Model, inputs, prefix: str):
    """`network`'s output rebuilt on `inputs` (any graph of layers, not only a chain). The random layers are
    passed over, not replaced by identity layers: after those, BatchNormalization exported to ONNX
    normalised with batch statistics (seen with Keras 3.15: probabilities off by 0.07)."""
    originals = {}

    def float32_layer(layer):
        if _is_random(layer):
            return layer  # never called: see skip_random
        originals[prefix + layer.name] = layer
        return layer.__class__.from_config(layer.get_config() | {"dtype": "float32", "name": prefix + layer.name})

    def skip_random(layer, *args, **kwargs):
        return args[0] if _is_random(layer) else layer(*args, **kwargs)

    copy = keras.models.clone_model(network, input_tensors=inputs, clone_function=float32_layer,
                                    call_function=skip_random)
    for name, layer in originals.items():
        copy.get_layer(name).set_weights(layer.get_weights())
    return copy.outputs[0]


def export_onnx(model: keras.Model, path) -> keras.Model:
    """Write `model` to `path` as ONNX (atomically), noting in its metadata whether it crops its input;
    returns the float32 graph that was exported."""
    from ferpipe.evaluation import crops_faces

    graph = inference_graph(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.onnx")
    graph(np.zeros((1, *graph.input_shape[1:]), "float32"))  # Keras exports only models that were called
    graph.export(str(partial), format="onnx", verbose=False)
    set_metadata(partial, {CROPS_FACES_KEY: str(bool(crops_faces(model))).lower()})
    os.replace(partial, path)
    return graph


def set_metadata(path, entries: dict[str, str]) -> None:
    """Add (or replace) these key-value entries of an ONNX file's metadata, in place."""
    import onnx

    proto = onnx.load(str(path))
    kept = [entry for entry in proto.metadata_props if entry.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def quantize_int8(onnx_path, int8_path, calibration: np.ndarray) -> None:
    """Static int8 quantization (QDQ, per-channel weights) of an ONNX model, calibrated on `calibration`.

    `calibration`: (n, 48, 48) uint8 training images; activation ranges are taken from them.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [calibration[i:i + 32].astype(np.float32)[..., None] for i in range(0, len(calibration), 32)]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    int8_path = Path(int8_path)
    # ONNX Runtime's quantizer keeps scratch files in tempfile's folder: keep them inside models/
    with tempfile.TemporaryDirectory(dir=int8_path.parent, prefix=".quantize-") as workdir:
        default_tempdir, tempfile.tempdir = tempfile.tempdir, workdir
        try:
            prepared = Path(workdir) / "prepared.onnx"
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
            partial = Path(workdir) / "int8.onnx"
            quantize_static(str(prepared), str(partial), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            os.replace(partial, int8_path)
        finally:
            tempfile.tempdir = default_tempdir


def compute_dtype(model: keras.Model) -> str:
    """The dtype policy its layers compute in (a loaded model reports float32 for itself)."""
    return next(layer.dtype_policy.name for layer in members_of(model)[0].layers if layer.weights)


def parity(reference: np.ndarray, exported: np.ndarray, margin: float = 0.1) -> dict:
    """Largest probability difference (and its 99th percentile over images), and the share of equal labels,
    overall and where `reference` is decided.

    'Decided': the reference's top class leads the second by at least `margin`; rounding (int8) may
    flip labels only where two classes are nearly tied.
    """
    top_two = np.sort(reference, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] >= margin
    same = reference.argmax(axis=1) == exported.argmax(axis=1)
    per_image = np.abs(reference - exported).max(axis=1)
    return {
        "max_probability_difference": float(per_image.max()),
        "p99_probability_difference": float(np.percentile(per_image, 99)),
        "label_agreement": float(same.mean()),
        f"label_agreement_where_margin_{margin:g}": float(same[decided].mean()) if decided.any() else 1.0,
        f"images_with_margin_{margin:g}": int(decided.sum()),
    }

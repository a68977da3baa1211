"""Export a trained Keras model to ONNX, and check that the export predicts what Keras predicts."""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np


def inference_graph(model: keras.Model) -> keras.Model:
    """The same network in float32 without its augmentation layers (they only act in training).

    ONNX export needs a float32 graph, and the random layers would otherwise be traced into it.
    The trained model is a chain of layers, so it is rebuilt layer by layer with copied weights.
    """
    x = inputs = keras.Input(model.input_shape[1:], name="pixels")
    for layer in model.layers[1:]:
        if layer.__class__.__name__.startswith("Random"):
            continue
        config = layer.get_config() | {"dtype": "float32"}
        clone = layer.__class__.from_config(config)
        x = clone(x)
        clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=f"{model.name}_inference")


def export_onnx(model: keras.Model, path) -> keras.Model:
    """Write `model` to `path` as ONNX (atomically); returns the float32 graph that was exported."""
    graph = inference_graph(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.onnx")
    graph(np.zeros((1, *graph.input_shape[1:]), "float32"))  # Keras exports only models that were called
    graph.export(str(partial), format="onnx", verbose=False)
    os.replace(partial, path)
    return graph


def parity(reference: np.ndarray, exported: np.ndarray) -> dict:
    """Largest probability difference and share of equal predicted labels."""
    return {
        "max_probability_difference": float(np.abs(reference - exported).max()),
        "label_agreement": float((reference.argmax(axis=1) == exported.argmax(axis=1)).mean()),
    }

"""Load a trained classifier for inference: the exported ONNX model (ONNX Runtime) or the Keras model.

Both answer `predict(x, batch_size, verbose)` like a Keras model, so evaluation code takes either.
TensorFlow is imported only when a Keras model is loaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ferpipe import CLASS_NAMES, FerError, require_face_classifier

REPO_ROOT = Path(__file__).resolve().parents[1]
# ONNX metadata the export writes: "true" when the network centre-crops its input (train.augment.crop), so that
# `--tta ten_crop` can refuse an ONNX model of a network trained on whole faces, as it does a Keras one.
CROPS_FACES_KEY = "ferpipe.crops_faces"
ONNX_FILE = Path("models/model.onnx")
INT8_FILE = Path("models/model.int8.onnx")
KERAS_FILE = Path("models/model.keras")


class OnnxModel:
    """An exported model under ONNX Runtime's CPU provider.

    `crops_faces`: whether the network centre-crops its input (trained with train.augment.crop), from the
    metadata the export stage writes; None for a file without it (exported before that, or elsewhere).
    """

    def __init__(self, path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # On x86 CPUs without VNNI, ONNX Runtime's fast uint8 x int8 kernels add pairs of products in 16 bits,
        # which overflow: the int8 model agreed with Keras on 87.6% of the test images on an AVX2-only CPU
        # (98.6% with this option, as on AVX-512 VNNI CPUs, where the option changes nothing).
        options.add_session_config_entry("session.x64quantprecision", "1")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises its own exception types for corrupt files
            raise FerError(f"cannot load ONNX model {path}: {err}") from err
        self.input_name = self.session.get_inputs()[0].name
        self.path = Path(path)
        noted = self.session.get_modelmeta().custom_metadata_map.get(CROPS_FACES_KEY)
        self.crops_faces = {"true": True, "false": False}.get(noted)

    def predict(self, x, batch_size: int = 256, verbose=0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        parts = [self.session.run(None, {self.input_name: x[i:i + batch_size]})[0]
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(CLASS_NAMES)), np.float32)


def default_model_path() -> Path | None:
    """models/model.onnx, else models/model.keras: in the working directory first, then in this checkout."""
    for root in (Path.cwd(), REPO_ROOT):
        for name in (ONNX_FILE, KERAS_FILE):
            if (root / name).is_file():
                return root / name
    return None


def load_classifier(path=None):
    """(model, description) for an .onnx or .keras file; FerError if it is missing or unreadable."""
    path = Path(path) if path else default_model_path()
    if path is None:
        raise FerError(f"no trained model found (looked for {ONNX_FILE} and {KERAS_FILE} in {Path.cwd()} "
                       f"and {REPO_ROOT}); run `dvc repro` or pass --model")
    if not path.is_file():
        raise FerError(f"model file {path} not found")
    if path.suffix == ".onnx":
        import onnxruntime

        model = OnnxModel(path)
        model_input, model_output = model.session.get_inputs()[0], model.session.get_outputs()[0]
        require_face_classifier(model_input.shape, model_output.shape, f"ONNX model {path}")
        return model, f"{path} (ONNX Runtime {onnxruntime.__version__})"
    if path.suffix == ".keras":
        import keras

        from ferpipe.model import load_model

        try:
            model = load_model(path)
        except Exception as err:
            raise FerError(f"cannot load Keras model {path}: {err}") from err
        require_face_classifier(model.input_shape, model.output_shape, f"Keras model {path}")
        return model, f"{path} (Keras {keras.__version__}, {keras.backend.backend()} backend)"
    raise FerError(f"model file {path} must end in .onnx or .keras")

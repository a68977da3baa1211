"""Facial-expression recognition on FER-2013: the shared code of the DVC pipeline."""
import os as _os
import platform as _platform

# TensorFlow turns its oneDNN CPU kernels on by itself only on x86 CPUs with AVX-512 VNNI or BF16, or AMX; on a
# 2-core AVX2-only CPU they made the train stage's epochs of compact 1.3x shorter (README, On a slower CPU).
# This runs before anything imports TensorFlow; TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps them off.
if _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGE_SIZE = 48
CROP_SIZE = 44  # train.augment.crop: random 44x44 crops in training, the centre one at inference
CROP_MARGIN = (IMAGE_SIZE - CROP_SIZE) // 2  # pixels between the centre crop and each edge
MODELS = ("seed", "compact", "small", "lean", "strided", "residual", "vgg")  # train.model; see ferpipe.model.build_model
# Test-time augmentation: none, the mirror image, mirror x zoom 0.9/1.0/1.1 (6 views), those x rotation
# -10/0/+10 degrees (18 views), or the centre and four corner 44x44 crops and their mirrors (10 views).
TTA_MODES = ("none", "flip", "flip_zoom", "flip_zoom_rotate", "ten_crop")


class FerError(Exception):
    """An error caused by the user's input (params, data); printed without a traceback."""


def require_face_classifier(input_shape, output_shape, model_name: str) -> None:
    """Raise a FerError unless a model (Keras or ONNX) takes batches of 48x48x1 faces and outputs the 7
    classes' probabilities: checked on loading, so that a foreign model fails before the first prediction."""
    takes, gives = list(input_shape)[1:], list(output_shape)[1:]
    if takes != [IMAGE_SIZE, IMAGE_SIZE, 1] or gives != [len(CLASS_NAMES)]:
        raise FerError(f"{model_name} takes inputs of shape {list(input_shape)} and outputs {list(output_shape)}; "
                       f"a model of this pipeline takes [batch, {IMAGE_SIZE}, {IMAGE_SIZE}, 1] faces and outputs "
                       f"[batch, {len(CLASS_NAMES)}] class probabilities")


def require_stage_output(path, stage: str) -> None:
    """Raise a FerError naming the stage to run when `path`, a file that `stage` writes, is missing."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FerError(f"{path} not found: run the {stage} stage first (dvc repro {stage})")

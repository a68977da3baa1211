"""Facial-expression recognition on FER-2013: the shared code of the DVC pipeline."""

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


def require_stage_output(path, stage: str) -> None:
    """Raise a FerError naming the stage to run when `path`, a file that `stage` writes, is missing."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FerError(f"{path} not found: run the {stage} stage first (dvc repro {stage})")

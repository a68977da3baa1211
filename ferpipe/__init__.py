"""Facial-expression recognition on FER-2013: the shared code of the DVC pipeline."""

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGE_SIZE = 48
# Test-time augmentation: none, the mirror image, or mirror x zoom 0.9/1.0/1.1 (6 views).
TTA_MODES = ("none", "flip", "flip_zoom")


class FerError(Exception):
    """An error caused by the user's input (params, data); printed without a traceback."""

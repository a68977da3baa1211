"""Facial-expression recognition on FER-2013: the shared code of the DVC pipeline."""

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGE_SIZE = 48


class FerError(Exception):
    """An error caused by the user's input (params, data); printed without a traceback."""

"""Find faces with OpenCV's bundled Haar cascade and crop them the way FER-2013 images look."""
from __future__ import annotations

import cv2
import numpy as np

from ferpipe import IMAGE_SIZE, FerError
from ferpipe.data import to_model_input

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetector:
    """Frontal faces of at least `min_size` pixels; boxes as (x, y, width, height), largest first."""

    def __init__(self, min_size: int = 24):
        path = cv2.data.haarcascades + CASCADE_FILE
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FerError(f"cannot load OpenCV's face detector {path}: is opencv-python-headless 4.x installed?")
        self.min_size = min_size

    def __call__(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_size, self.min_size))
        return sorted((tuple(int(v) for v in box) for box in boxes), key=lambda b: -b[2] * b[3])


def is_fer_crop(image: np.ndarray) -> bool:
    """A 48x48 grayscale picture (also stored as equal colour channels) is taken to be an FER-style face crop."""
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        return False
    return image.ndim == 2 or image.shape[2] == 1 or bool((image[:, :, :3] == image[:, :, :1]).all())


def crop_face(gray: np.ndarray, box, margin: float) -> np.ndarray:
    """The box grown by `margin` of its size on each side, as 48x48 uint8.

    Where the grown box leaves the image, the edge pixels are repeated, so the crop stays square
    (as FER-2013 faces are) instead of being stretched.
    """
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    top, bottom, left, right = y - dy, y + h + dy, x - dx, x + w + dx
    pads = (max(0, -top), max(0, bottom - gray.shape[0]), max(0, -left), max(0, right - gray.shape[1]))
    if any(pads):
        gray = cv2.copyMakeBorder(gray, *pads, cv2.BORDER_REPLICATE)
        top, bottom, left, right = top + pads[0], bottom + pads[0], left + pads[2], right + pads[2]
    return to_model_input(gray[top:bottom, left:right])[0]

"""Classification metrics from predicted probabilities, and test-time augmentation (TTA)."""
from __future__ import annotations

import numpy as np

from ferpipe import CLASS_NAMES, CROP_MARGIN, IMAGE_SIZE, TTA_MODES, FerError
from ferpipe.data import TEST_SUBSETS

# flip_zoom's scales and flip_zoom_rotate's angles, chosen on the validation split
# (docs/experiments.md, "Test-time augmentation").
ZOOM_OUT, ZOOM_IN = 0.9, 1.1
ROTATION = 10  # degrees


def warped(images: np.ndarray, scale: float = 1.0, dx: int = 0, dy: int = 0, angle: float = 0) -> np.ndarray:
    """(n, 48, 48) images scaled about their centre (>1 zooms in) and turned `angle` degrees anticlockwise,
    then moved dx pixels right and dy down; edges replicated, as the training augmentation does."""
    import cv2

    size = images.shape[-1]
    centre = (size - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), angle, scale)
    matrix[:, 2] += (dx, dy)
    return np.stack([cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE) for image in images])


# Each mode's views as (zoom scale, shift right, shift down, rotation, mirrored); their probabilities are averaged.
# ten_crop's corners: a corner CROP_SIZE crop moved into the centre crop that a crop-trained model sees.
_CORNERS = [(dx, dy) for dx in (-CROP_MARGIN, CROP_MARGIN) for dy in (-CROP_MARGIN, CROP_MARGIN)]
TTA_VIEWS = {
    "none": [(1.0, 0, 0, 0, False)],
    "flip": [(1.0, 0, 0, 0, False), (1.0, 0, 0, 0, True)],
    "flip_zoom": [(scale, 0, 0, 0, mirrored) for mirrored in (False, True) for scale in (1.0, ZOOM_OUT, ZOOM_IN)],
    "flip_zoom_rotate": [(scale, 0, 0, angle, mirrored) for mirrored in (False, True)
                         for scale in (1.0, ZOOM_OUT, ZOOM_IN) for angle in (0, -ROTATION, ROTATION)],
    "ten_crop": [(1.0, dx, dy, 0, mirrored) for mirrored in (False, True) for dx, dy in [(0, 0), *_CORNERS]],
}
assert set(TTA_VIEWS) == set(TTA_MODES)


def crops_faces(model) -> bool | None:
    """Whether a model centre-crops its input (trained with train.augment.crop); None if unknown (an ONNX
    file without ferpipe's metadata)."""
    if not hasattr(model, "layers"):  # an OnnxModel: its metadata decides, without loading TensorFlow
        return getattr(model, "crops_faces", None)
    import keras

    from ferpipe.model import members_of

    if not isinstance(model, keras.Model):
        return None
    return all(any(isinstance(layer, keras.layers.Cropping2D) for layer in member.layers)
               for member in members_of(model))


def tta_modes_for(model) -> tuple[str, ...]:
    """The TTA modes that make sense for `model`: ten_crop only for a model that crops its input."""
    return tuple(mode for mode in TTA_MODES if mode != "ten_crop" or crops_faces(model) is not False)


def check_tta(model, tta: str, model_name: str) -> None:
    """Refuse ten_crop for a model trained without crops: its 'corner crops' would be faces shifted 2 px
    with copied edge pixels, views it never saw in training."""
    if tta == "ten_crop" and crops_faces(model) is False:
        raise FerError(f"tta ten_crop needs a model trained with train.augment.crop: true, and {model_name} "
                       f"takes whole {IMAGE_SIZE}x{IMAGE_SIZE} faces; use flip_zoom, or retrain with crops")


def view_of(images: np.ndarray, view: tuple) -> np.ndarray:
    """(n, 48, 48) images as one TTA view (a TTA_VIEWS entry)."""
    scale, dx, dy, angle, mirrored = view
    x = images if (scale, dx, dy, angle) == (1.0, 0, 0, 0) or len(images) == 0 else warped(images, scale, dx, dy, angle)
    return x[:, :, ::-1] if mirrored else x


# Views go to the model together, up to this many images a call: each predict() call sets up an input
# pipeline (~0.1 s here), which on a small split costs more than the prediction. Splits of thousands of
# images (FER-2013's) still go one view a call: bigger calls were not measurably faster, and cost memory.
IMAGES_PER_CALL = 4096


def probabilities_by_tta(model, images: np.ndarray, batch_size: int, modes=TTA_MODES) -> dict[str, np.ndarray]:
    """{mode: class probabilities} for (n, 48, 48) uint8 images; views shared by modes are predicted once."""
    unknown = [mode for mode in modes if mode not in TTA_VIEWS]
    if unknown:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {unknown[0]!r}")
    views = list(dict.fromkeys(v for mode in modes for v in TTA_VIEWS[mode]))
    n = len(images)
    per_call = max(1, IMAGES_PER_CALL // max(n, 1))
    predicted = {}
    for start in range(0, len(views), per_call):
        group = views[start:start + per_call]
        x = np.concatenate([view_of(images, view) for view in group])
        probs = np.asarray(model.predict(x.astype("float32")[..., None], batch_size=batch_size, verbose=0),
                           dtype="float64")
        predicted.update({view: probs[i * n:(i + 1) * n] for i, view in enumerate(group)})
    return {mode: np.mean([predicted[v] for v in TTA_VIEWS[mode]], axis=0) for mode in modes}


def predict_probabilities(model, images: np.ndarray, tta: str, batch_size: int) -> np.ndarray:
    """Class probabilities for (n, 48, 48) uint8 images, averaged over the views of `tta` (TTA_MODES)."""
    return probabilities_by_tta(model, images, batch_size, modes=(tta,))[tta]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def _safe_ratio(num, den):
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def summarize(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """accuracy, mean cross-entropy loss, macro-F1 and per-class precision/recall/F1/support."""
    y_pred = probs.argmax(axis=1)
    counts = confusion_matrix(y_true, y_pred)
    tp = np.diag(counts).astype(float)
    precision = _safe_ratio(tp, counts.sum(axis=0))
    recall = _safe_ratio(tp, counts.sum(axis=1))
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-7, 1.0)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "loss": float(-np.log(p_true).mean()),
        "macro_f1": float(f1.mean()),
        "images": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(counts[i].sum()),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }


def subset_scores(y_true: np.ndarray, probs: np.ndarray, subsets: np.ndarray,
                  keys=("accuracy", "loss", "macro_f1", "images")) -> dict:
    """{'public_test': {...}, 'private_test': {...}}: `keys` of summarize() on each Kaggle test subset present."""
    scores = {}
    for subset in TEST_SUBSETS:
        name = subset.replace("Test", "_test").lower()  # PublicTest -> public_test
        rows = subsets == subset
        if rows.any():
            part = summarize(y_true[rows], probs[rows])
            scores[name] = {key: part[key] for key in keys}
    return scores

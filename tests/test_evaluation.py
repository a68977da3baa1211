"""Metrics computed from probabilities, checked against hand-worked examples."""
import math

import numpy as np
import pytest

from ferpipe import CROP_SIZE, TTA_MODES, FerError
from ferpipe.evaluation import (check_tta, confusion_matrix, crops_faces, predict_probabilities,
                                probabilities_by_tta, summarize, tta_modes_for, warped)


def test_summary_on_a_hand_worked_example():
    y_true = np.array([0, 0, 1, 3])
    probs = np.zeros((4, 7))
    probs[0, 0] = 0.8; probs[0, 1] = 0.2   # correct
    probs[1, 1] = 0.6; probs[1, 0] = 0.4   # 0 predicted as 1
    probs[2, 1] = 1.0                      # correct
    probs[3, 3] = 0.5; probs[3, 6] = 0.5   # tie -> argmax picks 3, correct
    result = summarize(y_true, probs)
    assert result["accuracy"] == 0.75
    assert result["loss"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(1.0) + math.log(0.5)) / 4)
    angry, disgust = result["per_class"]["angry"], result["per_class"]["disgust"]
    assert (angry["precision"], angry["recall"], angry["support"]) == (1.0, 0.5, 2)
    assert angry["f1"] == pytest.approx(2 / 3)
    assert (disgust["precision"], disgust["recall"]) == (0.5, 1.0)
    # classes never seen nor predicted score 0 and still count in the macro average
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 1) / 7)


def test_confusion_matrix_rows_are_true_labels():
    counts = confusion_matrix(np.array([0, 0, 2]), np.array([0, 1, 2]))
    assert counts[0, 0] == 1 and counts[0, 1] == 1 and counts[2, 2] == 1 and counts.sum() == 3


def test_flip_tta_averages_the_mirrored_prediction():
    class LeftBrightness:
        """A fake model whose 'angry' probability is the mean brightness of the left half."""

        def predict(self, x, batch_size, verbose):
            left = x[:, :, :24, 0].mean(axis=(1, 2)) / 255
            probs = np.zeros((len(x), 7))
            probs[:, 0], probs[:, 6] = left, 1 - left
            return probs

    images = np.zeros((1, 48, 48), np.uint8)
    images[:, :, :24] = 255
    assert predict_probabilities(LeftBrightness(), images, "none", 8)[0, 0] == pytest.approx(1.0)
    assert predict_probabilities(LeftBrightness(), images, "flip", 8)[0, 0] == pytest.approx(0.5)


class CountingModel:
    """A fake model: 'angry' probability = mean brightness; counts its calls and the images it is shown."""

    def __init__(self):
        self.calls = self.images = 0

    def predict(self, x, batch_size, verbose):
        self.calls += 1
        self.images += len(x)
        bright = x[..., 0].mean(axis=(1, 2)) / 255
        probs = np.zeros((len(x), 7))
        probs[:, 0], probs[:, 6] = bright, 1 - bright
        return probs


def test_zoom_in_grows_and_zoom_out_shrinks_a_centred_square_without_black_borders():
    image = np.full((1, 48, 48), 100, np.uint8)
    image[:, 14:34, 14:34] = 200                      # a 20x20 bright square
    bright = lambda im: int((im > 150).sum())
    assert bright(warped(image, 1.1)) > bright(image) > bright(warped(image, 0.9))
    assert warped(image, 0.9).min() == 100            # edges replicated, no zero fill


def test_flip_zoom_averages_six_views_and_the_modes_share_their_twenty_six_predictions():
    images = np.full((3, 48, 48), 100, np.uint8)
    images[:, 14:34, 14:34] = 200
    model = CountingModel()
    by_tta = probabilities_by_tta(model, images, batch_size=8)
    assert set(by_tta) == set(TTA_MODES)
    assert model.images == 26 * 3  # 3 zooms x 3 angles, 4 shifts, and their mirrors
    assert model.calls == 1        # the views go to the model together
    views = [images, warped(images, 0.9), warped(images, 1.1)]
    expected = np.mean([view.mean(axis=(1, 2)) / 255 for view in views], axis=0)
    assert by_tta["flip_zoom"][:, 0] == pytest.approx(expected)
    turned = [warped(images, scale, angle=angle) for scale in (1.0, 0.9, 1.1) for angle in (0, -10, 10)]
    expected = np.mean([view.mean(axis=(1, 2)) / 255 for view in turned], axis=0)
    assert by_tta["flip_zoom_rotate"][:, 0] == pytest.approx(expected)
    assert not by_tta["flip_zoom_rotate"][:, 0] == pytest.approx(by_tta["flip_zoom"][:, 0])
    assert by_tta["flip"][:, 0] == pytest.approx(by_tta["none"][:, 0])   # symmetric images
    assert predict_probabilities(model, images, "flip_zoom", 8) == pytest.approx(by_tta["flip_zoom"])


def test_tta_on_no_images_returns_an_empty_array():
    assert probabilities_by_tta(CountingModel(), np.zeros((0, 48, 48), np.uint8), 8)["flip_zoom"].shape == (0, 7)


def test_an_unknown_tta_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="none, flip, flip_zoom, flip_zoom_rotate, ten_crop.*'five_crop'"):
        predict_probabilities(CountingModel(), np.zeros((1, 48, 48), np.uint8), "five_crop", 8)


def test_shift_moves_pixels_and_replicates_the_edge():
    image = np.zeros((1, 48, 48), np.uint8)
    image[0, 10, 20] = 255
    moved = warped(image, dx=2, dy=-2)                # 2 right, 2 up
    assert moved[0, 8, 22] == 255 and moved.sum() == 255
    edge = np.zeros((1, 48, 48), np.uint8)
    edge[0, :, 0] = 90                                # left column
    assert (warped(edge, dx=2, dy=0)[0, :, :3] == 90).all()


def test_ten_crop_shows_a_crop_trained_model_each_corner_crop_and_its_mirror():
    """A model that sees only the centre CROP_SIZE window gets, through the shifted views, each corner crop."""
    margin = (48 - CROP_SIZE) // 2

    class CentreCropBrightness:
        def __init__(self):
            self.windows = []

        def predict(self, x, batch_size, verbose):
            window = x[:, margin:margin + CROP_SIZE, margin:margin + CROP_SIZE, 0]
            self.windows.extend(window.copy())
            probs = np.zeros((len(x), 7))
            probs[:, 0] = window.mean(axis=(1, 2)) / 255
            probs[:, 6] = 1 - probs[:, 0]
            return probs

    image = np.random.default_rng(0).integers(0, 256, (1, 48, 48)).astype(np.uint8)
    model = CentreCropBrightness()
    probs = predict_probabilities(model, image, "ten_crop", 8)
    assert len(model.windows) == 10
    corners = [image[0, r:r + CROP_SIZE, c:c + CROP_SIZE] for r in (0, 2 * margin) for c in (0, 2 * margin)]
    centre = image[0, margin:margin + CROP_SIZE, margin:margin + CROP_SIZE]
    crops = [centre, *corners]
    seen = model.windows
    for crop in crops:
        assert any(np.array_equal(crop, w) for w in seen)
        assert any(np.array_equal(crop[:, ::-1], w) for w in seen)
    expected = np.mean([c.mean() for c in crops] + [c[:, ::-1].mean() for c in crops]) / 255
    assert probs[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("crop", [False, True])
def test_ten_crop_is_offered_only_for_a_model_trained_with_crops(crop):
    import keras

    from ferpipe.model import build_model

    keras.mixed_precision.set_global_policy("float32")
    augment = {"rotation": 0, "zoom": 0, "flip": False, "translate": 0, "erasing": 0, "crop": crop, "fused": False}
    model = build_model({"model": "compact", "width": 4, "dropout": 0.1, "augment": augment})
    assert crops_faces(model) is crop
    assert ("ten_crop" in tta_modes_for(model)) is crop
    for mode in TTA_MODES:
        if mode == "ten_crop" and not crop:
            with pytest.raises(FerError, match="ten_crop needs a model trained with train.augment.crop: true, "
                                               "and tiny.keras takes whole 48x48 faces"):
                check_tta(model, mode, "tiny.keras")
        else:
            check_tta(model, mode, "tiny.keras")


@pytest.mark.parametrize("crops, expected", [((True, True), True), ((False, False), False), ((True, False), False)])
def test_an_ensemble_crops_faces_only_if_every_member_does(crops, expected):
    import keras

    from ferpipe.model import build_model, ensemble

    keras.mixed_precision.set_global_policy("float32")
    members = [build_model({"model": "compact", "width": 4, "dropout": 0.1,
                            "augment": {"rotation": 0, "zoom": 0, "flip": False, "translate": 0, "erasing": 0,
                                        "crop": crop, "fused": False}}, name=f"member_{i}") for i, crop in enumerate(crops)]
    assert crops_faces(ensemble(members)) is expected


def test_a_model_of_unknown_kind_keeps_every_tta_mode():
    assert crops_faces(CountingModel()) is None
    assert tta_modes_for(CountingModel()) == TTA_MODES
    check_tta(CountingModel(), "ten_crop", "model.onnx")


def test_rotation_turns_the_face_about_its_centre():
    bar = np.zeros((1, 48, 48), np.uint8)
    bar[0, 23:25, 4:44] = 255                         # horizontal bar through the centre
    upright = warped(bar, angle=90)
    assert upright[0, 4:44, 23:25].mean() > 200 and upright[0, 23:25, :10].max() == 0
    assert (warped(bar, angle=10) != bar).any() and warped(bar, angle=0).tolist() == bar.tolist()


def test_views_of_a_large_split_go_to_the_model_in_calls_of_bounded_size(monkeypatch):
    from ferpipe import evaluation

    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    together = probabilities_by_tta(CountingModel(), images, batch_size=8)
    monkeypatch.setattr(evaluation, "IMAGES_PER_CALL", 8)
    model = CountingModel()
    by_tta = probabilities_by_tta(model, images, batch_size=8)
    assert model.calls == 13 and model.images == 26 * 3   # 2 views (6 images) a call
    for mode in TTA_MODES:
        assert by_tta[mode] == pytest.approx(together[mode])

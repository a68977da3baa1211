"""Metrics computed from probabilities, checked against hand-worked examples."""
import math

import numpy as np
import pytest

from ferpipe.evaluation import confusion_matrix, predict_probabilities, summarize


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

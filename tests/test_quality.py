"""The data-quality report: which images count as duplicates, leaks, conflicts and blank frames."""
import numpy as np
import pandas as pd

from ferpipe.quality import defects_to_drop, quality_report


def images_and_index(rows):
    """rows: (pixel seed or 'blank', label, split); equal seeds give identical images."""
    images = np.stack([np.full((48, 48), 128, np.uint8) if seed == "blank"
                       else np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)
                       for seed, _, _ in rows])
    index = pd.DataFrame({"path": [f"img{i}.jpg" for i in range(len(rows))],
                          "label": [label for _, label, _ in rows], "split": [split for _, _, split in rows]})
    return index, images


def test_duplicates_within_test_are_not_a_leak_but_val_and_test_are():
    index, images = images_and_index([
        (1, "happy", "test"), (1, "happy", "test"),   # duplicate inside test only
        (2, "sad", "val"), (2, "sad", "test"),        # val image also in test: a leak
        (3, "fear", "train"), (4, "fear", "train"),
    ])
    report = quality_report(index, images)
    assert report["counts"] == {"duplicate_groups": 2, "duplicate_files": 4, "groups_across_train_and_test": 1,
                                "train_val_images_also_in_test": 1, "groups_with_conflicting_labels": 0,
                                "near_blank_images": 0}
    assert report["train_val_images_also_in_test"] == ["img2.jpg"]


def test_conflicting_labels_and_blank_frames():
    index, images = images_and_index([
        (5, "angry", "train"), (5, "neutral", "train"), (5, "angry", "val"),
        ("blank", "fear", "train"), (6, "fear", "test"),
    ])
    report = quality_report(index, images)
    assert report["counts"]["groups_with_conflicting_labels"] == 1
    assert report["counts"]["duplicate_files"] == 3 and report["counts"]["groups_across_train_and_test"] == 0
    assert report["near_blank"] == ["img3.jpg"]
    [group] = report["duplicate_groups"]
    assert group["labels"] == ["angry", "neutral", "angry"] and group["conflicting_labels"]


def test_low_contrast_faces_are_not_blank():
    index, images = images_and_index([(7, "sad", "train")])
    images = (images // 32 + 100).astype(np.uint8)  # pixel values 100-107: faint but not constant
    assert quality_report(index, images)["counts"]["near_blank_images"] == 0


def test_defects_to_drop_are_train_val_leaks_conflicts_and_blanks_never_test_images():
    index, images = images_and_index([
        (1, "happy", "val"), (1, "happy", "test"),      # img0 leaks into test: dropped; img1 kept
        (2, "angry", "train"), (2, "sad", "train"),     # conflicting labels: both dropped
        ("blank", "fear", "train"),                     # img4 blank: dropped
        ("blank", "fear", "test"),                      # img5 blank but in test: kept
        (3, "sad", "train"), (3, "sad", "train"),       # plain duplicates, same label: kept
    ])
    assert defects_to_drop(index, quality_report(index, images)) == {"img0.jpg", "img2.jpg", "img3.jpg", "img4.jpg"}

"""prepare: layout errors, undecodable / colour / odd-size images, the stratified seeded split."""
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import run_stage, set_params
from ferpipe import CLASS_NAMES, data


def read_outputs(project):
    index = pd.read_csv(project / "data/prepared/index.csv")
    images = np.load(project / "data/prepared/images.npy")
    stats = json.loads((project / "metrics/dataset.json").read_text())
    report = json.loads((project / "data/prepared/report.json").read_text())
    return index, images, stats, report


def test_indexes_every_image_with_a_sorted_stratified_split(project):
    run_stage(project, "prepare")
    index, images, stats, report = read_outputs(project)
    assert list(index.columns) == ["path", "label", "split"]
    assert len(index) == len(images) == 7 * (6 + 2)
    assert images.shape[1:] == (48, 48) and images.dtype == np.uint8
    assert index.equals(index.sort_values(["split", "path"]).reset_index(drop=True))
    for name in CLASS_NAMES:  # 6 train images per class, val_fraction 0.1 -> round(0.6) = 1 val, 5 train
        assert stats["train"][name] == 5 and stats["val"][name] == 1 and stats["test"][name] == 2
    assert stats["test"]["total"] == 14
    assert report == {"undecodable": [], "converted_to_grayscale": [], "resized": [], "dropped_defects": []}


def test_images_are_row_aligned_with_the_index(project):
    run_stage(project, "prepare")
    index, images, _, _ = read_outputs(project)
    for row in (0, len(index) // 2, len(index) - 1):
        decoded = cv2.imread(index["path"][row], cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decoded, images[row])


def test_split_is_seeded(project):
    run_stage(project, "prepare")
    first = pd.read_csv(project / "data/prepared/index.csv")
    run_stage(project, "prepare")
    assert first.equals(pd.read_csv(project / "data/prepared/index.csv"))
    set_params(project, **{"prepare.seed": 7})
    run_stage(project, "prepare")
    other = pd.read_csv(project / "data/prepared/index.csv")
    assert set(first.path[first.split == "val"]) != set(other.path[other.split == "val"])


def test_stratified_split_keeps_class_shares():
    labels = np.repeat(np.arange(7), [100, 10, 50, 200, 80, 60, 90])
    is_val = data.stratified_split(labels, 0.2, seed=1)
    for label, count in enumerate([100, 10, 50, 200, 80, 60, 90]):
        assert is_val[labels == label].sum() == round(count * 0.2)


def test_missing_root_names_the_expected_layout(project, tmp_path):
    set_params(project, **{"prepare.data_root": str(tmp_path / "nowhere")})
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "<root>/train/<class>/*.jpg" in result.stderr and "angry disgust fear" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_class_folder_is_named(project, fer_tree):
    shutil.rmtree(fer_tree / "test" / "disgust")
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2
    assert "missing folder" in result.stderr and "test/disgust" in result.stderr
    assert "<root>/test/<class>/*.jpg" in result.stderr


def test_flat_folder_without_splits_is_rejected(project, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a.jpg"), np.zeros((48, 48), np.uint8))
    set_params(project, **{"prepare.data_root": str(flat)})
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2 and "wrong layout" in result.stderr


def test_empty_class_folder_is_rejected(project, fer_tree):
    for file in (fer_tree / "train" / "fear").iterdir():
        file.unlink()
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2 and "empty folder" in result.stderr and "train/fear" in result.stderr


def test_undecodable_files_are_excluded_and_reported(project, fer_tree):
    bad = [fer_tree / "train" / "happy" / "corrupt.jpg", fer_tree / "test" / "sad" / "notes.txt",
           fer_tree / "train" / "angry" / "empty.jpg"]
    bad[0].write_bytes(b"\xff\xd8 this is not really a jpeg")
    bad[1].write_text("not an image")
    bad[2].write_bytes(b"")
    result = run_stage(project, "prepare")
    index, images, stats, report = read_outputs(project)
    assert sorted(report["undecodable"]) == sorted(str(p) for p in bad)
    assert stats["excluded_undecodable"] == 3
    assert "excluded 3 file(s)" in result.stderr and "corrupt.jpg" in result.stderr
    assert len(index) == len(images) == 7 * 8
    assert not index.path.str.contains("corrupt|notes|empty").any()


def test_a_long_list_of_undecodable_files_shows_twenty_and_counts_the_rest(project, fer_tree):
    bad = [fer_tree / "train" / "happy" / f"broken{i:02d}.jpg" for i in range(23)]
    for path in bad:
        path.write_bytes(b"")
    result = run_stage(project, "prepare")
    warning = result.stderr[result.stderr.index("excluded 23 file(s)"):]
    assert sum(path.name in warning for path in bad) == 20
    assert "... and 3 more" in warning
    assert sorted(read_outputs(project)[3]["undecodable"]) == sorted(str(p) for p in bad)


def test_all_training_images_of_a_class_undecodable_is_an_error(project, fer_tree):
    for file in (fer_tree / "train" / "disgust").iterdir():
        file.write_bytes(b"garbage")
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2 and "no decodable training image of class 'disgust'" in result.stderr


def test_a_class_whose_training_images_all_go_to_validation_is_named(project, fer_tree):
    for file in sorted((fer_tree / "train" / "disgust").iterdir())[1:]:
        file.unlink()  # one image left: a 0.9 validation share takes it
    set_params(project, **{"prepare.val_fraction": 0.9})
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2
    assert "all 1 training image(s) of class 'disgust' went to validation" in result.stderr
    assert "prepare.val_fraction=0.9" in result.stderr


def test_colour_and_odd_sized_images_become_48x48_grayscale(project, fer_tree):
    colour = fer_tree / "train" / "happy" / "colour.png"
    big = fer_tree / "test" / "angry" / "PublicTest_big.jpg"
    cv2.imwrite(str(colour), np.dstack([np.full((48, 48), v, np.uint8) for v in (10, 120, 250)]))
    cv2.imwrite(str(big), np.full((96, 120), 77, np.uint8))
    result = run_stage(project, "prepare")
    index, images, stats, report = read_outputs(project)
    assert report["converted_to_grayscale"] == [str(colour)]
    assert report["resized"] == [str(big)]
    assert stats["converted_to_grayscale"] == 1 and stats["resized_to_48x48"] == 1
    assert "1 colour images converted" in result.stderr
    row = index.index[index.path == str(big)][0]
    assert images[row].shape == (48, 48) and abs(int(images[row].mean()) - 77) <= 1


def test_to_model_input_handles_alpha_and_16_bit():
    rgba = np.zeros((60, 60, 4), np.uint8)
    image, colour, resized = data.to_model_input(rgba)
    assert image.shape == (48, 48) and image.dtype == np.uint8 and colour and resized
    deep = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20)
    image, colour, resized = data.to_model_input(deep)
    assert image.dtype == np.uint8 and not colour and not resized and image.max() == 255


@pytest.mark.parametrize("name, subset", [("PublicTest_1.jpg", "PublicTest"), ("PrivateTest_9.jpg", "PrivateTest"),
                                          ("Training_3.jpg", "other")])
def test_test_subset_from_file_name(name, subset):
    assert data.test_subset(f"test/angry/{name}") == subset


def test_data_quality_report_counts_duplicates_leaks_conflicts_and_blank_frames(project, fer_tree):
    train, test = fer_tree / "train", fer_tree / "test"
    leaked = sorted((train / "happy").iterdir())[0]
    shutil.copy(leaked, test / "happy" / "PublicTest_leak.jpg")                # same face in train and test
    conflicting = sorted((train / "sad").iterdir())[0]
    shutil.copy(conflicting, train / "angry" / "Training_relabelled.jpg")     # same face, two labels
    cv2.imwrite(str(train / "fear" / "Training_blank.jpg"), np.full((48, 48), 128, np.uint8))
    run_stage(project, "prepare")
    counts = json.loads((project / "metrics/data_quality.json").read_text())
    assert counts == {"duplicate_groups": 2, "duplicate_files": 4, "groups_across_train_and_test": 1,
                      "train_val_images_also_in_test": 1, "groups_with_conflicting_labels": 1,
                      "near_blank_images": 1}
    report = json.loads((project / "data/quality/report.json").read_text())
    assert report["near_blank"] == [(train / "fear" / "Training_blank.jpg").as_posix()]
    assert report["train_val_images_also_in_test"] == [leaked.as_posix()]
    conflict = [g for g in report["duplicate_groups"] if g["conflicting_labels"]]
    assert len(conflict) == 1 and sorted(conflict[0]["labels"]) == ["angry", "sad"]


def test_a_clean_tree_has_an_empty_quality_report(project):
    run_stage(project, "prepare")
    counts = json.loads((project / "metrics/data_quality.json").read_text())
    assert set(counts.values()) == {0}


def test_drop_defects_leaves_them_out_of_train_and_val_but_keeps_test_whole(project, fer_tree):
    train, test = fer_tree / "train", fer_tree / "test"
    leaked = sorted((train / "happy").iterdir())[0]
    shutil.copy(leaked, test / "happy" / "PublicTest_leak.jpg")
    conflicting = sorted((train / "sad").iterdir())[0]
    shutil.copy(conflicting, train / "angry" / "Training_relabelled.jpg")
    blank = train / "fear" / "Training_blank.jpg"
    cv2.imwrite(str(blank), np.full((48, 48), 128, np.uint8))
    run_stage(project, "prepare")
    kept_index, _, kept_stats, kept_report = read_outputs(project)
    assert kept_stats["dropped_defects"] == 0 and kept_report["dropped_defects"] == []
    quality = (project / "metrics/data_quality.json").read_text()

    set_params(project, **{"prepare.drop_defects": True})
    result = run_stage(project, "prepare")
    index, images, stats, report = read_outputs(project)
    expected = sorted(p.as_posix() for p in (leaked, conflicting, train / "angry" / "Training_relabelled.jpg", blank))
    assert report["dropped_defects"] == expected and stats["dropped_defects"] == 4
    assert "dropped 4 train/val images" in result.stdout
    assert not index["path"].isin(expected).any() and len(index) == len(kept_index) - 4 == len(images)
    assert stats["test"] == kept_stats["test"]                      # test folder untouched
    assert (project / "metrics/data_quality.json").read_text() == quality  # report covers every image


def test_drop_defects_that_empties_a_class_says_so(project, fer_tree):
    for image in (fer_tree / "train" / "disgust").iterdir():  # every disgust training image is blank
        cv2.imwrite(str(image), np.full((48, 48), 128, np.uint8))
    set_params(project, **{"prepare.drop_defects": True})
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2
    assert "no decodable training image of class 'disgust' is left after prepare.drop_defects" in result.stderr


def test_a_validation_share_too_small_for_any_image_is_refused(project):
    set_params(project, **{"prepare.val_fraction": 0.01})  # 42 training images: 0.01 of each class rounds to 0
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "prepare.val_fraction=0.01 leaves no validation image of the 42 training images" in result.stderr


def test_a_test_folder_without_a_readable_image_is_refused(project, fer_tree):
    for file in (fer_tree / "test").rglob("*.jpg"):
        file.write_bytes(b"garbage")
    result = run_stage(project, "prepare", check=False)
    assert result.returncode == 2 and "no decodable test image in" in result.stderr


def test_entries_outside_the_class_folders_are_reported_not_silently_skipped(project, fer_tree):
    (fer_tree / "train" / "contempt").mkdir()
    (fer_tree / "val" / "happy").mkdir(parents=True)
    (fer_tree / "train" / "sad" / "more").mkdir()
    cv2.imwrite(str(fer_tree / "train" / "sad" / "more" / "a.jpg"), np.zeros((48, 48), np.uint8))
    (fer_tree / "test" / "fear" / "gone.jpg").symlink_to(fer_tree / "nowhere.jpg")
    (fer_tree / "README.md").write_text("a file beside the splits is fine")
    result = run_stage(project, "prepare")
    assert "WARNING: ignored 4 entries that are not images of the 7 class folders" in result.stderr
    for entry in ("train/contempt/", "val/", "train/sad/more/", "test/fear/gone.jpg"):
        assert entry in result.stderr
    assert "README" not in result.stderr

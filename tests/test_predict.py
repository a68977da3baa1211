"""`ferpipe predict` on images, folders and videos drawn by the tests, in JSON and CSV."""
import csv
import os
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from ferpipe import CLASS_NAMES, TTA_MODES, predict
from ferpipe.export import export_onnx
from ferpipe.model import build_model


def draw_face(size=240, shift=0):
    """A cartoon face that OpenCV's Haar cascade detects: skin ellipse, eyes, brows, nose, mouth."""
    canvas = np.full((size, size, 3), 40, np.uint8)
    c = size // 2
    cv2.ellipse(canvas, (c, c), (int(size * 0.30), int(size * 0.40)), 0, 0, 360, (150, 180, 220), -1)
    for side in (-1, 1):
        ex = c + side * int(size * 0.12)
        cv2.ellipse(canvas, (ex, c - int(size * 0.08)), (int(size * 0.06), int(size * 0.03)), 0, 0, 360, (30, 30, 30), -1)
        cv2.line(canvas, (ex - int(size * 0.07), c - int(size * 0.16)), (ex + int(size * 0.07), c - int(size * 0.16)),
                 (40, 40, 60), max(2, size // 50))
    cv2.line(canvas, (c, c - int(size * 0.04)), (c, c + int(size * 0.08)), (110, 130, 170), max(2, size // 60))
    cv2.ellipse(canvas, (c, c + int(size * 0.18)), (int(size * 0.10), int(size * 0.035)), 0, 0, 360, (60, 60, 120), -1)
    return np.roll(cv2.GaussianBlur(canvas, (0, 0), size / 120), shift, axis=1)


def no_face(size=240):
    return np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))


def saved_model(folder, crop: bool) -> tuple[Path, Path]:
    """A tiny untrained network saved as .keras and exported to .onnx."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    augment = {"rotation": 20, "zoom": 0.2, "flip": True, "translate": 0, "erasing": 0, "crop": crop, "fused": False}
    model = build_model({"model": "compact", "width": 4, "dropout": 0.1, "augment": augment})
    model.save(folder / "model.keras")
    export_onnx(model, folder / "model.onnx")
    return folder / "model.onnx", folder / "model.keras"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A network trained with crops, so that every TTA mode applies."""
    return saved_model(tmp_path_factory.mktemp("model"), crop=True)


@pytest.fixture(scope="module")
def whole_face_model_files(tmp_path_factory):
    """A network trained on whole faces (train.augment.crop: false)."""
    return saved_model(tmp_path_factory.mktemp("whole_face_model"), crop=False)


def run_predict(capsys, *args):
    code = predict.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out):
    return [json.loads(line) for line in out.splitlines()]


def test_a_photo_with_a_face_gives_one_json_line_with_all_probabilities(model_files, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), draw_face())
    code, out, err = run_predict(capsys, "--model", model_files[0], photo)
    assert code == 0
    [face] = json_lines(out)
    assert face["source"] == str(photo) and face["frame"] is None
    box = face["box"]
    assert 0 <= box["x"] and box["x"] + box["width"] <= 240 and 100 < box["width"] < 240
    assert set(face["probabilities"]) == set(CLASS_NAMES)
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
    assert face["confidence"] == max(face["probabilities"].values())
    assert "1 face(s) classified in 1 readable file(s)" in err


def test_an_image_without_a_face_is_reported_and_exits_1(model_files, tmp_path, capsys):
    empty = tmp_path / "wall.png"
    cv2.imwrite(str(empty), no_face())
    code, out, err = run_predict(capsys, "--model", model_files[0], empty)
    assert code == 1 and out == ""
    assert f"{empty}: no face found" in err


def test_a_48x48_grayscale_crop_is_classified_whole(model_files, tmp_path, capsys):
    crop = tmp_path / "crop.jpg"
    cv2.imwrite(str(crop), no_face(48))  # no detectable face, yet classified: it is an FER-style crop
    code, out, _ = run_predict(capsys, "--model", model_files[0], crop)
    assert code == 0
    [face] = json_lines(out)
    assert face["box"] == {"x": 0, "y": 0, "width": 48, "height": 48}


def test_every_tta_mode_gives_probabilities_that_sum_to_one(model_files, tmp_path, capsys):
    crop = tmp_path / "crop.jpg"
    cv2.imwrite(str(crop), no_face(48))
    confidences = {}
    for mode in TTA_MODES:
        code, out, _ = run_predict(capsys, "--model", model_files[0], "--tta", mode, crop)
        [face] = json_lines(out)
        assert code == 0 and sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        confidences[mode] = face["confidence"]
    assert len(set(confidences.values())) > 1       # the modes really average different views


def test_a_folder_with_bad_files_among_good_ones_is_processed_in_full(model_files, tmp_path, capsys):
    folder = tmp_path / "batch"
    (folder / "nested").mkdir(parents=True)
    cv2.imwrite(str(folder / "a_face.png"), draw_face())
    (folder / "b_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "c_notes.txt").write_text("hello")
    cv2.imwrite(str(folder / "nested" / "d_face.jpg"), draw_face(160))
    code, out, err = run_predict(capsys, "--model", model_files[0], "--format", "csv", folder, tmp_path / "missing.jpg")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["source"] for r in rows] == [str(folder / "a_face.png"), str(folder / "nested" / "d_face.jpg")]
    assert list(rows[0]) == ["source", "frame", "x", "y", "width", "height", "label", "confidence", *CLASS_NAMES]
    assert all(r["label"] in CLASS_NAMES and r["frame"] == "" for r in rows)
    assert sum(float(rows[0][name]) for name in CLASS_NAMES) == pytest.approx(1, abs=1e-4)
    assert f"{folder / 'b_corrupt.jpg'}: not a readable image" in err
    assert f"{folder / 'c_notes.txt'}: not a readable image or video" in err
    assert f"{tmp_path / 'missing.jpg'}: no such file or folder" in err


def test_a_video_is_sampled_every_nth_frame(model_files, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (240, 240))
    for i in range(25):
        writer.write(draw_face(shift=i))
    writer.release()
    annotated = tmp_path / "annotated"
    code, out, _ = run_predict(capsys, "--model", model_files[0], "--every", 10, "--annotate", annotated, video)
    assert code == 0
    faces = json_lines(out)
    assert [f["frame"] for f in faces] == [0, 10, 20]
    assert sorted(p.name for p in (annotated / "clip.avi_frames").iterdir()) == [
        "frame_000000.jpg", "frame_000010.jpg", "frame_000020.jpg"]


def test_a_file_named_like_a_video_that_is_not_one_is_reported(model_files, tmp_path, capsys):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video")
    code, _, err = run_predict(capsys, "--model", model_files[0], fake)
    assert code == 1 and f"{fake}: not a readable video" in err


def test_annotate_writes_a_copy_with_the_box_drawn(model_files, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    code, _, _ = run_predict(capsys, "--model", model_files[0], "--annotate", tmp_path / "out", photo)
    copy = cv2.imread(str(tmp_path / "out" / "photo.png"))
    assert code == 0 and copy.shape == (240, 240, 3)
    assert not np.array_equal(copy, cv2.imread(str(photo)))  # box and label drawn


def test_an_empty_folder_is_reported_and_exits_1(model_files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_predict(capsys, "--model", model_files[0], tmp_path / "empty")
    assert code == 1 and out == "" and "empty folder" in err


def test_keras_and_onnx_models_give_the_same_answer(model_files, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    answers = [json_lines(run_predict(capsys, "--model", path, photo)[1])[0] for path in model_files]
    assert answers[0]["label"] == answers[1]["label"]
    for name in CLASS_NAMES:
        assert answers[0]["probabilities"][name] == pytest.approx(answers[1]["probabilities"][name], abs=1e-4)


@pytest.mark.parametrize("tta", ["flip", "ten_crop"])
def test_an_onnx_model_predicts_without_loading_tensorflow(model_files, tmp_path, tta):
    """ONNX Runtime alone serves an .onnx model: TensorFlow takes seconds and hundreds of MB to load."""
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    script = ("import sys; from ferpipe import predict; "
              f"code = predict.main(['--model', {str(model_files[0])!r}, '--tta', {tta!r}, {str(photo)!r}]); "
              "print('loaded:', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules), code, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "loaded: [] 0" in result.stderr, result.stderr[-2000:]
    assert len(json_lines(result.stdout)) == 1


def test_output_file_and_whole_image_mode(model_files, tmp_path, capsys):
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), no_face(100))
    code, out, _ = run_predict(capsys, "--model", model_files[0], "--whole", "--output", tmp_path / "r.jsonl", wall)
    assert code == 0 and out == ""
    [face] = json_lines((tmp_path / "r.jsonl").read_text())
    assert face["box"] == {"x": 0, "y": 0, "width": 100, "height": 100}


def test_a_missing_or_unknown_model_exits_2_with_a_message(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    code, out, err = run_predict(capsys, "--model", tmp_path / "nowhere.onnx", photo)
    assert code == 2 and out == "" and f"model file {tmp_path / 'nowhere.onnx'} not found" in err
    (tmp_path / "weights.h5").write_bytes(b"x")
    code, _, err = run_predict(capsys, "--model", tmp_path / "weights.h5", photo)
    assert code == 2 and "must end in .onnx or .keras" in err


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_ten_crop_with_a_model_trained_without_crops_exits_2(whole_face_model_files, tmp_path, capsys, kind):
    crop = tmp_path / "crop.jpg"
    cv2.imwrite(str(crop), no_face(48))
    model = whole_face_model_files[0 if kind == "onnx" else 1]
    code, out, err = run_predict(capsys, "--model", model, "--tta", "ten_crop", crop)
    assert code == 2 and out == "" and "ten_crop needs a model trained with train.augment.crop: true" in err
    code, out, _ = run_predict(capsys, "--model", model, "--tta", "flip_zoom", crop)
    assert code == 0 and len(json_lines(out)) == 1


def test_without_a_model_file_anywhere_predict_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    from ferpipe import inference

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "REPO_ROOT", tmp_path)
    code, _, err = run_predict(capsys, tmp_path)
    assert code == 2 and "no trained model found" in err and "dvc repro" in err


def test_a_corrupt_model_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"garbage")
    code, _, err = run_predict(capsys, "--model", bad, tmp_path)
    assert code == 2 and "cannot load ONNX model" in err


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_a_model_from_outside_the_pipeline_exits_2_before_any_prediction(tmp_path, capsys, kind):
    import keras

    inputs = keras.Input((64, 64, 3))  # say, a colour classifier of 10 classes
    foreign = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = tmp_path / f"foreign.{kind}"
    if kind == "keras":
        foreign.save(path)
    else:
        export_onnx(foreign, path)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    code, out, err = run_predict(capsys, "--model", path, photo)
    assert code == 2 and out == ""
    assert f"{path} takes inputs of shape" in err and "64, 64, 3]" in err and "[batch, 48, 48, 1] faces" in err


@pytest.mark.parametrize("args", [["--every", "0", "x.jpg"], ["--margin", "2", "x.jpg"], []])
def test_bad_arguments_exit_2(args):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(args)
    assert exit_info.value.code == 2


def test_the_command_line_entry_point(model_files, tmp_path):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    result = subprocess.run([sys.executable, "-m", "ferpipe", "predict", "--model", str(model_files[0]), str(photo)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["source"] == str(photo)
    usage = subprocess.run([sys.executable, "-m", "ferpipe", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "predict" in usage.stdout and "bench" in usage.stdout


def test_one_broken_file_never_stops_the_batch(model_files, tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    huge = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    huge = huge[:16] + (200000).to_bytes(4, "big") + (200000).to_bytes(4, "big") + huge[24:]  # IHDR claims 200000^2
    (folder / "a_huge.png").write_bytes(huge)
    cv2.imwrite(str(folder / "b_face.png"), draw_face())
    (folder / "c_noextension").write_bytes(cv2.imencode(".png", draw_face())[1].tobytes())
    (folder / "d_empty.avi").write_bytes(b"")
    code, out, err = run_predict(capsys, "--model", model_files[0], "--annotate", tmp_path / "out", folder)
    assert code == 0
    assert [f["source"] for f in json_lines(out)] == [str(folder / "b_face.png"), str(folder / "c_noextension")]
    assert f"{folder / 'a_huge.png'}:" in err and f"{folder / 'd_empty.avi'}: not a readable video" in err
    assert (tmp_path / "out" / "batch" / "c_noextension.png").is_file()  # no extension: written as PNG


def test_hidden_folders_are_skipped_and_annotated_names_never_collide(model_files, tmp_path, capsys):
    for folder in ("a", "b", "c", "c/.ipynb_checkpoints"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "photo.png"), draw_face())
    code, out, err = run_predict(capsys, "--model", model_files[0], "--annotate", tmp_path / "out",
                                 tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png", tmp_path / "c")
    assert code == 0 and len(json_lines(out)) == 3 and ".ipynb_checkpoints" not in out + err
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "c/photo.png", "photo.png", "photo_2.png"]


def test_a_file_named_twice_is_classified_once(model_files, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "photo.png"), draw_face())
    code, out, _ = run_predict(capsys, "--model", model_files[0], "--annotate", tmp_path / "out",
                               tmp_path / "a", tmp_path / "a" / "photo.png", tmp_path / "a" / ".." / "a" / "photo.png")
    assert code == 0 and [face["source"] for face in json_lines(out)] == [str(tmp_path / "a" / "photo.png")]
    assert [p.name for p in (tmp_path / "out").rglob("*.png")] == ["photo.png"]


def test_video_rows_carry_the_frame_index_in_csv(model_files, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (240, 240))
    for i in range(7):
        writer.write(draw_face(shift=i))
    writer.release()
    code, out, _ = run_predict(capsys, "--model", model_files[0], "--format", "csv", "--every", 3, video)
    assert code == 0
    assert [row["frame"] for row in csv.DictReader(io.StringIO(out))] == ["0", "3", "6"]


def test_a_48x48_crop_stored_in_colour_is_still_classified_whole(model_files, tmp_path, capsys):
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), cv2.cvtColor(no_face(48), cv2.COLOR_GRAY2BGR))
    code, out, _ = run_predict(capsys, "--model", model_files[0], crop)
    assert code == 0 and json_lines(out)[0]["box"] == {"x": 0, "y": 0, "width": 48, "height": 48}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_reported(model_files, tmp_path, capsys):
    locked = tmp_path / "locked.png"
    cv2.imwrite(str(locked), draw_face())
    locked.chmod(0)
    code, _, err = run_predict(capsys, "--model", model_files[0], locked)
    assert code == 1 and "cannot read: Permission denied" in err


@pytest.mark.parametrize("option, target, message", [
    ("--output", "missing/r.jsonl", "does not exist"),
    ("--output", ".", "is a folder"),
    ("--annotate", "a_file", "is a file"),
    ("--output", "a_file/r.jsonl", "a_file is a file, not a folder"),
    ("--annotate", "a_file/annotated", "a_file is a file, not a folder"),
])
def test_unwritable_output_paths_exit_2_before_any_work(model_files, tmp_path, capsys, option, target, message):
    (tmp_path / "a_file").write_text("x")
    code, out, err = run_predict(capsys, "--model", model_files[0], option, tmp_path / target, tmp_path)
    assert code == 2 and out == "" and message in err


def test_an_output_file_that_cannot_be_opened_exits_2(model_files, tmp_path, capsys):
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone" / "r.jsonl")  # passes the early checks, then fails
    cv2.imwrite(str(tmp_path / "face.png"), draw_face())
    code, out, err = run_predict(capsys, "--model", model_files[0], "--output", tmp_path / "dangling.jsonl",
                                 tmp_path / "face.png")
    assert code == 2 and out == "" and "No such file or directory" in err


def test_a_long_batch_reports_progress_on_stderr(model_files, tmp_path, capsys, monkeypatch):
    (tmp_path / "faces").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(tmp_path / "faces" / name), draw_face())
    monkeypatch.setattr(predict, "PROGRESS_SECONDS", 0.0)  # as if every file took longer than the interval
    code, out, err = run_predict(capsys, "--model", model_files[0], "--output", tmp_path / "r.jsonl",
                                 tmp_path / "faces")
    assert code == 0 and out == ""
    assert "1 of 3 files, 1 face(s) so far" in err and "2 of 3 files, 2 face(s) so far" in err
    assert "0 of 3" not in err and "3 of 3" not in err  # the closing summary says the rest
    monkeypatch.setattr(predict, "PROGRESS_SECONDS", 3600.0)
    code, out, err = run_predict(capsys, "--model", model_files[0], "--output", tmp_path / "r.jsonl",
                                 tmp_path / "faces")
    assert code == 0 and "so far" not in err


def test_predict_help_names_the_inputs_and_outputs():
    result = subprocess.run([sys.executable, "-m", "ferpipe", "predict", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0
    for word in ("--format", "--annotate", "--every", "Exit status"):
        assert word in result.stdout


def test_a_face_at_the_edge_is_padded_not_stretched():
    from ferpipe.faces import crop_face

    gray = np.zeros((100, 100), np.uint8)
    gray[:, :50] = 200  # left half bright
    inside = crop_face(gray, (25, 25, 50, 50), margin=0)
    edge = crop_face(gray, (0, 25, 50, 50), margin=0.5)  # grown box reaches 25 px past the left edge
    assert inside.shape == edge.shape == (48, 48)
    assert (inside[:, :22] == 200).all() and (inside[:, 26:] == 0).all()
    # 100 px box: 25 px of replicated edge + 50 bright + 25 dark -> bright over the left 3/4
    assert (edge[:, :34] == 200).all() and (edge[:, 38:] == 0).all()


def test_annotate_names_copies_from_the_real_folder_and_never_overwrites_an_input(model_files, tmp_path, capsys,
                                                                                   monkeypatch):
    (tmp_path / "trip" / "sub" / "photos").mkdir(parents=True)
    photo = tmp_path / "trip" / "sub" / "photos" / "x.png"
    cv2.imwrite(str(photo), draw_face())
    original = photo.read_bytes()
    monkeypatch.chdir(tmp_path / "trip" / "sub")
    code, _, err = run_predict(capsys, "--model", model_files[0], "..", "--annotate", "../annotated")
    assert code == 0 and photo.read_bytes() == original  # `..` used to name the copy "..": the input itself
    assert (tmp_path / "trip" / "annotated" / "trip" / "sub" / "photos" / "x.png").is_file()
    code, out, err = run_predict(capsys, "--model", model_files[0], "photos", "--annotate", ".")
    assert code == 0 and len(json_lines(out)) == 1 and photo.read_bytes() == original
    assert "photos/x.png: annotated copy photos/x.png not written: it would overwrite an input file" in err
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "photos").symlink_to(tmp_path / "elsewhere")  # a link out of the --annotate folder
    code, _, err = run_predict(capsys, "--model", model_files[0], "photos", "--annotate", tmp_path / "linked")
    assert code == 0 and "not written: it would be outside --annotate" in err
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_failed_annotated_copy_is_its_own_problem_and_the_faces_still_count(model_files, tmp_path, capsys):
    photo = tmp_path / "upright.png"
    cv2.imwrite(str(photo), draw_face())
    (tmp_path / "out" / "upright.png").mkdir(parents=True)  # a folder where the copy should go
    code, out, err = run_predict(capsys, "--model", model_files[0], "--annotate", tmp_path / "out", photo)
    assert code == 0 and len(json_lines(out)) == 1
    assert f"{photo}: annotated copy {tmp_path / 'out' / 'upright.png'} not written: Is a directory" in err
    assert "1 face(s) classified in 1 readable file(s); 1 problem(s) reported" in err


def test_a_closed_stdout_stops_the_batch_quietly(model_files, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), no_face(48))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone, as after `ferpipe predict many/ | head -n 1`
    try:
        result = subprocess.run([sys.executable, "-m", "ferpipe", "predict", "--model", str(model_files[0]), str(folder)],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr
    assert "Exception ignored" not in result.stderr and "cannot process" not in result.stderr


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8" or sys.platform == "win32",
                    reason="needs a byte-oriented file system with UTF-8 names")
def test_a_csv_output_file_keeps_a_file_name_that_is_not_utf8(model_files, tmp_path, capsys):
    crop = tmp_path / os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: Python holds it as "caf\udce9.png"
    crop.write_bytes(cv2.imencode(".png", no_face(48))[1].tobytes())
    code, _, _ = run_predict(capsys, "--model", model_files[0], "--format", "csv", "--output", tmp_path / "r.csv", crop)
    assert code == 0
    with open(tmp_path / "r.csv", newline="", errors="surrogateescape") as results:
        [row] = csv.DictReader(results)
    assert row["source"] == str(crop)  # the name's own bytes, as on stdout


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8" or sys.platform == "win32",
                    reason="needs a byte-oriented file system with UTF-8 names")
def test_stdout_keeps_a_file_name_that_is_not_utf8_when_its_encoding_is_strict(model_files, tmp_path, monkeypatch):
    crop = tmp_path / os.fsdecode(b"caf\xe9.png")
    crop.write_bytes(cv2.imencode(".png", no_face(48))[1].tobytes())
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="")  # as PYTHONIOENCODING=utf-8:strict
    monkeypatch.setattr(sys, "stdout", stdout)
    code = predict.main(["--model", str(model_files[0]), "--format", "csv", str(crop)])
    stdout.flush()
    assert code == 0
    assert os.fsencode(crop) in stdout.buffer.getvalue().splitlines()[1]


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF block holding only the Orientation tag (6: turn 90 degrees clockwise to view)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big")
    exif = b"Exif\x00\x00" + tiff + b"\x00\x00" + b"\x00\x00\x00\x00"
    return jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]


def test_a_phone_photo_stored_sideways_is_turned_upright_by_its_exif_orientation(model_files, tmp_path, capsys):
    sideways = cv2.imencode(".jpg", cv2.rotate(draw_face(), cv2.ROTATE_90_COUNTERCLOCKWISE))[1].tobytes()
    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(with_exif_orientation(sideways, 6))
    code, out, err = run_predict(capsys, "--model", model_files[0], photo)
    assert code == 0 and len(json_lines(out)) == 1, err


def test_an_output_file_that_is_one_of_the_inputs_is_refused(model_files, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), draw_face())
    before = photo.read_bytes()
    code, out, err = run_predict(capsys, "--model", model_files[0], "--output", photo, tmp_path)
    assert code == 2 and f"--output {photo} is one of the inputs" in err
    assert photo.read_bytes() == before

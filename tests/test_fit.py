"""ferpipe pack and ferpipe fit: training away from DVC (a lent GPU machine) on the prepared images."""
import io
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import prepared_project, run_stage, set_params, stage_env, working_copy
from ferpipe import fit, pack
from ferpipe.data import PreparedData


def ferpipe(project, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "ferpipe", *args], cwd=project, env=stage_env(project),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"ferpipe {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory):
    return prepared_project(tmp_path_factory.mktemp("fit"))


@pytest.fixture
def prepared(prepared_template, tmp_path, monkeypatch):
    return working_copy(prepared_template, tmp_path, monkeypatch)


def test_a_pack_holds_the_prepared_train_and_val_images(prepared):
    result = ferpipe(prepared, "pack")
    data = PreparedData("data/prepared")
    x_train, y_train, _ = data.split("train")
    x_val, y_val, _ = data.split("val")
    assert f"{len(x_train)} train and {len(x_val)} validation images" in result.stdout
    packed = pack.Pack(pack.DEFAULT_PACK)
    assert packed.differing == 0
    np.testing.assert_array_equal(packed.train[0], x_train)
    np.testing.assert_array_equal(packed.train[1], y_train)
    np.testing.assert_array_equal(packed.val[0], x_val)
    np.testing.assert_array_equal(packed.val[1], y_val)


def test_fit_trains_on_a_pack_as_the_train_stage_does(prepared, capsys):
    ferpipe(prepared, "pack", "--output", "data.npz")
    set_params(prepared, **{"train.epochs": 2})
    assert fit.main(["--pack", "data.npz", "--output", "away"]) == 0  # in this process: TensorFlow is loaded here
    stdout = capsys.readouterr().out
    summary = json.loads((prepared / "away/summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["kept_epochs"][0] in (1, 2)
    assert summary["images_decoded_differently"] == 0
    assert summary["backend"] == keras.backend.backend() and summary["train"]["epochs"] == 2
    epochs = [json.loads(line) for line in (prepared / "away/epochs.jsonl").read_text().splitlines()]
    assert [(e["member"], e["epoch"]) for e in epochs] == [(1, 1), (1, 2)]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(epochs[0])
    model = keras.saving.load_model(prepared / "away/model.keras")
    x_val, _, _ = PreparedData("data/prepared").split("val")
    assert model.predict(x_val[..., None].astype("float32"), verbose=0).shape == (len(x_val), 7)
    assert "saved away/model.keras" in stdout
    assert not (prepared / "away/resume").exists()


def changed_pack(path, **changes):
    """A pack of data/prepared written to `path`, with `changes` (field -> function of the stored value) applied;
    returns its fields."""
    pack.write_pack(pack.PREPARED_DIR, path)
    with np.load(path) as stored:
        fields = dict(stored)
    if changes:
        fields.update({name: change(fields[name]) for name, change in changes.items()})
        np.savez(path, **fields)
    return fields


def test_fit_records_a_pack_that_decodes_differently(prepared, capsys):
    # as if another decoder had changed every image
    fields = changed_pack(prepared / "other.npz", digests=lambda digests: digests + np.uint64(1))
    assert fit.main(["--pack", "other.npz", "--output", "away"]) == 0
    assert f"WARNING: {len(fields['labels'])} images of the pack decode to other pixels" in capsys.readouterr().out
    assert json.loads((prepared / "away/summary.json").read_text())["images_decoded_differently"] == len(fields["labels"])


def test_an_interrupted_fit_goes_on_and_logs_each_epoch_once(prepared, monkeypatch, capsys):
    set_params(prepared, **{"train.epochs": 3})
    logger = fit.epoch_logger

    def interrupting_logger(path):
        callback = logger(path)
        log_epoch = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            log_epoch(epoch, logs)
            if epoch == 1:
                raise KeyboardInterrupt  # Ctrl-C after epoch 2
        callback.on_epoch_end = on_epoch_end
        return callback

    monkeypatch.setattr(fit, "epoch_logger", interrupting_logger)
    assert fit.main(["--output", "away"]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert (prepared / "away/resume").is_dir() and not (prepared / "away/model.keras").exists()
    monkeypatch.setattr(fit, "epoch_logger", logger)
    assert fit.main(["--output", "away"]) == 0
    epochs = [json.loads(line) for line in (prepared / "away/epochs.jsonl").read_text().splitlines()]
    assert [(e["member"], e["epoch"]) for e in epochs] == [(1, 1), (1, 2), (1, 3)]
    summary = json.loads((prepared / "away/summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["resumed_after_epoch"] == 2
    assert not (prepared / "away/resume").exists()


def test_fit_reads_data_prepared_without_a_pack(prepared):
    assert fit.main(["--output", "away"]) == 0
    assert json.loads((prepared / "away/summary.json").read_text())["data"] == "data/prepared"


def test_a_pack_whose_pixels_decode_differently_is_flagged(prepared, tmp_path):
    def change_three(digests):  # as if another decoder had changed three images
        digests = digests.copy()
        digests[:3] += np.uint64(1)
        return digests

    changed_pack(tmp_path / "other.npz", digests=change_three)
    assert pack.Pack(tmp_path / "other.npz").differing == 3


def swap_first_two(offsets):  # where the first image ends comes after where the second ends
    return offsets[[0, 2, 1, *range(3, len(offsets))]]


def npy_bytes(array):  # an .npy file's content, say data/prepared/images.npy given as the pack
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def truncate(path):  # a copy broken off half way
    changed_pack(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda path: None, "not found: make it with `ferpipe pack`"),
    (lambda path: path.write_bytes(b"not a pack"), "is not a pack made by `ferpipe pack`, or a damaged one"),
    (lambda path: path.write_bytes(npy_bytes(np.zeros((2, 48, 48), np.uint8))),
     "is not a pack made by `ferpipe pack`, or a damaged one (it holds one array of shape (2, 48, 48))"),
    (truncate, "is not a pack made by `ferpipe pack`, or a damaged one"),
    (lambda path: changed_pack(path, format=lambda _: np.array("old-format")), "is a pack of format old-format"),
    (lambda path: changed_pack(path, labels=lambda labels: labels[:-1]),
     "is damaged: its image, label and digest counts disagree"),
    (lambda path: changed_pack(path, offsets=lambda offsets: offsets.astype(float)), "is damaged: offsets and labels"),
    (lambda path: changed_pack(path, labels=lambda labels: labels + 7), "labels 0-6"),
    (lambda path: changed_pack(path, offsets=swap_first_two),
     "is damaged: its image offsets do not cut"),
    (lambda path: changed_pack(path, offsets=lambda offsets: swap_first_two(offsets).astype(np.uint64)),
     "is damaged: its image offsets do not cut"),
    (lambda path: changed_pack(path, offsets=lambda offsets: offsets + 1), "is damaged: its image offsets do not cut"),
], ids=["missing", "foreign", "an array", "truncated", "old format", "counts", "float offsets", "labels out of range",
        "offsets out of order", "unsigned offsets out of order", "offsets shifted"])
def test_a_missing_foreign_or_damaged_pack_is_refused(prepared, tmp_path, capsys, damage, message):
    path = tmp_path / "pack.npz"
    damage(path)
    assert fit.main(["--pack", str(path), "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_pack_needs_the_prepare_stage_and_its_images(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert pack.main([]) == 2
    assert "run the prepare stage first (dvc repro prepare)" in capsys.readouterr().err
    run_stage(project, "prepare")
    first = PreparedData("data/prepared").index.query("split == 'train'")["path"].iloc[0]
    (project / first).unlink()
    assert pack.main([]) == 2
    assert f"1 image files of data/prepared are missing, the first {first}" in capsys.readouterr().err


def test_pack_needs_train_and_validation_images(prepared, capsys):
    index = prepared / "data/prepared/index.csv"  # prepare refuses an empty validation split; older code did not
    index.write_text(index.read_text().replace(",val\n", ",train\n"))
    assert pack.main([]) == 2
    assert "data/prepared has no val images to pack (see prepare.val_fraction)" in capsys.readouterr().err


def test_fit_refuses_a_bad_param_before_any_work(prepared, capsys):
    set_params(prepared, **{"train.epochs": 0})
    assert fit.main(["--output", "away"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert not (prepared / "away").exists()


def test_fit_needs_an_output_folder(prepared, capsys):
    with pytest.raises(SystemExit):
        fit.main([])
    assert "--output" in capsys.readouterr().err


def test_prepared_md5_comes_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n      md5: abc.dir\n")
    assert pack.prepared_md5("data/prepared", lock) == "abc.dir"
    assert pack.prepared_md5("elsewhere", lock) == ""
    assert pack.prepared_md5("data/prepared", tmp_path / "none.lock") == ""


def test_an_output_of_the_wrong_kind_is_refused_before_any_work(prepared, capsys):
    (prepared / "a_file").write_text("x")
    (prepared / "done").mkdir()
    (prepared / "done" / "model.keras").write_text("a finished run's model")
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--output", "done"])
    assert exit_info.value.code == 2 and "--output done holds a finished run's model.keras" in capsys.readouterr().err
    assert (prepared / "done" / "model.keras").read_text() == "a finished run's model"
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--output", "a_file"])
    assert exit_info.value.code == 2 and "--output a_file is a file; give a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--output", "a_file/run"])
    assert exit_info.value.code == 2 and "--output a_file/run: a_file is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        pack.main(["--output", "data"])
    assert exit_info.value.code == 2 and "--output data is a folder; give the pack's file name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        pack.main(["--output", "a_file/packs/fer.npz"])
    assert exit_info.value.code == 2 and "--output a_file/packs/fer.npz: a_file is a file, not a folder" in \
        capsys.readouterr().err
    assert not list(prepared.glob("*.partial.npz"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(prepared, capsys, monkeypatch):
    import os

    (prepared / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.basename(path) != "locked")  # tests run as root
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--output", "locked"])
    assert exit_info.value.code == 2 and "--output locked: folder locked is not writable" in capsys.readouterr().err
    assert not list((prepared / "locked").iterdir())

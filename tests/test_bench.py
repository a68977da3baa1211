"""The throughput benchmark: a training row per model with ratios to `seed`, and an inference table."""
import subprocess
import sys

import pytest
import yaml

from ferpipe import bench
from ferpipe.training import compile_model
from conftest import REPO


def test_bench_prints_a_row_per_model_at_its_batch_size_with_ratios_to_seed_at_44_and_48_px(capsys, monkeypatch,
                                                                                          tmp_path):
    # narrow nets and small prediction batches: the table, not the nets' speed, is under test here
    monkeypatch.setitem(bench.DEFAULT_WIDTH, "seed", 8)
    monkeypatch.setattr(bench.Timed, "PREDICT_BATCH", 32)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # the model params.yaml names is timed at its train.width and train.batch_size; this test names compact
    params["train"].update(model="compact", width=8, batch_size=64)
    params["train"]["augment"]["crop"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bench.main(["--models", "seed", "compact", "--batch-size", "compact=32", "--train-images", "32",
                "--predict-images", "32", "--rounds", "2", "--precision", "float32", "--no-inference",
                "--params", str(tmp_path / "params.yaml")])
    out = capsys.readouterr().out
    assert "CPU:" in out and "| model | params | batch | train img/s | (range) |" in out
    assert "round 1/2: seed" in out and "round 2/2: seed" in out and "medians of 2 rounds" in out
    assert "| train vs seed | predict vs seed | train vs seed (48 px) | predict vs seed (48 px) |" in out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith(("| seed", "| compact"))}
    assert list(rows) == ["seed", "seed (48 px)", "compact"]  # crops to 44 px (set above)
    assert rows["seed"][7].strip() == "1.00x" and rows["seed (48 px)"][9].strip() == "1.00x"
    counts = {name: int(row[2].replace(",", "")) for name, row in rows.items()}
    assert counts["seed (48 px)"] > counts["seed"]  # whole faces: a larger dense layer
    assert counts["compact"] < 200_000  # width 8 (1.4M parameters at width 32)
    assert {name: int(row[3]) for name, row in rows.items()} == {"seed": 64, "seed (48 px)": 64, "compact": 32}
    for row in rows.values():
        low, high = (float(v) for v in row[5].split("-"))
        assert 0 < low <= float(row[4]) <= high     # the median lies within the range of the rounds
        ratio = float(row[4]) / float(rows["seed"][4])  # from the printed (rounded) rates
        assert float(row[7].strip().rstrip("x")) == pytest.approx(ratio, rel=0.02, abs=0.01)
    assert "| runtime |" not in out


@pytest.mark.parametrize("flag, layer, said", [("--fused", "RandomAffine", "augmentation fused (one resampling)"),
                                               ("--no-fused", "RandomRotation", "augmentation separate layers")])
def test_bench_can_override_the_augmentation(capsys, monkeypatch, flag, layer, said):
    built = []
    monkeypatch.setattr(bench, "compile_model", lambda train: built.append(train) or compile_model(train))
    bench.main(["--models", "small", "--train-images", "16", "--predict-images", "16", "--rounds", "1",
                "--precision", "float32", "--no-inference", flag, "--params", str(REPO / "params.yaml")])
    assert said in capsys.readouterr().out
    assert built and all(train["augment"]["fused"] == (flag == "--fused") for train in built)
    names = {type(l).__name__ for l in compile_model({**built[0], "width": 4}).layers}
    assert layer in names


def test_bench_times_at_least_two_batches_per_call():
    """The first batch of each call is left out, so a call needs a second one to be timed."""
    from ferpipe import params

    train = {**params.load(REPO / "params.yaml")["train"], "width": 4, "batch_size": 16, "precision": "float32"}
    timed = bench.Timed(train, train_images=8, predict_images=8)
    assert timed.train_images == 32 and timed.predict_images == 2 * bench.Timed.PREDICT_BATCH
    timed.time_once()
    assert len(timed.train_rates) == len(timed.predict_rates) == 1
    assert timed.train_rates[0] > 0 and timed.predict_rates[0] > 0


def test_bench_measures_keras_and_onnx_inference(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trained model here: a fresh one is exported
    bench.main(["--no-training", "--predict-images", "64", "--latency-runs", "5", "--precision", "float32",
                "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    named = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model"]
    assert f"a fresh {named} model" in out and "is missing" in out and "| runtime | faces/s (batched) | single face p50 ms |" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| Keras", "| ONNX Runtime"))]
    assert [row[1].split("(")[-1].strip() for row in rows] == ["float32)", "float32)", "int8)"]
    for row in rows:
        faces_per_s, p50, p99 = (float(cell) for cell in row[2:5])
        assert faces_per_s > 0 and 0 < p50 <= p99
    assert not list(tmp_path.iterdir())  # the temporary export is cleaned up


def test_bench_exports_the_first_members_network_when_models_are_listed(capsys, tmp_path, monkeypatch):
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(model=["lean", "small"], members=2, width=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    bench.main(["--no-training", "--predict-images", "32", "--latency-runs", "2", "--precision", "float32"])
    assert "a fresh lean model (width 8)" in capsys.readouterr().out


def test_bench_times_the_listed_models_at_train_width_and_the_others_at_their_default():
    from ferpipe import params

    base = {**params.load(REPO / "params.yaml")["train"], "model": ["small", "lean"], "members": 2, "width": 8}
    recipes = bench.model_recipes(base, ["small", "lean", "compact"])
    assert {name: recipe["width"] for name, recipe in recipes.items()} == {
        "small": 8, "lean": 8, "compact": bench.DEFAULT_WIDTH["compact"]}
    assert all(recipe["model"] == name for name, recipe in recipes.items())


def test_batch_sizes_apply_to_the_named_models_and_seed_on_whole_faces():
    from ferpipe import params

    base = {**params.load(REPO / "params.yaml")["train"], "batch_size": 64}
    recipes = bench.model_recipes(base, ["seed", "strided", "small"], {"strided": 128, "seed": 32})
    assert {name: recipe["batch_size"] for name, recipe in recipes.items()} == {
        "seed": 32, "seed (48 px)": 32, "strided": 128, "small": 64}


@pytest.mark.parametrize("given, said", [
    (["--batch-size", "strided=0"], "the batch size must be a whole number of at least 1, as in strided=128"),
    (["--batch-size", "strided=big"], "the batch size must be a whole number of at least 1"),
    (["--batch-size", "strided"], "the batch size must be a whole number of at least 1"),
    (["--batch-size", "resnet=128"], "'resnet=128': the model must be one of seed, compact"),
    (["--models", "seed", "small", "--batch-size", "strided=128"], "--batch-size names strided, which --models does not time"),
])
def test_bench_refuses_a_bad_batch_size(capsys, given, said):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(given)
    assert exit_info.value.code == 2 and said in capsys.readouterr().err


def test_bench_refuses_counts_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_bench_refuses_to_skip_both_parts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--no-training", "--no-inference"])
    assert exit_info.value.code == 2 and "leave nothing to measure" in capsys.readouterr().err


@pytest.mark.parametrize("content, said", [
    (None, "nowhere.yaml: params file not found"),
    ("train:\n  lr: -1\n", "invalid {path}:\n"),
])
def test_bench_reports_a_missing_or_bad_params_file_without_a_traceback(capsys, tmp_path, content, said):
    path = tmp_path / "nowhere.yaml"
    if content is not None:
        path.write_text(content)
    assert bench.main(["--params", str(path)]) == 2
    assert said.format(path=path) in capsys.readouterr().err


def test_bench_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "resnet"])
    assert exit_info.value.code == 2 and "invalid choice: 'resnet'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["-m", "ferpipe", "bench"], ["-m", "ferpipe.bench"]])
def test_a_params_error_exits_2_however_bench_is_started(tmp_path, command):
    result = subprocess.run([sys.executable, *command, "--params", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "ferpipe bench: error:" in result.stderr and "missing.yaml" in result.stderr

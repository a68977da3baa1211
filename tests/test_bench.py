"""The throughput benchmark: a training row per model with ratios to `seed`, and an inference table."""
from ferpipe import bench
from conftest import REPO


def test_bench_prints_a_row_per_model(capsys):
    bench.main(["--models", "seed", "compact", "--train-images", "32", "--predict-images", "32", "--rounds", "2",
                "--precision", "float32", "--no-inference", "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    assert "CPU:" in out and "| model | params | train img/s | (range) |" in out
    assert "round 1/2: seed" in out and "round 2/2: seed" in out and "medians of 2 rounds" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| seed", "| compact"))]
    assert len(rows) == 2
    assert rows[0][6].strip() == "1.00x"
    for row in rows:
        low, high = (float(v) for v in row[4].split("-"))
        assert 0 < low <= float(row[3]) <= high     # the median lies within the range of the rounds
    assert "| runtime |" not in out


def test_bench_measures_keras_and_onnx_inference(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trained model here: a fresh one is exported
    bench.main(["--no-training", "--predict-images", "64", "--latency-runs", "5", "--precision", "float32",
                "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    assert "a fresh compact model" in out and "is missing" in out and "| runtime | faces/s (batched) | single face p50 ms |" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith(("| Keras", "| ONNX Runtime"))]
    assert [row[1].split("(")[-1].strip() for row in rows] == ["float32)", "float32)", "int8)"]
    for row in rows:
        faces_per_s, p50, p99 = (float(cell) for cell in row[2:5])
        assert faces_per_s > 0 and 0 < p50 <= p99
    assert not list(tmp_path.iterdir())  # the temporary export is cleaned up


def test_bench_refuses_counts_below_one(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds must be at least 1, got 0" in capsys.readouterr().err

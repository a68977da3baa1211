"""The throughput benchmark runs and prints one table row per model, with ratios to `seed`."""
from ferpipe import bench
from conftest import REPO


def test_bench_prints_a_row_per_model(capsys):
    bench.main(["--models", "seed", "compact", "--train-images", "32", "--predict-images", "32",
                "--precision", "float32", "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    assert "CPU:" in out and "| model | params | train img/s |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| seed", "| compact"))]
    assert len(rows) == 2
    assert rows[0].split("|")[5].strip() == "1.00x"

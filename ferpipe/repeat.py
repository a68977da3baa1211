"""Run-to-run spread of a short training config on this machine, with `train.deterministic` off and on.

    ferpipe repeat [--runs 3] [--epochs 2] [--train-images 4000] [--modes off on] [--output FILE]

Each run is a fresh process, as `dvc repro` starts one: it trains with the train params of
params.yaml (only `epochs`, `time_budget_minutes` and `deterministic` changed; one network, the
first member's when `train.members` > 1) on a fixed random subset of data/prepared's train split,
then scores the val and test splits without TTA. The table gives each run's accuracies, training
speed and a hash of its final weights; identical hashes mean bit-identical runs. All runs use the
same seed (train.seed), so the spread comes from the machine and backend (kernel scheduling, thread
counts), not from seed-to-seed variance. Needs data/prepared (run `dvc repro prepare` first).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from ferpipe.cli import output_file_problem

RESULT_PREFIX = "REPEAT-RESULT "
PREPARED_DIR = Path("data/prepared")


def single_run(deterministic: bool, epochs: int, train_images: int) -> dict:
    """Train once in this process and return its figures."""
    import ferpipe.stage  # noqa: F401  (first: library caches stay in the project, as in the stages)
    import keras
    import numpy as np

    from ferpipe import params
    from ferpipe.data import PreparedData
    from ferpipe.evaluation import predict_probabilities, summarize
    from ferpipe.training import (cpu_name, enable_determinism, fit, member_params, resolve_precision,
                                  training_targets)

    train = member_params(params.load()["train"], 0)
    train.update(epochs=epochs, time_budget_minutes=0, deterministic=deterministic)
    data = PreparedData(PREPARED_DIR)
    splits = {name: data.split(name)[:2] for name in ("train", "val", "test")}
    x_train, y_train = splits["train"]
    pick = np.sort(np.random.default_rng(0).permutation(len(x_train))[:train_images])
    x_train, y_train = x_train[pick], y_train[pick]
    if deterministic:
        enable_determinism()  # before the teacher's predictions (distillation), which fit() would not cover
    targets = training_targets(train, x_train, y_train)  # not timed: training is
    start = time.perf_counter()
    model, history = fit(train, (x_train, y_train), splits["val"], verbose=0, targets=targets)
    seconds = time.perf_counter() - start
    epochs_run = len(history.history["loss"])  # early stopping may end sooner
    scores = {}
    for split in ("val", "test"):
        x, y = splits[split]
        summary = summarize(y, predict_probabilities(model, x, "none", batch_size=256))
        scores[split] = {"accuracy": summary["accuracy"], "loss": summary["loss"]}
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return {"deterministic": deterministic, "model": train["model"], "width": train["width"],
            "backend": keras.backend.backend(),
            "precision": resolve_precision(train["precision"]), "cpu": cpu_name(),
            "train_images": len(x_train), "epochs": epochs_run, "train_seconds": round(seconds, 1),
            "train_images_per_second": round(len(x_train) * epochs_run / seconds, 1),
            "weights_sha256": digest.hexdigest(), **scores}


def setup_problem() -> str | None:
    """What would make every run fail (bad params, no prepared data), found before the first run's process
    spends seconds loading TensorFlow."""
    from ferpipe import FerError, params
    from ferpipe.data import PreparedData

    try:
        params.load()
        PreparedData(PREPARED_DIR)
    except FerError as err:
        return str(err)
    return None


def run_in_fresh_process(deterministic: bool, epochs: int, train_images: int) -> dict:
    command = [sys.executable, "-m", "ferpipe.repeat", "--child", "on" if deterministic else "off",
               "--epochs", str(epochs), "--train-images", str(train_images)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"ferpipe repeat: a run failed (exit {done.returncode})")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def spread_line(mode: str, runs: list[dict]) -> str:
    test = [run["test"]["accuracy"] for run in runs]
    speed = sum(run["train_images_per_second"] for run in runs) / len(runs)
    hashes = len({run["weights_sha256"] for run in runs})
    if len(runs) < 2:
        return f"deterministic {mode}: one run (test accuracy {test[0]:.4f}, {speed:.0f} training images/s); spread n/a"
    return (f"deterministic {mode}: test accuracy {min(test):.4f}..{max(test):.4f} (spread {max(test) - min(test):.4f}), "
            f"{hashes} distinct final weights in {len(runs)} runs, {speed:.0f} training images/s on average")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferpipe repeat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--train-images", type=int, default=4000, help="train subset size (default 4000)")
    parser.add_argument("--modes", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="train.deterministic values to try (default: off on)")
    parser.add_argument("--output", type=Path, help="also write the runs as JSON here")
    parser.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("runs", "epochs", "train_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    bad_output = output_file_problem(args.output)  # checked now, not after the first run's minutes
    if bad_output:
        parser.error(bad_output)

    if args.child:
        from ferpipe import FerError

        try:
            result = single_run(args.child == "on", args.epochs, args.train_images)
        except FerError as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return 2
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    problem = setup_problem()
    if problem:
        print(f"ferpipe repeat: error: {problem}", file=sys.stderr)
        return 2
    results = {}
    for mode in dict.fromkeys(args.modes):  # each mode once, in the order given
        results[mode] = []
        for number in range(1, args.runs + 1):
            run = run_in_fresh_process(mode == "on", args.epochs, args.train_images)
            results[mode].append(run)
            if args.output:  # after every run: a failure later loses nothing
                try:
                    args.output.write_text(json.dumps(results, indent=2) + "\n")
                except OSError as err:
                    print(f"ferpipe repeat: error: cannot write --output {args.output}: {err.strerror}",
                          file=sys.stderr)
                    return 2
            print(f"deterministic {mode:<3} run {number}: test acc {run['test']['accuracy']:.4f} "
                  f"loss {run['test']['loss']:.4f}, val acc {run['val']['accuracy']:.4f}, "
                  f"{run['train_images_per_second']:.0f} img/s, weights {run['weights_sha256'][:12]}", flush=True)
    first = next(iter(results.values()))[0]
    print(f"\nmodel {first['model']} (width {first['width']}), up to {args.epochs} epochs on "
          f"{first['train_images']} train images, same seed in every run, backend {first['backend']}, "
          f"precision {first['precision']}, CPU {first['cpu']}")
    for mode, runs in results.items():
        print(spread_line(mode, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

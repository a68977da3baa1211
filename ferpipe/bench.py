"""Throughput benchmark: training and inference images/s of each model on this machine.

    python -m ferpipe.bench [--models seed compact vgg] [--train-images 1024] [--precision auto]

Each model uses the train params from params.yaml with only `model` (and the width that
model is sized for) changed. Timings exclude a warm-up pass that compiles the graph.
"""
from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from ferpipe import IMAGE_SIZE, params as params_module
from ferpipe.training import compile_model, cpu_name, one_hot, set_precision

DEFAULT_WIDTH = {"seed": 64, "compact": 32, "vgg": 64}


def measure(train: dict, train_images: int, predict_images: int) -> dict:
    model = compile_model(train)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (max(train_images, predict_images), IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
    y = one_hot(rng.integers(0, 7, len(x)))
    bs = train["batch_size"]
    model.fit(x[: 2 * bs], y[: 2 * bs], batch_size=bs, epochs=1, verbose=0)  # warm-up / compile
    start = time.perf_counter()
    model.fit(x[:train_images], y[:train_images], batch_size=bs, epochs=1, verbose=0)
    train_rate = train_images / (time.perf_counter() - start)
    model.predict(x[:512], batch_size=256, verbose=0)
    start = time.perf_counter()
    model.predict(x[:predict_images], batch_size=256, verbose=0)
    predict_rate = predict_images / (time.perf_counter() - start)
    return {"params": model.count_params(), "train": train_rate, "predict": predict_rate}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["seed", "compact", "vgg"])
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--predict-images", type=int, default=4096)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=None,
                        help="override train.precision")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    base = params_module.load(args.params)["train"]
    precision = set_precision(args.precision or base["precision"])
    print(f"backend {keras.backend.backend()}, precision {precision}, CPU: {cpu_name()}")
    rows = {}
    for name in args.models:
        train = {**base, "model": name, "width": DEFAULT_WIDTH.get(name, base["width"])}
        if name == base["model"]:
            train["width"] = base["width"]
        rows[name] = measure(train, args.train_images, args.predict_images)
        print(f"  measured {name}: {rows[name]['train']:.0f} train img/s", flush=True)
    ref = rows.get("seed")
    print(f"\n| model | params | train img/s | predict img/s | train vs seed | predict vs seed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        ratio_t = f"{row['train'] / ref['train']:.2f}x" if ref else "-"
        ratio_p = f"{row['predict'] / ref['predict']:.2f}x" if ref else "-"
        print(f"| {name} | {row['params']:,} | {row['train']:.0f} | {row['predict']:.0f} | {ratio_t} | {ratio_p} |")


if __name__ == "__main__":
    main()

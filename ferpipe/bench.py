"""Throughput benchmark on this machine, measured in one run:

1. training and prediction images/s of each model, with ratios to the `seed` model;
2. inference of the deployed model: faces/s in batches and single-face latency (p50, p99),
   for Keras and for the ONNX export under ONNX Runtime.

    ferpipe bench [--models seed compact small lean strided residual vgg] [--train-images 1024] [--rounds 3]
                  [--batch-size strided=128 ...] [--precision auto] [--fused | --no-fused]
                  [--no-training] [--no-inference] [--latency-runs 1000]

Each model of part 1 uses the train params from params.yaml with only `model` (and the width
that model is sized for) changed, and its batch size where --batch-size names it; when those params
crop to 44 px, `seed` is also timed on whole 48 px faces, as the notebook trains it. Rates come from
the median batch time. Part 2 uses models/model.keras and models/model.onnx when both exist, else
a freshly built default model exported to a temporary folder (speed does not depend on the weights).
Timings exclude a warm-up pass.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from ferpipe import IMAGE_SIZE, MODELS, FerError, params as params_module
from ferpipe.inference import INT8_FILE, KERAS_FILE, ONNX_FILE, OnnxModel
from ferpipe.training import compile_model, cpu_name, member_models, one_hot, set_precision

DEFAULT_WIDTH = {"seed": 64, "compact": 32, "small": 16, "lean": 16, "strided": 24, "residual": 32, "vgg": 64}
SEED_48 = "seed (48 px)"


class BatchTimer(keras.callbacks.Callback):
    """Seconds per training and prediction batch. Whole fit()/predict() calls are not timed: on the
    2-core machines here their durations jump between levels 2x apart, while batch times within a call
    are steady (though for the small nets they too can sit at a slower level for a while: compare runs)."""

    def __init__(self):
        super().__init__()
        self.times = {"train": [], "predict": []}

    def _begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def _end(self, kind):
        self.times[kind].append(time.perf_counter() - self._start)

    on_train_batch_begin = on_predict_batch_begin = _begin

    def on_train_batch_end(self, batch, logs=None):
        self._end("train")

    def on_predict_batch_end(self, batch, logs=None):
        self._end("predict")


class Timed:
    """One model of part 1: compiled and warmed up once, then timed as often as asked."""

    PREDICT_BATCH = 256

    def __init__(self, train: dict, train_images: int, predict_images: int):
        self.model = compile_model(train)
        rng = np.random.default_rng(0)
        self.batch_size = train["batch_size"]
        # at least two batches each: the first batch of every call is left out (it carries the call's overhead)
        self.train_images = max(train_images, 2 * self.batch_size)
        self.predict_images = max(predict_images, 2 * self.PREDICT_BATCH)
        self.x = rng.integers(0, 256, (max(self.train_images, self.predict_images), IMAGE_SIZE, IMAGE_SIZE, 1)
                              ).astype("float32")
        self.y = one_hot(rng.integers(0, 7, len(self.x)))
        bs = self.batch_size
        self.model.fit(self.x[: 2 * bs], self.y[: 2 * bs], batch_size=bs, epochs=1, verbose=0)  # compile
        self.model.predict(self.x[: 2 * self.PREDICT_BATCH], batch_size=self.PREDICT_BATCH, verbose=0)
        self.train_rates, self.predict_rates = [], []

    def time_once(self) -> None:
        """One round: images/s from the median batch time of one fit() and one predict() call."""
        timer = BatchTimer()
        self.model.fit(self.x[: self.train_images], self.y[: self.train_images], batch_size=self.batch_size,
                       epochs=1, verbose=0, callbacks=[timer])
        self.model.predict(self.x[: self.predict_images], batch_size=self.PREDICT_BATCH, verbose=0,
                           callbacks=[timer])
        self.train_rates.append(self.batch_size / float(np.median(timer.times["train"][1:])))
        self.predict_rates.append(self.PREDICT_BATCH / float(np.median(timer.times["predict"][1:])))

    def row(self) -> dict:
        return {"params": self.model.count_params(), "train": float(np.median(self.train_rates)),
                "predict": float(np.median(self.predict_rates)), "train_range": (min(self.train_rates), max(self.train_rates))}


def faces_per_second(model, faces: np.ndarray, batch_size: int) -> float:
    model.predict(faces[:batch_size], batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.predict(faces, batch_size=batch_size, verbose=0)
    return len(faces) / (time.perf_counter() - start)


def latency_ms(model, face: np.ndarray, runs: int) -> tuple[float, float]:
    """p50 and p99 of one-face predict() calls, in milliseconds."""
    for _ in range(10):
        model.predict(face, verbose=0)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(face, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def deployed_models(train: dict, workdir: Path) -> tuple[dict, str]:
    """{runtime name: model} for the trained model files, or for a fresh default model."""
    from ferpipe.export import compute_dtype, export_onnx, quantize_int8
    from ferpipe.model import build_model, load_model
    from ferpipe.training import member_params

    if KERAS_FILE.is_file() and ONNX_FILE.is_file():
        keras_model, onnx_file, int8_file = load_model(KERAS_FILE), ONNX_FILE, INT8_FILE
        origin = ", ".join(str(f) for f in (KERAS_FILE, ONNX_FILE, INT8_FILE) if f.is_file())
    else:
        fresh = member_params(train, 0)  # the first member's network when train.model lists several
        keras_model, onnx_file, int8_file = build_model(fresh), workdir / "model.onnx", workdir / "model.int8.onnx"
        export_onnx(keras_model, onnx_file)
        noise = np.random.default_rng(0).integers(0, 256, (64, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        quantize_int8(onnx_file, int8_file, noise)  # calibration data does not change the speed
        missing = " and ".join(str(f) for f in (KERAS_FILE, ONNX_FILE) if not f.is_file())
        origin = f"a fresh {fresh['model']} model (width {train['width']}), since {missing} is missing"
    import onnxruntime

    models = {f"Keras {keras.__version__} ({compute_dtype(keras_model)})": keras_model,
              f"ONNX Runtime {onnxruntime.__version__} (float32)": OnnxModel(onnx_file)}
    if int8_file.is_file():
        models[f"ONNX Runtime {onnxruntime.__version__} (int8)"] = OnnxModel(int8_file)
    return models, origin


def inference_table(train: dict, faces: int, batch_size: int, runs: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (faces, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
    with tempfile.TemporaryDirectory() as workdir:
        models, origin = deployed_models(train, Path(workdir))
        print(f"\ninference of {origin}: {faces} faces in batches of {batch_size}; {runs} single-face calls")
        print("| runtime | faces/s (batched) | single face p50 ms | single face p99 ms |")
        print("|---|---:|---:|---:|")
        for name, model in models.items():
            rate = faces_per_second(model, x, batch_size)
            p50, p99 = latency_ms(model, x[:1], runs)
            print(f"| {name} | {rate:.0f} | {p50:.2f} | {p99:.2f} |", flush=True)


def model_batch_size(text: str) -> tuple[str, int]:
    """`MODEL=N` of --batch-size, e.g. strided=128."""
    name, _, size = text.partition("=")
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"{text!r}: the model must be one of {', '.join(MODELS)}, as in strided=128")
    if not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the batch size must be a whole number of at least 1, as in {name}=128")
    return name, int(size)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferpipe bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="timings per model, taken in turn (default 3)")
    parser.add_argument("--predict-images", type=int, default=4096)
    parser.add_argument("--batch-size", nargs="+", type=model_batch_size, default=[], metavar="MODEL=N",
                        help="train these models at batch size N (the others at train.batch_size), e.g. strided=128")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default=None,
                        help="override train.precision")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                        help="override train.augment.fused for every model (--no-fused: the separate layers)")
    parser.add_argument("--no-training", action="store_true", help="skip part 1")
    parser.add_argument("--no-inference", action="store_true", help="skip part 2")
    parser.add_argument("--latency-runs", type=int, default=1000, help="single-face calls per runtime")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    for option in ("rounds", "train_images", "predict_images", "latency_runs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    unused = sorted({name for name, _ in args.batch_size} - set(args.models))
    if unused:
        parser.error(f"--batch-size names {', '.join(unused)}, which --models does not time")
    if args.no_training and args.no_inference:
        parser.error("--no-training and --no-inference together leave nothing to measure")
    try:
        base = params_module.load(args.params)["train"]
    except FerError as err:
        print(f"ferpipe bench: error: {err}", file=sys.stderr)
        return 2
    if args.fused is not None:
        base = {**base, "augment": {**base["augment"], "fused": args.fused}}
    precision = set_precision(args.precision or base["precision"])
    augmentation = "fused (one resampling)" if base["augment"]["fused"] else "separate layers"
    print(f"backend {keras.backend.backend()}, precision {precision}, augmentation {augmentation}, CPU: {cpu_name()}")
    if not args.no_training:
        training_table(base, args)
    if not args.no_inference:
        inference_table(base, args.predict_images, Timed.PREDICT_BATCH, args.latency_runs)


def model_recipes(base: dict, models: list[str], batch_sizes: dict[str, int] | None = None) -> dict[str, dict]:
    """{row name: train params} for part 1: each model with the current params, its width from
    DEFAULT_WIDTH unless train.model names it (alone or in its list), its batch size from
    `batch_sizes` if there. When the params crop to 44 px, `seed` is also timed on whole 48 px
    faces, as the notebook and the seed reference row train it."""
    current = member_models(base)
    batch_sizes = batch_sizes or {}
    recipes = {}
    for name in models:
        width = base["width"] if name in current else DEFAULT_WIDTH[name]
        batch_size = batch_sizes.get(name, base["batch_size"])
        recipes[name] = train = {**base, "model": name, "width": width, "batch_size": batch_size}
        if name == "seed" and base["augment"]["crop"]:
            recipes[SEED_48] = {**train, "augment": {**base["augment"], "crop": False}}
    return recipes


def training_table(base: dict, args) -> None:
    """Every model is timed once per round, the models in turn, so that a change in the machine's
    speed during the run hits them all alike; medians over the rounds."""
    timed = {name: Timed(train, args.train_images, args.predict_images)
             for name, train in model_recipes(base, args.models, dict(args.batch_size)).items()}
    for round_ in range(1, args.rounds + 1):
        for model in timed.values():
            model.time_once()
        print(f"  round {round_}/{args.rounds}: " + ", ".join(
            f"{name} {model.train_rates[-1]:.0f}" for name, model in timed.items()) + " train img/s", flush=True)
    rows = {name: model.row() for name, model in timed.items()}
    references = [name for name in ("seed", SEED_48) if name in rows]
    print(f"\nmedians of {args.rounds} rounds (images/s from the median batch time)")
    ratio_columns = [f"{kind} vs {ref}" for ref in references for kind in ("train", "predict")]
    print("| " + " | ".join(["model", "params", "batch", "train img/s", "(range)", "predict img/s", *ratio_columns]) + " |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(references))
    for name, row in rows.items():
        low, high = row["train_range"]
        ratios = "".join(f" {row['train'] / rows[ref]['train']:.2f}x | {row['predict'] / rows[ref]['predict']:.2f}x |"
                         for ref in references)
        print(f"| {name} | {row['params']:,} | {timed[name].batch_size} | {row['train']:.0f} | {low:.0f}-{high:.0f} | {row['predict']:.0f} |" + ratios)


if __name__ == "__main__":
    sys.exit(main())

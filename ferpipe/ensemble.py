"""Score an ensemble of trained models (their probabilities averaged) on the validation and test splits.

    ferpipe ensemble MODEL.keras [MODEL.keras ...] [--tta MODE] [--output FILE]

Each model, and every combination of two or more of them, is scored on data/prepared's
validation split; the combination with the best validation accuracy is the one chosen (ties: the
lowest validation loss), and the test folder only reports what each did (accuracy, loss, macro-F1,
PublicTest / PrivateTest). A single model is scored alone (one that `ferpipe fit` trained elsewhere, say).
Models trained on other train/val splits than data/prepared's must not have seen its validation
images (a model trained with `prepare.drop_defects` qualifies: its split is a subset of the default's).
TTA mode and batch size default to params.yaml's `evaluate` section, as in the evaluate stage.
Needs data/prepared (run `dvc repro prepare` first).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from ferpipe import TTA_MODES, FerError, params as params_module, require_face_classifier
from ferpipe.cli import output_file_problem

PREPARED_DIR = Path("data/prepared")
MAX_MODELS = 8  # 255 rows scored: 8 single models and 247 combinations


def scores(labels, probs, subsets=None) -> dict:
    from ferpipe.evaluation import subset_scores, summarize

    summary = summarize(labels, probs)
    result = {key: summary[key] for key in ("accuracy", "loss", "macro_f1")}
    if subsets is not None:
        result |= {name: part["accuracy"] for name, part in subset_scores(labels, probs, subsets).items()}
    return result


def choose(rows: list[dict]) -> dict:
    """The row with the best validation accuracy; among equals, the lowest validation loss (and then the
    first listed, the smaller ensemble). 2,872 validation images make ties in accuracy common."""
    return max(rows, key=lambda row: (row["validation"]["accuracy"], -row["validation"]["loss"]))


def evaluate_ensembles(model_files: list[Path], tta: str, batch_size: int) -> dict:
    """Scores of each model and of each combination; 'chosen' is the best on validation."""
    import numpy as np

    from ferpipe.data import PreparedData, test_subset
    from ferpipe.evaluation import check_tta, predict_probabilities
    from ferpipe.model import load_model

    data = PreparedData(PREPARED_DIR)
    x_val, y_val, _ = data.split("val")
    x_test, y_test, paths = data.split("test")
    if not len(x_val):
        raise FerError("data/prepared has no validation split to choose the ensemble on (prepare.val_fraction)")
    subsets = np.array([test_subset(p) for p in paths])
    models = []  # a few MB each, at most MAX_MODELS
    for path in model_files:
        try:
            models.append(load_model(path))
        except Exception as err:  # Keras raises ValueError (and zipfile/h5py errors) for a damaged or foreign file
            raise FerError(f"{path} cannot be loaded as a Keras model (damaged or incomplete?): {err}") from err
    for path, model in zip(model_files, models):  # refuse a model before any prediction
        require_face_classifier(model.input_shape, model.output_shape, str(path))
        check_tta(model, tta, str(path))
    val_probs, test_probs = [], []
    for path, model in zip(model_files, models):
        print(f"predicting with {path} ({tta} TTA)", flush=True)
        val_probs.append(predict_probabilities(model, x_val, tta, batch_size))
        test_probs.append(predict_probabilities(model, x_test, tta, batch_size))
    rows = []
    for size in range(1, len(model_files) + 1):
        for members in itertools.combinations(range(len(model_files)), size):
            rows.append({
                "models": [str(model_files[i]) for i in members],
                "validation": scores(y_val, np.mean([val_probs[i] for i in members], axis=0)),
                "test": scores(y_test, np.mean([test_probs[i] for i in members], axis=0), subsets),
            })
    return {"tta": tta, "validation_images": int(len(y_val)), "test_images": int(len(y_test)),
            "combinations": rows, "chosen": choose(rows)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferpipe ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help=".keras files")
    parser.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: params.yaml's evaluate.tta)")
    parser.add_argument("--batch-size", type=int, help="prediction batch (default: params.yaml's evaluate.batch_size)")
    parser.add_argument("--params", default="params.yaml", help="where the defaults come from (default params.yaml)")
    parser.add_argument("--output", type=Path, help="also write every combination's scores as JSON here")
    args = parser.parse_args(argv)
    files = list(dict.fromkeys(args.models))  # a file given twice is scored once
    if len(files) > MAX_MODELS:
        parser.error(f"at most {MAX_MODELS} models (every combination is scored), got {len(files)}")
    others = [str(path) for path in files if path.suffix != ".keras"]
    if others:
        parser.error("not .keras files: " + ", ".join(others) + " (ONNX exports are for ferpipe predict)")
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        parser.error("model file(s) not found: " + ", ".join(missing))
    bad_output = output_file_problem(args.output)  # checked now, not after minutes of predictions
    if bad_output:
        parser.error(bad_output)
    if args.output and args.output.resolve() in {path.resolve() for path in files}:
        parser.error(f"--output {args.output} is one of the models; give another file name")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        if args.tta is None or args.batch_size is None:
            defaults = params_module.load(args.params, ["evaluate"])["evaluate"]
            args.tta = args.tta or defaults["tta"]
            args.batch_size = args.batch_size or defaults["batch_size"]
        result = evaluate_ensembles(files, args.tta, args.batch_size)
    except FerError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(f"\n{'models':<60} {'val acc':>8} {'test acc':>8} {'loss':>7} {'Private':>8} {'macro-F1':>8}")
    for row in result["combinations"]:
        names = " + ".join(row["models"])
        test = row["test"]
        print(f"{names[:60]:<60} {row['validation']['accuracy']:>8.4f} {test['accuracy']:>8.4f} "
              f"{test['loss']:>7.4f} {test.get('private_test', float('nan')):>8.4f} {test['macro_f1']:>8.4f}")
    chosen = result["chosen"]
    print(f"\nchosen on validation: {' + '.join(chosen['models'])}: val accuracy "
          f"{chosen['validation']['accuracy']:.4f}, test accuracy {chosen['test']['accuracy']:.4f}")
    if args.output:
        try:
            args.output.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as err:  # e.g. a link to a folder that is gone: the table above is all there is
            print(f"ferpipe ensemble: error: cannot write --output {args.output}: {err.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

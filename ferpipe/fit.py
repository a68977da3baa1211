"""Train as the train stage does, where there is no DVC: a lent GPU machine, or any other.

    ferpipe fit --output DIR [--pack FILE | --prepared data/prepared] [--params params.yaml]

The train stage's training (fit_members: augmentation, LR schedule, early stopping, members, time
budget, all from the params file's train section) without DVC and DVCLive: each epoch's logs are
printed and appended to DIR/epochs.jsonl as they come, so that a run stopped from outside keeps
them. Writes DIR/model.keras and DIR/summary.json (the train stage's summary, plus the backend, the
machine and whether the pack's pixels matched the prepare stage's). An interrupted run goes on from
its last completed epoch when started again with the same DIR; a DIR that holds a finished run is
refused, not overwritten. Score the model where the test images
are: `ferpipe ensemble DIR/model.keras`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ferpipe import FerError, params as params_module
from ferpipe.cli import output_folder_problem


def epoch_logger(path: Path):
    """A callback appending {member, epoch, logs...} lines to `path` (members follow one another)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        member = 0

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                self.member += 1
            line = {"member": self.member, "epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            with path.open("a") as log:
                log.write(json.dumps(line) + "\n")

    return EpochLog()


def training_data(pack: Path | None, prepared: Path):
    """(train, val, facts): (images, labels) pairs from a pack or a prepare stage output folder."""
    if pack is not None:
        from ferpipe.pack import Pack

        packed = Pack(pack)
        facts = {"data": str(pack), "prepared_md5": packed.prepared_md5, "images_decoded_differently": packed.differing}
        if packed.differing:
            print(f"WARNING: {packed.differing} images of the pack decode to other pixels here than in the prepare "
                  "stage that made it (another OpenCV build); summary.json records the count", flush=True)
        return packed.train, packed.val, facts
    from ferpipe.data import PreparedData

    data = PreparedData(prepared)
    return data.split("train")[:2], data.split("val")[:2], {"data": str(prepared)}


def fit_to_folder(train: dict, output: Path, pack: Path | None, prepared: Path) -> dict:
    import keras

    from ferpipe.evaluation import predict_probabilities, summarize
    from ferpipe.training import (accelerator_name, clear_resume_state, cpu_name, describe_kept, describe_models,
                                  enable_determinism, fit_members, resolve_precision, run_summary)

    if train["deterministic"]:
        enable_determinism()
    (x_train, y_train), (x_val, y_val), facts = training_data(pack, prepared)
    output.mkdir(parents=True, exist_ok=True)
    resume_dir = output / "resume"
    log_file = output / "epochs.jsonl"
    log_file.unlink(missing_ok=True)  # a resumed run replays its earlier epochs into the log
    machine = {"backend": keras.backend.backend(), "accelerator": accelerator_name(), "cpu": cpu_name(),
               "precision": resolve_precision(train["precision"])}
    print(f"training {describe_models(train)} (width {train['width']}) on {len(x_train)} images, validating on "
          f"{len(x_val)}; " + ", ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    start = time.monotonic()
    model, runs = fit_members(train, (x_train, y_train), (x_val, y_val), extra_callbacks=[epoch_logger(log_file)],
                              resume_dir=resume_dir)
    val = summarize(y_val, predict_probabilities(model, x_val, "none", batch_size=256))
    seconds = time.monotonic() - start
    summary = {**run_summary(train, runs, val, seconds, len(x_train)), **machine, **facts, "train": train}
    model.save(output / "model.keras")
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    clear_resume_state(resume_dir)
    print(f"saved {output / 'model.keras'} (weights of {describe_kept(train, runs)}; val accuracy "
          f"{val['accuracy']:.4f} without TTA) after {seconds / 60:.1f} min", flush=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferpipe fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="folder for model.keras, summary.json, epochs.jsonl")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pack", type=Path, help="train on a pack made by `ferpipe pack`")
    source.add_argument("--prepared", type=Path, default=Path("data/prepared"),
                        help="train on the prepare stage's output (default data/prepared)")
    parser.add_argument("--params", default="params.yaml", help="the params file (its train section; default params.yaml)")
    args = parser.parse_args(argv)
    problem = output_folder_problem(args.output, "--output")
    if problem:
        parser.error(f"{problem} (it gets model.keras, summary.json, epochs.jsonl)")
    if (args.output / "model.keras").exists() and not (args.output / "resume").exists():
        parser.error(f"--output {args.output} holds a finished run's model.keras; give another folder, or delete "
                     "that one to train again")
    try:
        train = params_module.load(args.params, ["train"])["train"]
        fit_to_folder(train, args.output, args.pack, args.prepared)
    except FerError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to go on from the last completed epoch", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

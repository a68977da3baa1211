"""prepare: index the FER-2013 image folders and split train/ into train and val (stratified, seeded).

Writes data/prepared/index.csv (path, label, split), data/prepared/images.npy (48x48 uint8,
row-aligned with the index), data/prepared/report.json (files excluded or converted),
metrics/dataset.json (images per class per split), and the data-quality check: counts in
metrics/data_quality.json, the duplicate groups and blank frames in data/quality/report.json.
With prepare.drop_defects, train/val images that are also in test, carry conflicting labels or
are blank are left out of the index (test stays whole); the quality report covers every image.
"""
from ferpipe.stage import run_stage  # first: keeps library caches in the project
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ferpipe import CLASS_NAMES, data, params
from ferpipe.quality import defects_to_drop, quality_report

OUT_DIR = Path("data/prepared")
STATS_FILE = Path("metrics/dataset.json")
QUALITY_METRICS_FILE = Path("metrics/data_quality.json")
QUALITY_REPORT_FILE = Path("data/quality/report.json")


def main():
    prepare = params.load()["prepare"]
    files = data.check_layout(prepare["data_root"])
    ignored = data.ignored_entries(prepare["data_root"])
    if ignored:
        print(f"WARNING: ignored {len(ignored)} entries that are not images of the 7 class folders of train/ "
              f"and test/:{listing(ignored)}", file=sys.stderr)
    report = data.DecodeReport()
    frames, arrays = [], []
    for split in data.SPLITS:
        for label in CLASS_NAMES:
            paths = files[split][label]
            images, ok = data.load_images(paths, report)
            kept = [p.as_posix() for p, good in zip(paths, ok) if good]
            frames.append(pd.DataFrame({"path": kept, "label": label, "split": split}))
            arrays.append(images)
            print(f"{split:>5}/{label:<8} {len(kept):>6} images", flush=True)
    index, images = pd.concat(frames, ignore_index=True), np.concatenate(arrays)

    is_train = (index["split"] == "train").to_numpy()
    labels = index["label"].map(CLASS_NAMES.index).to_numpy()
    is_val = np.zeros(len(index), dtype=bool)
    is_val[is_train] = data.stratified_split(labels[is_train], prepare["val_fraction"], prepare["seed"])
    index.loc[is_val, "split"] = "val"
    if not is_val.any():
        raise data.DataLayoutError(f"prepare.val_fraction={prepare['val_fraction']} leaves no validation image of the "
                                   f"{int(is_train.sum())} training images; raise it or add images")
    if is_train.all():
        raise data.DataLayoutError(f"no decodable test image in {prepare['data_root']}/test")

    order = index.sort_values(["split", "path"], kind="stable").index.to_numpy()
    index, images = index.iloc[order].reset_index(drop=True), images[order]
    quality = quality_report(index, images)  # on every image, whether or not defects are dropped
    dropped = sorted(defects_to_drop(index, quality)) if prepare["drop_defects"] else []
    if dropped:
        keep = ~index["path"].isin(dropped).to_numpy()
        index, images = index[keep].reset_index(drop=True), images[keep]
        print(f"prepare.drop_defects: dropped {len(dropped)} train/val images that are also in test, carry "
              f"conflicting labels or are blank (listed in {OUT_DIR / 'report.json'})", flush=True)
    for label in CLASS_NAMES:
        of_class = index["label"] == label
        if not (of_class & (index["split"] == "train")).any():
            held_out = int((of_class & (index["split"] == "val")).sum())
            if not held_out:
                why = " after prepare.drop_defects (set it to false)" if dropped else ""
                raise data.DataLayoutError(f"no decodable training image of class '{label}' is left{why}")
            raise data.DataLayoutError(
                f"all {held_out} training image(s) of class '{label}' went to validation with "
                f"prepare.val_fraction={prepare['val_fraction']}; lower val_fraction or add images of '{label}'")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    index.to_csv(OUT_DIR / data.INDEX_FILE, index=False)
    np.save(OUT_DIR / data.IMAGES_FILE, images)
    files_report = report.__dict__ | {"dropped_defects": dropped}
    (OUT_DIR / "report.json").write_text(json.dumps(files_report, indent=2) + "\n")

    counts = index.groupby(["split", "label"]).size()
    stats = {
        split: {label: int(counts.get((split, label), 0)) for label in CLASS_NAMES}
        | {"total": int((index["split"] == split).sum())}
        for split in ("train", "val", "test")
    }
    stats["excluded_undecodable"] = len(report.undecodable)
    stats["converted_to_grayscale"] = len(report.converted_to_grayscale)
    stats["resized_to_48x48"] = len(report.resized)
    stats["dropped_defects"] = len(dropped)
    STATS_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATS_FILE.write_text(json.dumps(stats, indent=2) + "\n")

    if report.undecodable:
        print(f"WARNING: excluded {len(report.undecodable)} file(s) that are not readable images "
              f"(full list in {OUT_DIR / 'report.json'}):{listing(report.undecodable)}", file=sys.stderr)
    for what, items in (("colour images converted to grayscale", report.converted_to_grayscale),
                        ("images resized to 48x48", report.resized)):
        if items:
            print(f"note: {len(items)} {what} (listed in {OUT_DIR / 'report.json'})", file=sys.stderr)
    print(f"indexed {len(index)} images: " + ", ".join(f"{s} {stats[s]['total']}" for s in ("train", "val", "test")))
    write_quality_report(quality)


def listing(items: list[str], shown: int = 20) -> str:
    """The first `shown` items, one per indented line, and how many more there are."""
    more = f"\n  ... and {len(items) - shown} more" if len(items) > shown else ""
    return "".join(f"\n  {item}" for item in items[:shown]) + more


def write_quality_report(quality: dict) -> None:
    QUALITY_METRICS_FILE.write_text(json.dumps(quality["counts"], indent=2) + "\n")
    QUALITY_REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    QUALITY_REPORT_FILE.write_text(json.dumps(quality, indent=1) + "\n")
    c = quality["counts"]
    print(f"data quality: {c['duplicate_groups']} groups of identical images ({c['duplicate_files']} files), "
          f"{c['groups_across_train_and_test']} of them across train/val and test "
          f"({c['train_val_images_also_in_test']} train/val images also in test), "
          f"{c['groups_with_conflicting_labels']} with conflicting labels; {c['near_blank_images']} near-blank "
          f"images (listed in {QUALITY_REPORT_FILE})")


if __name__ == "__main__":
    run_stage(main)

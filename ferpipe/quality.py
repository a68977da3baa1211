"""Data-quality checks on decoded images: exact duplicates, train/test leakage, conflicting labels, blank frames."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# Pixel standard deviation (grey levels) below which a frame counts as blank. On FER-2013 the 13
# constant frames have a deviation of at most 0.65; the next lowest image has 4.1.
BLANK_MAX_STD = 2.0


def pixel_digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()


def quality_report(index: pd.DataFrame, images: np.ndarray) -> dict:
    """Counts (for metrics) and lists (for the report file) of duplicate groups and blank frames.

    `index` has path, label and split (train / val / test) per row of `images`. A duplicate group is
    a set of images whose pixels are identical after conversion to 48x48 grayscale (for FER-2013,
    which is stored that way, identical decoded files); it leaks when it has members both in test
    and in train or val.
    """
    table = index[["path", "label", "split"]].assign(digest=[pixel_digest(image) for image in images])
    sizes = table.groupby("digest")["path"].transform("size")
    groups = []
    for _, group in table[sizes > 1].groupby("digest", sort=False):
        in_test = group["split"].eq("test")
        groups.append({
            "paths": group["path"].tolist(),
            "labels": group["label"].tolist(),
            "splits": group["split"].tolist(),
            "across_train_and_test": bool(in_test.any() and (~in_test).any()),
            "conflicting_labels": group["label"].nunique() > 1,
        })
    groups.sort(key=lambda g: g["paths"][0])
    std = images.reshape(len(images), -1).std(axis=1)
    blank = table.loc[std < BLANK_MAX_STD, "path"].tolist()
    leaked = [p for g in groups if g["across_train_and_test"]
              for p, s in zip(g["paths"], g["splits"]) if s != "test"]
    counts = {
        "duplicate_groups": len(groups),
        "duplicate_files": sum(len(g["paths"]) for g in groups),
        "groups_across_train_and_test": sum(g["across_train_and_test"] for g in groups),
        "train_val_images_also_in_test": len(leaked),
        "groups_with_conflicting_labels": sum(g["conflicting_labels"] for g in groups),
        "near_blank_images": len(blank),
    }
    return {"counts": counts, "blank_max_std": BLANK_MAX_STD, "near_blank": blank,
            "train_val_images_also_in_test": leaked, "duplicate_groups": groups}


def defects_to_drop(index: pd.DataFrame, quality: dict) -> set[str]:
    """Train/val paths that `prepare.drop_defects` removes: images also in test, members of groups
    with conflicting labels, and near-blank frames. Test images are never dropped."""
    conflicting = {path for group in quality["duplicate_groups"] if group["conflicting_labels"]
                   for path in group["paths"]}
    defects = set(quality["train_val_images_also_in_test"]) | conflicting | set(quality["near_blank"])
    train_val = set(index.loc[index["split"] != "test", "path"])
    return defects & train_val

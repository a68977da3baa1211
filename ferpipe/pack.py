"""Pack the prepared train and validation images for a machine that has neither the dataset nor DVC.

    ferpipe pack [--output .gpu/train-pack.npz]

Writes the image files behind data/prepared's train and validation splits, as stored (for FER-2013,
~45 MB of JPEG: the lent GPU machine takes 64 MiB with the repository), with each image's label,
split and a digest of its pixels as the prepare stage decoded them, so that `ferpipe fit --pack`
there can check that it trains on the same pixels. Needs data/prepared (`dvc repro prepare`) and
the data root it was made from. The test images stay here: evaluate the trained model with
`ferpipe ensemble MODEL.keras`.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import yaml

from ferpipe import CLASS_NAMES, FerError
from ferpipe.cli import output_file_problem
from ferpipe.data import PreparedData, to_model_input

PREPARED_DIR = Path("data/prepared")
DEFAULT_PACK = Path(".gpu/train-pack.npz")
FORMAT = "ferpipe-train-pack-1"
FIELDS = ("format", "files", "offsets", "labels", "is_val", "digests", "prepared_md5")


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each uint8 image's pixels."""
    return np.array([int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest(),
                                    "little") for image in images], dtype=np.uint64)


def prepared_md5(prepared_dir=PREPARED_DIR, lock_file=Path("dvc.lock")) -> str:
    """The prepare stage's output hash as dvc.lock records it ('' for a folder it does not record): which
    prepare run a pack holds."""
    try:
        stage = yaml.safe_load(Path(lock_file).read_text())["stages"]["prepare"]
        return next(out["md5"] for out in stage["outs"] if Path(out["path"]) == Path(prepared_dir))
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return ""


def write_pack(prepared_dir: Path, output: Path) -> dict:
    """Pack the train and val splits of `prepared_dir`; returns counts and the size in bytes."""
    data = PreparedData(prepared_dir)
    counts = {split: int((data.index["split"] == split).sum()) for split in ("train", "val")}
    for split, count in counts.items():
        if not count:
            raise FerError(f"{prepared_dir} has no {split} images to pack (see prepare.val_fraction)")
    rows = np.flatnonzero(data.index["split"].isin(list(counts)).to_numpy())
    paths = data.index["path"].iloc[rows].tolist()
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise FerError(f"{len(missing)} image files of {prepared_dir} are missing, the first {missing[0]}: "
                       "link the data root that prepare read (README, 'Get the data')")
    files = [np.frombuffer(Path(path).read_bytes(), dtype=np.uint8) for path in paths]
    labels = data.index["label"].iloc[rows].map(CLASS_NAMES.index).to_numpy().astype(np.int8)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial.npz")
    np.savez(partial, format=np.array(FORMAT), files=np.concatenate(files),
             offsets=np.cumsum([0] + [len(f) for f in files], dtype=np.int64), labels=labels,
             is_val=(data.index["split"].iloc[rows] == "val").to_numpy(),
             digests=pixel_digests(data.images[rows]), prepared_md5=np.array(prepared_md5(prepared_dir)))
    partial.replace(output)
    return {**counts, "bytes": output.stat().st_size}

class Pack:
    """A pack's images decoded as the prepare stage decodes them: train and val (images, labels), and the
    number of images whose pixels differ from the prepare stage's (another OpenCV build can decode a
    JPEG slightly differently)."""

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise FerError(f"pack {path} not found: make it with `ferpipe pack` where the data are")
        try:
            stored = np.load(path, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):  # a lone array from an .npy file
                raise ValueError(f"it holds one array of shape {stored.shape}")
            with stored:
                fields = {name: stored[name] for name in FIELDS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise FerError(f"{path} is not a pack made by `ferpipe pack`, or a damaged one ({err})") from None
        if str(fields["format"]) != FORMAT:
            raise FerError(f"{path} is a pack of format {fields['format']}, this code reads {FORMAT}: "
                           "make it again with this code's `ferpipe pack`")
        files, offsets = fields["files"], fields["offsets"]
        count = len(fields["labels"])
        if not count or len(offsets) != count + 1 or len(fields["digests"]) != count or len(fields["is_val"]) != count:
            raise FerError(f"{path} is damaged: its image, label and digest counts disagree; make it again")
        labels = fields["labels"]
        if offsets.dtype.kind not in "iu" or labels.dtype.kind not in "iu" or fields["is_val"].dtype != bool \
                or not ((labels >= 0) & (labels < len(CLASS_NAMES))).all():
            raise FerError(f"{path} is damaged: offsets and labels must be whole numbers, labels 0-{len(CLASS_NAMES) - 1}, "
                           "is_val true/false; make it again")
        if offsets[0] != 0 or offsets[-1] != len(files) or (offsets[1:] <= offsets[:-1]).any():
            raise FerError(f"{path} is damaged: its image offsets do not cut its {len(files)} bytes into "
                           f"{count} files; make it again")
        images = []
        for start, end in zip(offsets[:-1], offsets[1:]):
            decoded = cv2.imdecode(files[start:end], cv2.IMREAD_UNCHANGED)
            if decoded is None or decoded.size == 0:
                raise FerError(f"{path}: image {len(images)} does not decode; make the pack again")
            images.append(to_model_input(decoded)[0])
        images = np.stack(images)
        self.differing = int((pixel_digests(images) != fields["digests"]).sum())
        self.prepared_md5 = str(fields["prepared_md5"])
        labels, is_val = labels.astype(np.int64), fields["is_val"]
        self.train = images[~is_val], labels[~is_val]
        self.val = images[is_val], labels[is_val]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ferpipe pack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="the prepare stage's output folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_PACK, help=f"the pack file (default {DEFAULT_PACK})")
    args = parser.parse_args(argv)
    if args.output.is_dir():
        parser.error(f"--output {args.output} is a folder; give the pack's file name, e.g. {args.output / DEFAULT_PACK.name}")
    bad_output = output_file_problem(args.output, creates_folders=True)
    if bad_output:
        parser.error(bad_output)
    try:
        counts = write_pack(args.prepared, args.output)
    except FerError as err:
        print(f"ferpipe pack: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {counts['train']} train and {counts['val']} validation images, "
          f"{counts['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

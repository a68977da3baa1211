"""The FER-2013 folder layout: checking it, decoding images, and the prepared index."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferpipe import CLASS_NAMES, IMAGE_SIZE, FerError, require_stage_output

SPLITS = ("train", "test")
EXPECTED_LAYOUT = (
    "expected the Kaggle FER-2013 layout:\n"
    "    <root>/train/<class>/*.jpg\n"
    "    <root>/test/<class>/*.jpg\n"
    f"  with the seven class folders: {' '.join(CLASS_NAMES)}\n"
    "  (see README.md, 'Get the data')"
)
INDEX_FILE = "index.csv"
IMAGES_FILE = "images.npy"


class DataLayoutError(FerError):
    pass


def check_layout(root) -> dict[str, dict[str, list[Path]]]:
    """Return {split: {class: sorted image files}}, or raise DataLayoutError naming the layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data root '{root}' does not exist or is not a folder; {EXPECTED_LAYOUT}")
    problems, files = [], {}
    for split in SPLITS:
        files[split] = {}
        for name in CLASS_NAMES:
            folder = root / split / name
            if not folder.is_dir():
                problems.append(f"missing folder {folder}")
                continue
            found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            if not found:
                problems.append(f"empty folder {folder}")
            files[split][name] = found
    if problems:
        raise DataLayoutError(
            f"data root '{root}' has the wrong layout: " + "; ".join(problems) + f"\n{EXPECTED_LAYOUT}"
        )
    return files


def ignored_entries(root) -> list[str]:
    """What check_layout's image lists leave out: folders beside train/ and test/, entries beside the class
    folders, and subfolders or links to nothing inside them (hidden names aside)."""
    root = Path(root)

    def visible(folder):
        return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]

    ignored = [f"{p}/" for p in visible(root) if p.is_dir() and p.name not in SPLITS]
    for split in SPLITS:
        ignored += [f"{p}/" if p.is_dir() else str(p) for p in visible(root / split) if p.name not in CLASS_NAMES]
        for name in CLASS_NAMES:
            ignored += [f"{p}/" if p.is_dir() else str(p) for p in visible(root / split / name) if not p.is_file()]
    return ignored


@dataclass
class DecodeReport:
    undecodable: list[str] = field(default_factory=list)
    converted_to_grayscale: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


def grayscale(image: np.ndarray) -> np.ndarray:
    """A decoded image of any kind (grey, BGR, BGRA, 16-bit) as 8-bit grayscale at its own size."""
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(image.shape[2])
        image = cv2.cvtColor(image, code) if code is not None else image[:, :, 0]
    if image.dtype != np.uint8:  # 16-bit PNGs and the like
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return image


def to_model_input(image: np.ndarray) -> tuple[np.ndarray, bool, bool]:
    """Any decoded image -> 48x48 uint8 grayscale; also says whether it was colour / resized."""
    colour = image.ndim == 3 and image.shape[2] > 1
    image = grayscale(image)
    resized = image.shape != (IMAGE_SIZE, IMAGE_SIZE)
    if resized:
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return image, colour, resized


def decode(path, upright: bool = False) -> np.ndarray | None:
    """Decode an image file (None if it is not a readable image): as stored, or `upright`: turned by its EXIF
    orientation, as phones store portrait photos sideways (an alpha channel is then dropped). Grey and 16-bit
    images stay as they are either way."""
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if raw.size == 0:
        return None
    # OpenCV applies the EXIF orientation under any flags but IMREAD_UNCHANGED
    return cv2.imdecode(raw, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if upright else cv2.IMREAD_UNCHANGED)


def load_images(paths, report: DecodeReport) -> tuple[np.ndarray, list[bool]]:
    """Decode `paths` into an (n, 48, 48) uint8 array; failures are recorded in `report`."""
    images, ok = [], []
    for path in paths:
        image = decode(path)
        if image is None or image.size == 0:
            report.undecodable.append(str(path))
            ok.append(False)
            continue
        image, colour, resized = to_model_input(image)
        if colour:
            report.converted_to_grayscale.append(str(path))
        if resized:
            report.resized.append(str(path))
        images.append(image)
        ok.append(True)
    array = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return array, ok


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: `val_fraction` of each class, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_val = int(round(len(rows) * val_fraction))
        is_val[rng.permutation(rows)[:n_val]] = True
    return is_val


TEST_SUBSETS = ("PublicTest", "PrivateTest")  # the Kaggle test split's two halves, named in its file names


def test_subset(path: str) -> str:
    """'PublicTest' or 'PrivateTest' from a FER-2013 test file name ('other' if neither)."""
    name = Path(path).name
    for subset in TEST_SUBSETS:
        if name.startswith(subset):
            return subset
    return "other"


class PreparedData:
    """The prepare stage's output: index.csv (path, label, split) and the aligned image array."""

    def __init__(self, folder):
        folder = Path(folder)
        index_path, images_path = folder / INDEX_FILE, folder / IMAGES_FILE
        for path in (index_path, images_path):
            require_stage_output(path, "prepare")
        self.index = pd.read_csv(index_path)
        self.images = np.load(images_path, mmap_mode="r")
        if len(self.index) != len(self.images):
            raise FerError(f"{folder}: index and image array disagree; re-run prepare")

    def split(self, name: str):
        """(images uint8 (n,48,48), integer labels (n,), paths) of one split."""
        rows = np.flatnonzero((self.index["split"] == name).to_numpy())
        labels = self.index["label"].iloc[rows].map(CLASS_NAMES.index).to_numpy()
        return np.asarray(self.images[rows]), labels.astype(np.int64), self.index["path"].iloc[rows].tolist()

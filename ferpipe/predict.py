"""Classify the facial expressions in images, folders (recursively) and videos.

    ferpipe predict photo.jpg faces/ clip.mp4 [--format csv] [--annotate out/]

Faces are found with OpenCV's bundled Haar cascade, cropped with a margin and turned into
48x48 grayscale exactly as the training images are. A 48x48 grayscale picture (an FER-style
crop) is classified whole. One line per face goes to stdout (JSON, or CSV with --format csv);
problems with single files go to stderr and never stop the batch. A batch that takes longer than
10 s says how far it has got (files done, faces so far) on stderr, at most every 10 s, between files.

Exit status: 0 if at least one face was classified, 1 if none was (no readable input or no
face anywhere), 2 for a usage error or a missing model, 141 when the reader of stdout stopped
early (as in `ferpipe predict faces/ | head`; the status of a program stopped by SIGPIPE).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ferpipe import CLASS_NAMES, TTA_MODES, FerError
from ferpipe.cli import output_file_problem, output_folder_problem
from ferpipe.data import decode, grayscale
from ferpipe.evaluation import check_tta, predict_probabilities
from ferpipe.faces import FaceDetector, crop_face, is_fer_crop
from ferpipe.inference import load_classifier

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
CSV_COLUMNS = ["source", "frame", "x", "y", "width", "height", "label", "confidence", *CLASS_NAMES]
PROGRESS_SECONDS = 10.0  # at most one progress line on stderr this often


@dataclass
class Face:
    source: str
    frame: int | None
    box: tuple[int, int, int, int]
    probabilities: np.ndarray

    @property
    def label(self) -> str:
        return CLASS_NAMES[int(self.probabilities.argmax())]

    def as_dict(self) -> dict:
        x, y, w, h = self.box
        return {"source": self.source, "frame": self.frame, "box": {"x": x, "y": y, "width": w, "height": h},
                "label": self.label, "confidence": round(float(self.probabilities.max()), 6),
                "probabilities": {n: round(float(p), 6) for n, p in zip(CLASS_NAMES, self.probabilities)}}

    def as_row(self) -> dict:
        d = self.as_dict()
        return {"source": self.source, "frame": "" if self.frame is None else self.frame, **d["box"],
                "label": d["label"], "confidence": d["confidence"], **d["probabilities"]}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="ferpipe predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders and video files")
    parser.add_argument("--model", help="an .onnx or .keras file (default: models/model.onnx, else models/model.keras)")
    parser.add_argument("--format", choices=["json", "csv"], default="json", help="output format (default: json lines)")
    parser.add_argument("--output", type=Path, help="write results to this file instead of stdout")
    parser.add_argument("--annotate", type=Path, metavar="DIR", help="write copies with face boxes and labels to DIR")
    parser.add_argument("--every", type=int, default=10, metavar="N", help="classify every Nth video frame (default: 10)")
    parser.add_argument("--margin", type=float, default=0.2,
                        help="grow each face box by this share of its size per side before cropping (default: 0.2)")
    parser.add_argument("--min-face", type=int, default=24, metavar="PX", help="smallest face to detect (default: 24)")
    parser.add_argument("--whole", action="store_true", help="classify each image whole, without face detection")
    parser.add_argument("--tta", choices=TTA_MODES, default="flip",
                        help="flip (default): average with the mirrored face; flip_zoom: also with the face "
                             "zoomed 0.9x and 1.1x and their mirrors (6 views, 3x the work); flip_zoom_rotate: those 6 "
                             "turned -10, 0 and +10 degrees (18 views); ten_crop: the centre and four "
                             "corner 44x44 crops and their mirrors (10 views, for models trained with "
                             "train.augment.crop); none: one view")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be at least 1")
    if not 0 <= args.margin <= 1:
        parser.error("--margin must be between 0 and 1")
    if args.min_face < 8:
        parser.error("--min-face must be at least 8")
    return args


def input_files(inputs, warn):
    """(file, name for annotated copies) for each input; folders are walked recursively in sorted order.

    Each file comes once, however often and under whatever names (links) it is given; hidden files and
    folders are skipped. Names of annotated copies start with the folder's own name (that of `..` is its
    real one), keep the folder structure below it, and get a number when two inputs would share a name.
    """
    taken, seen = set(), set()
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not files:
                warn(f"{item}: empty folder, nothing to classify")
            named = [(file, Path(item.resolve().name) / file.relative_to(item)) for file in files]
        elif item.is_file():
            named = [(item, Path(item.name))]
        else:
            warn(f"{item}: no such file or folder")
            continue
        for file, name in named:
            real = file.resolve()
            if real in seen:  # named twice (a folder and a file in it, or two links to it): classified once
                continue
            seen.add(real)
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = name.with_name(f"{name.stem}_{n}{name.suffix}")
            taken.add(unique)
            yield file, unique


class FileProblem(Exception):
    """Something wrong with one input file; reported, and the batch goes on."""


class AnnotateProblem(Exception):
    """An annotated copy that cannot or must not be written; the file itself was classified."""


class Predictor:
    def __init__(self, args):
        self.model, self.model_name = load_classifier(args.model)
        check_tta(self.model, args.tta, self.model_name)
        self.detector = FaceDetector(args.min_face)
        self.args = args
        self.inputs: set[Path] = set()  # resolved input files: never overwritten by an annotated copy

    def faces_in(self, image: np.ndarray, source: str, frame: int | None) -> list[Face]:
        gray = grayscale(image)
        if self.args.whole or is_fer_crop(image):
            boxes = [(0, 0, gray.shape[1], gray.shape[0])]
            crops = [crop_face(gray, boxes[0], 0)]
        else:
            boxes = self.detector(gray)
            crops = [crop_face(gray, box, self.args.margin) for box in boxes]
        if not boxes:
            return []
        probs = predict_probabilities(self.model, np.stack(crops), self.args.tta, batch_size=256)
        return [Face(source, frame, box, p) for box, p in zip(boxes, probs)]

    def frames(self, path: Path):
        """(frame index or None, image) pairs: one for an image, every Nth frame for a video."""
        try:
            with path.open("rb"):
                pass
        except OSError as err:
            raise FileProblem(f"cannot read: {err.strerror}") from None
        suffix = path.suffix.lower()
        kind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "image or video"
        if suffix not in VIDEO_SUFFIXES:
            image = decode(path, upright=True)
            if image is not None and image.size:
                return [(None, image)]
            if suffix in IMAGE_SUFFIXES:
                raise FileProblem("not a readable image")
        capture = cv2.VideoCapture(str(path))  # videos, and files of unknown type that are no image
        if not capture.isOpened():
            capture.release()
            raise FileProblem(f"not a readable {kind}")
        return self._video_frames(capture, kind)

    def _video_frames(self, capture, kind):
        index = 0
        try:
            while capture.grab():
                if index % self.args.every == 0:
                    ok, frame = capture.retrieve()
                    if ok:
                        yield index, frame
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise FileProblem(f"not a readable {kind} (no frames)")

    def classify_file(self, path: Path, name: Path, emit, warn) -> int:
        """Classify every face of one file, emit each, write annotated copies; returns the number of faces.

        A copy that cannot be written is reported (once per file) and does not stop the classification.
        """
        found = 0
        annotating = bool(self.args.annotate)
        for frame_index, image in self.frames(path):
            faces = self.faces_in(image, str(path), frame_index)
            for face in faces:
                emit(face)
            found += len(faces)
            if annotating and faces:
                target = self.args.annotate / name
                if frame_index is not None:
                    target = target.with_name(f"{target.name}_frames") / f"frame_{frame_index:06d}.jpg"
                try:
                    self.write_annotated(target, annotate(image, faces))
                except AnnotateProblem as problem:
                    warn(f"{path}: {problem}")
                    annotating = False  # one message per file, not one per video frame
        return found

    def write_annotated(self, target: Path, image: np.ndarray) -> None:
        """Write an annotated copy, only inside the --annotate folder and never onto an input file."""
        target, encoded = encode_image(target, image)
        resolved = target.resolve()  # follows `..` and links, as the write would
        if not resolved.is_relative_to(self.args.annotate.resolve()):
            raise AnnotateProblem(f"annotated copy {target} not written: it would be outside --annotate "
                                  f"{self.args.annotate}")
        if resolved in self.inputs:
            raise AnnotateProblem(f"annotated copy {target} not written: it would overwrite an input file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            encoded.tofile(str(target))
        except OSError as err:
            raise AnnotateProblem(f"annotated copy {target} not written: {err.strerror or err}") from None


def annotate(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A BGR copy of the image with each face's box and label drawn (small images are enlarged first)."""
    canvas = cv2.cvtColor(grayscale(image), cv2.COLOR_GRAY2BGR) if image.ndim == 2 or image.shape[2] != 3 else image.copy()
    scale = max(1, 192 // max(canvas.shape[:2]))
    if scale > 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    thickness = max(1, round(max(canvas.shape[:2]) / 300))
    for face in faces:
        x, y, w, h = (v * scale for v in face.box)
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (0, 200, 0), thickness)
        text = f"{face.label} {face.probabilities.max():.2f}"
        font_scale = max(0.4, w / 250)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y - 4 if y - th - 4 > 0 else min(canvas.shape[0] - base, y + h + th + 4)
        cv2.rectangle(canvas, (x, ty - th - 2), (x + tw + 2, ty + base), (0, 200, 0), -1)
        cv2.putText(canvas, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness)
    return canvas


def encode_image(path: Path, image: np.ndarray) -> tuple[Path, np.ndarray]:
    """(path, bytes): the image in the file's own format where OpenCV has an encoder for it, else as PNG (name + .png)."""
    ok = False
    if path.suffix:
        try:
            ok, encoded = cv2.imencode(path.suffix, image)
        except cv2.error:
            ok = False
    if not ok:
        path = path.with_name(path.name + ".png")
        ok, encoded = cv2.imencode(".png", image)
    return path, encoded


def check_output_paths(args) -> str | None:
    """A message if --output or --annotate cannot be written, before any work starts."""
    return output_file_problem(args.output) or output_folder_problem(args.annotate, "--annotate")


def run(args) -> int:
    problems = []

    def warn(message):
        problems.append(message)
        print(f"ferpipe predict: {message}", file=sys.stderr, flush=True)

    bad_path = check_output_paths(args)
    if bad_path:
        print(f"ferpipe predict: error: {bad_path}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args)
    except FerError as err:
        print(f"ferpipe predict: error: {err}", file=sys.stderr)
        return 2
    files = list(input_files(args.inputs, warn))
    predictor.inputs = {path.resolve() for path, _ in files}
    if args.output and args.output.resolve() in predictor.inputs:
        print(f"ferpipe predict: error: --output {args.output} is one of the inputs; give another file",
              file=sys.stderr)
        return 2
    # surrogateescape: a file name that is not valid UTF-8 is written as its own bytes (stdout is strict
    # under some locales and with PYTHONIOENCODING, and would fail on it)
    if args.output:
        try:
            out = args.output.open("w", newline="", errors="surrogateescape")
        except OSError as err:
            print(f"ferpipe predict: error: --output {args.output}: {err.strerror}", file=sys.stderr)
            return 2
    else:
        out = sys.stdout
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="surrogateescape")
    writer = csv.DictWriter(out, CSV_COLUMNS) if args.format == "csv" else None
    n_faces = n_files = 0
    progress = Progress(len(files))

    def emit(face: Face):
        nonlocal n_faces
        n_faces += 1  # counted as written, so that a later problem in the same file cannot lose it
        if writer:
            writer.writerow(face.as_row())
        else:
            out.write(json.dumps(face.as_dict()) + "\n")

    try:
        if writer:
            writer.writeheader()
        for done, (path, name) in enumerate(files):
            progress.update(done, n_faces)
            try:
                found = predictor.classify_file(path, name, emit, warn)
            except FileProblem as problem:
                warn(f"{path}: {problem}")
                continue
            except BrokenPipeError:
                raise
            except (cv2.error, OSError) as err:  # e.g. an image header claiming a gigantic size
                warn(f"{path}: cannot process: {str(err).strip().splitlines()[-1]}")
                continue
            n_files += 1
            if not found:
                warn(f"{path}: no face found")
            out.flush()
    except BrokenPipeError:
        return stdout_closed()
    finally:
        if args.output:
            out.close()
    print(f"ferpipe predict: {n_faces} face(s) classified in {n_files} readable file(s); "
          f"{len(problems)} problem(s) reported; model {predictor.model_name}", file=sys.stderr)
    return 0 if n_faces else 1


class Progress:
    """A line on stderr at most every PROGRESS_SECONDS: how far a long batch has got."""

    def __init__(self, total_files: int):
        self.total_files = total_files
        self.last = time.monotonic()

    def update(self, files_done: int, faces: int) -> None:
        now = time.monotonic()
        if files_done and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"ferpipe predict: {files_done} of {self.total_files} files, {faces} face(s) so far",
                  file=sys.stderr, flush=True)


def stdout_closed() -> int:
    """Stop quietly once the reader of stdout is gone (`| head`): there is no one left to tell."""
    try:  # what is still buffered goes to devnull, else Python's flush at exit reports the broken pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

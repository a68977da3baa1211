"""Checks shared by the command-line tools (`ferpipe predict`, `ensemble`, `pack`, `repeat`), made
before any work starts so that a bad path costs seconds, not a finished run."""
from __future__ import annotations

from pathlib import Path


def output_file_problem(path: Path | None, option: str = "--output", creates_folders: bool = False) -> str | None:
    """Why `path` cannot be written as a file (its folder missing, unless the tool `creates_folders`),
    or None when it can or no path was given."""
    if path is None:
        return None
    if path.is_dir():
        return f"{option} {path} is a folder; give a file name"
    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not existing.is_dir():
        return f"{option} {path}: {existing} is a file, not a folder"
    if not creates_folders and existing != path.parent:
        return f"{option} {path}: folder {path.parent} does not exist"
    return None

"""Checks shared by the command-line tools (`ferpipe predict`, `ensemble`, `pack`, `repeat`), made
before any work starts so that a bad path costs seconds, not a finished run."""
from __future__ import annotations

import os
from pathlib import Path


def _parent_problem(path: Path, option: str, creates_folders: bool) -> str | None:
    """Why the folder that is to hold `path` cannot: a file on the way, a missing folder (unless the
    tool `creates_folders`), no permission to write there."""
    try:
        existing = next((folder for folder in path.parents if folder.exists()), None)
        if existing is None:
            return f"{option} {path}: the current folder no longer exists"
        if not existing.is_dir():
            return f"{option} {path}: {existing} is a file, not a folder"
    except OSError as err:  # e.g. a folder on the way that may not be entered
        return f"{option} {path}: {err.strerror}"
    if not creates_folders and existing != path.parent:
        return f"{option} {path}: folder {path.parent} does not exist"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: folder {existing} is not writable"
    return None


def output_file_problem(path: Path | None, creates_folders: bool = False) -> str | None:
    """Why --output `path` cannot be written as a file, or None when it can or no path was given."""
    if path is None:
        return None
    if path.is_dir():
        return f"--output {path} is a folder; give a file name"
    return _parent_problem(path, "--output", creates_folders)


def output_folder_problem(path: Path | None, option: str) -> str | None:
    """Why `path` cannot be made or used as the folder of `option`, or None when it can or no path was given."""
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file; give a folder"
    if path.is_dir():
        return None if os.access(path, os.W_OK | os.X_OK) else f"{option} {path}: folder {path} is not writable"
    return _parent_problem(path, option, creates_folders=True)

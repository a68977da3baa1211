"""Run a stage's main() so that user errors end in one clear message, not a traceback.

Importing this module also keeps the files that Keras, Matplotlib and ONNX Runtime write to the
home directory (config, font cache, device id) and all temporary files inside the project, under
data/.cache/: stage scripts import it before those libraries.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ferpipe import FerError

CACHE_DIR = Path("data/.cache")
# Environment variable -> folder under CACHE_DIR. XDG_CACHE_HOME: ONNX Runtime's ids, Matplotlib.
REDIRECTED = {"KERAS_HOME": "keras", "MPLCONFIGDIR": "matplotlib", "XDG_CACHE_HOME": "xdg-cache",
              "XDG_CONFIG_HOME": "xdg-config", "TMPDIR": "tmp"}


def keep_library_files_in_project(cache_dir: Path = CACHE_DIR) -> None:
    """Point the libraries' home-directory files and temporary files into `cache_dir` (effective
    only for libraries imported afterwards), so that a stage writes nothing outside the project."""
    for variable, folder in REDIRECTED.items():
        path = (cache_dir / folder).resolve()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)


keep_library_files_in_project()


def run_stage(main) -> None:
    start = time.perf_counter()
    try:
        main()
    except FerError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; `dvc repro` goes on from here (train from its last completed epoch)", file=sys.stderr)
        sys.exit(130)
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)

"""Run a stage's main() so that user errors end in one clear message, not a traceback."""
from __future__ import annotations

import sys
import time

from ferpipe import FerError


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

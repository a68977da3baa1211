"""Command line: `ferpipe predict|bench|ensemble|repeat|pack|fit ...` (also as `python -m ferpipe ...`)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "predict": ("ferpipe.predict", "classify facial expressions in images, folders and videos"),
    "bench": ("ferpipe.bench", "training and inference throughput on this machine"),
    "ensemble": ("ferpipe.ensemble", "score trained models, alone and averaged, on validation and test"),
    "repeat": ("ferpipe.repeat", "run-to-run spread of a short training, train.deterministic off and on"),
    "pack": ("ferpipe.pack", "pack the prepared train/val images for a machine without the data (a GPU machine)"),
    "fit": ("ferpipe.fit", "train as the train stage does, without DVC (on such a machine)"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        usage = "usage: ferpipe {" + ",".join(COMMANDS) + "} ...\n\n" + "\n".join(
            f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()) + "\n\n'ferpipe COMMAND --help' for its options"
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(usage, file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            print(f"ferpipe: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if asked else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])  # imported on demand: predict must not load TensorFlow
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())

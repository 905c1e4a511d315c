#!/usr/bin/env python
"""Run the whole pipeline: ``python runner/run_all.py --help``."""

import sys
from pathlib import Path

# Runnable from a checkout even before `pip install -e .`; the kernels need the install all the same.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from powerpipe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

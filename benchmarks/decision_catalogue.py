"""The decision catalogue (tests/decisions) outside pytest: rebuild every subject, measure each case's
truth on held-out data, run the tool without force, and print the confusion matrices of diagnose's verdicts and
recalibrate's write/refuse against the truth -- with ``--markdown`` also the per-case table of docs/decisions.md.

    .venv/bin/python benchmarks/decision_catalogue.py --markdown [--case NAME ...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the suite's settings and import path (tests/conftest.py): Eigen kernels as the CLI uses, the tests' packages
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from decisions.catalogue import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""The harness lives in the repository's ``bench`` package, which is not installed: make it
importable however pytest was started."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

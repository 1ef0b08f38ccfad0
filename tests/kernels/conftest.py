"""Kernel tests: make the shared helpers in this folder importable from its subfolders."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

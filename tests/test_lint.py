"""The lint configuration in pyproject.toml ([tool.ruff]) holds for the whole tree: unused or undefined names,
statements that are bugs, bugbear's traps. A change that breaks it fails here, with ruff's own report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

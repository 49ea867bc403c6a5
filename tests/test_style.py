"""The code is kept as configured in pyproject.toml: ruff finds nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module

ROOT = Path(__file__).parent.parent


def test_ruff_finds_nothing():
    require_module("ruff")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


@pytest.mark.slow
def test_mypy_strict_finds_nothing():
    """Type hints on every function of the package, checked strictly (pyproject.toml's [tool.mypy])."""
    require_module("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]

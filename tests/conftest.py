"""Shared test helpers: tools that CI must have (a test may skip without them only outside CI)."""

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of an external tool; outside CI a missing tool skips the test, in CI it fails it."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def require_module(name: str):
    """Import an optional test oracle; outside CI a missing one skips, in CI it fails."""
    try:
        return __import__(name)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from this tree instead of comparing against it")


def checked_module(derivation, folder):
    """The derivation's generated NumPy module, after codegen --check's comparisons pass, imported from `folder`."""
    from softgrad.codegen.build import import_path
    from softgrad.codegen.emit import emit
    from softgrad.verify.generated import check_array_module

    files = emit(derivation, "numpy")
    failed = [check.line() for check in check_array_module(derivation, files) if not check.passed]
    assert not failed, failed
    (name, text), = files.items()
    (folder / name).write_text(text)
    return import_path(folder / name)

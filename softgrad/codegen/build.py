"""Compile and import generated code: for `codegen --check`, `verify` and the tests."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

from softgrad.errors import SoftgradError

STRICT_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]


def compiler() -> str:
    """The system C compiler (cc, gcc or clang), or a SoftgradError saying none was found."""
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise SoftgradError("no C compiler found (install gcc or clang)")


def compile_shared(source: Path, output: Path, extra_flags: list[str] = ()) -> Path:
    """Compile one C file into a shared library with the strict warning flags (warnings are errors)."""
    command = [compiler(), *STRICT_FLAGS, *extra_flags, "-shared", "-fPIC", str(source), "-o", str(output), "-lm"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        first = next((line for line in run.stderr.splitlines() if "error" in line), run.stderr.strip()[:300])
        raise SoftgradError(f"compiling {source.name} failed: {first}")
    return output


def import_path(path: Path) -> ModuleType:
    """Import a Python file under a unique module name (generated modules may share a name)."""
    name = f"softgrad_generated_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SoftgradError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_c(files: dict[str, str], folder: Path, module: str) -> object:
    """Write generated C files into folder, compile them, and return the loaded ctypes kernels."""
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    library = compile_shared(folder / f"{module}.c", folder / f"lib{module}.so")
    return import_path(folder / f"{module}_ctypes.py").load(library)

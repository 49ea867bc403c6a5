"""Compile and import generated code: for `codegen --check`, `verify` and the tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from softgrad.errors import SoftgradError


class GeneratedFiles(dict[str, str]):
    """File name → text, with the options they were generated with (so that nothing downstream has to
    read them back out of the text: whether the C needs -fopenmp, which file is the source, …)."""

    def __init__(self, files: dict[str, str] | None = None, *, language: str, module: str, dtype: str,
                 openmp: bool, blas: bool = False) -> None:
        super().__init__(files or {})
        self.language, self.module, self.dtype, self.openmp, self.blas = language, module, dtype, openmp, blas
        #: for a framework module: the derivation (lifted to rows) and the parts it was printed from
        self.printed_from: list[Any] = []

# What the generated C is written for: -fopenmp-simd turns on the `omp simd` loops (vectorized, reductions
# in vector lanes), -march=native lets them use this machine's vector width, -ffp-contract=fast fuses
# multiply-adds (ISO C modes turn that off), -fno-math-errno lets gcc vectorize sqrt in loops (the code never
# reads errno, which gcc otherwise keeps a scalar call to set). No -ffast-math: ±inf, NaN and signed zeros
# keep their meaning.
RECOMMENDED_FLAGS = ["-std=c99", "-O2", "-march=native", "-fopenmp-simd", "-ffp-contract=fast", "-fno-math-errno"]
STRICT_FLAGS = [*RECOMMENDED_FLAGS, "-Wall", "-Wextra", "-Wpedantic", "-Werror"]


def compiler() -> str:
    """The C compiler: $CC if set, else the system's (cc, gcc or clang); a SoftgradError if none is found."""
    chosen = os.environ.get("CC", "").strip()
    if chosen:
        path = shutil.which(chosen)
        if path is None:
            raise SoftgradError(f"the compiler named by $CC ({chosen!r}) was not found")
        return path
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise SoftgradError("no C compiler found (install gcc or clang)")


#: Flags for C that softgrad did not generate (a user's gradient under test): no warnings made errors.
USER_FLAGS = ["-std=c99", "-O2"]


def blas_flags() -> list[str]:
    """Compiler and linker flags for the BLAS that generated C calls: the OpenBLAS of the scipy-openblas32
    wheel (headers, library, and an rpath so that the built library finds it without LD_LIBRARY_PATH)."""
    try:
        import scipy_openblas32
    except ImportError:
        raise SoftgradError("this generated C calls BLAS (gemm): install it with "
                            "`python -m pip install scipy-openblas32`") from None
    library = scipy_openblas32.get_lib_dir()
    return [f"-I{scipy_openblas32.get_include_dir()}", f"-L{library}", f"-Wl,-rpath,{library}",
            f"-l{scipy_openblas32.get_library()}"]


def compile_shared(source: Path, output: Path, extra_flags: Sequence[str] = (), openmp: bool = False,
                   generated: bool = True, blas: bool = False) -> Path:
    """Compile one C file into a shared library: generated code with the strict warning flags (warnings
    are errors), a user's code with plain ones; blas: linked with the BLAS its gemm calls need."""
    threads = ["-fopenmp"] if openmp else []
    flags = STRICT_FLAGS if generated else USER_FLAGS
    linked = blas_flags() if blas else []
    command = [compiler(), *flags, *threads, *extra_flags, "-shared", "-fPIC", str(source), "-o", str(output),
               *linked, "-lm"]
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


def load_c(files: GeneratedFiles, folder: Path, module: str | None = None,
           extra_flags: Sequence[str] = (), library_name: str | None = None) -> object:
    """Write generated C files into folder, compile them (with -fopenmp if they were generated for it, and
    extra_flags such as -DSOFTGRAD_BLOCK_BYTES=…) into library_name (lib<module>.so by default), and return
    the loaded ctypes kernels."""
    module = module or files.module
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    library = compile_shared(folder / f"{module}.c", folder / (library_name or f"lib{module}.so"),
                             extra_flags=extra_flags, openmp=files.openmp, blas=files.blas)
    return import_path(folder / f"{module}_ctypes.py").load(library)

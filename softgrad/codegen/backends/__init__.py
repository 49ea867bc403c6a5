"""One backend per target language: what its templates show of a kernel, its file-wide values and its
files. The emitter (softgrad.codegen.emit) asks the backend; it has no branch on the language."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softgrad.codegen.backends.c import rows as c_rows
from softgrad.codegen.backends.numpy import rows as numpy_rows
from softgrad.codegen.lower.kernel import Kernel


@dataclass(frozen=True)
class Backend:
    """A target: print_kernel(kernel, dtype) → template data; context(dtype, openmp) → file-wide values;
    files(module) → [(template, file name)]; whether it has element types and threads of its own."""

    name: str
    print_kernel: Callable[[Kernel, str], dict[str, Any]]
    context: Callable[[str, bool], dict[str, Any]]
    files: Callable[[str], list[tuple[str, str]]]
    has_dtype: bool
    has_threads: bool


BACKENDS: dict[str, Backend] = {
    "numpy": Backend("numpy", numpy_rows.print_kernel, numpy_rows.context, numpy_rows.files, has_dtype=False,
                     has_threads=False),
    "c": Backend("c", c_rows.print_kernel, c_rows.context, c_rows.files, has_dtype=True, has_threads=True),
}

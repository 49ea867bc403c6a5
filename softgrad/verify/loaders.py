"""Load the gradient under test: a Python function (file or module) or a C function (source or library)."""

from __future__ import annotations

import ctypes
import importlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from softgrad.codegen.build import compile_shared, import_path
from softgrad.errors import SoftgradError
from softgrad.files import remove_tree
from softgrad.verify.isolation import DEFAULT_TIMEOUT, IsolatedFunction
from softgrad.verify.signatures import Signature, describe_failure


def split_reference(reference: str) -> tuple[str, str]:
    if ":" not in reference:
        raise SoftgradError(f"name the function as FILE:FUNCTION or MODULE:FUNCTION, not {reference!r}")
    location, name = reference.rsplit(":", 1)
    if not name.isidentifier():
        raise SoftgradError(f"{name!r} is not a function name")
    return location, name


def load_function(reference: str, signature: Signature | str, dtype: str, timeout: float = DEFAULT_TIMEOUT,
                  role: str = "the function under test") -> IsolatedFunction:
    """The function named by `reference`, loaded and called in a child process (see isolation).

    A C source is compiled here first, into a temporary folder that is removed when the function is
    closed; the child loads the library."""
    location, name = split_reference(reference)
    text = signature if isinstance(signature, str) else signature.text
    if not location.endswith(".c"):
        return IsolatedFunction(reference, text, dtype, timeout, role)
    path = Path(location)
    if not path.is_file():
        raise SoftgradError(f"cannot read {location!r}: no such file")
    folder = Path(tempfile.mkdtemp(prefix="softgrad-verify-"))
    try:
        library = folder / f"lib{path.stem}.so"
        _compile_user_c(path, library)
        function = IsolatedFunction(f"{library}:{name}", text, dtype, timeout, role,
                                    cleanup=lambda: remove_tree(folder))
    except BaseException:
        remove_tree(folder)
        raise
    function.__name__ = name
    return function


def _compile_user_c(source: Path, library: Path) -> None:
    """Compile the user's C file (their code: plain flags, not the generated code's strict ones)."""
    compile_shared(source, library, generated=False)


def load_in_process(reference: str, signature: Signature | None, dtype: str) -> Callable[..., Any]:
    """The callable named by `reference`, in this process (the worker child's side of load_function);
    C functions get a NumPy wrapper with the signature's convention (a one-index signature: signature
    None, for specs with several indices, is Python only)."""
    location, name = split_reference(reference)
    if location.endswith((".c", ".so", ".dylib")):
        if signature is None:
            raise SoftgradError("C functions can be checked against one-index specs only, so far")
        return load_c(location, name, signature, dtype)
    if Path(location).suffix and not location.endswith(".py"):
        raise SoftgradError(f"cannot load {location!r}: expected a .py, .c or .so file, or a module name")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise SoftgradError(f"cannot read {location!r}: no such file")
        module = _run_user_code(lambda: import_path(path), location)
    else:
        module = _run_user_code(lambda: importlib.import_module(location), location)
    function = getattr(module, name, None)
    if not callable(function):
        raise SoftgradError(f"{location} has no function {name!r}")
    return cast(Callable[..., Any], function)


def _run_user_code(action: Callable[[], ModuleType], location: str) -> ModuleType:
    try:
        return action()
    except SoftgradError:
        raise
    except ModuleNotFoundError as problem:
        raise SoftgradError(f"cannot import {location!r}: {problem}") from None
    except BaseException as problem:  # the user's module failed (or exited) while loading: its own last line
        raise SoftgradError(f"importing {location} {describe_failure(problem)}") from None


#: C conventions: inputs (const pointers), outputs (pointers), then the sizes.
C_ARGUMENTS = {
    "x,g->dx": "const T *x, const T *g, T *dx, size_t rows, size_t n",
    "y,g->dx": "const T *y, const T *g, T *dx, size_t rows, size_t n",
    "z,t->dz": "const T *z, const T *t, T *dz, size_t rows, size_t n",
    "z,t->loss,dz": "const T *z, const T *t, T *loss, T *dz, size_t rows, size_t n",
    "x->J": "const T *x, T *J, size_t n   (one row; J is n × n, row-major)",
}


def load_c(location: str, name: str, signature: Signature, dtype: str) -> Callable[..., Any]:
    path = Path(location)
    if not path.is_file():
        raise SoftgradError(f"cannot read {location!r}: no such file")
    if location.endswith(".c"):  # in this process: compiled into a folder removed once loaded
        folder = Path(tempfile.mkdtemp(prefix="softgrad-verify-"))
        try:
            _compile_user_c(path, folder / f"lib{path.stem}.so")
            library = ctypes.CDLL(str(folder / f"lib{path.stem}.so"))
        except OSError as problem:
            raise SoftgradError(f"cannot load {location}: {problem}") from None
        finally:
            remove_tree(folder)
        library_path = None
    else:
        library_path = path.resolve()
    try:
        if library_path is not None:
            library = ctypes.CDLL(str(library_path))
        function = getattr(library, name)
    except OSError as problem:
        raise SoftgradError(f"cannot load {location}: {problem}") from None
    except AttributeError:
        raise SoftgradError(f"{location} has no function {name!r}") from None
    scalar = ctypes.c_float if dtype == "float32" else ctypes.c_double
    pointer = ctypes.POINTER(scalar)
    numpy_type = np.float32 if dtype == "float32" else np.float64

    def as_pointer(array: np.ndarray) -> Any:
        return array.ctypes.data_as(pointer)

    if signature.single_row:
        function.argtypes = [pointer, pointer, ctypes.c_size_t]

        def jacobian(row: np.ndarray) -> np.ndarray:
            row = np.ascontiguousarray(row, dtype=numpy_type)
            out = np.empty((row.size, row.size), dtype=numpy_type)
            function(as_pointer(row), as_pointer(out), row.size)
            return out

        return jacobian
    outputs = len(signature.returns)
    function.argtypes = [pointer] * (len(signature.takes) + outputs) + [ctypes.c_size_t, ctypes.c_size_t]

    def call(*arrays: np.ndarray) -> Any:
        contiguous = [np.ascontiguousarray(a, dtype=numpy_type) for a in arrays]
        rows, size = contiguous[0].shape
        results = [np.empty(rows, dtype=numpy_type) if role == "loss" else np.empty((rows, size), dtype=numpy_type)
                   for role in signature.returns]
        function(*[as_pointer(a) for a in [*contiguous, *results]], rows, size)
        return tuple(results) if outputs > 1 else results[0]

    return call

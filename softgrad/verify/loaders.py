"""Load the gradient under test: a Python function (file or module) or a C function (source or library)."""

from __future__ import annotations

import ctypes
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from softgrad.codegen.build import compile_shared, import_path
from softgrad.errors import SoftgradError
from softgrad.files import remove_tree
from softgrad.verify.adapters import _has_forward_and_backward, adapt
from softgrad.verify.isolation import DEFAULT_TIMEOUT, IsolatedFunction
from softgrad.verify.signatures import Signature, describe_failure


def split_reference(reference: str) -> tuple[str, str]:
    if ":" not in reference:
        raise SoftgradError(f"name the function as FILE:FUNCTION or MODULE:FUNCTION, not {reference!r}")
    location, name = reference.rsplit(":", 1)
    if not all(part.isidentifier() for part in name.split(",")) or name.count(",") > 1:
        raise SoftgradError(f"{name!r} is not a function name (or FORWARD,BACKWARD)")
    return location, name


def load_function(reference: str, signature: Signature | str, dtype: str, timeout: float = DEFAULT_TIMEOUT,
                  role: str = "the function under test", layout: str = "classes-last",
                  plan: dict[str, Any] | None = None) -> IsolatedFunction:
    """The function named by `reference`, loaded and called in a child process (see isolation).

    A C source is compiled here first, into a temporary folder that is removed when the function is
    closed; the child loads the library. plan: how to call C written with declared roles (see c_conventions)."""
    location, name = split_reference(reference)
    text = signature if isinstance(signature, str) else signature.text
    if not location.endswith(".c"):
        return IsolatedFunction(reference, text, dtype, timeout, role, layout=layout, plan=plan)
    path = Path(location)
    if not path.is_file():
        raise SoftgradError(f"cannot read {location!r}: no such file")
    folder = Path(tempfile.mkdtemp(prefix="softgrad-verify-"))
    try:
        library = folder / f"lib{path.stem}.so"
        _compile_user_c(path, library)
        function = IsolatedFunction(f"{library}:{name}", text, dtype, timeout, role,
                                    cleanup=lambda: remove_tree(folder), layout=layout, plan=plan)
    except BaseException:
        remove_tree(folder)
        raise
    function.__name__ = name
    return function


def _compile_user_c(source: Path, library: Path) -> None:
    """Compile the user's C file (their code: plain flags, not the generated code's strict ones)."""
    compile_shared(source, library, generated=False)


def load_in_process(reference: str, signature: Signature | None, dtype: str,
                    layout: str = "classes-last", signature_text: str | None = None,
                    plan: dict[str, Any] | None = None) -> tuple[Callable[..., Any], str]:
    """The callable named by `reference`, in this process (the worker child's side of load_function), and
    how it is called ("" for a plain function). C functions get a NumPy wrapper with the signature's
    convention (or, with a plan, the guarded calls of c_conventions); classes and framework code an adapter
    (see adapters). A signature of None (specs with several indices) takes Python functions as they are."""
    location, name = split_reference(reference)
    if location.endswith((".so", ".dylib")) and plan is not None:
        from softgrad.verify.c_conventions import load_c_functions

        if not Path(location).is_file():
            raise SoftgradError(f"cannot read {location!r}: no such file")
        return load_c_functions(str(Path(location).resolve()), name.split(","), plan), str(plan.get("how", ""))
    if location.endswith((".c", ".so", ".dylib")):
        if signature is None:
            raise SoftgradError("C for a spec with several indices needs a signature that declares its pointers' "
                                "roles, e.g. 'dx+=,dw+= <- dy,x,w' (see docs/verify.md)")
        return load_c(location, name, signature, dtype, layout), ""
    is_module_name = re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", location) is not None  # package.module
    if not is_module_name and not location.endswith(".py"):
        raise SoftgradError(f"cannot load {location!r}: expected a .py, .c or .so file, or a module name")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise SoftgradError(f"cannot read {location!r}: no such file")
        module = _run_user_code(lambda: import_path(path), location)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:  # as `python -c` finds modules here
            sys.path.insert(0, os.getcwd())
        module = _run_user_code(lambda: importlib.import_module(location), location)
    if "," in name:  # FORWARD,BACKWARD: the two composed by the signature's names (see pairs)
        from softgrad.verify.pairs import compose, parse_pair

        pair = parse_pair(signature_text or "")
        if pair is None:
            raise SoftgradError(f"{name} names a forward and a backward: give --signature 'FORWARD INPUTS->OUTPUTS; "
                                "BACKWARD INPUTS->GRADIENTS'")
        functions = []
        for part in name.split(","):
            found = getattr(module, part, None)
            if not callable(found):
                raise SoftgradError(f"{location} has no function {part!r}")
            functions.append(found)
        from softgrad.verify.adapters import on_its_arrays

        return on_its_arrays(compose(functions[0], functions[1], pair), functions)
    function = getattr(module, name, None)
    if not callable(function) and not _has_forward_and_backward(function):
        raise SoftgradError(f"{location} has no function {name!r}")
    if signature is None:  # a spec with several indices: framework code through its autodiff, else as it is
        from softgrad.verify.adapters import adapt_several

        adapted = adapt_several(function, signature_text or "", name)
        return adapted if adapted is not None else (cast(Callable[..., Any], function), "")
    return adapt(function, signature, name)


def _run_user_code(action: Callable[[], ModuleType], location: str) -> ModuleType:
    try:
        return action()
    except SoftgradError:
        raise
    except ModuleNotFoundError as problem:
        raise SoftgradError(f"cannot import {location!r}: {problem}") from None
    except BaseException as problem:  # the user's module failed (or exited) while loading: its own last line
        raise SoftgradError(f"importing {location} {describe_failure(problem)}") from None


def load_c(location: str, name: str, signature: Signature, dtype: str,
           layout: str = "classes-last") -> Callable[..., Any]:
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
    label_pointer = ctypes.POINTER(ctypes.c_int64)
    function.argtypes = ([label_pointer if role == "label" else pointer for role in signature.takes]
                         + [pointer] * outputs + [ctypes.c_size_t, ctypes.c_size_t])
    first = layout == "classes-first"

    def call(*arrays: np.ndarray) -> Any:
        contiguous = [np.ascontiguousarray(a, dtype=np.int64 if role == "label" else numpy_type)
                      for role, a in zip(signature.takes, arrays)]
        x = contiguous[signature.takes.index("x" if "x" in signature.takes else "y")]
        size, rows = x.shape if first else x.shape[::-1]
        results = [np.empty(rows, dtype=numpy_type) if role == "loss" else np.empty(x.shape, dtype=numpy_type)
                   for role in signature.returns]
        function(*[a.ctypes.data_as(label_pointer) if role == "label" else as_pointer(a)
                   for role, a in zip(signature.takes, contiguous)], *map(as_pointer, results), rows, size)
        return tuple(results) if outputs > 1 else results[0]

    return call


def load_c_target(target: str, text: str, against: str, sizes: str | None, dtype: str,
                  timeout: float, reads_upstream: bool = True) -> tuple[Any, str, str]:
    """C named by `target` with a signature of declared roles, loaded in its child process: (the function, the
    several-index signature it is checked as, the dtype its prototype computes in)."""
    from softgrad.derive import load_spec
    from softgrad.derive.spec import with_rows
    from softgrad.verify.arrays import parse_sizes
    from softgrad.verify.c_conventions import plan_c_call

    location = target.rpartition(":")[0]
    if not Path(location).is_file():
        raise SoftgradError(f"cannot read {location!r}: no such file")
    spec = with_rows(load_spec(against))
    plan = plan_c_call(target, text, spec, parse_sizes(sizes, spec), dtype, reads_upstream)
    return load_function(target, plan.tensor_signature, plan.dtype, timeout, plan=plan.as_data()), \
        plan.tensor_signature, plan.dtype


def load_c_product(target: str, text: str, against: str, sizes: str | None, dtype: str, timeout: float,
                   wrt: str | None) -> tuple[Any, str, str]:
    """C that computes a loss's Hessian–vector product or its Hessian, its pointers' roles declared
    ('z,t,v -> hv' or 'hv <- z,t,v'; 'z,t -> H'), loaded in its child process as the vector–Jacobian product of
    the loss's gradient that it is checked as (a Hessian: as what the product is made of): (the function, the
    signature 'z,t,v->hv' or 'z,t->H' for check_gradient(order=2), the dtype its prototype computes in)."""
    from softgrad.derive import load_spec
    from softgrad.derive.spec import with_rows
    from softgrad.verify.c_conventions import parse_c_signature
    from softgrad.verify.second_order import second_order_signature

    parts = parse_c_signature(text)
    if len(parts) != 1:
        raise SoftgradError("a Hessian–vector product in C is one function, e.g. 'x,t,v -> hv'")
    (part,) = parts
    product = f"{','.join(part.reads)}->{','.join(part.writes)}"
    gradient_spec, vjp, vector_position = second_order_signature(against, product, wrt)
    takes, _, returns = vjp.partition("->")
    if vector_position is not None:  # the Hessian itself: no vector among the pointers
        takes = ",".join(takes.split(",")[:vector_position])
    renamed = dict(zip([*part.reads, *part.writes], [*takes.split(","), *returns.split(",")]))
    matrix_shape: tuple[str, ...] = ()
    if vector_position is not None:  # H's shape: wrt's axes twice, or one (n, n) block per row
        spec = load_spec(against)
        axes = tuple(with_rows(spec).axes[returns[1:]] if not spec.tensor else spec.axes[returns[1:]])
        matrix_shape = (*axes, *(axes[1:] if not spec.tensor else axes))

    def item(array: Any) -> str:
        declared = array.declared or (matrix_shape if array.written else None)
        shape = f"[{','.join(declared)}]" if declared else ""
        return renamed[array.name] + ("+=" if array.accumulated else "") + shape

    written = ",".join(item(a) for a in part.arrays if a.written)
    read = ",".join(item(a) for a in part.arrays if not a.written)
    roles = f"{written} <- {read}" if part.arrays[0].written else f"{read} -> {written}"
    function, _, computed = load_c_target(target, roles, gradient_spec, sizes, dtype, timeout,
                                          reads_upstream=vector_position is None)
    back = {checked: given for given, checked in renamed.items()}  # the call as made, under the user's names
    function.how = re.sub(r"\b\w+\b", lambda word: back.get(word.group(0), word.group(0)), function.how)
    return function, product, computed

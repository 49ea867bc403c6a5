"""The C99 backend: one header, one source and a ctypes loader per spec.

Everything the templates print is decided here — declarations, accumulator types, pragmas, casts — so
the templates in softgrad/templates/c/ hold layout only. Entries are computed in the element type (a
float32 kernel vectorizes in float); sums accumulate and per-row values are computed in double, then
rounded once; an explicit Jacobian computes in double (y(1 − y) cancels in float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from softgrad.codegen.backends.c import vector_math
from softgrad.codegen.backends.printers import CKernelPrinter, assert_printable, prepare
from softgrad.codegen.build import RECOMMENDED_FLAGS
from softgrad.codegen.lower.kernel import Kernel
from softgrad.codegen.lower.schedule import Loop, schedule

_CTYPE = {"float64": "double", "float32": "float"}
_SUFFIX = {"float64": "", "float32": "f"}


@dataclass
class PrintedLoop:
    """A schedule's loop as C statements: per-row values (type, name, code), its accumulators (type, name,
    initial value) and `omp simd` clauses, and per entry the temporaries, accumulations and stores."""

    before: list[tuple[str, str, str]]
    declarations: list[tuple[str, str, str]]
    clauses: str
    maxima: list[str]
    temporaries: list[tuple[str, str]]
    accumulations: list[str]
    stores: list[tuple[str, str]]
    #: (accumulator, combining statement template, slot) for rows split over threads: each thread's
    #: partial goes to its slot, then every thread combines the slots in thread order
    partials: list[tuple[str, str, int]]


def print_kernel(kernel: Kernel, dtype: str) -> dict[str, Any]:
    """What the C templates show of one kernel."""
    entry_dtype = "float64" if kernel.explicit_jacobian else dtype
    entry_type, suffix = _CTYPE[entry_dtype], _SUFFIX[entry_dtype]
    plan = schedule(kernel, materialize_sums=entry_dtype == "float32", share_exponentials=True)
    entry = CKernelPrinter(entry_dtype, vector_exp=True)
    row = CKernelPrinter("float64")

    def code(printer: CKernelPrinter, expr: sp.Expr) -> str:
        expr = prepare(expr)
        assert_printable(expr)
        return str(printer.doprint(expr))

    slots = iter(range(10**6))

    def loop(item: Loop, cast: str = "") -> PrintedLoop:
        maxima = [str(s) for s, op, _ in item.reductions if op == "max"]
        sums = [str(s) for s, op, _ in item.reductions if op == "sum"]
        clauses = (f" reduction(max:{', '.join(maxima)})" if maxima else "") + (
            f" reduction(+:{', '.join(sums)})" if sums else "")
        accumulations = [f"{s} = softgrad_max{suffix}({s}, {code(entry, e)})" if op == "max"
                         else f"{s} += {code(entry, e)}" for s, op, e in item.reductions]
        per_row = [(entry_type, str(s), f"(float)({code(row, e)})" if entry_type == "float" else code(row, e))
                   for s, e in item.before]
        stores = [(name, f"({cast})({code(entry, e)})" if cast else code(entry, e)) for name, e in item.stores]
        return PrintedLoop(per_row,
                           [(entry_type if op == "max" else "double", str(s), "-INFINITY" if op == "max" else "0.0")
                            for s, op, _ in item.reductions],
                           clauses, maxima, [(str(s), code(entry, e)) for s, e in item.temporaries],
                           accumulations, stores,
                           [(str(s), f"{s} = softgrad_max{suffix}({s}, %s)" if op == "max" else f"{s} += %s",
                             next(slots)) for s, op, _ in item.reductions])

    expressions = [r.body for r in kernel.reductions] + [o.expr for o in kernel.outputs]
    read_arrays = {str(item.base) for e in expressions for item in e.atoms(sp.Indexed)}
    read_scalars = {str(symbol) for e in expressions for symbol in e.free_symbols if not symbol.is_integer}
    output_cast = _CTYPE[dtype] if kernel.explicit_jacobian else ""
    reduction_loops = [loop(item) for item in plan.reduction_loops]
    return {"kernel": kernel, "reduction_loops": reduction_loops,
            "partial_count": sum(len(stage.partials) for stage in reduction_loops),
            # arguments the formulas do not read (a spec may take an input it ignores): no row pointer,
            # and a (void) cast so that -Wextra does not flag them
            "read_arrays": read_arrays,
            "unread": [name for name, _ in kernel.inputs if name not in read_arrays]
            + [name for name in kernel.parameters if name not in read_scalars],
            "scalar_temporaries": [(str(s), code(row, e)) for s, e in plan.scalar_temporaries],
            "scalar_outputs": [(name, code(row, e)) for name, e in plan.scalar_outputs],
            "output_loop": loop(plan.output_loop, output_cast) if plan.output_loop else None,
            "matrix": kernel.explicit_jacobian,
            # an output that a reduction loop already wrote is in cache: streaming it out would not help
            "stream": plan.output_loop is not None and not kernel.explicit_jacobian and plan.stash is None,
            "entry_type": entry_type, "entry_suffix": suffix}


def context(dtype: str, openmp: bool) -> dict[str, Any]:
    """What the C templates show besides the kernels: the element type, threads, helpers, build flags."""
    return {"ctype": _CTYPE[dtype], "openmp": openmp, "helper_types": vector_math.helper_types(dtype),
            "compile_flags": " ".join(RECOMMENDED_FLAGS + (["-fopenmp"] if openmp else []))}


def files(module: str) -> list[tuple[str, str]]:
    """(template, file name) of each generated file."""
    return [("c/rows.h.j2", f"{module}.h"), ("c/rows.c.j2", f"{module}.c"),
            ("c/rows_loader.py.j2", f"{module}_ctypes.py")]

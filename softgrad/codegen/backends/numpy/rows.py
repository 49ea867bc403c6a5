"""The NumPy backend: one module per spec, every kernel a function over arrays of any leading shape.

Kernels work on blocks of rows, each operation one ufunc writing into a buffer reused from block to
block (softgrad.codegen.backends.numpy.ufuncs); the explicit Jacobian, for small n, is whole-array NumPy in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from softgrad.codegen.backends.numpy.ufuncs import BlockPrinter, UfuncProgram
from softgrad.codegen.backends.printers import NumpyKernelPrinter, assert_printable, prepare
from softgrad.codegen.lower.kernel import Kernel
from softgrad.codegen.lower.schedule import Loop, schedule


def print_kernel(kernel: Kernel, dtype: str) -> dict[str, Any]:
    """What the NumPy template shows of one kernel (NumPy kernels follow their inputs' dtype)."""
    if not kernel.explicit_jacobian:
        return _numpy_blocked(kernel)
    matrix = NumpyKernelPrinter(matrix=True)
    matrix.reduction_names = {r.symbol.name for r in kernel.reductions}
    return {"kernel": kernel, "blocked": False, **_stages(kernel, NumpyKernelPrinter(), matrix)}


def context(dtype: str, openmp: bool) -> dict[str, Any]:
    """Nothing besides the kernels: one module for every floating dtype, on one thread."""
    return {}


def files(module: str) -> list[tuple[str, str]]:
    """(template, file name) of the generated module."""
    return [("numpy/rows.py.j2", f"{module}.py")]


@dataclass
class PrintedStage:
    """One loop of a kernel: common subexpressions, then assignments (target, expression, how)."""

    temporaries: list[tuple[str, str]]
    assignments: list[tuple[str, str, str]]  # (name, code, kind: max | sum | scalar | vector | matrix)


def _stages(kernel: Kernel, printer: NumpyKernelPrinter, output_printer: NumpyKernelPrinter) -> dict[str, Any]:
    """The explicit Jacobian in NumPy (small n, whole arrays): each reduction level, the scalar outputs,
    then the matrix output printed by output_printer."""

    def printed(pairs: list[tuple[str, sp.Expr, str]], prefix: str,
                printer: NumpyKernelPrinter = printer) -> PrintedStage:
        expressions = [e for _, e, _ in pairs]  # small powers multiplied out after CSE: it re-evaluates them
        temporaries = []
        if expressions:
            symbols = sp.numbered_symbols(prefix)
            replacements, expressions = sp.cse(expressions, symbols=symbols, order="canonical")
            temporaries = [(str(s), printer.doprint(prepare(e))) for s, e in replacements]
        for e in expressions:
            assert_printable(e)
        return PrintedStage(temporaries, [(name, printer.doprint(prepare(e)), kind)
                                          for (name, _, kind), e in zip(pairs, expressions)])

    levels = [printed([(r.symbol.name, r.body, r.op) for r in group], f"_t{number}_")
              for number, group in enumerate(kernel.levels())]
    scalars = printed([(o.name, o.expr, "scalar") for o in kernel.outputs if o.shape == "scalar"], "_s")
    vectors = printed([(o.name, o.expr, o.shape) for o in kernel.outputs if o.shape != "scalar"], "_e",
                      output_printer)
    return {"levels": levels, "scalars": scalars, "vectors": vectors}



def _numpy_blocked(kernel: Kernel) -> dict[str, Any]:
    """A kernel's schedule as NumPy statements for one block of rows (see softgrad.codegen.backends.numpy.ufuncs)."""
    plan = schedule(kernel)
    printer = BlockPrinter()
    program = UfuncProgram(printer)

    def row_values(pairs: list[tuple[sp.Symbol, sp.Expr]]) -> None:
        program.lines.extend(f"{symbol} = {printer.doprint(prepare(expr))}" for symbol, expr in pairs)

    def entries(loop: Loop) -> None:
        row_values(loop.before)
        held = {symbol for symbol, _ in loop.temporaries}
        # a store of a temporary is no statement of its own: the temporary is computed into the output
        computed_into = {expr: f"_block_{name}" for name, expr in loop.stores if expr in held}
        statements = [("hold", symbol, expr) for symbol, expr in loop.temporaries]
        statements += [("store", name, expr) for name, expr in loop.stores if expr not in held]
        statements += [("reduce", (symbol, op), expr) for symbol, op, expr in loop.reductions]
        last_use = {}
        for number, (_, _, expr) in enumerate(statements):
            for symbol in expr.free_symbols & held:
                last_use[symbol] = number
        for number, (kind, target, expr) in enumerate(statements):
            ending = {s for s, last in last_use.items() if last == number}
            # a value read once, for the last time, may be overwritten by the statement that reads it
            program.dying = {s for s in ending if _occurrences(expr, s) == 1}
            expr = prepare(expr)
            if kind == "hold":
                program.hold(target, expr, into=computed_into.get(target))
            elif kind == "store":
                program.store(f"_block_{target}", expr)
            else:
                symbol, op = target
                program.reduce(symbol, op, expr)
            program.dying = set()
            program.forget(ending)
        program.release_all()

    for loop in plan.reduction_loops:
        entries(loop)
    row_values(plan.scalar_temporaries)
    for name, expr in plan.scalar_outputs:
        program.lines.append(
            f"{name}[_start:_stop] = np.broadcast_to({printer.doprint(prepare(expr))}, (_size, 1))[:, 0]"
        )
    if plan.output_loop:
        entries(plan.output_loop)
    return {"kernel": kernel, "blocked": True, "lines": program.lines, "work_buffers": program.buffers_used}


def _occurrences(expr: sp.Expr, symbol: sp.Symbol) -> int:
    return sum(1 for node in sp.preorder_traversal(expr) if node == symbol)

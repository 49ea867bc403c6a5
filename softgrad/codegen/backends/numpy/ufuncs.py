"""schedule → NumPy statements: each entry-wise operation one ufunc call writing into a reused buffer.

NumPy evaluates `np.exp(x - m) / s` by allocating an array per operation; on a block of rows that fits
in cache, the same work done as `np.subtract(x, m, out=_work0); np.exp(_work0, out=_work0); …` allocates nothing and
touches memory once. Expressions are walked once: operands are evaluated into work buffers (or straight
into the destination when nothing else still reads it), and a buffer is reused once its value is dead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad.codegen.backends.printers import NumpyKernelPrinter
from softgrad.codegen.lower.kernel import guarded_product, softplus
from softgrad.derive.symbols import sigmoid

_FUNCTIONS = {sp.exp: "np.exp", sp.log: "np.log", sp.Abs: "np.abs", sp.tanh: "np.tanh", sp.sin: "np.sin",
              sp.cos: "np.cos", sp.sqrt: "np.sqrt", sp.sign: "np.sign", log1p: "np.log1p", sp.erf: "_erf"}


class BlockPrinter(NumpyKernelPrinter):
    """Entries print as the current block of their array (`x` → `x_block`); per-row values as themselves."""

    def _print_Indexed(self, expr: Any) -> Any:
        return f"_block_{expr.base}"


class UfuncProgram:
    """Statements for one loop of a kernel, with a pool of (block rows, n) work buffers."""

    def __init__(self, printer: BlockPrinter) -> None:
        self.printer = printer
        self.lines: list[str] = []
        self.buffers_used = 0
        self._free: list[str] = []
        self._names: dict[sp.Expr, str] = {}  # common subexpressions already held in buffers
        self.dying: set[sp.Symbol] = set()  # held values read for the last time by the current statement

    # buffers
    def _take(self) -> str:
        if self._free:
            return self._free.pop()
        name = f"_work{self.buffers_used}"
        self.buffers_used += 1
        return name

    def _give_back(self, name: str) -> None:
        if name.startswith("_work") and name not in self._names.values() and name not in self._free:
            self._free.append(name)

    def forget(self, symbols: Iterable[sp.Symbol]) -> None:
        """These common subexpressions are not read again: their buffers can be reused."""
        for symbol in symbols:
            name = self._names.pop(symbol, None)
            if name is not None:
                self._give_back(name)

    def release_all(self) -> None:
        """End of a loop: common subexpressions are dead."""
        self._names.clear()
        self._free = [f"_work{k}" for k in reversed(range(self.buffers_used))]

    # statements
    def store(self, destination: str, expr: sp.Expr) -> None:
        """Write the value of expr into an existing (block rows, n) array."""
        result = self.value(expr, into=destination)
        if result != destination:
            self.lines.append(f"np.copyto({destination}, {result})")
            self._give_back(result)

    def reduce(self, symbol: sp.Symbol, op: str, expr: sp.Expr) -> None:
        """symbol = max or sum along each row of expr, as a (block rows, 1) column."""
        if not self._is_entrywise(expr):  # the same value at every entry of a row
            value = f"np.broadcast_to({self.printer.doprint(expr)}, (_size, 1))"
            self.lines.append(f"{symbol} = {value}" if op == "max" else f"{symbol} = {value} * n")
            return
        result = self.value(expr)
        ufunc = "np.maximum" if op == "max" else "np.add"
        self.lines.append(f"{symbol} = {ufunc}.reduce({result}, axis=1, keepdims=True)")
        if op == "max":  # a fully masked row (all −inf) is shifted by 0: its entries are −inf anyway
            self.lines.append(f"np.copyto({symbol}, 0, where={symbol} == -np.inf)")
        self._give_back(result)

    def hold(self, symbol: sp.Symbol, expr: sp.Expr, into: str | None = None) -> None:
        """A common subexpression, kept (in a buffer, or in `into`) until the end of the loop."""
        self._names[symbol] = self.value(expr, into=into)

    # evaluation
    def _is_entrywise(self, expr: sp.Expr) -> bool:
        return bool(expr.atoms(sp.Indexed)) or any(s in self._names for s in expr.free_symbols)

    def _atom(self, expr: sp.Expr) -> str | None:
        """The name or literal of a value that needs no entry-wise computing, else None."""
        if expr in self._names:
            return self._names[expr]
        if isinstance(expr, sp.Indexed) or expr.is_Atom or not self._is_entrywise(expr):
            printed = self.printer.doprint(expr)
            return f"({printed})" if not (expr.is_Atom or isinstance(expr, sp.Indexed)) else printed
        return None

    def _owned(self, name: str) -> bool:
        """A work buffer this statement may overwrite: free, or holding only values read here for the last time."""
        return name.startswith("_work") and all(s in self.dying for s, held in self._names.items() if held == name)

    @staticmethod
    def _reads(expr: sp.Expr, block: str) -> bool:
        return any(f"_block_{i.base}" == block for i in expr.atoms(sp.Indexed))

    def value(self, expr: sp.Expr, into: str | None = None) -> str:
        """Compute expr; return the name that holds it (into, a work buffer, an input block or a literal)."""
        atom = self._atom(expr)
        if atom is not None:
            return atom
        steps = self._steps(expr, into)
        if steps is None:  # no ufunc spelling: NumPy's own expression (allocates, still correct)
            destination = into or self._take()
            # a common subexpression it reads lives in a buffer under another name: print that name
            held = {symbol: sp.Symbol(name) for symbol, name in self._names.items() if symbol in expr.free_symbols}
            self.lines.append(f"np.copyto({destination}, {self.printer.doprint(expr.xreplace(held))})")
            return destination
        if into is not None and any(self._reads(operand, into) for _, operand in steps[1:] if operand is not None):
            into = None  # a later operand still reads the destination: build the result elsewhere first
        first = self.value(steps[0][1], into=into)
        others = [self.value(operand) if operand is not None else None for _, operand in steps[1:]]
        destination = into or (first if self._owned(first) else self._take())
        current = first
        for (step, _), name in zip(steps[1:], others):
            current = self._apply(step, current, name, destination)
        for name in [first, *others]:
            if name is not None and name != destination:
                self._give_back(name)
        return destination

    def _apply(self, step: str, current: str, operand: str | None, destination: str) -> str:
        """One ufunc call: a binary step with its operand, or a unary step on the running value."""
        if step in ("add", "subtract", "multiply", "divide"):
            self.lines.append(f"np.{step}({current}, {operand}, out={destination})")
        elif step == "reciprocal":
            self.lines.append(f"np.divide(1, {current}, out={destination})")
        elif step == "sigmoid":
            self.lines.append(f"_sigmoid({current}, out={destination})")
        elif step == "softplus":
            self.lines.append(f"np.logaddexp(0, {current}, out={destination})")
        elif step.startswith("power "):
            self.lines.append(f"np.power({current}, {step.split(' ', 1)[1]}, out={destination})")
        elif step.startswith("guard "):
            weight = step.split(" ", 1)[1]
            self.lines.append(f"np.multiply({weight}, {current}, out={destination})")
            self.lines.append(f"np.copyto({destination}, 0, where={weight} == 0)")
        else:  # a one-argument ufunc: np.exp, np.negative, …
            self.lines.append(f"{step}({current}, out={destination})")
        return destination

    def _steps(self, expr: sp.Expr, into: str | None = None) -> list[tuple[str, sp.Expr | None]] | None:
        """expr as ("first", operand) followed by binary (step, operand) and unary (step, None) steps.

        An operand that reads the destination goes first where the operation commutes, so that the
        result can be built in the destination itself (x ← x·y reads each entry before writing it)."""
        def reads(term: sp.Expr) -> bool:
            return into is not None and self._reads(term, into)

        if expr.is_Add:
            terms = sorted(
                expr.args, key=lambda t: (t.could_extract_minus_sign(), not reads(t), sp.default_sort_key(t))
            )
            if terms[0].could_extract_minus_sign():  # every term negative: −(a + b + …)
                return [("first", -terms[0])] + [("add", -t) for t in terms[1:]] + [("np.negative", None)]
            return [("first", terms[0])] + [
                ("subtract", -t) if t.could_extract_minus_sign() else ("add", t) for t in terms[1:]]
        if expr.is_Mul:
            coefficient, factors = expr.as_coeff_mul()
            numerator = sorted((f for f in factors if not (f.is_Pow and f.exp == -1)),
                               key=lambda f: (not reads(f), not self._is_entrywise(f), sp.default_sort_key(f)))
            denominator = [f.base for f in factors if f.is_Pow and f.exp == -1]
            if numerator:
                steps = [("first", numerator[0])] + [("multiply", f) for f in numerator[1:]]
            else:
                steps = [("first", denominator.pop(0)), ("reciprocal", None)]
            steps += [("divide", d) for d in denominator]
            if coefficient == -1:
                steps.append(("np.negative", None))
            elif coefficient != 1:
                steps.append(("multiply", coefficient))
            return steps
        if expr.is_Pow:
            if expr.exp == -1:
                return [("first", expr.base), ("reciprocal", None)]
            if expr.exp == 2:
                return [("first", expr.base), ("np.square", None)]
            if expr.exp == sp.Rational(1, 2):
                return [("first", expr.base), ("np.sqrt", None)]
            return [("first", expr.base), (f"power {self.printer.doprint(expr.exp)}", None)]
        if isinstance(expr, guarded_product) and isinstance(expr.args[0], sp.Indexed):
            return [("first", expr.args[1]), (f"guard {self.printer.doprint(expr.args[0])}", None)]
        if isinstance(expr, sigmoid):
            return [("first", expr.args[0]), ("sigmoid", None)]
        if isinstance(expr, softplus):
            return [("first", expr.args[0]), ("softplus", None)]
        if type(expr) in _FUNCTIONS and len(expr.args) == 1:
            return [("first", expr.args[0]), (_FUNCTIONS[type(expr)], None)]
        return None

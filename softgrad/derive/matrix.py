"""Index form → vector and matrix form: y_i(δ_ij − y_j) → diag(y) − y yᵀ, y_i(g_i − Σ_j g_j y_j) → y ∘ (g − 𝟙 gᵀy).

Works on what has a plain matrix reading (entries of vectors at the index, products, powers, sums that
do not depend on it); returns None otherwise, and the derivation then shows the index form only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp
from sympy.matrices.expressions import DiagMatrix, HadamardPower, HadamardProduct, OneMatrix

from softgrad.derive.algebra import expanded
from softgrad.derive.symbols import n


def vector_symbol(name: str) -> sp.MatrixSymbol:
    return sp.MatrixSymbol(name, n, 1)


def vectorize(expr: sp.Expr, at: sp.Symbol) -> Any:
    """("vector", column expression) or ("scalar", expression) for an entry expression at index `at`."""
    if at not in expr.free_symbols:
        if not expr.atoms(sp.Indexed):
            return "scalar", expr
        sums = [f for f in sp.Mul.make_args(expr) if isinstance(f, sp.Sum)]
        rest = sp.Mul(*[f for f in sp.Mul.make_args(expr) if not isinstance(f, sp.Sum)])
        dot = _inner_product(sums[0]) if len(sums) == 1 and not rest.atoms(sp.Indexed) else None
        if dot is None:
            return None
        return "dot", rest * dot if rest != 1 else dot
    if isinstance(expr, sp.Indexed) and expr.indices[0] == at:
        return "vector", vector_symbol(str(expr.base))
    if expr.is_Add:
        pieces = [vectorize(a, at) for a in expr.args]
        if any(p is None for p in pieces):
            return None
        return "vector", sp.MatAdd(*[_as_vector(kind, value) for kind, value in pieces]).doit()
    if expr.is_Mul:
        pieces = [vectorize(a, at) for a in expr.args]
        if any(p is None for p in pieces):
            return None
        scalar = sp.Mul(*[v for k, v in pieces if k == "scalar"])
        vectors = [v for k, v in pieces if k == "vector"]
        dots = [v for k, v in pieces if k == "dot"]
        body = vectors[0] if len(vectors) == 1 else HadamardProduct(*vectors)
        for dot in dots:
            body = body * dot
        return "vector", scalar * body if scalar != 1 else body
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        inner = vectorize(expr.base, at)
        if inner is None or inner[0] != "vector":
            return None
        return "vector", HadamardPower(inner[1], expr.exp)
    return None


def _as_vector(kind: str, value: Any) -> Any:
    if kind == "vector":
        return value
    if kind == "dot":
        return OneMatrix(n, 1) * value
    return value * OneMatrix(n, 1)


def _inner_product(total: sp.Sum) -> Any:
    """Σ_j a_j b_j → aᵀb for two vectors (the reduction a VJP needs once per row)."""
    bound = total.limits[0][0]
    factors = sp.Mul.make_args(total.function)
    coefficient = sp.Mul(*[f for f in factors if bound not in f.free_symbols])
    entries = [f for f in factors if bound in f.free_symbols]
    if len(entries) == 2 and all(isinstance(e, sp.Indexed) and e.indices[0] == bound for e in entries):
        first, second = (vector_symbol(str(e.base)) for e in entries)
        return coefficient * (first.T * second) if coefficient != 1 else first.T * second
    return None


def jacobian_matrix(diagonal: sp.Expr, off: sp.Expr, row: sp.Symbol, column: sp.Symbol) -> Any:
    """J = diag(P) + Σ u vᵀ from ∂y_i/∂x_j = δ_ij P_i + Q_ij, when Q separates into i-part × j-part."""
    terms = []
    if diagonal != 0:
        piece = vectorize(diagonal, row)
        if piece is None or piece[0] == "dot":
            return None
        kind, value = piece
        terms.append(DiagMatrix(value) if kind == "vector" else value * sp.Identity(n))
    for term in sp.Add.make_args(expanded(off)) if off != 0 else []:
        row_part, column_part = term.as_independent(column, as_Add=False)
        left, right = vectorize(row_part, row), vectorize(column_part.subs(column, row), row)
        if left is None or right is None or "dot" in (left[0], right[0]):
            return None
        left_vector = _as_vector(*left) if left[0] == "vector" else OneMatrix(n, 1)
        coefficient = left[1] if left[0] == "scalar" else 1
        right_vector = _as_vector(*right) if right[0] == "vector" else right[1] * OneMatrix(n, 1)
        terms.append(coefficient * left_vector * right_vector.T)
    if not terms:
        return sp.ZeroMatrix(n, n)
    return sp.MatAdd(*terms)


def entries(form: sp.MatrixExpr, size: int, vector: Callable[[str], list[Any]] | None, scalar: Callable[[sp.Expr], Any],
            one: Any, zero: Any, arrays: Callable[[str], list[list[Any]]] | None = None,
            dimension: Callable[[sp.Expr], int] | None = None) -> list[list[Any]]:
    """The rows of a matrix form at size n, in whatever numbers the callbacks give: vector(name) a vector's
    entries, scalar(expr) a scalar factor's value (numbers for the numeric check, symbols for the proof).
    For arrays of several ranges (AB, Aᵀ, v𝟙ᵀ), arrays(name) gives an array's rows (a vector as a column)
    and dimension(side) a side's length (n_b), in place of vector and size.

    Covers what this module writes (vectors, ᵀ, sums, products, ∘, powers ∘, diag, 𝟙, I, 0); anything
    else raises TypeError. Far cheaper than substituting into SymPy's matrices and calling doit()."""

    def length(side: sp.Expr) -> int:
        return dimension(side) if dimension is not None else int(side.subs(n, size))

    def rows(node: sp.MatrixExpr) -> list[list[Any]]:
        if isinstance(node, sp.MatrixSymbol):
            if arrays is not None:
                return arrays(str(node.name))
            assert vector is not None, "entries needs vector or arrays"
            return [[entry] for entry in vector(str(node.name))]
        if isinstance(node, sp.Transpose):
            return [list(column) for column in zip(*rows(node.arg))]
        if isinstance(node, sp.MatAdd):
            total = rows(node.args[0])
            for term in node.args[1:]:
                total = [[a + b for a, b in zip(row, other)] for row, other in zip(total, rows(term))]
            return total
        if isinstance(node, sp.MatMul):
            factor_value, result = one, None
            for factor in node.args:
                if not isinstance(factor, sp.MatrixExpr):
                    factor_value = factor_value * scalar(factor)
                    continue
                right = rows(factor)
                result = right if result is None else [
                    [sum((row[k] * right[k][c] for k in range(len(right))), zero) for c in range(len(right[0]))]
                    for row in result]
            if result is None:
                raise TypeError("a matrix product without a matrix")
            return [[factor_value * entry for entry in row] for row in result]
        if isinstance(node, HadamardProduct):
            result = rows(node.args[0])
            for factor in node.args[1:]:
                result = [[a * b for a, b in zip(row, other)] for row, other in zip(result, rows(factor))]
            return result
        if isinstance(node, HadamardPower) and node.exp.is_Integer:
            power = int(node.exp)
            return [[entry ** power for entry in row] for row in rows(node.base)]
        if isinstance(node, DiagMatrix):
            diagonal = [entry for row in rows(node.args[0]) for entry in row]
            return [[diagonal[r] if r == c else zero for c in range(len(diagonal))] for r in range(len(diagonal))]
        if isinstance(node, (sp.Identity, OneMatrix, sp.ZeroMatrix)):
            height, width = (length(side) for side in node.shape)
            return [[one if isinstance(node, OneMatrix) or (isinstance(node, sp.Identity) and r == c) else zero
                     for c in range(width)] for r in range(height)]
        raise TypeError(f"cannot write out the matrix form {type(node).__name__}")

    return rows(form)


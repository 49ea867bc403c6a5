"""Index form → vector and matrix form: y_i(δ_ij − y_j) → diag(y) − y yᵀ, y_i(g_i − Σ_j g_j y_j) → y ∘ (g − 𝟙 gᵀy).

Works on what has a plain matrix reading (entries of vectors at the index, products, powers, sums that
do not depend on it); returns None otherwise, and the derivation then shows the index form only.
"""

from __future__ import annotations

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

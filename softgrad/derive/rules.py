"""Differentiation rules as small records: one dispatch picks the rule, each record keeps its parts.

`differentiate(expr, var)` returns a Rule whose `result` is the derivative (Kronecker deltas sifted out
of sums) and whose `name`/`reason` say which rule of calculus justifies it, as a tutorial would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp

from softgrad.derive.algebra import sift
from softgrad.derive.symbols import class_sum, sigmoid


@dataclass(frozen=True)
class Rule:
    """One application of a rule: d(expr)/d(var) = result, justified by `name`, built from `parts`."""

    name: str
    expr: sp.Expr
    var: sp.Indexed
    result: sp.Expr
    reason: str
    parts: tuple[Rule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "expr": sp.srepr(self.expr),
            "result": sp.srepr(self.result),
            "reason": self.reason,
            "parts": [p.to_dict() for p in self.parts],
        }


#: Derivatives of the one-argument functions of the spec language, f'(u).
OUTER_DERIVATIVES: dict[Any, Callable[[Any], Any]] = {
    sp.exp: lambda u: sp.exp(u),
    sp.log: lambda u: 1 / u,
    sp.tanh: lambda u: 1 - sp.tanh(u) ** 2,
    sigmoid: lambda u: sigmoid(u) * (1 - sigmoid(u)),
}


def depends(expr: sp.Expr, var: sp.Indexed) -> bool:
    """Whether expr mentions the vector that var is an entry of."""
    return any(item.base == var.base for item in expr.atoms(sp.Indexed))


def differentiate(expr: sp.Expr, var: sp.Indexed) -> Rule:
    """d(expr)/d(var) for var = x[j], by the rule that fits the outermost operation."""
    if not depends(expr, var):
        return Rule("constant rule", expr, var, sp.S.Zero, "does not depend on " + str(var.base))
    if isinstance(expr, sp.Indexed):
        return Rule("index rule", expr, var, sp.KroneckerDelta(expr.indices[0], var.indices[0]),
                    "∂x_a/∂x_b = δ_ab: 1 if the entries are the same, else 0")
    if expr.is_Add:
        parts = tuple(differentiate(a, var) for a in expr.args if depends(a, var))
        return Rule("sum rule", expr, var, sp.Add(*(p.result for p in parts)),
                    "the derivative of a sum is the sum of the derivatives", parts)
    if expr.is_Mul:
        return _product(expr, var)
    if expr.is_Pow:
        return _power(expr, var)
    if isinstance(expr, sp.Sum):
        bound = expr.limits[0][0]
        inner = differentiate(expr.function, var)
        under = class_sum(inner.result, bound)
        return Rule("sum rule", expr, var, sift(under),
                    f"differentiate under Σ_{bound}; only the term {bound} = {var.indices[0]} survives the δ",
                    (inner,))
    outer = OUTER_DERIVATIVES.get(expr.func)
    if outer is not None and len(expr.args) == 1:
        inner = differentiate(expr.args[0], var)
        return Rule("chain rule", expr, var, outer(expr.args[0]) * inner.result,
                    f"({expr.func.__name__} u)' = {expr.func.__name__}'(u) · u'", (inner,))
    raise NotImplementedError(f"no differentiation rule for {expr.func.__name__}")


def _product(expr: sp.Mul, var: sp.Indexed) -> Rule:
    constant = sp.Mul(*[f for f in expr.args if not depends(f, var)])
    varying = [f for f in expr.args if depends(f, var)]
    if len(varying) == 1:
        inner = differentiate(varying[0], var)
        return Rule("constant factor rule", expr, var, constant * inner.result,
                    "a factor that does not depend on the variable stays", (inner,))
    numerator = [f for f in varying if not (f.is_Pow and f.exp.is_negative)]
    denominator = [1 / f for f in varying if f.is_Pow and f.exp.is_negative]
    if len(numerator) == 1 and len(denominator) == 1:
        top, bottom = numerator[0], denominator[0]
        top_rule, bottom_rule = differentiate(top, var), differentiate(bottom, var)
        result = constant * (top_rule.result * bottom - top * bottom_rule.result) / bottom**2
        return Rule("quotient rule", expr, var, result, "(N/D)' = (N' D − N D') / D²", (top_rule, bottom_rule))
    parts = tuple(differentiate(f, var) for f in varying)
    terms = [sp.Mul(*([*varying[:m], parts[m].result, *varying[m + 1:]])) for m in range(len(varying))]
    return Rule("product rule", expr, var, constant * sp.Add(*terms), "(uv)' = u'v + uv'", parts)


def _power(expr: sp.Pow, var: sp.Indexed) -> Rule:
    base, exponent = expr.args
    if not depends(exponent, var):
        inner = differentiate(base, var)
        return Rule("power rule", expr, var, exponent * base ** (exponent - 1) * inner.result,
                    "(u^p)' = p u^(p−1) u'", (inner,))
    rewritten = sp.exp(exponent * sp.log(base))
    inner = differentiate(rewritten, var)
    return Rule("chain rule", expr, var, inner.result, "u^v = exp(v log u)", (inner,))

"""Differentiation rules as small records: one dispatch picks the rule, each record keeps its parts.

`differentiate(expr, var)` returns a Rule whose `result` is the derivative (Kronecker deltas sifted out
of sums) and whose `name`/`reason` say which rule of calculus justifies it, as a tutorial would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad.derive.algebra import sift
from softgrad.derive.prose import Prose, prose, words
from softgrad.derive.symbols import Partial, class_sum, names_in, sigmoid, softplus, step


@dataclass(frozen=True)
class Rule:
    """One application of a rule: d(expr)/d(var) = result, justified by `name`, built from `parts`."""

    name: str
    expr: sp.Expr
    var: sp.Indexed
    result: sp.Expr
    reason: Prose
    parts: tuple[Rule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "expr": sp.srepr(self.expr),
            "result": sp.srepr(self.result),
            "reason": self.reason.text(),
            "parts": [p.to_dict() for p in self.parts],
        }


#: Derivatives of the one-argument functions of the spec language, f'(u).
OUTER_DERIVATIVES: dict[Any, Callable[[Any], Any]] = {
    sp.exp: lambda u: sp.exp(u),
    sp.log: lambda u: 1 / u,
    sp.tanh: lambda u: 1 - sp.tanh(u) ** 2,
    sigmoid: lambda u: sigmoid(u) * (1 - sigmoid(u)),
    log1p: lambda u: 1 / (1 + u),
    softplus: lambda u: sigmoid(u),
    sp.erf: lambda u: 2 / sp.sqrt(sp.pi) * sp.exp(-(u**2)),
    sp.Abs: lambda u: sp.sign(u),
}
#: Functions with a kink: what the chain rule's reason adds about the point where they do not have a
#: derivative.
KINKS = {sp.Abs: "; a kink at {u} = 0, where sign(0) = 0 is used (as frameworks do)"}


def placeholder(expr: sp.Expr, var: sp.Indexed, preferred: str = "uvwsr") -> sp.Symbol:
    """A letter for a rule's inner function (u in (exp u)' = exp(u) u') that the expression does not use."""
    taken = names_in(expr) | names_in(var)
    return sp.Symbol(next((letter for letter in preferred if letter not in taken), "u_0"))


#: Named scalar intermediates (a mean m, a variance v) and their derivatives ∂m/∂x_j, while a derivation
#: differentiates through them: m stays m in the result, as a textbook keeps it.
_THROUGH: ContextVar[dict[sp.Symbol, sp.Expr] | None] = ContextVar("through", default=None)


@contextmanager
def through(derivatives: dict[sp.Symbol, sp.Expr]) -> Iterator[None]:
    """Within this block, `differentiate` treats each named scalar as a function of the variable with
    the given derivative (the chain rule through it) instead of as a constant."""
    token = _THROUGH.set(dict(derivatives))
    try:
        yield
    finally:
        _THROUGH.reset(token)


def depends(expr: sp.Expr, var: sp.Indexed) -> bool:
    """Whether expr mentions the vector that var is an entry of, or a named scalar that depends on it."""
    if any(item.base == var.base for item in expr.atoms(sp.Indexed)):
        return True
    named = _THROUGH.get()
    return bool(named) and any(symbol in named for symbol in expr.free_symbols)  # type: ignore[operator]


def differentiate(expr: sp.Expr, var: sp.Indexed) -> Rule:
    """d(expr)/d(var) for var = x[j], by the rule that fits the outermost operation."""
    if not depends(expr, var):
        return Rule("constant rule", expr, var, sp.S.Zero, prose("does not depend on {x}", x=var.base))
    if isinstance(expr, sp.Symbol):  # a named intermediate: its derivative, found before
        return Rule("named intermediate", expr, var, (_THROUGH.get() or {})[expr],
                    prose("{derivative} as found above", derivative=Partial(expr, var)))
    if isinstance(expr, sp.Indexed):
        delta = sp.KroneckerDelta(expr.indices[0], var.indices[0])
        return Rule("index rule", expr, var, delta,
                    prose("{derivative} = {delta}: 1 if the entries are the same, else 0",
                          derivative=Partial(expr, var), delta=delta))
    if expr.is_Add:
        parts = tuple(differentiate(a, var) for a in expr.args if depends(a, var))
        return Rule("sum rule", expr, var, sp.Add(*(p.result for p in parts)),
                    words("the derivative of a sum is the sum of the derivatives"), parts)
    if expr.is_Mul:
        return _product(expr, var)
    if expr.is_Pow:
        return _power(expr, var)
    if isinstance(expr, sp.Sum):
        bound = expr.limits[0][0]
        inner = differentiate(expr.function, var)
        under = class_sum(inner.result, bound)
        return Rule("sum rule", expr, var, sift(under),
                    prose("differentiate under the sum over {k}; {delta} keeps only the term {k} = {j}",
                          k=bound, j=var.indices[0], delta=sp.KroneckerDelta(var.indices[0], bound)),
                    (inner,))
    if isinstance(expr, (sp.Min, sp.Max)):
        return _switch(expr, var)
    outer = OUTER_DERIVATIVES.get(expr.func)
    if outer is not None and len(expr.args) == 1:
        inner = differentiate(expr.args[0], var)
        u = placeholder(expr, var)
        formula = sp.Eq(Partial(expr.func(u), var), outer(u) * Partial(u, var), evaluate=False)
        reason = prose("{formula} with {u} = {inner}" + KINKS.get(expr.func, ""), formula=formula, u=u,
                       inner=expr.args[0])
        return Rule("chain rule", expr, var, outer(expr.args[0]) * inner.result, reason, (inner,))
    raise NotImplementedError(f"no differentiation rule for {expr.func.__name__}")


#: How the spec language spells SymPy's function classes in prose.
FUNCTION_NAMES: dict[Any, str] = {sp.Abs: "abs", sp.Min: "min", sp.Max: "max"}


def _switch(expr: sp.Expr, var: sp.Indexed) -> Rule:
    """max(a, b, …)' = the derivative of whichever argument is largest (smallest for min): a step function
    H picks it, so the result has a kink where two arguments are equal (½ each at a tie of two)."""
    arguments = expr.args
    parts = tuple(differentiate(a, var) for a in arguments)
    sign = 1 if isinstance(expr, sp.Max) else -1
    terms = []
    for position, (argument, part) in enumerate(zip(arguments, parts)):
        if part.result == 0:
            continue
        picks = sp.Mul(*[step(sign * (argument - other)) for k, other in enumerate(arguments) if k != position])
        terms.append(picks * part.result)
    name = FUNCTION_NAMES[expr.func]
    u = placeholder(expr, var)
    return Rule(f"{name} rule", expr, var, sp.Add(*terms),
                prose(f"the derivative of the {'largest' if sign == 1 else 'smallest'} argument, picked by the "
                      "unit step {step} (1 for {u} > 0, 0 for {u} < 0); a kink where two arguments are equal: "
                      "the derivative jumps there (½ to each at a tie, as torch does)", step=step(u), u=u), parts)


def _product(expr: sp.Mul, var: sp.Indexed) -> Rule:
    constant = sp.Mul(*[f for f in expr.args if not depends(f, var)])
    varying = [f for f in expr.args if depends(f, var)]
    if len(varying) == 1:
        inner = differentiate(varying[0], var)
        return Rule("constant factor rule", expr, var, constant * inner.result,
                    prose("a factor that does not depend on {x} stays", x=var.base), (inner,))
    numerator = [f for f in varying if not (f.is_Pow and f.exp.is_negative)]
    denominator = [1 / f for f in varying if f.is_Pow and f.exp.is_negative]
    if len(numerator) == 1 and len(denominator) == 1:
        top, bottom = numerator[0], denominator[0]
        top_rule, bottom_rule = differentiate(top, var), differentiate(bottom, var)
        result = constant * (top_rule.result * bottom - top * bottom_rule.result) / bottom**2
        N, D = (sp.Symbol(letter) for letter in _letters(expr, var, 2, "NDAB"))
        reason = prose(f"({N}/{D})′ = ({N}′ {D} − {N} {D}′) / {D}² with " "{N} = {top}, {D} = {bottom}",
                       N=N, D=D, top=top, bottom=bottom)
        return Rule("quotient rule", expr, var, result, reason, (top_rule, bottom_rule))
    parts = tuple(differentiate(f, var) for f in varying)
    terms = [sp.Mul(*([*varying[:m], parts[m].result, *varying[m + 1:]])) for m in range(len(varying))]
    u, v = (sp.Symbol(letter) for letter in _letters(expr, var, 2, "uvwsr"))
    return Rule("product rule", expr, var, constant * sp.Add(*terms),
                words(f"({u}{v})′ = {u}′{v} + {u}{v}′, term by term for each factor"), parts)


def _power(expr: sp.Pow, var: sp.Indexed) -> Rule:
    base, exponent = expr.args
    if not depends(exponent, var):
        inner = differentiate(base, var)
        u = placeholder(expr, var)
        return Rule("power rule", expr, var, exponent * base ** (exponent - 1) * inner.result,
                    prose("{formula} with {u} = {base}", u=u, base=base, formula=sp.Eq(
                        Partial(u**exponent, var), exponent * u ** (exponent - 1) * Partial(u, var), evaluate=False)),
                    (inner,))
    rewritten = sp.exp(exponent * sp.log(base))
    inner = differentiate(rewritten, var)
    u, v = (sp.Symbol(letter) for letter in _letters(expr, var, 2, "uvwsr"))
    return Rule("chain rule", expr, var, inner.result,
                prose("{power} = {rewritten}, then the chain rule", power=sp.Pow(u, v, evaluate=False),
                      rewritten=sp.exp(v * sp.log(u))), (inner,))


def _letters(expr: sp.Expr, var: sp.Indexed, count: int, preferred: str) -> list[str]:
    """`count` letters for a rule's placeholders that the expression does not use."""
    taken = names_in(expr) | names_in(var)
    free = [letter for letter in preferred if letter not in taken]
    return (free + [f"{preferred[0]}_{number}" for number in range(count)])[:count]

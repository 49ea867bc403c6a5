"""The SymPy vocabulary softgrad derives with: the class-axis size n, indices, and three small classes.

`n` is the size of a one-index spec's class axis; a spec with several ranges has one size symbol per range
(n_b, n_c), made by the parser.

`sigmoid` is a real function with its derivative; `Partial` and `SumExcept` are notation that the
tutorials use (∂y_i/∂x_j written out, and Σ_{k≠j}) and that SymPy lacks. Both stay unevaluated so a
step can show them, and both have an exact numeric meaning so the checker can test the step.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

import sympy as sp

#: Length of the class axis of a one-index spec: every vector in it has n entries, indexed 0 … n-1.
n = sp.Symbol("n", integer=True, positive=True)


def index(name: str) -> sp.Symbol:
    """An index symbol (integer): over the class axis of a one-index spec, or over its range in others."""
    return sp.Symbol(name, integer=True)


def class_sum(summand: sp.Expr, bound: sp.Symbol) -> sp.Sum:
    """Σ over the whole class axis."""
    return sp.Sum(summand, (bound, 0, n - 1))


def fresh_index(avoid: Collection[str], preferred: Iterable[str] = "ijklmpqrsuvw") -> sp.Symbol:
    """The first preferred index name not in `avoid` (then i1, i2, … if all are taken)."""
    for letter in preferred:
        if letter not in avoid:
            return index(letter)
    counter = 1
    while f"i{counter}" in avoid:
        counter += 1
    return index(f"i{counter}")


def fresh_name(preferred: Sequence[str], taken: Collection[str]) -> str:
    """The first preferred name not taken, else the first one numbered (g1, g2, …): for the names softgrad
    adds (an upstream gradient, a gradient output) beside the spec's own."""
    for name in preferred:
        if name not in taken:
            return name
    number = 1
    while f"{preferred[0]}{number}" in taken:
        number += 1
    return f"{preferred[0]}{number}"


def names_in(expr: sp.Basic) -> set[str]:
    """Every symbol name used in an expression, bound or free (to pick fresh index names)."""
    names = {str(s) for s in expr.atoms(sp.Symbol)}
    names |= {str(b.label) for b in expr.atoms(sp.IndexedBase)}
    return names


class sigmoid(sp.Function):
    """The logistic function σ(u) = 1 / (1 + exp(-u)); σ' = σ(1 − σ)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0]) * (1 - sigmoid(self.args[0]))

    def _eval_rewrite_as_exp(self, arg: Any, **kwargs: Any) -> Any:
        return 1 / (1 + sp.exp(-arg))

    def _latex(self, printer: Any, exp: str | None = None) -> str:
        body = r"\sigma\left(%s\right)" % printer._print(self.args[0])
        return body if exp is None else r"%s^{%s}" % (body, exp)


class softplus(sp.Function):
    """softplus(u) = log(1 + exp(u)), the smooth ReLU; softplus' = σ."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    def _eval_rewrite_as_log(self, arg: Any, **kwargs: Any) -> Any:
        return sp.log(1 + sp.exp(arg))

    def _latex(self, printer: Any, exp: str | None = None) -> str:
        body = r"\operatorname{softplus}\left(%s\right)" % printer._print(self.args[0])
        return body if exp is None else r"%s^{%s}" % (body, exp)


def step(argument: sp.Expr) -> sp.Expr:
    """The unit step H(u): 1 for u > 0, 0 for u < 0 and ½ at u = 0 (where max and min switch; frameworks
    split a tie's gradient in half, as torch.maximum does)."""
    return sp.Heaviside(argument, sp.S.Half)


class Partial(sp.Expr):
    """∂expr/∂var written out, never evaluated: what the tutorials write before applying a rule."""

    is_commutative = True

    def __new__(cls, expr: sp.Expr, var: sp.Expr) -> Partial:
        new: Partial = sp.Expr.__new__(cls, sp.sympify(expr), sp.sympify(var))
        return new

    @property
    def expr(self) -> sp.Expr:
        return self.args[0]

    @property
    def var(self) -> sp.Expr:
        return self.args[1]

    def _eval_subs(self, old: Any, new: Any) -> Any:
        # Substituting into the differentiated expression would change what is differentiated;
        # only renaming an index (a Symbol) is meaningful and is applied to both parts.
        if isinstance(old, sp.Symbol) and isinstance(new, sp.Symbol):
            return Partial(self.expr.subs(old, new), self.var.subs(old, new))
        return self


class SumExcept(sp.Expr):
    """Σ_{bound ≠ skip} summand over the class axis: a sum split around one index."""

    is_commutative = True

    def __new__(cls, summand: sp.Expr, bound: sp.Symbol, skip: sp.Symbol) -> SumExcept:
        new: SumExcept = sp.Expr.__new__(cls, sp.sympify(summand), bound, skip)
        return new

    @property
    def summand(self) -> sp.Expr:
        return self.args[0]

    @property
    def bound(self) -> sp.Symbol:
        return self.args[1]

    @property
    def skip(self) -> sp.Symbol:
        return self.args[2]

    @property
    def free_symbols(self) -> set[Any]:
        symbols: set[Any] = (self.summand.free_symbols - {self.bound}) | {self.skip}
        return symbols

    def as_full_sum(self) -> sp.Expr:
        """The same value as a full sum minus the skipped term."""
        return class_sum(self.summand, self.bound) - self.summand.subs(self.bound, self.skip)


class Bracket(sp.Function):
    """The Iverson bracket [u ≥ 0] of an integer expression of indices and sizes: 1 where it holds, 0
    elsewhere. Every condition on indices is one (or a Kronecker delta): [j ≤ i] = [i − j ≥ 0],
    [j < i] = [i − j − 1 ≥ 0]; an edge of a shifted read, [0 ≤ s − k], is one as well."""

    nargs = 1
    is_integer = True
    is_nonnegative = True

    @classmethod
    def eval(cls, argument: sp.Expr) -> sp.Expr | None:
        if argument.is_number:
            return sp.S.One if argument >= 0 else sp.S.Zero
        if argument.is_nonnegative:
            return sp.S.One
        if argument.is_negative:
            return sp.S.Zero
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero  # a function of integers: no real input moves it

    def _eval_power(self, exponent: Any) -> Any:
        return self if exponent.is_positive else None

    @property
    def sides(self) -> tuple[sp.Expr, sp.Expr, str]:
        """(left, right, relation) as a page writes the condition: [s + k ≤ n_t − 1], [j < i], [k ≤ s]."""
        argument = sp.expand(self.args[0])
        constant, rest = argument.as_independent(*argument.free_symbols, as_Add=True)
        positive = sp.Add(*[t for t in sp.Add.make_args(rest) if t.could_extract_minus_sign() is False])
        negative = -sp.Add(*[t for t in sp.Add.make_args(rest) if t.could_extract_minus_sign() is True])
        if constant == -1 and positive != 0 and negative != 0:
            return negative, positive, "<"
        sized = any(str(s).startswith("n") for s in positive.free_symbols)
        if negative == 0 and constant < 0:
            return -constant, positive, "<="
        if sized or negative == 0:
            return negative, positive + constant, "<="
        return negative - constant, positive, "<="


class Edge(Bracket):
    """A bracket the parser wrote for a padded read (`pad x`: x[t − k] is 0 where t − k leaves x): the
    same number as a Bracket, printed back as the read it came from, not as a condition."""


class Masked(sp.Function):
    """E where the mask (a product of brackets) is 1, −∞ where it is 0: the exponent of a masked softmax
    ([j ≤ i]·exp(S_ij) / Σ_k [k ≤ i]·exp(S_ik)) as generated code shifts it by its row maximum, so that
    masked entries neither set the maximum nor count in the sum."""

    nargs = 2


def condition(left: sp.Expr, relation: str, right: sp.Expr) -> sp.Expr:
    """[left relation right] for integer sides: a Bracket, a Kronecker delta (==) or 1 − delta (!=)."""
    if relation == "==":
        return sp.KroneckerDelta(left, right)
    if relation == "!=":
        return 1 - sp.KroneckerDelta(left, right)
    difference = {"<=": right - left, "<": right - left - 1, ">=": left - right, ">": left - right - 1}[relation]
    return Bracket(difference)

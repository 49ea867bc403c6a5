"""LaTeX math as people write it on a page → SymPy, with a Lark grammar of our own (latex.lark).

SymPy's own `parse_latex` stops at ∂, hats and most page notation; this reads the notation of hand
derivations: ŷ_i, \\mathcal{L}, \\sum_k, \\sum_{k\\neq i}, \\sum_{j=1}^K, \\frac{\\partial …}{\\partial …},
\\delta_{ij}, e^{…}, \\exp, \\log, \\ln, \\cdot, implicit products. Entries become IndexedBase entries with
integer index symbols, a sum runs over the class range (whatever its written limits: pages count from 0 or
1 up to n, K or C), a sum that skips an index is a sum times (1 − δ), and ∂A/∂B stays a Partial for the
judge to evaluate. What it cannot read raises Unreadable with the reason, never a parse traceback.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import sympy as sp
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, VisitError

from softgrad.derive.symbols import Partial

#: The number of classes every sum of a page runs over (its written limits, 1…K or 0…n, all mean this).
CLASSES = sp.Symbol("N_classes", integer=True, positive=True)

#: What an accent does to a name (ŷ, ỹ, ȳ): a distinct array.
_ACCENTS = {"hat": "\u0302", "widehat": "\u0302", "tilde": "\u0303", "widetilde": "\u0303", "bar": "\u0304",
            "overline": "\u0304", "vec": "\u20d7"}
_BOLD = {"mathbf", "textbf", "boldsymbol", "bm"}
_GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "epsilon": "ε", "varepsilon": "ε", "eta": "η", "theta": "θ",
          "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "rho": "ρ", "sigma": "σ", "tau": "τ",
          "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω", "Sigma": "Σ"}
#: What a ᵀ superscript stands for while the tree is built.
_TRANSPOSE = sp.Symbol("_transpose")
#: Prefix of a name written in bold: vector or matrix notation, which the judge does not read entrywise.
BOLD = "bold "


#: Longer sides are not parsed (the Earley parser's time grows fast with length; no derivation step is this long).
LONGEST = 1500


class Unreadable(Exception):
    """Text that this reader cannot turn into a formula; the message says why, in words for the report."""


def index(letter: str) -> sp.Symbol:
    return sp.Symbol(letter, integer=True)


@functools.cache
def _parser() -> Lark:
    grammar = (Path(__file__).with_name("latex.lark")).read_text(encoding="utf-8")
    return Lark(grammar, parser="earley", ambiguity="resolve", propagate_positions=False)


#: Characters a page uses for operators, written as the grammar reads them.
_CHARACTERS = {"−": "-", "–": "-", "·": r"\cdot ", "×": r"\times ", "\u2061": " ", "\u200b": " ", "≠": r"\neq ",
               "\\{": "(", "\\}": ")", "\\lbrace": "(", "\\rbrace": ")", "\\displaystyle": " ", "\\limits": " "}


#: How pages write the diagonal matrix of a vector, read as one command.
_DIAGONAL = re.compile(r"\\(?:text|mathrm|operatorname|textrm)\{\s*[dD]iag\s*\}|\\diag(?![a-z])")
#: What makes a side matrix notation: a transpose, a diagonal matrix, ⊙, a bold vector.
_MATRIX = re.compile(r"\^\s*\{?\s*(?:T|\\top|\\intercal)(?![a-zA-Z])|\\diagonal|\\odot|\\circ|\\mathbf|\\boldsymbol|"
                     r"\\bm(?![a-z])|\\textbf")


class Transposed(sp.Function):
    """vᵀ in matrix notation (the judge reads it entrywise)."""

    nargs = 1
    is_commutative = False


class Diagonal(sp.Function):
    """diag(v): the matrix with v on its diagonal."""

    nargs = 1
    is_commutative = False


class Hadamard(sp.Function):
    """a ⊙ b, entry by entry."""

    nargs = 2
    is_commutative = False


def clean(text: str) -> str:
    """The formula with alignment marks, spacing commands and Unicode operators made plain."""
    for old, new in _CHARACTERS.items():
        text = text.replace(old, new)
    text = _DIAGONAL.sub(r"\\diagonal ", text)
    return text.replace("&", " ").strip().rstrip(".,;")


def parse(text: str) -> sp.Expr:
    """One side of an equality as SymPy; Unreadable (with the reason) if the notation is not read."""
    written = clean(text)
    if not written:
        raise Unreadable("an empty side")
    if len(written) > LONGEST:
        raise Unreadable(f"a side longer than {LONGEST} characters")
    for command in ("\\text", "\\begin", "\\|", "||", "\\mathbb"):
        if command in written:
            raise Unreadable(f"notation not read here ({command.lstrip(chr(92))})")
    try:
        tree = _parser().parse(written)
        return sp.sympify(_Build(matrix=bool(_MATRIX.search(written))).transform(tree))
    except Unreadable:
        raise
    except VisitError as problem:  # raised while building: Lark wraps it
        if isinstance(problem.orig_exc, Unreadable):
            raise problem.orig_exc from None
        raise Unreadable("notation not read here") from None
    except (LarkError, TypeError, ValueError, sp.SympifyError) as problem:
        reason = str(problem).splitlines()[0][:80] if isinstance(problem, (TypeError, ValueError)) else ""
        raise Unreadable("notation not read here" + (f" ({reason})" if reason else "")) from None


@v_args(inline=True)
class _Build(Transformer[Token, Any]):
    """Parse tree → SymPy. In matrix notation (a side with ᵀ, diag, ⊙ or bold) a name written without an
    index is a non-commutative symbol, so that the order of y yᵀ and yᵀ y survives for the judge."""

    def __init__(self, matrix: bool = False) -> None:
        super().__init__()
        self.matrix = matrix

    def number(self, token: Token) -> sp.Expr:
        return sp.Rational(str(token))

    def letter_script(self, token: Token) -> sp.Expr:
        return _TRANSPOSE if str(token) == "T" and self.matrix else sp.Symbol(str(token))

    def transpose_mark(self) -> sp.Expr:
        return _TRANSPOSE

    def diagonal(self, vector: sp.Expr) -> sp.Expr:
        return Diagonal(vector)

    def hadamard(self, first: sp.Expr, second: sp.Expr) -> sp.Expr:
        return Hadamard(first, second)

    def group(self, expr: sp.Expr) -> sp.Expr:
        return expr

    def negative(self, expr: sp.Expr) -> sp.Expr:
        return -expr

    negated = negative

    def add(self, first: sp.Expr, second: sp.Expr) -> sp.Expr:
        return first + second

    def subtract(self, first: sp.Expr, second: sp.Expr) -> sp.Expr:
        return first - second

    def divide(self, first: sp.Expr, second: sp.Expr) -> sp.Expr:
        return first / second

    def fraction(self, numerator: sp.Expr, denominator: sp.Expr) -> sp.Expr:
        return numerator / denominator

    def product(self, *factors: sp.Expr) -> sp.Expr:
        return sp.Mul(*factors)

    def product_then_sum(self, product: sp.Expr, total: sp.Expr) -> sp.Expr:
        return product * total

    def partial(self, numerator: sp.Expr, denominator: sp.Expr) -> sp.Expr:
        return Partial(numerator, denominator)

    def partial_of(self, denominator: sp.Expr, numerator: sp.Expr) -> sp.Expr:
        return Partial(numerator, denominator)

    def function(self, name: Token, argument: sp.Expr) -> sp.Expr:
        return sp.exp(argument) if str(name) == "\\exp" else sp.log(argument)

    def function_power(self, name: Token, power: sp.Expr, argument: sp.Expr) -> sp.Expr:
        return self.function(name, argument) ** power

    def power(self, base: sp.Expr, script: sp.Expr | None = None) -> sp.Expr:
        if script is None:
            return base
        if script == _TRANSPOSE:
            return Transposed(base)
        if base == sp.Symbol("e"):
            return sp.exp(script)
        return base ** script

    def power_then_subscript(self, base: sp.Expr, script: sp.Expr, subscript: list[sp.Expr]) -> sp.Expr:
        return self.symbol(str(base), subscript) ** script if isinstance(base, sp.Symbol) else base ** script

    def delta(self, subscript: list[sp.Expr]) -> sp.Expr:
        if len(subscript) != 2:
            raise Unreadable("a Kronecker delta takes two indices (δ_ij)")
        return sp.KroneckerDelta(*subscript)

    # -------------------------------------------------------------- names
    def plain(self, token: Token) -> str:
        text = str(token)
        return _GREEK.get(text.lstrip("\\"), text)

    def accented(self, accent: Token, name: str) -> str:
        return name + _ACCENTS[str(accent).lstrip("\\")]

    def font(self, font: Token, name: str) -> str:
        return (BOLD + name) if str(font).lstrip("\\") in _BOLD else name

    def font_symbol(self, font: Token, name: str, subscript: list[sp.Expr]) -> sp.Expr:
        return self.symbol(self.font(font, name), subscript)

    def subscript(self, *tokens: Token) -> list[sp.Expr]:
        return [sp.Integer(int(str(t))) if str(t).isdigit() else index(str(t)) for t in tokens]

    def symbol(self, name: str, subscript: list[sp.Expr] | None = None) -> sp.Expr:
        if not subscript:
            if self.matrix and name.removeprefix(BOLD) not in ("e",):
                return sp.Symbol(name.removeprefix(BOLD), commutative=False)
            return sp.Symbol(name)
        return sp.IndexedBase(name)[tuple(subscript)]

    # -------------------------------------------------------------- sums
    def bound(self, token: Token) -> tuple[sp.Symbol, sp.Symbol | None]:
        return index(str(token)), None

    def bound_from(self, token: Token, _start: Token) -> tuple[sp.Symbol, sp.Symbol | None]:
        return index(str(token)), None

    def bound_except(self, token: Token, skipped: Token) -> tuple[sp.Symbol, sp.Symbol | None]:
        return index(str(token)), index(str(skipped))

    def single_limit(self, token: Token) -> list[tuple[sp.Symbol, sp.Symbol | None]]:
        return [self.bound(token)]

    def limit_list(self, *limits: tuple[sp.Symbol, sp.Symbol | None]) -> list[tuple[sp.Symbol, sp.Symbol | None]]:
        return list(limits)

    def limits(self, *parts: Any) -> list[tuple[sp.Symbol, sp.Symbol | None]]:
        found = next((p for p in parts if isinstance(p, list)), None)
        if found is None:
            raise Unreadable("a sum whose index is not written")
        return found

    def sum(self, *parts: Any) -> sp.Expr:
        if len(parts) == 1 or not isinstance(parts[0], list):
            raise Unreadable("a sum whose index is not written")
        limits, body = parts[0], sp.Mul(*parts[1:])
        bounds = {bound for bound, _ in limits}
        if len(bounds) != 1:
            raise Unreadable("a sum over several indices")
        (bound,) = bounds
        for _, skipped in limits:
            if skipped is not None:
                body = body * (1 - sp.KroneckerDelta(bound, skipped))
        return sp.Sum(body, (bound, 0, CLASSES - 1))

"""SymPy printers taught softgrad's notation: Σ_k over the class axis, ∂y_i/∂x_j, Σ_{k≠j}, σ, diag, ⊙.

One subclass per target (terminal, LaTeX, MathML); everything else is SymPy's own printing.
"""

from __future__ import annotations

import functools
from typing import Any

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.mathml import MathMLPresentationPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.pretty_symbology import pretty_symbol
from sympy.printing.pretty.stringpict import prettyForm
from sympy.printing.str import StrPrinter

from softgrad.derive.symbols import Partial, SumExcept


def _simple(expr: Any) -> bool:
    """One index that prints as one letter: x_i rather than W[c, d]."""
    return isinstance(expr, sp.Symbol) and len(expr.name) == 1


def _bounds(expr: Any) -> list[Any]:
    """A sum's indices, outermost first."""
    return [limit[0] for limit in reversed(expr.limits)]


def _position_terms(position: Any) -> list[tuple[str, Any]]:
    """A shifted position's terms as a page writes them, added indices first, then subtracted ones, the
    number last: s − k, i + p − 1 (SymPy's own order prints −k + s)."""
    constant, rest = position.as_independent(*position.free_symbols, as_Add=True)
    terms = sorted(sp.Add.make_args(rest), key=lambda t: (bool(t.could_extract_minus_sign()), sp.default_sort_key(t)))
    ordered = [("-" if t.could_extract_minus_sign() else "+", -t if t.could_extract_minus_sign() else t)
               for t in terms if t != 0]
    if constant != 0:
        ordered.append(("-" if constant < 0 else "+", abs(constant)))
    return ordered


def position_text(position: Any, printed: Any) -> str:
    """A position printed with `printed` for each term: `s - k` (a plain index as itself)."""
    if not position.is_Add:
        return str(printed(position))
    pieces = []
    for number, (sign, term) in enumerate(_position_terms(position)):
        pieces.append((("-" if sign == "-" else "") if number == 0 else f" {sign} ") + str(printed(term)))
    return "".join(pieces)


def bracket_parts(bracket: Any) -> tuple[Any, str, Any]:
    """(left, relation, right) of an Iverson bracket, the relation as ≤ or <."""
    left, right, relation = bracket.sides
    return left, "≤" if relation == "<=" else "<", right


def _is_atom_like(expr: sp.Expr) -> bool:
    return isinstance(expr, (sp.Indexed, sp.Symbol)) or (isinstance(expr, sp.Function) and len(expr.args) == 1)


class TextPrinter(PrettyPrinter):
    """Unicode pretty printing for a terminal; vector entries as subscripts (yᵢ)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__({"use_unicode": True, "wrap_line": False, **(settings or {})})

    def _print_Indexed(self, expr: Any) -> Any:
        if len(expr.indices) == 1 and isinstance(expr.indices[0], sp.Symbol):
            return self._print(sp.Symbol(f"{expr.base}_{expr.indices[0]}"))
        return prettyForm(inline_text(expr))

    def _print_Mul(self, product: Any) -> Any:
        """A fraction of the factors with negative rational powers (and a rational's denominator) below.

        SymPy's own _print_Mul does the same but imports sympy.physics.units on its first product (a
        tenth of a second, a tenth of a derivation) only to print units last: derivations have none."""
        if product.args[0] is sp.S.One or any(isinstance(a, sp.Number) for a in product.args[1:]):
            return super()._print_Mul(product)  # unevaluated: every factor printed as written
        factors = list(product.args) if self.order in ("old", "none") else product.as_ordered_factors()
        above: list[Any] = []
        below: list[Any] = []
        for factor in factors:
            if factor.is_commutative and factor.is_Pow and factor.exp.is_Rational and factor.exp.is_negative:
                below.append(sp.Pow(factor.base, -factor.exp, evaluate=bool(factor.exp == -1)))
            elif factor.is_Rational:
                above += [sp.Rational(factor.p)] if factor.p != 1 else []
                below += [sp.Rational(factor.q)] if factor.q != 1 else []
            else:
                above.append(factor)
        top = prettyForm.__mul__(*[self._print(f) for f in above or [sp.S.One]])
        return top / prettyForm.__mul__(*[self._print(f) for f in below]) if below else top

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        if not all(_simple(a) for a in expr.args):
            return prettyForm(inline_text(expr))
        return self._print(sp.Symbol(f"δ_{expr.args[0]}{expr.args[1]}"))

    def _print_Bracket(self, expr: Any) -> Any:
        return prettyForm(inline_text(expr))

    _print_Edge = _print_Bracket  # a padded read's edge prints as any bracket

    def _print_Sum(self, expr: Any) -> Any:
        bounds = _bounds(expr)
        sign = self._print(sp.Symbol(f"Σ_{bounds[0]}")) if len(bounds) == 1 else prettyForm(
            "Σ_" + ",".join(map(str, bounds)))
        body = self._print(expr.function)
        if expr.function.is_Add:
            body = prettyForm(*body.parens())
        return prettyForm(*prettyForm(*sign.right(" ")).right(body), binding=prettyForm.MUL)

    def _print_Partial(self, expr: Partial) -> Any:
        top = prettyForm("∂")
        inner = self._print(expr.expr)
        if not _is_atom_like(expr.expr):
            inner = prettyForm(*inner.parens())
        top = prettyForm(*top.right(inner))
        bottom = prettyForm(*prettyForm("∂").right(self._print(expr.var)))
        return prettyForm.__truediv__(top, bottom)

    def _print_SumExcept(self, expr: SumExcept) -> Any:
        sign = prettyForm(f"Σ_{expr.bound}≠{expr.skip} ")
        body = self._print(expr.summand)
        if expr.summand.is_Add:
            body = prettyForm(*body.parens())
        return prettyForm(*sign.right(body), binding=prettyForm.MUL)

    def _print_sigmoid(self, expr: Any) -> Any:
        return prettyForm(*prettyForm("σ").right(prettyForm(*self._print(expr.args[0]).parens())))

    def _print_DiagMatrix(self, expr: Any) -> Any:
        return prettyForm(*prettyForm("diag").right(prettyForm(*self._print(expr.args[0]).parens())))

    def _print_MatAdd(self, expr: Any) -> Any:
        """A − c·B rather than SymPy's A −c⋅B with the sign inside a fraction's numerator."""
        picture = None
        # positive terms first: dP − (O∘dO)𝟙𝟙ᵀ rather than −(O∘dO)𝟙𝟙ᵀ + dP
        for term in sorted(expr.args, key=lambda t: bool(sp.S(t.as_coeff_mmul()[0]).could_extract_minus_sign())):
            coefficient = term.as_coeff_mmul()[0]
            negative = sp.S(coefficient).could_extract_minus_sign()
            printed = self._print(-term if negative else term)
            if picture is None:
                picture = prettyForm(*prettyForm("-").right(printed)) if negative else printed
            else:
                picture = prettyForm(*picture.right(" - " if negative else " + ", printed))
        return picture

    def _named(self, name: str, arguments: Any) -> Any:
        inner = self._print_seq(arguments, delimiter=", ")
        return prettyForm(*prettyForm(name).right(prettyForm(*inner.parens())), binding=prettyForm.FUNC)

    def _print_Heaviside(self, expr: Any) -> Any:
        return self._named("H", expr.args[:1])

    def _print_Max(self, expr: Any) -> Any:
        return self._named("max", expr.args)

    def _print_Min(self, expr: Any) -> Any:
        return self._named("min", expr.args)

    def _print_softplus(self, expr: Any) -> Any:
        return self._named("softplus", expr.args)


class TexPrinter(LatexPrinter):
    """LaTeX with Σ_k, ∂y_i/∂x_j fractions, σ, diag and ⊙."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__({"mul_symbol": None, **(settings or {})})

    def _print_Sum(self, expr: Any) -> Any:
        body = self._print(expr.function)
        if expr.function.is_Add:
            body = r"\left(%s\right)" % body
        return r"\sum_{%s} %s" % (", ".join(self._print(b) for b in _bounds(expr)), body)

    def _print_SumExcept(self, expr: SumExcept) -> Any:
        body = self._print(expr.summand)
        if expr.summand.is_Add:
            body = r"\left(%s\right)" % body
        return r"\sum_{%s \neq %s} %s" % (self._print(expr.bound), self._print(expr.skip), body)

    def _print_Partial(self, expr: Partial) -> Any:
        var = self._print(expr.var)
        if _is_atom_like(expr.expr):
            return r"\frac{\partial %s}{\partial %s}" % (self._print(expr.expr), var)
        return r"\frac{\partial}{\partial %s}\left(%s\right)" % (var, self._print(expr.expr))

    def _print_KroneckerDelta(self, expr: Any, exp: str | None = None) -> Any:
        separator = "" if all(_simple(a) for a in expr.args) else ", "
        body = r"\delta_{%s%s%s}" % (self._print(expr.args[0]), separator, self._print(expr.args[1]))
        return body if exp is None else r"%s^{%s}" % (body, exp)

    def _print_DiagMatrix(self, expr: Any) -> Any:
        return r"\operatorname{diag}\left(%s\right)" % self._print(expr.args[0])

    def _print_Bracket(self, expr: Any, exp: str | None = None) -> Any:
        left, relation, right = bracket_parts(expr)
        return r"\left[%s %s %s\right]" % (position_text(left, self._print), r"\le" if relation == "≤" else "<",
                                            position_text(right, self._print))

    _print_Edge = _print_Bracket  # a padded read's edge prints as any bracket

    def _print_Indexed(self, expr: Any) -> Any:  # SymPy's, with shifted positions as a page writes them
        return "{%s}_{%s}" % (self._print(expr.base), ",".join(position_text(i, self._print) for i in expr.indices))

    def _print_HadamardProduct(self, expr: Any) -> Any:
        return r" \odot ".join(self.parenthesize(a, 60) for a in expr.args)

    def _print_OneMatrix(self, expr: Any) -> Any:
        return r"\mathbf{1}"

    def _print_Heaviside(self, expr: Any, exp: str | None = None) -> Any:
        body = r"H\left(%s\right)" % self._print(expr.args[0])
        return body if exp is None else r"%s^{%s}" % (body, exp)


class MathMLPrinter(MathMLPresentationPrinter):
    """Presentation MathML with the same notation, for one self-contained HTML page."""

    def _element(self, tag: str, *children: Any, text: str | None = None) -> Any:
        node = self.dom.createElement(tag)
        if text is not None:
            node.appendChild(self.dom.createTextNode(text))
        for child in children:
            node.appendChild(child)
        return node

    def _print_Exp1(self, expr: Any) -> Any:
        return self._element("mi", text="e")

    def _print_Sum(self, expr: Any) -> Any:
        under = self._element("mrow")
        for position, bound in enumerate(_bounds(expr)):
            if position:
                under.appendChild(self._element("mo", text=","))
            under.appendChild(self._print(bound))
        sign = self._element("munder", self._element("mo", text="∑"), under)
        return self._element("mrow", sign, self._wrapped(expr.function))

    def _print_SumExcept(self, expr: SumExcept) -> Any:
        under = self._element("mrow", self._print(expr.bound), self._element("mo", text="≠"), self._print(expr.skip))
        sign = self._element("munder", self._element("mo", text="∑"), under)
        return self._element("mrow", sign, self._wrapped(expr.summand))

    def _wrapped(self, expr: Any) -> Any:
        if expr.is_Add:
            return self._element(
                "mrow", self._element("mo", text="("), self._print(expr), self._element("mo", text=")")
            )
        return self._print(expr)

    def _print_Partial(self, expr: Partial) -> Any:
        top = self._element("mrow", self._element("mo", text="∂"), self._wrapped_partial(expr.expr))
        bottom = self._element("mrow", self._element("mo", text="∂"), self._print(expr.var))
        return self._element("mfrac", top, bottom)

    def _wrapped_partial(self, expr: Any) -> Any:
        if _is_atom_like(expr):
            return self._print(expr)
        return self._element("mrow", self._element("mo", text="("), self._print(expr), self._element("mo", text=")"))

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        pieces = [self._print(expr.args[0]), self._print(expr.args[1])]
        if not all(_simple(a) for a in expr.args):
            pieces.insert(1, self._element("mo", text=","))
        return self._element("msub", self._element("mi", text="δ"), self._element("mrow", *pieces))

    def _print_Indexed(self, expr: Any) -> Any:
        indices = self._element("mrow")
        for position, index in enumerate(expr.indices):
            if position:
                indices.appendChild(self._element("mo", text=","))
            indices.appendChild(self._position(index))
        return self._element("msub", self._element("mi", text=str(expr.base.label)), indices)

    def _position(self, position: Any) -> Any:
        if not position.is_Add:
            return self._print(position)
        row = self._element("mrow")
        for number, (sign, term) in enumerate(_position_terms(position)):
            if number or sign == "-":
                row.appendChild(self._element("mo", text="\u2212" if sign == "-" else "+"))
            row.appendChild(self._print(term))
        return row

    def _print_Bracket(self, expr: Any) -> Any:
        left, relation, right = bracket_parts(expr)
        return self._element("mrow", self._element("mo", text="["), self._position(left),
                             self._element("mo", text=relation), self._position(right), self._element("mo", text="]"))

    _print_Edge = _print_Bracket  # a padded read's edge prints as any bracket

    def _print_sigmoid(self, expr: Any) -> Any:
        return self._named("σ", expr.args)

    def _named(self, name: str, arguments: Any) -> Any:
        row = self._element("mrow", self._element("mi", text=name), self._element("mo", text="("))
        for position, argument in enumerate(arguments):
            if position:
                row.appendChild(self._element("mo", text=","))
            row.appendChild(self._print(argument))
        row.appendChild(self._element("mo", text=")"))
        return row

    def _print_Heaviside(self, expr: Any) -> Any:
        return self._named("H", expr.args[:1])

    def _print_softplus(self, expr: Any) -> Any:
        return self._named("softplus", expr.args)

    def _print_log1p(self, expr: Any) -> Any:
        return self._named("log1p", expr.args)

    def _print_DiagMatrix(self, expr: Any) -> Any:
        return self._element("mrow", self._element("mi", text="diag"), self._element("mo", text="("),
                             self._print(expr.args[0]), self._element("mo", text=")"))

    def _print_HadamardProduct(self, expr: Any) -> Any:
        row = self._element("mrow")
        for position, factor in enumerate(expr.args):
            if position:
                row.appendChild(self._element("mo", text="⊙"))
            row.appendChild(self._wrapped(factor) if not isinstance(factor, sp.MatrixSymbol) else self._print(factor))
        return row

    def _print_OneMatrix(self, expr: Any) -> Any:
        return self._element("mn", text="𝟏")

    def _print_Transpose(self, expr: Any) -> Any:
        return self._element("msup", self._print(expr.arg), self._element("mi", text="T"))


class LinearTextPrinter(StrPrinter):
    """One line of Unicode, for math inside a sentence: xᵢ, Σ_k exp(x_k), δ_ij, ∂l/∂xᵢ, σ(u)."""

    printmethod = "_softgrad_linear_text"  # not Indexed's own _sympystr (x[i])

    def _print_Indexed(self, expr: Any) -> Any:
        if len(expr.indices) == 1 and isinstance(expr.indices[0], sp.Symbol):
            return pretty_symbol(f"{expr.base}_{expr.indices[0]}")
        positions = ", ".join(position_text(i, self._print).replace(" - ", " − ") for i in expr.indices)
        return f"{pretty_symbol(str(expr.base))}[{positions}]"

    def _print_Bracket(self, expr: Any) -> Any:
        left, relation, right = bracket_parts(expr)
        return (f"[{position_text(left, self._print)} {relation} {position_text(right, self._print)}]"
                .replace(" - ", " − "))

    _print_Edge = _print_Bracket  # a padded read's edge prints as any bracket

    def _print_Symbol(self, expr: Any) -> Any:
        return pretty_symbol(expr.name)

    def _print_IndexedBase(self, expr: Any) -> Any:
        return pretty_symbol(str(expr.label))

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        if not all(_simple(a) for a in expr.args):
            return f"δ({self._print(expr.args[0])}, {self._print(expr.args[1])})"
        return pretty_symbol(f"δ_{expr.args[0]}{expr.args[1]}")

    def _print_Sum(self, expr: Any) -> Any:
        body = self._print(expr.function)
        if expr.function.is_Add:
            body = f"({body})"
        return f"Σ_{','.join(self._print(b) for b in _bounds(expr))} {body}"

    def _print_SumExcept(self, expr: SumExcept) -> Any:
        body = self._print(expr.summand)
        return f"Σ_{expr.bound}≠{expr.skip} " + (f"({body})" if expr.summand.is_Add else body)

    def _print_Partial(self, expr: Partial) -> Any:
        inner = self._print(expr.expr)
        if not _is_atom_like(expr.expr):
            inner = f"({inner})"
        return f"∂{inner}/∂{self._print(expr.var)}"

    def _print_Exp1(self, expr: Any) -> Any:
        return "e"

    def _print_Equality(self, expr: Any) -> Any:
        return f"{self._print(expr.lhs)} = {self._print(expr.rhs)}"

    def _print_sigmoid(self, expr: Any) -> Any:
        return f"σ({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr: Any) -> Any:
        return f"H({self._print(expr.args[0])})"

    def _print_Abs(self, expr: Any) -> Any:
        return f"|{self._print(expr.args[0])}|"

    def _print_Max(self, expr: Any) -> Any:
        return f"max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: Any) -> Any:
        return f"min({', '.join(self._print(a) for a in expr.args)})"

    def _print_DiagMatrix(self, expr: Any) -> Any:
        return f"diag({self._print(expr.args[0])})"

    def _print_Transpose(self, expr: Any) -> Any:
        return f"{self.parenthesize(expr.arg, 1000)}ᵀ"


#: The widest a result may print in a terminal before parts of it are named, as a textbook would.
WIDEST_RESULT = 200


def abbreviate(lhs: Any, forms: list[Any], taken: set[str], widest: int = WIDEST_RESULT
               ) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """The forms of `lhs = form = …` with their most repeated parts named (t = tanh(…), S = Σ_k (…)) until
    each prints in `widest` columns: (the shorter forms, [(name, what it stands for), …]). The names are
    letters the derivation does not use, shared by all the forms."""
    letters = [letter for letter in "tuvwsrabcdefhSTUVW" if letter not in taken]
    where: list[tuple[Any, Any]] = []

    def width(expr: Any) -> int:
        return max(len(line) for line in equation_text(lhs, [expr]).splitlines())

    while any(width(form) > widest for form in forms) and letters:
        parts = [e for form in forms if not isinstance(form, sp.MatrixExpr) for e in sp.preorder_traversal(form)
                 if isinstance(e, (sp.Function, sp.Sum)) and not isinstance(e, sp.KroneckerDelta)
                 and sp.count_ops(e) > 2]
        if not parts:
            break
        chosen = max(parts, key=lambda e: (parts.count(e) * sp.count_ops(e), sp.default_sort_key(e)))
        name = sp.Symbol(letters.pop(0))
        forms = [form if isinstance(form, sp.MatrixExpr) else form.xreplace({chosen: name}) for form in forms]
        where.append((name, chosen))
    return forms, where


def inline_text(expr: Any) -> str:
    """An expression on one line of Unicode (for reasons and other sentences)."""
    printed = str(LinearTextPrinter().doprint(expr))
    return printed.replace("**", "^").replace("*", "·")


def to_latex(expr: Any, ordered: bool = False) -> str:
    """LaTeX math; `ordered` prints sums and products in the order they were built (a rule's own order)."""
    return str(TexPrinter({"order": "none"} if ordered else None).doprint(expr))


def to_mathml(expr: Any, ordered: bool = False) -> str:
    """Presentation MathML, minus signs as U+2212."""
    printed = str(MathMLPrinter({"order": "none"} if ordered else None).doprint(expr))
    return printed.replace("<mo>-</mo>", "<mo>\u2212</mo>")


def inline_mathml(expr: Any) -> str:
    """MathML for math inside a sentence."""
    return f"<math>{to_mathml(expr)}</math>"


@functools.lru_cache(maxsize=2048)  # a result is printed to measure it, then again to show it
def _picture(expr: Any, ordered: bool) -> Any:
    return TextPrinter({"order": "none"} if ordered else None)._print(expr)


def equation_text(lhs: Any, forms: list[Any], ordered: bool = False) -> str:
    """lhs = form = form … as one multi-line unicode picture."""
    picture = _picture(lhs, ordered)
    for form in forms:
        picture = prettyForm(*picture.right(" = ", _picture(form, ordered)))
    return str(picture.render(wrap_line=False))

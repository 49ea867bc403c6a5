"""A step's reason as data: a sentence template whose placeholders are SymPy expressions.

`prose("{delta} is 1 if {a} = {b}, else 0", delta=KroneckerDelta(i, j), a=i, b=j)` keeps the words
and the math apart, so each format prints the math with its own printer (pretty text in a terminal,
LaTeX math in LaTeX and Markdown, MathML in HTML) and the words escaped for it. Nothing here prints
SymPy's internal spelling (`Sum(`, `Indexed`) or a name the spec does not use: the expressions carry
the spec's own names.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import sympy as sp

Piece: TypeAlias = str | sp.Basic


@dataclass(frozen=True)
class Prose:
    """Words and expressions, in reading order."""

    pieces: tuple[Piece, ...]

    def __add__(self, other: Prose | str) -> Prose:
        return Prose(self.pieces + (other.pieces if isinstance(other, Prose) else (other,)))

    def expressions(self) -> Iterator[sp.Basic]:
        return (piece for piece in self.pieces if not isinstance(piece, str))

    def render(self, words: Callable[[str], str], math: Callable[[sp.Basic], str]) -> str:
        """Each word run through `words` (escaping), each expression through `math` (a printer)."""
        return "".join(words(piece) if isinstance(piece, str) else math(piece) for piece in self.pieces)

    def text(self) -> str:
        """One line of Unicode for a terminal and for JSON's plain `reason` (printed by the printer
        softgrad.render registers: the derivation layer does not import the layer above it)."""
        return self.render(lambda words: words, _printers["inline"])

    def __str__(self) -> str:
        return self.text()


#: The presentation layer's printers, registered by softgrad.render when it is imported (softgrad's package
#: face imports it): "inline" prints one expression as one line of Unicode.
_printers: dict[str, Callable[[sp.Basic], str]] = {}


def use_printers(inline: Callable[[sp.Basic], str]) -> None:
    """Register how reasons print their math (softgrad.render calls this once)."""
    _printers["inline"] = inline


def prose(template: str, **expressions: Any) -> Prose:
    """A Prose from a str.format-style template: '{name}' is replaced by expressions[name] (sympified)."""
    pieces: list[Piece] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            pieces.append(literal)
        if field is not None:
            pieces.append(sp.sympify(expressions[field]))
    return Prose(tuple(pieces))


def words(text: str) -> Prose:
    """Prose with no math in it."""
    return Prose((text,))


def names_in_prose(reason: Prose) -> set[str]:
    """Array, index and scalar names the expressions of a reason mention."""
    names: set[str] = set()
    for expr in reason.expressions():
        names |= {str(b.label) for b in expr.atoms(sp.IndexedBase)}
        names |= {str(s) for s in expr.atoms(sp.Symbol)}
    return names

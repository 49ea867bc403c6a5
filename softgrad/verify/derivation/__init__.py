"""Check a derivation as written: read the math of a page (LaTeX in a .tex, .md or .txt file, or copied from a
rendered site), split it into equality links, and judge each one (judge.py).

    softgrad verify --derivation notes.md [--json]

Exit status: 0 when no link fails and at least one was checked, 1 when a link fails, 2 when nothing could
be read or checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from softgrad._version import __version__
from softgrad.errors import SoftgradError
from softgrad.verify.derivation.extract import read_page
from softgrad.verify.derivation.judge import Link, judge
from softgrad.verify.derivation.latex import CLASSES, index

#: The mark of each verdict in the text report.
MARKS = {"holds": "✓", "conditional": "✓?", "fails": "✗", "unchecked": "?", "definition": "≔", "assumption": "∵"}


@dataclass
class DerivationReport:
    """Every link of a written derivation with its verdict."""

    source: str
    links: list[Link] = field(default_factory=list)

    @property
    def checked(self) -> int:
        return sum(link.verdict in ("holds", "conditional", "fails") for link in self.links)

    @property
    def failed(self) -> list[Link]:
        return [link for link in self.links if link.verdict == "fails"]

    @property
    def verdict(self) -> str:
        return "FAIL" if self.failed else "PASS" if self.checked else "UNCHECKED"

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else (0 if self.checked else 2)

    def summary(self) -> str:
        counts = {verdict: sum(link.verdict == verdict for link in self.links) for verdict in MARKS}
        parts = [f"{count} {verdict}" for verdict, count in counts.items() if count]
        if not self.links:
            return "no equality found in the text"
        first = self.failed[0] if self.failed else None
        return (f"{len(self.links)} links: " + ", ".join(parts)
                + (f"; the first wrong line is {first.line}" if first else ""))

    def text(self) -> str:
        lines = [f"{self.verdict}  {self.source}  "
                 f"({self.summary()})"]
        for link in self.links:
            lines.append(f"  line {link.line:>4}  {MARKS[link.verdict]:<2} {_short(link.lhs)} = {_short(link.rhs)}")
            lines.append(f"{'':14}{link.verdict}" + (f": {link.reason}" if link.reason else ""))
        return "\n".join(lines)

    def html(self) -> str:
        """The report as one self-contained page: each link's equality in MathML with its verdict."""
        from softgrad.render.render import equation_mathml, page

        def equation(link: Link) -> Any:
            try:
                return equation_mathml(list(link.sides)) if link.sides else None
            except Exception:  # a side the MathML printer cannot show is shown as written
                return None

        return page("html/derivation_check.html.j2", source=self.source, verdict=self.verdict, summary=self.summary(),
                    links=[dict(link.to_dict(), mark=MARKS[link.verdict], equation=equation(link))
                           for link in self.links])

    def to_dict(self) -> dict[str, Any]:
        """The report as data: {"schema": "softgrad.derivation-report/1", "links": [...], ...}."""
        return {"schema": "softgrad.derivation-report/1", "softgrad": __version__, "source": self.source,
                "verdict": self.verdict,
                "summary": self.summary(), "links": [link.to_dict() for link in self.links]}


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def check_derivation(text: str, source: str = "the text", against: str | None = None) -> DerivationReport:
    """Judge every equality link of the derivation in `text` (see judge.py for how). against: a spec (catalog
    name, file or inline) whose definitions bind the page's names where the page does not define them."""
    return DerivationReport(source, judge(read_page(text), _definitions(against) if against else None))


def _definitions(against: str) -> dict[str, tuple[tuple[sp.Symbol, ...], sp.Expr]]:
    """A one-index spec's definitions in the page's terms: its sums over the n classes, its names as they are."""
    from softgrad.derive import load_spec
    from softgrad.derive.symbols import n

    spec = load_spec(against)
    if spec.tensor:
        raise SoftgradError("--against with --derivation takes a spec with one index (the class index of the "
                            "page's y_i), not several")
    return {d.name: ((index(str(d.index)),) if d.index is not None else (),
                     d.expr.xreplace({n: CLASSES}).xreplace({d.index: index(str(d.index))} if d.index else {}))
            for d in spec.definitions}

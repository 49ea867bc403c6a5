"""Check a formula from a paper or a blog post: a Jacobian entry or gradient component, in the spec language.

Symbolically for general n where the derivation gives the same quantity, and numerically always: both
sides at n = 1, 2, 3, 5, every index pair, random points; a wrong formula gets a concrete counterexample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from softgrad._version import __version__
from softgrad.budget import TimeLimitExceeded, time_limit
from softgrad.derive.check.numbers import ONE_RANGE_SIZES
from softgrad.derive.check.numeric import StepChecker
from softgrad.derive.spec import Definition, Spec, Token, _LineParser, spec_text, tokenize
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import Partial, index
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SoftgradError, SpecError

#: Seconds the symbolic comparison may take; past it the formula is still checked numerically.
SIMPLIFY_SECONDS = 10.0


@dataclass
class FormulaReport:
    formula: str
    claim: str  # what it is checked as, e.g. ∂y_i/∂x_j
    passed: bool
    symbolic: str  # "equal for every n", "different", or "not compared"
    counterexample: str = ""

    def text(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"{verdict}  {self.formula}  as  {self.claim}", f"  symbolic: {self.symbolic}"]
        if self.counterexample:
            lines.append(f"  counterexample: {self.counterexample}")
        else:
            sizes = ", ".join(map(str, ONE_RANGE_SIZES))
            lines.append(f"  numeric: equal at n = {sizes}, every index pair, random points")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:

        return {"schema": "softgrad.formula-report/1", "softgrad": __version__,
                "verdict": "PASS" if self.passed else "FAIL", "formula": self.formula, "claim": self.claim,
                "symbolic": self.symbolic, "counterexample": self.counterexample or None}


def parse_formula(text: str, spec: Spec) -> tuple[sp.Expr, list[sp.Symbol]]:
    """The formula as a SymPy expression in the spec's names, and its free indices in order of appearance."""
    tokens = tokenize(text, 1)
    known = {d.name: ("vector" if d.is_vector else "scalar") for d in spec.definitions}
    known.update({name: "input" for name in spec.inputs})
    known.update({name: "parameter" for name in spec.parameters})
    bound = _sum_indices(tokens)
    candidates = set()
    for position, token in enumerate(tokens):
        if token.kind != "name":
            continue
        after_bracket = position >= 1 and tokens[position - 1].text == "["
        in_delta = any(tokens[p].text == "delta" and tokens[p + 1].text == "(" for p in (position - 2, position - 4)
                       if p >= 0)
        if (after_bracket or in_delta) and token.text not in bound:
            candidates.add(token.text)
    # ∂y_i/∂x_j: the free indices in alphabetical order are (output entry, input entry)
    free = [index(name) for name in sorted(candidates)]
    parser = _LineParser(tokens, 1, dict(known))
    expr = parser.expression(tuple(free))
    parser.finish()
    for name in parser.used_inputs:
        raise SpecError(f"{name!r} is not a name of the spec (names: {', '.join(known)})", 1)
    return expr, free


def _sum_indices(tokens: list[Token]) -> set[str]:
    names = set()
    for position, token in enumerate(tokens):
        if token.text == "sum" and tokens[position + 1].text == "(":
            depth = 0
            for later in range(position + 1, len(tokens)):
                text = tokens[later].text
                depth += text in "(["
                depth -= text in ")]"
                if text == "," and depth == 1 and tokens[later + 1].kind == "name":
                    names.add(tokens[later + 1].text)
                    break
    return names


def verify_formula(text: str, derivation: Derivation, wrt: str | None = None, seed: int = 0) -> FormulaReport:
    """Is `text` the Jacobian entry (vector output) or the gradient component (scalar output) wrt `wrt`?"""
    spec = derivation.spec
    output = spec.output
    variable = wrt or derivation.wrt
    known = set(spec.inputs) | {d.name for d in spec.definitions if d.is_vector}
    if variable not in known:
        raise SoftgradError(f"--wrt {variable!r} is neither an input nor a vector of the spec")
    formula, free = parse_formula(text, spec)
    needed = 2 if output.is_vector else 1
    if len(free) != needed:
        raise SoftgradError(f"the formula has {len(free)} free index(es) ({', '.join(map(str, free)) or 'none'}); "
                            f"a {'Jacobian entry' if needed == 2 else 'gradient component'} needs {needed}")
    base = sp.IndexedBase(variable)
    lhs = Partial(output.symbol.subs(output.index, free[0]) if output.is_vector else output.symbol, base[free[-1]])
    claim = _claim(output, variable, free)
    symbolic = "not compared (no derived result for this variable)"
    constrained = bool(spec.constraints)
    key = "jacobian" if output.is_vector else ("gradient_constrained" if "gradient_constrained" in derivation.results
                                              else "gradient")
    if constrained:
        claim += "  (assuming " + "; ".join(c.source.removeprefix("given ") for c in spec.constraints) + ")"
    if variable == derivation.wrt and key in derivation.results:
        result = derivation.results[key]
        # the result's indices in their roles' order, matched to the formula's free indices
        derived = result.rhs.subs(dict(zip(result.indices, free)), simultaneous=True)
        difference = formula - derived
        if output.is_vector:  # δ_ij y_j = δ_ij y_i: compare the cases i = j and i ≠ j separately
            cases = [difference.subs(free[1], free[0]),
                     difference.replace(lambda e: isinstance(e, sp.KroneckerDelta), lambda e: sp.S.Zero)]
        else:
            cases = [difference]
        try:
            with time_limit(SIMPLIFY_SECONDS, "simplifying the formula"):
                equal = all(sp.simplify(case) == 0 for case in cases)
            symbolic = "equal for every n" if equal else "not shown equal by simplification"
        except TimeLimitExceeded:
            symbolic = f"not compared (simplification did not finish within {SIMPLIFY_SECONDS:g} s)"
    printed = spec_text(formula)  # reports show the formula as parsed: never the raw text
    checker = StepChecker(spec, None, None, seed,
                            total_derivatives=True)
    # the spec's declared constraints are part of its contract
    for point in checker.points if constrained else checker.free_points:
        try:
            truth, claimed = checker.entries(lhs, point, free), checker.entries(formula, point, free)
        except (OverflowError, ZeroDivisionError, ValueError) as problem:
            raise SoftgradError(f"the formula cannot be evaluated at the sampled points ({problem})") from None
        # complex values compared whole (a formula with an imaginary part is wrong), NaN never equal
        wrong = np.argwhere(~np.asarray(abs(truth - claimed) <= 1e-9 * np.maximum(1.0, abs(truth)), dtype=bool))
        if len(wrong):
            entry = tuple(wrong[0])
            true_value, claimed_value = complex(truth[entry]).real, complex(claimed[entry]).real
            where = ", ".join(f"{symbol} = {value}" for symbol, value in zip(free, entry))
            inputs = "; ".join(f"{name} = [{', '.join(f'{complex(v).real:.6g}' for v in point.arrays[name])}]"
                               for name in spec.inputs)
            example = (f"n = {point.sizes[size_symbol]}, {where}: the formula gives {claimed_value:.12g}, "
                       f"the derivative is {true_value:.12g}  ({inputs})")
            return FormulaReport(printed, claim, False, symbolic.replace("not shown equal", "different"), example)
    return FormulaReport(printed, claim, True, symbolic)


def _claim(output: Definition, variable: str, free: list[sp.Symbol]) -> str:
    target = f"{output.name}_{free[0]}" if output.is_vector else output.name
    return f"∂{target}/∂{variable}_{free[-1]}"

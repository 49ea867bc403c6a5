"""The inputs a gradient is checked at: logits at several scales and near ties (or probabilities on the
simplex), targets of every kind the spec admits or the kinds the code takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError
from softgrad.verify.problem import Problem

#: Target kinds, as --targets names them, and how the report words them.
TARGET_KINDS = {"labels": "class labels", "onehot": "one-hot targets", "soft": "soft targets",
                "unnormalized": "unnormalised targets", "binary": "targets of 0 and 1", "unit": "targets in (0, 1)"}
#: Logits scales; the last is the extreme one (--extremes off drops it).
SCALES = (1.0, 10.0, 1000.0)
#: Where the exact values at the drawn inputs are beyond what the code's dtype holds (exp(exp(exp(exp(x)))) at
#: x ~ 1), the inputs are drawn smaller by these factors in turn, as the step checker draws its points.
SMALLER = (1, 4, 16, 64)


@dataclass
class Case:
    """One input case: its name, x (rows, n), targets t (rows, n) or None, class labels (rows,) or None."""

    name: str
    x: np.ndarray
    t: np.ndarray | None = None
    labels: np.ndarray | None = None
    extreme: bool = False


def target_kinds(problem: Problem, requested: str | None, takes_labels: bool) -> tuple[list[str], str]:
    """The target kinds to draw, and why (said in the report): what --targets asks for, class labels for
    a signature taking labels, else every kind the spec admits."""
    if not problem.has_target:
        if requested is not None or takes_labels:
            raise SoftgradError(f"{problem.label} takes no targets, so --targets and labels do not apply")
        return [], ""
    admitted = ["onehot", "soft"] if problem.constraint is not None else ["onehot", "soft", "unnormalized"]
    if problem.constraint is not None and problem.constraint != 1.0:
        admitted = ["soft"] if problem.constraint != int(problem.constraint) else ["onehot", "soft"]
    if problem.target_fact == "binary":  # given t in {0, 1}: any number of ones per row, one-hot among them
        admitted = [kind for kind in admitted if kind == "onehot"] + ([] if problem.constraint else ["binary"])
    elif problem.target_fact == "unit":  # given 0 <= t <= 1
        admitted = [kind for kind in admitted if kind in ("onehot", "soft")] + ["unit"]
    if takes_labels:
        if requested not in (None, "labels"):
            raise SoftgradError(f"the signature takes class labels, so --targets {requested} does not apply")
        if problem.constraint not in (None, 1.0):
            raise SoftgradError(f"the spec's targets sum to {problem.constraint:g}; class labels sum to 1")
        return ["labels"], "class labels: the signature takes them"
    if requested == "labels":
        raise SoftgradError("--targets labels needs a signature that takes them, e.g. 'z,label->dz'")
    if requested is not None:
        if requested not in admitted:
            raise SoftgradError(f"--targets {requested} contradicts the spec: its targets sum to "
                                f"{problem.constraint:g} (it admits: {', '.join(admitted)})")
        return [requested], f"{TARGET_KINDS[requested]}: --targets {requested}"
    why = ("the spec's constraint allows" if problem.constraint is not None else
           "the spec's fact about them allows" if problem.target_fact in ("binary", "unit") else "the spec allows")
    return admitted, f"{', '.join(TARGET_KINDS[k] for k in admitted)}: every kind {why} (--targets to choose)"


def make_cases(problem: Problem, rows: int, size: int, rng: np.random.Generator, kinds: list[str] | None = None,
               extremes: bool = True) -> list[Case]:
    """Inputs the checker makes: logits at several scales and near ties (probabilities on the simplex for
    an input read under a log), each with every target kind asked for."""
    inputs = (_unit_inputs(rows, size, rng) if problem.input_fact == "unit" else
              _simplex_inputs(rows, size, rng) if problem.simplex else _logits(rows, size, rng))
    if not extremes:
        inputs = [case for case in inputs if not case[2]]
    if kinds is None:
        kinds = target_kinds(problem, None, False)[0]
    if not kinds:
        return [Case(name, x, extreme=extreme) for name, x, extreme in inputs]
    targets = []
    for kind in kinds:
        labels = rng.integers(0, size, rows)
        if kind in ("onehot", "labels"):
            t = np.zeros((rows, size))  # not np.eye(size)[…]: that is n × n, 80 GB at n = 1e5
            t[np.arange(rows), labels] = 1.0
        elif kind == "soft":
            t = rng.uniform(0.01, 1, (rows, size))
            t /= t.sum(1, keepdims=True)
        elif kind == "binary":
            t = rng.integers(0, 2, (rows, size)).astype(float)
        elif kind == "unit":
            t = rng.uniform(0.02, 0.98, (rows, size))
        else:
            t = rng.uniform(0, 2, (rows, size))
        if problem.constraint is not None and problem.constraint != 1.0:
            t = t * problem.constraint
        targets.append((TARGET_KINDS[kind], t, labels if kind == "labels" else None))
    return [Case(f"{name}, {target_name}", x, t, labels, extreme)
            for name, x, extreme in inputs for target_name, t, labels in targets]


def _logits(rows: int, size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, bool]]:
    cases = [(f"logits ~ N(0, {scale:g}²)", rng.normal(0, scale, (rows, size)), scale == SCALES[-1])
             for scale in SCALES]
    tied = rng.normal(0, 1, (rows, size))
    tied[:, : min(2, size)] = tied.max(axis=1, keepdims=True) + 0.5  # two equal maxima
    cases.append(("near-tied logits", tied + rng.normal(0, 1e-9, (rows, size)), False))
    # large logits with a small spread: exp overflows (or underflows) for every entry, yet the gradient is
    # far from 0 or one-hot; what a missing max-subtraction gets wrong
    for offset in (1000.0, -1000.0):
        cases.append((f"logits ~ {offset:+g} + N(0, 1²)", offset + rng.normal(0, 1, (rows, size)), True))
    return cases


def _unit_inputs(rows: int, size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, bool]]:
    """Entries in (0, 1) each (`given 0 <= p <= 1`: a sigmoid's outputs, not a simplex): spread, and close to
    0 and 1 (down to 1e-4 from either end, where a finite difference of log p still resolves)."""
    near = rng.choice([1e-4, 1 - 1e-4], (rows, size)) * rng.uniform(0.5, 1.0, (rows, size))
    return [("entries ~ U(0.02, 0.98)", rng.uniform(0.02, 0.98, (rows, size)), False),
            ("entries ~ U(0.3, 0.7)", rng.uniform(0.3, 0.7, (rows, size)), False),
            ("entries near 0 and 1 (down to 1e-4 from either end)", np.clip(near, 5e-5, 1 - 5e-5), True)]


def _simplex_inputs(rows: int, size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, bool]]:
    """Probabilities: rows on the simplex, spread, peaked, near-degenerate (entries down to 1e-4, where a
    finite difference of log p still resolves), and with two equal entries."""
    def simplex(scale: float, floor: float) -> np.ndarray:
        z = rng.normal(0, scale, (rows, size))
        p = np.exp(z - z.max(1, keepdims=True))
        p = np.maximum(p / p.sum(1, keepdims=True), floor)
        return np.asarray(p / p.sum(1, keepdims=True))

    tied = simplex(1.0, 1e-3)
    tied[:, : min(2, size)] = tied[:, :1]
    return [("probabilities ~ softmax(N(0, 1²))", simplex(1.0, 1e-3), False),
            ("probabilities ~ softmax(N(0, 3²))", simplex(3.0, 1e-3), False),
            ("near-degenerate probabilities (entries down to 1e-4)", simplex(30.0, 1e-4), True),
            ("probabilities with a tie", tied / tied.sum(1, keepdims=True), False)]


def as_given(array: np.ndarray | None, dtype: np.dtype[Any]) -> np.ndarray | None:
    """The values the code under test really receives (rounded to its dtype), kept in float64: every
    reference is computed at exactly the point the code was called at."""
    return None if array is None else array.astype(dtype).astype(np.float64)

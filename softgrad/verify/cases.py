"""The inputs a gradient is checked at: logits at several scales and near ties, targets of every kind."""

from __future__ import annotations

from typing import Any

import numpy as np

from softgrad.verify.problem import Problem


def make_cases(
    problem: Problem, rows: int, size: int, rng: np.random.Generator
) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Inputs the checker makes: logits at several scales, near-ties; targets one-hot, soft, unnormalised."""
    cases = []
    for scale in (1.0, 10.0, 1000.0):
        cases.append((f"logits ~ N(0, {scale:g}²)", rng.normal(0, scale, (rows, size))))
    tied = rng.normal(0, 1, (rows, size))
    tied[:, : min(2, size)] = tied.max(axis=1, keepdims=True) + 0.5  # two equal maxima
    cases.append(("near-tied logits", tied + rng.normal(0, 1e-9, (rows, size))))
    if not problem.has_target:
        return [(name, x, None) for name, x in cases]
    targets = []
    one_hot = np.zeros((rows, size))  # not np.eye(size)[…]: that is n × n, 80 GB at n = 1e5
    one_hot[np.arange(rows), rng.integers(0, size, rows)] = 1.0
    soft = rng.uniform(0.01, 1, (rows, size))
    targets += [("one-hot targets", one_hot), ("soft targets", soft / soft.sum(1, keepdims=True))]
    if problem.constraint is None:
        targets.append(("unnormalised targets", rng.uniform(0, 2, (rows, size))))
    elif problem.constraint != 1.0:
        targets = [(name, t * problem.constraint) for name, t in targets]
    return [(f"{name}, {target_name}", x, t) for name, x in cases for target_name, t in targets]


def as_given(array: np.ndarray | None, dtype: np.dtype[Any]) -> np.ndarray | None:
    """The values the code under test really receives (rounded to its dtype), kept in float64: every
    reference is computed at exactly the point the code was called at."""
    return None if array is None else array.astype(dtype).astype(np.float64)

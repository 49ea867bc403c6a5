"""Finite differences that know their own error: central differences at h and h/2, Richardson.

The numerical side always runs in float64. Steps are absolute (logits are shift-invariant: a step
scaled by |x| would be wrong near 0 and needlessly coarse for large logits), about cbrt(eps), and
the step actually taken is the representable one, (x + h) − x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = np.finfo(np.float64).eps
DEFAULT_STEP = float(np.cbrt(EPS))  # ≈ 6.1e-6


@dataclass
class Difference:
    """A Richardson-extrapolated derivative and the estimate of its error."""

    value: np.ndarray
    noise: np.ndarray  # |D(h) − D(h/2)| + rounding: what the estimate may be off by
    step: float


def _taken_steps(x: np.ndarray, direction: np.ndarray, step: float) -> np.ndarray:
    """Per row, the step actually representable along the direction (largest |component|)."""
    return ((x + step * direction) - x).max(axis=-1, keepdims=True) / np.maximum(np.abs(direction).max(axis=-1, keepdims=True), 1e-300)


def directional(function, x: np.ndarray, direction: np.ndarray, step: float = DEFAULT_STEP) -> Difference:
    """d/ds of function(x + s·direction) at s = 0, per row; function maps (rows, n) → (rows,)."""
    values = {}
    for scale in (1.0, 0.5):
        h = step * scale
        stacked = np.concatenate([x + h * direction, x - h * direction])
        out = np.asarray(function(stacked), dtype=np.float64)
        plus, minus = out[: len(x)], out[len(x):]
        values[scale] = ((plus - minus) / (2 * h), np.maximum(np.abs(plus), np.abs(minus)))
    (coarse, magnitude), (fine, _) = values[1.0], values[0.5]
    richardson = (4 * fine - coarse) / 3
    noise = np.abs(fine - coarse) + 8 * EPS * magnitude / step
    return Difference(richardson, noise, step)


def jacobian(function, x: np.ndarray, step: float = DEFAULT_STEP) -> Difference:
    """The full Jacobian of a row-wise function, (rows, n) → (rows, m): shape (rows, m, n).

    All 4n perturbed copies of the batch are evaluated in one vectorized call.
    """
    rows, size = x.shape
    identity = np.eye(size)
    batches = []
    for scale in (1.0, -1.0, 0.5, -0.5):
        batches.append(x[None, :, :] + scale * step * identity[:, None, :])  # (n, rows, n)
    stacked = np.concatenate(batches).reshape(-1, size)
    out = np.asarray(function(stacked), dtype=np.float64)
    out = out.reshape(4, size, rows, -1)  # [which, column j, row, output i]
    coarse = (out[0] - out[1]) / (2 * step)
    fine = (out[2] - out[3]) / step
    richardson = (4 * fine - coarse) / 3
    magnitude = np.abs(out).max(axis=0)
    noise = np.abs(fine - coarse) + 8 * EPS * magnitude / step
    return Difference(np.transpose(richardson, (1, 2, 0)), np.transpose(noise, (1, 2, 0)), step)

"""Finite differences that know their own error: central differences at h and h/2, Richardson.

The numerical side always runs in float64. Steps are absolute (logits are shift-invariant: a step
scaled by |x| would be wrong near 0 and needlessly coarse for large logits), about cbrt(eps), and
the step actually taken is the representable one, (x + h) − x.
"""

from __future__ import annotations

from collections.abc import Callable
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


def directional(
    function: Callable[[np.ndarray], np.ndarray], x: np.ndarray, direction: np.ndarray, step: float = DEFAULT_STEP
) -> Difference:
    """d/ds of function(x + s·direction) at s = 0, per row; function maps (rows, n) → (rows,)."""
    values = {}
    for scale in (1.0, 0.5):
        h = step * scale
        moved = h * direction
        forward = x + moved
        stacked = np.concatenate([forward, x - moved])
        out = np.asarray(function(stacked), dtype=np.float64)
        plus, minus = out[: len(x)], out[len(x):]
        values[scale] = ((plus - minus) / (2 * h), np.maximum(np.abs(plus), np.abs(minus)))
        # a direction of ±1 over many entries cannot use per-entry steps; large |x| is covered by the noise
        # estimate, which includes the representation error of x + h·direction:
        forward -= x
        forward -= moved
        representation = np.abs(forward).max(axis=-1) / h
        values[scale] = (values[scale][0], values[scale][1] * (1 + representation / EPS))
    (coarse, magnitude), (fine, _) = values[1.0], values[0.5]
    richardson = (4 * fine - coarse) / 3
    noise = np.abs(fine - coarse) + 8 * EPS * magnitude / step
    return Difference(richardson, noise, step)


def jacobian(function: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float = DEFAULT_STEP) -> Difference:
    """The full Jacobian of a row-wise function, (rows, n) → (rows, m): shape (rows, m, n).

    All 4n perturbed copies of the batch are evaluated in one vectorized call; each difference is
    divided by the step actually taken at that entry, (x + h) − (x − h). For a VJP, let `function`
    return ⟨g, f(x)⟩ per row (m = 1): the n × n Jacobian is then never stored.
    """
    rows, size = x.shape
    identity = np.eye(size)
    shifted = {scale: (x + scale * step) - x for scale in (1.0, -1.0, 0.5, -0.5)}  # (rows, n), representable
    batches = [x[None, :, :] + identity[:, None, :] * shifted[scale].T[:, :, None] for scale in shifted]
    stacked = np.concatenate(batches).reshape(-1, size)
    out = np.asarray(function(stacked), dtype=np.float64)
    out = out.reshape(4, size, rows, -1)  # [which, column j, row, output i]
    coarse_step = (shifted[1.0] - shifted[-1.0]).T[:, :, None]  # [column j, row, 1]
    fine_step = (shifted[0.5] - shifted[-0.5]).T[:, :, None]
    coarse = (out[0] - out[1]) / coarse_step
    fine = (out[2] - out[3]) / fine_step
    richardson = (4 * fine - coarse) / 3
    magnitude = np.abs(out).max(axis=0)
    noise = np.abs(fine - coarse) + 8 * EPS * magnitude / step
    return Difference(np.transpose(richardson, (1, 2, 0)), np.transpose(noise, (1, 2, 0)), step)

"""Hints that save a reader time: a wrong gradient that is a constant multiple of the right one says so.

A sign flip (−1×) and a reduction mismatch (the batch size, or its inverse) are the commonest ways a
gradient is wrong everywhere at once; both show as one ratio shared by every element that matters.
"""

from __future__ import annotations

import numpy as np

#: How closely the ratios must agree to count as one constant factor.
AGREEMENT = 1e-6


def constant_factor_hints(analytic: np.ndarray, reference: np.ndarray, tolerance: np.ndarray, rows: int,
                          role: str = "dx") -> list[str]:
    """What a constant ratio analytic / reference (over the elements the reference is clearly non-zero
    at) suggests, or [] when there is no such ratio."""
    significant = np.abs(reference) > np.maximum(tolerance, 1e-300) * 10
    if significant.sum() < 2:
        return []
    ratios = analytic[significant] / reference[significant]
    factor = float(np.median(ratios))
    if not np.isfinite(factor) or not (np.abs(ratios - factor) <= AGREEMENT * max(abs(factor), 1.0)).all():
        return []
    if abs(factor - 1) <= AGREEMENT:
        return []
    if abs(factor + 1) <= AGREEMENT:
        return [f"{role} is the negative of the reference everywhere: a sign flip?"]
    if rows > 1 and abs(factor * rows - 1) <= AGREEMENT:
        return [f"{role} is 1/{rows} of the reference everywhere: it looks like the gradient of a mean over the "
                f"{rows} rows (a mean/sum reduction mismatch; --reduction mean says the code divides by the rows)"]
    if rows > 1 and abs(factor - rows) <= AGREEMENT * rows:
        return [f"{role} is {rows}× the reference everywhere: it looks like the gradient of a sum where a mean was "
                f"declared (a mean/sum reduction mismatch; drop --reduction mean)"]
    return [f"{role} is {factor:.6g}× the reference everywhere: a constant factor is missing or extra"]

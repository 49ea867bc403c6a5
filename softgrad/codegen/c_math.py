"""Branch-free math for generated C loops, so that they vectorize (libm's exp is a scalar call, and gcc
does not turn a ?: on floating values into a vector select under its default -ftrapping-math).

The exp:

exp(v) = 2^k · exp(r) with k = round(v / ln 2) and |r| ≤ ln 2 / 2, r computed with ln 2 split in two
(Cody–Waite) so that k · ln2_high is exact; exp(r) by a polynomial (a Chebyshev fit) of the lowest
degree whose error is below an eighth of the type's unit roundoff; 2^k applied as two factors 2^(k − h) · 2^h,
h = round(k / 2), both normal numbers, so that results in the subnormal range are rounded once and
correctly. v is first clamped to a range whose ends give +inf and 0, which also makes ±inf exact;
NaN passes through the clamps and the arithmetic unchanged. Tested within 2 ulp against mpmath.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import mpmath
import numpy as np


@dataclass(frozen=True)
class _Format:
    ctype: str
    suffix: str  # for function names and literals
    numpy_type: type
    mantissa_bits: int  # stored fraction bits
    exponent_bias: int
    integer_type: str
    low: float  # exp(low) rounds to 0
    high: float  # exp(high) rounds to +inf
    high_part_bits: int  # significant bits kept in ln2_high so that k · ln2_high is exact


_FORMATS = {
    "float64": _Format("double", "", np.float64, 52, 1023, "uint64_t", -746.0, 710.0, 32),
    "float32": _Format("float", "f", np.float32, 23, 127, "uint32_t", -104.0, 89.0, 16),
}


def _literal(value: float, form: _Format) -> str:
    """A C hexadecimal floating literal, exact for the type (no decimal rounding on the way in)."""
    mantissa, _, exponent = float(form.numpy_type(value)).hex().partition("p")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}" + ("F" if form.suffix else "")


def _split_ln2(form: _Format) -> tuple[float, float]:
    with mpmath.workprec(200):  # restored on leaving: no global mpmath state changed
        ln2 = mpmath.log(2)
        scale = mpmath.mpf(2) ** (form.high_part_bits - 1)
        high = float(mpmath.floor(ln2 * scale) / scale)
        return high, float(form.numpy_type(float(ln2 - high)))


@cache
def polynomial(dtype: str) -> tuple[float, ...]:
    """Coefficients (constant term first) of the lowest-degree Chebyshev fit to exp on |r| ≤ ln 2 / 2
    whose relative error stays below 1/8 of the type's unit roundoff (degree 11 for double, 6 for float;
    a Taylor polynomial needs 13 and 8 for the same accuracy)."""
    form = _FORMATS[dtype]
    with mpmath.workprec(120):  # mpmath's precision is global state: restored on leaving
        radius = mpmath.log(2) / 2 * 1.01  # k may round one way or the other near a tie
        target = mpmath.mpf(2) ** -(form.mantissa_bits + 1) / 8
        for degree in range(2, 30):
            coefficients, error = mpmath.chebyfit(mpmath.exp, [-radius, radius], degree + 1, error=True)
            if error * mpmath.exp(radius) <= target:
                return tuple(float(c) for c in reversed(coefficients))
    raise AssertionError("no polynomial is accurate enough")


def c_source(dtype: str) -> str:
    """The helpers a kernel of this dtype calls (its own type's, and double's for per-row values), as
    the template c/helpers.c.j2 prints them."""
    from softgrad.codegen.emit import _render

    return _render("c/helpers.c.j2", helper_types=helper_types(dtype))


def helper_types(dtype: str) -> list[dict[str, Any]]:
    """What c/helpers.c.j2 prints for a kernel of this dtype: double's helpers, then float's if needed."""
    return [_helper_values("float64")] + ([_helper_values("float32")] if dtype == "float32" else [])


_VECTOR_STORES = {  # (dtype, instruction set) → (lanes, stream intrinsic, unaligned load intrinsic)
    ("float64", "__AVX__"): (4, "_mm256_stream_pd", "_mm256_loadu_pd"),
    ("float64", "__SSE2__"): (2, "_mm_stream_pd", "_mm_loadu_pd"),
    ("float32", "__AVX__"): (8, "_mm256_stream_ps", "_mm256_loadu_ps"),
    ("float32", "__SSE2__"): (4, "_mm_stream_ps", "_mm_loadu_ps"),
}


@cache
def _helper_values(dtype: str) -> dict[str, Any]:
    """The numbers of one floating type's helpers, as C literals: exp's clamps, Cody–Waite ln 2, the
    rounding constant and the Horner form of its polynomial; the vector stores of softgrad_stream."""
    form = _FORMATS[dtype]
    coefficients = [_literal(c, form) for c in polynomial(dtype)]
    horner = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        horner = f"{coefficient} + r * ({horner})"
    high, low = _split_ln2(form)
    streams = []
    for isa in ("__AVX__", "__SSE2__"):
        lanes, stream, load = _VECTOR_STORES[dtype, isa]
        streams.append({"isa": isa, "lanes": lanes, "stream": stream, "load": load,
                        "alignment": lanes * (8 if dtype == "float64" else 4) - 1})
    return {
        "t": form.ctype, "s": form.suffix, "bits": form.integer_type, "horner": horner,
        "low": _literal(form.low, form), "high": _literal(form.high, form),
        "magic": _literal(1.5 * 2.0 ** form.mantissa_bits, form), "log2e": _literal(float(1 / mpmath.log(2)), form),
        "half": _literal(0.5, form), "ln2_high": _literal(high, form), "ln2_low": _literal(low, form),
        "bias": form.exponent_bias, "shift": form.mantissa_bits, "streams": streams,
    }

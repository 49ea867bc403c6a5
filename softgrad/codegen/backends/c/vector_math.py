"""Branch-free math for generated C loops, so that they vectorize (libm's exp is a scalar call, and gcc
does not turn a ?: on floating values into a vector select under its default -ftrapping-math).

The exp:

exp(v) = 2^k · exp(r) with k = round(v / ln 2) and |r| ≤ ln 2 / 2, r computed with ln 2 split in two
(Cody–Waite) so that k · ln2_high is exact; exp(r) by a polynomial (a Chebyshev fit) of the lowest
degree whose error is below an eighth of the type's unit roundoff; 2^k applied as two factors 2^(k − h) · 2^h,
h = round(k / 2), both normal numbers, so that results in the subnormal range are rounded once and
correctly. v is first clamped to a range whose ends give +inf and 0, which also makes ±inf exact;
NaN passes through the clamps and the arithmetic unchanged. Tested within 2 ulp against mpmath.

The others, each from polynomials fitted here and branch-free in the same way:

- log(v) = k ln 2 + log m with m = v / 2^k in [√½, √2) read from v's bits (subnormals scaled first), and
  log m = 2 atanh(s), s = (m − 1)/(m + 1), summed in fdlibm's order (f − ½f² + s(½f² + R)) so that the
  result is within an ulp; 0 → −inf, negatives → NaN, +inf and NaN through selects.
- log1p(v) = log(u) + (v − (u − 1))/u with u = 1 + v: the second term is the rounding error of u.
- expm1(v) = 2^k (p + 1 − 2^−k) with p = expm1(r) = r + r²Q(r) on the exp's reduced argument, corrected
  for r's own rounding error; for |v| ≤ ln 2 / 2, k = 0 and the result is p itself (no cancellation).
- tanh(v) = sign(v) e/(e + 2) with e = expm1(2|v|), or an odd polynomial for |v| < 0.55 where that
  quotient would round twice too often.
- erf(v) = v + v·R(v²) for |v| < 1, else sign(v)(1 − e^(−v²)·G(|v|)) with v² split exactly in two for the
  exp and G a polynomial on [1, 2.5] and one on [2.5, 6]; ±1 beyond. Float rounds the double result.
- pow(x, y) = exp(y·log|x|) with log|x| = k ln 2 + 2s + 2s³/3 + s⁵P(s²) summed in two doubles (error-free
  products and sums, about 2^-64 relative), so that y·log|x| up to ±745 stays exact to a fraction of an
  ulp; exp of the two-part product; C99's special values by selects; float32 rounds the double result.
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


def _fit(function: Any, interval: tuple[Any, Any], tolerance: Any) -> tuple[float, ...]:
    """Coefficients (constant term first) of the lowest-degree Chebyshev fit to `function` on `interval`
    whose largest error is below `tolerance` (all mpmath numbers; called inside a workprec block)."""
    for degree in range(1, 30):
        coefficients, error = mpmath.chebyfit(function, list(interval), degree + 1, error=True)
        if error <= tolerance:
            return tuple(float(c) for c in reversed(coefficients))
    raise AssertionError("no polynomial is accurate enough")


def _series(terms: Any) -> Any:
    """A function of w summing terms(k, w) for k = 0, 1, … until they vanish (exact near w = 0)."""
    def evaluate(w: Any) -> Any:
        total, k = mpmath.mpf(0), 0
        while True:
            term = terms(k, w)
            total += term
            if abs(term) < mpmath.mpf(2) ** -150 * abs(total) or k > 400:
                return total
            k += 1
    return evaluate


@cache
def log_polynomial(dtype: str) -> tuple[float, ...]:
    """R(z)/z for log's 2 atanh(s) = 2s + s·R(s²): the series Σ 2z^k/(2k + 3), fitted on s² ≤ (3 − 2√2)²,
    accurate enough that s·R stays within 1/8 of the unit roundoff of log m ≈ 2s."""
    form = _FORMATS[dtype]
    with mpmath.workprec(160):
        top = ((mpmath.sqrt(2) - 1) / (mpmath.sqrt(2) + 1)) ** 2 * mpmath.mpf(1.02)
        tolerance = mpmath.mpf(2) ** -(form.mantissa_bits + 1) / (4 * top)
        return _fit(_series(lambda k, z: 2 * z ** k / (2 * k + 3)), (mpmath.mpf(0), top), tolerance)


@cache
def expm1_polynomial(dtype: str) -> tuple[float, ...]:
    """Q(r) = (e^r − 1 − r)/r² = Σ r^k/(k + 2)! on |r| ≤ ln 2 / 2 (widened a little, as for exp)."""
    form = _FORMATS[dtype]
    with mpmath.workprec(160):
        radius = mpmath.log(2) / 2 * mpmath.mpf(1.01)
        tolerance = mpmath.mpf(2) ** -(form.mantissa_bits + 1) / (8 * radius)
        return _fit(_series(lambda k, r: r ** k / mpmath.factorial(k + 2)), (-radius, radius), tolerance)


@cache
def pow_log_polynomial() -> tuple[float, ...]:
    """P(z) = Σ 2z^k/(2k + 5) for pow's log in two parts, log m = 2s + 2s³/3 + s⁵·P(s²): s⁵·P is below
    2^-11 of log m, so P needs only 2^-56 to keep the whole log within 2^-64 of it (double only)."""
    with mpmath.workprec(160):
        top = ((mpmath.sqrt(2) - 1) / (mpmath.sqrt(2) + 1)) ** 2 * mpmath.mpf(1.02)
        return _fit(_series(lambda k, z: 2 * z ** k / (2 * k + 5)), (mpmath.mpf(0), top), mpmath.mpf(2) ** -58)


def _split(value: Any, form: _Format) -> tuple[str, str]:
    """value as a sum of two numbers of the type (the second the rounding error of the first), as literals."""
    with mpmath.workprec(160):
        exact = mpmath.mpf(value)
        high = float(form.numpy_type(float(exact)))
        return _literal(high, form), _literal(float(exact - mpmath.mpf(high)), form)


#: Below this |v|, tanh is an odd polynomial; above it, e/(e + 2) with e = expm1(2|v|) ≥ 2 rounds well.
TANH_POLYNOMIAL_BELOW = 0.55


@cache
def tanh_polynomial(dtype: str) -> tuple[float, ...]:
    """T(w) with tanh(v) = v + v³·T(v²) for |v| < 0.55, from tanh's own values at high precision."""
    form = _FORMATS[dtype]
    with mpmath.workprec(400):  # tanh(√w) − √w cancels: plenty of bits for the smallest nodes
        top = mpmath.mpf(TANH_POLYNOMIAL_BELOW) ** 2 * mpmath.mpf(1.01)
        tolerance = mpmath.mpf(2) ** -(form.mantissa_bits + 1) / (8 * top)

        def function(w: Any) -> Any:
            if w < mpmath.mpf(2) ** -60:
                return mpmath.mpf(-1) / 3 + 2 * w / 15
            root = mpmath.sqrt(w)
            return (mpmath.tanh(root) - root) / (w * root)
        return _fit(function, (mpmath.mpf(0), top), tolerance)


#: erf(v) = v + v·R(v²) below ERF_POLYNOMIAL_BELOW; 1 − e^(−v²)·G(|v|) up to ERF_SATURATES, G fitted on
#: each side of ERF_MIDDLE; ±1 beyond (erfc(6) ≈ 2e-17 is below half an ulp of 1).
ERF_POLYNOMIAL_BELOW, ERF_MIDDLE, ERF_SATURATES = 1.0, 2.5, 6.0
#: The points the middle and tail polynomials of erf are written around (their intervals' centres).
ERF_CENTRES = ((ERF_POLYNOMIAL_BELOW + ERF_MIDDLE) / 2, (ERF_MIDDLE + ERF_SATURATES) / 2)


@cache
def erf_polynomials() -> dict[str, tuple[float, ...]]:
    """erf's three polynomials (double; float rounds the double result): R(w) = erf(√w)/√w − 1 for w below
    1.01; G(a) = e^(a²)·erfc(a) on [1, 2.5] and [2.5, 6], each in a − (its interval's centre), where the
    monomials stay well conditioned. G is needed only as accurately as e^(−a²)·G is below an eighth of an
    ulp of erf ≥ 0.84."""
    with mpmath.workprec(200):
        def small(w: Any) -> Any:
            if w < mpmath.mpf(2) ** -80:
                return 2 / mpmath.sqrt(mpmath.pi) * (1 - w / 3) - 1
            return mpmath.erf(mpmath.sqrt(w)) / mpmath.sqrt(w) - 1

        fits = {"small": _fit(small, (mpmath.mpf(0), mpmath.mpf(ERF_POLYNOMIAL_BELOW) ** 2 * mpmath.mpf(1.01)),
                              mpmath.mpf(2) ** -57)}
        for name, low, high, centre in (("middle", ERF_POLYNOMIAL_BELOW, ERF_MIDDLE, mpmath.mpf(ERF_CENTRES[0])),
                                        ("tail", ERF_MIDDLE, ERF_SATURATES, mpmath.mpf(ERF_CENTRES[1]))):
            fits[name] = _fit(lambda u, centre=centre: mpmath.erfc(u + centre) * mpmath.exp((u + centre) ** 2),
                              (mpmath.mpf(low) - centre, mpmath.mpf(high) - centre),
                              mpmath.mpf(2) ** -58 * mpmath.exp(mpmath.mpf(low) ** 2))
        return fits


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


def helper_types(dtype: str) -> list[dict[str, Any]]:
    """What c/helpers.c.j2 prints for a kernel of this dtype: double's helpers, then float's if needed."""
    return [_helper_values("float64")] + ([_helper_values("float32")] if dtype == "float32" else [])


def _bits(value: float, form: _Format) -> int:
    """The bits of value rounded to the type, as an unsigned integer."""
    return int(np.array([value], dtype=form.numpy_type).view(f"u{np.dtype(form.numpy_type).itemsize}")[0])


def _horner(coefficients: tuple[float, ...], variable: str, form: _Format) -> str:
    """c0 + v * (c1 + v * (…)) with exact hexadecimal literals."""
    literals = [_literal(c, form) for c in coefficients]
    horner = literals[-1]
    for coefficient in reversed(literals[:-1]):
        horner = f"{coefficient} + {variable} * ({horner})"
    return horner


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
    high, low = _split_ln2(form)
    streams = []
    for isa in ("__AVX__", "__SSE2__"):
        lanes, stream, load = _VECTOR_STORES[dtype, isa]
        streams.append({"isa": isa, "lanes": lanes, "stream": stream, "load": load,
                        "alignment": lanes * (8 if dtype == "float64" else 4) - 1})
    return {
        "t": form.ctype, "s": form.suffix, "bits": form.integer_type,
        "horner": _horner(polynomial(dtype), "r", form), "log_horner": _horner(log_polynomial(dtype), "z", form),
        "expm1_horner": _horner(expm1_polynomial(dtype), "r", form),
        "tanh_horner": _horner(tanh_polynomial(dtype), "w", form),
        "tanh_polynomial_below": _literal(TANH_POLYNOMIAL_BELOW, form),
        "tanh_saturates": _literal(20.0 if dtype == "float64" else 10.0, form),  # tanh rounds to 1 beyond
        "expm1_low": _literal(-40.0 if dtype == "float64" else -20.0, form),  # expm1 rounds to −1 below
        # log: adding this to v's bits carries m's exponent into k exactly when m ≥ √½
        "log_offset": f"0x{_bits(1.0, form) - _bits(float(mpmath.sqrt(0.5)), form):x}u",
        "exponent_mask_bits": f"0x{_bits(2.0 ** form.mantissa_bits, form):x}u",  # the float 2^mantissa_bits
        "exponent_magic": _literal(2.0 ** form.mantissa_bits + form.exponent_bias, form),
        "magic_bits": f"0x{_bits(1.5 * 2.0 ** form.mantissa_bits, form):x}u",
        "smallest_normal": _literal(float(np.finfo(form.numpy_type).tiny), form),
        "subnormal_shift": form.mantissa_bits + 2, "subnormal_scale": _literal(2.0 ** (form.mantissa_bits + 2), form),
        "low": _literal(form.low, form), "high": _literal(form.high, form),
        "magic": _literal(1.5 * 2.0 ** form.mantissa_bits, form), "log2e": _literal(float(1 / mpmath.log(2)), form),
        "half": _literal(0.5, form), "ln2_high": _literal(high, form), "ln2_low": _literal(low, form),
        "bias": form.exponent_bias, "shift": form.mantissa_bits, "streams": streams,
        **({"pow_horner": _horner(pow_log_polynomial(), "z", form),
            "erf_small_horner": _horner(erf_polynomials()["small"], "w", form),
            "erf_middle_horner": _horner(erf_polynomials()["middle"], "middle", form),
            "erf_tail_horner": _horner(erf_polynomials()["tail"], "tail", form),
            "erf_middle_centre": _literal(ERF_CENTRES[0], form), "erf_tail_centre": _literal(ERF_CENTRES[1], form),
            "erf_polynomial_below": _literal(ERF_POLYNOMIAL_BELOW, form),
            "erf_middle": _literal(ERF_MIDDLE, form), "erf_saturates": _literal(ERF_SATURATES, form),
            "two_thirds_high": _split(mpmath.fraction(2, 3), form)[0],
            "two_thirds_low": _split(mpmath.fraction(2, 3), form)[1]}
           if dtype == "float64" else {}),
    }

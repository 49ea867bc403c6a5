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


STREAMING = """\
/* Every helper is static; the ones a kernel of this file does not call are marked unused for gcc and clang. */
#if defined(__GNUC__)
#define SOFTGRAD_HELPER static inline __attribute__((unused))
#else
#define SOFTGRAD_HELPER static inline
#endif

#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* Outputs at least this large are written with streaming stores, which skip reading each destination line
 * before overwriting it (a quarter of a backward pass's memory traffic) and leave the cache to the inputs;
 * smaller outputs are likely read again soon, from cache. Override with -DSOFTGRAD_STREAM_MIN_BYTES=... */
#ifndef SOFTGRAD_STREAM_MIN_BYTES
#define SOFTGRAD_STREAM_MIN_BYTES ((size_t)32 << 20)
#endif
#ifndef SOFTGRAD_CHUNK
#define SOFTGRAD_CHUNK 512 /* entries computed into an L1-resident chunk, then streamed out (a multiple of 16) */
#endif

#define SOFTGRAD_LINE 64 /* bytes in a cache line */

/* How many entries of `size` bytes from `row` to the next cache line (at most n). */
SOFTGRAD_HELPER size_t softgrad_entries_to_line(const void *row, size_t size, size_t n)
{
    const size_t bytes = (SOFTGRAD_LINE - (uintptr_t)row % SOFTGRAD_LINE) % SOFTGRAD_LINE;
    const size_t entries = bytes % size == 0 ? bytes / size : 0;
    return entries < n ? entries : n;
}

SOFTGRAD_HELPER void softgrad_stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before returning */
#endif
}
"""


def c_source(dtype: str) -> str:
    """The helpers a kernel of this dtype calls: its own type's, and double's for per-row values."""
    types = _helpers("float64") if dtype == "float64" else _helpers("float64") + "\n" + _helpers("float32")
    return STREAMING + "\n" + types


_VECTOR_STORES = {  # (dtype, instruction set) → (lanes, stream intrinsic, unaligned load intrinsic)
    ("float64", "__AVX__"): (4, "_mm256_stream_pd", "_mm256_loadu_pd"),
    ("float64", "__SSE2__"): (2, "_mm_stream_pd", "_mm_loadu_pd"),
    ("float32", "__AVX__"): (8, "_mm256_stream_ps", "_mm256_loadu_ps"),
    ("float32", "__SSE2__"): (4, "_mm_stream_ps", "_mm_loadu_ps"),
}


def _stream_source(dtype: str) -> str:
    """softgrad_stream: copy a computed chunk to the output, with streaming stores where the ISA has them."""
    form = _FORMATS[dtype]
    t, s = form.ctype, form.suffix
    branches = []
    for isa in ("__AVX__", "__SSE2__"):
        lanes, stream, load = _VECTOR_STORES[dtype, isa]
        alignment = lanes * (8 if dtype == "float64" else 4) - 1
        branches.append(f"""#{'if' if not branches else 'elif'} defined({isa})
    for (; i < count && ((uintptr_t)(destination + i) & {alignment}); ++i) {{
        destination[i] = chunk[i];
    }}
    for (; i + {lanes} <= count; i += {lanes}) {{
        {stream}(destination + i, {load}(chunk + i));
    }}""")
    return f"""\
SOFTGRAD_HELPER void softgrad_stream{s}({t} *restrict destination, const {t} *restrict chunk, size_t count)
{{
    size_t i = 0;
{chr(10).join(branches)}
#endif
    for (; i < count; ++i) {{
        destination[i] = chunk[i];
    }}
}}
"""


@cache
def _helpers(dtype: str) -> str:
    """select, max, exp, the guarded product, σ and softplus for one floating type (suffix f for float)."""
    form = _FORMATS[dtype]
    t, s = form.ctype, form.suffix
    coefficients = [_literal(c, form) for c in polynomial(dtype)]
    horner = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        horner = f"{coefficient} + r * ({horner})"
    high, low = _split_ln2(form)
    magic = _literal(1.5 * 2.0 ** form.mantissa_bits, form)
    log2e = _literal(float(1 / mpmath.log(2)), form)
    bits = form.integer_type
    shift = form.mantissa_bits
    bias = form.exponent_bias
    return f"""\
SOFTGRAD_HELPER {bits} softgrad_bits{s}({t} v) {{ {bits} b; memcpy(&b, &v, sizeof b); return b; }}
SOFTGRAD_HELPER {t} softgrad_from_bits{s}({bits} b) {{ {t} v; memcpy(&v, &b, sizeof v); return v; }}
/* choose ? a : b by bit masks: gcc does not if-convert a ?: on floating values under -ftrapping-math */
SOFTGRAD_HELPER {t} softgrad_select{s}(int choose, {t} a, {t} b)
{{
    const {bits} mask = -({bits})choose;
    return softgrad_from_bits{s}((softgrad_bits{s}(a) & mask) | (softgrad_bits{s}(b) & ~mask));
}}

/* exp(v) without branches (vectorizes); within 2 ulp, exp(+inf) = +inf, exp(-inf) = 0, subnormal
 * results rounded correctly, NaN stays NaN. Made by softgrad.codegen.c_math. */
SOFTGRAD_HELPER {t} softgrad_exp{s}({t} v)
{{
    v = softgrad_select{s}(v < {_literal(form.low, form)}, {_literal(form.low, form)}, v);
    v = softgrad_select{s}(v > {_literal(form.high, form)}, {_literal(form.high, form)}, v);
    const {t} rounded = v * {log2e} + {magic}; /* k = round(v / ln 2) in the low bits */
    const {t} k = rounded - {magic};
    const {t} half = k * {_literal(0.5, form)} + {magic}; /* h = round(k / 2) in the low bits */
    const {t} r = (v - k * {_literal(high, form)}) - k * {_literal(low, form)};
    const {t} p = {horner};
    const {t} first = softgrad_from_bits{s}((softgrad_bits{s}(rounded) - softgrad_bits{s}(half) + {bias}u) << {shift});
    const {t} second = softgrad_from_bits{s}((softgrad_bits{s}(half) + {bias}u) << {shift});
    return p * first * second;
}}

SOFTGRAD_HELPER {t} softgrad_max{s}({t} a, {t} b) {{ return b > a ? b : a; }} /* a max reduction gcc vectorizes */

/* w·f, but 0 where w = 0 even if f is ±inf (0·log 0 = 0, as in xlogy): masked classes stay finite */
SOFTGRAD_HELPER {t} softgrad_guarded{s}({t} w, {t} f) {{ return softgrad_select{s}(w == 0, 0, w * f); }}

/* σ(u) and log(1 + exp(v)) without overflow: exp is only ever taken of −|u| */
SOFTGRAD_HELPER {t} softgrad_sigmoid{s}({t} u)
{{
    const {t} e = softgrad_exp{s}(-fabs{s}(u));
    return softgrad_select{s}(u >= 0, 1 / (1 + e), e / (1 + e));
}}
SOFTGRAD_HELPER {t} softgrad_softplus{s}({t} v) {{ return fmax{s}(v, 0) + log1p{s}(softgrad_exp{s}(-fabs{s}(v))); }}

""" + _stream_source(dtype)

"""Hygienic names for generated code: no spec name can collide with anything the code relies on.

Two namespaces that cannot meet:
- every name the generator introduces inside a kernel (loop variables, row pointers, blocks, reductions,
  common subexpressions, work buffers) begins with '_', which the spec language refuses in names;
- every spec name that is public (an argument, an output) is printed as itself unless that would be a
  keyword, builtin, macro, library function or fixed name of C or Python, or of the generated files;
  then it gets a trailing '_' (more if that is taken), so `int` becomes `int_` and `NULL` `NULL_`.

The C macros listed are those the generated files' headers define with gcc and clang, in ISO and GNU
modes; tests/test_names.py asks both compilers again, so a header that grows a macro fails a test
instead of breaking a build.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from sympy.printing.c import C99CodePrinter

C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
asm typeof bool true false alignas alignof noreturn static_assert thread_local complex imaginary
""".split())

#: The header is C++-compatible (extern "C"): its argument names must be valid C++ too.
CPP_KEYWORDS = frozenset("""
and and_eq bitand bitor catch char8_t char16_t char32_t class compl concept consteval constexpr constinit
const_cast co_await co_return co_yield decltype delete dynamic_cast explicit export friend mutable namespace
new noexcept not not_eq nullptr operator or or_eq private protected public reinterpret_cast requires
static_cast template this throw try typeid typename using virtual wchar_t xor xor_eq final override
""".split())

#: Macros (object- and function-like) of <stddef.h>, <math.h>, <stdint.h>, <string.h> and
#: <immintrin.h> under gcc 12 and clang 14, -std=c99 and -std=gnu17, without the reserved '_' ones.
C_MACROS = frozenset("""
BIG_ENDIAN BYTE_ORDER EXIT_FAILURE EXIT_SUCCESS FD_CLR FD_ISSET FD_SET FD_SETSIZE FD_ZERO FP_FAST_FMA
FP_FAST_FMAF FP_FAST_FMAL FP_ILOGB0 FP_ILOGBNAN FP_INFINITE FP_NAN FP_NORMAL FP_SUBNORMAL FP_ZERO HUGE_VAL
HUGE_VALF HUGE_VALL INFINITY INT16_C INT16_MAX INT16_MIN INT32_C INT32_MAX INT32_MIN INT64_C INT64_MAX
INT64_MIN INT8_C INT8_MAX INT8_MIN INTMAX_C INTMAX_MAX INTMAX_MIN INTPTR_MAX INTPTR_MIN INT_FAST16_MAX
INT_FAST16_MIN INT_FAST32_MAX INT_FAST32_MIN INT_FAST64_MAX INT_FAST64_MIN INT_FAST8_MAX INT_FAST8_MIN
INT_LEAST16_MAX INT_LEAST16_MIN INT_LEAST32_MAX INT_LEAST32_MIN INT_LEAST64_MAX INT_LEAST64_MIN INT_LEAST8_MAX
INT_LEAST8_MIN LITTLE_ENDIAN MATH_ERREXCEPT MATH_ERRNO MB_CUR_MAX M_1_PI M_2_PI M_2_SQRTPI M_E M_LN10 M_LN2
M_LOG10E M_LOG2E M_PI M_PI_2 M_PI_4 M_SQRT1_2 M_SQRT2 NAN NFDBITS NULL PDP_ENDIAN PTRDIFF_MAX PTRDIFF_MIN
RAND_MAX SIG_ATOMIC_MAX SIG_ATOMIC_MIN SIZE_MAX UINT16_C UINT16_MAX UINT32_C UINT32_MAX UINT64_C UINT64_MAX
UINT8_C UINT8_MAX UINTMAX_C UINTMAX_MAX UINTPTR_MAX UINT_FAST16_MAX UINT_FAST32_MAX UINT_FAST64_MAX
UINT_FAST8_MAX UINT_LEAST16_MAX UINT_LEAST32_MAX UINT_LEAST64_MAX UINT_LEAST8_MAX WCHAR_MAX WCHAR_MIN
WCONTINUED WEXITED WEXITSTATUS WIFCONTINUED WIFEXITED WIFSIGNALED WIFSTOPPED WINT_MAX WINT_MIN WNOHANG
WNOWAIT WSTOPPED WSTOPSIG WTERMSIG WUNTRACED alloca be16toh be32toh be64toh fpclassify htobe16 htobe32
htobe64 htole16 htole32 htole64 isfinite isgreater isgreaterequal isinf isless islessequal islessgreater
isnan isnormal isunordered le16toh le32toh le64toh linux math_errhandling offsetof signbit unix i386 errno
assert EOF EDOM ERANGE EILSEQ CHAR_BIT
""".split())


def _c_library_functions() -> frozenset[str]:
    """Functions a kernel body may call: every math function SymPy's C99 printer knows, in its double,
    float and long double spellings, and the few others the templates use."""
    printer = C99CodePrinter()
    math = {name for name in printer.known_functions.values() if isinstance(name, str)}
    math |= {"fabs", "pow", "fmax", "fmin", "log1p", "expm1", "nan", "copysign", "ldexp", "frexp", "round"}
    spelled = {name + suffix for name in math for suffix in ("", "f", "l")}
    return frozenset(spelled | {"memcpy", "memset", "memmove", "malloc", "free", "abs", "exit", "main"})


C_LIBRARY = _c_library_functions()

PYTHON_KEYWORDS = frozenset("""
False None True and as assert async await break class continue def del elif else except finally for from
global if import in is lambda nonlocal not or pass raise return try while with yield match case type
""".split())

#: Python's builtins (3.11 and later, without the '_' ones): fixed here so that generated code does not
#: depend on the Python version that generated it.
PYTHON_BUILTINS = frozenset("""
ArithmeticError AssertionError AttributeError BaseException BaseExceptionGroup BlockingIOError
BrokenPipeError BufferError BytesWarning ChildProcessError ConnectionAbortedError ConnectionError
ConnectionRefusedError ConnectionResetError DeprecationWarning EOFError Ellipsis EncodingWarning
EnvironmentError Exception ExceptionGroup FileExistsError FileNotFoundError FloatingPointError FutureWarning
GeneratorExit IOError ImportError ImportWarning IndentationError IndexError InterruptedError
IsADirectoryError KeyError KeyboardInterrupt LookupError MemoryError ModuleNotFoundError NameError
NotADirectoryError NotImplemented NotImplementedError OSError OverflowError PendingDeprecationWarning
PermissionError ProcessLookupError PythonFinalizationError RecursionError ReferenceError ResourceWarning
RuntimeError RuntimeWarning StopAsyncIteration StopIteration SyntaxError SyntaxWarning SystemError
SystemExit TabError TimeoutError TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError
UnicodeError UnicodeTranslateError UnicodeWarning UserWarning ValueError Warning ZeroDivisionError abs
aiter all anext any ascii bin bool breakpoint bytearray bytes callable chr classmethod compile complex
copyright credits delattr dict dir divmod enumerate eval exec exit filter float format frozenset getattr
globals hasattr hash help hex id input int isinstance issubclass iter len license list locals map max
memoryview min next object oct open ord pow print property quit range repr reversed round set setattr
slice sorted staticmethod str sum super tuple type vars zip
""".split())

#: Fixed names of the generated files that a spec name must not shadow: modules they import, names
#: defined at their top level, the keyword arguments and size arguments of every kernel.
GENERATED_FIXED = frozenset("""
np math ctypes numpy DTYPE Kernels load self axis out rows n torch jax jnp ctx functools
hashlib importlib os shutil subprocess sys tempfile threading warnings Path C_ON_CPU OPAQUE_WHEN_COMPILED
""".split())

RESERVED = C_KEYWORDS | CPP_KEYWORDS | C_MACROS | C_LIBRARY | PYTHON_KEYWORDS | PYTHON_BUILTINS | GENERATED_FIXED

#: Module names a generated file must not take (it would shadow them for scripts in its folder).
MODULES = frozenset(set(getattr(sys, "stdlib_module_names", ())) |
                    {"numpy", "np", "sympy", "scipy", "torch", "jax", "softgrad", "ctypes", "math"})


def is_reserved(name: str) -> bool:
    """True for a name that generated code cannot use as itself."""
    if name in RESERVED or name.startswith("_"):
        return True
    if name.endswith("_t"):  # C and POSIX type names (size_t, uint64_t, …)
        return True
    # softgrad's own C helpers and macros (softgrad_exp, SOFTGRAD_RESTRICT); none of them ends in '_'
    return name.lower().startswith("softgrad") and not name.endswith("_")


def public_names(names: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """An injective map from spec names to identifiers usable in C and Python, deterministic.

    A name that is not reserved keeps its spelling; a reserved one gets '_' appended until it is
    neither reserved, nor another spec name, nor already given out, nor in `taken`."""
    names = list(dict.fromkeys(names))
    originals = set(names)
    given: dict[str, str] = {}
    used = set(taken)
    for name in names:
        if not is_reserved(name) and name not in used:
            given[name] = name
            used.add(name)
    for name in names:
        if name in given:
            continue
        candidate = name + "_"
        while is_reserved(candidate) or candidate in originals or candidate in used:
            candidate += "_"
        given[name] = candidate
        used.add(candidate)
    return given


def module_identifier(title: str) -> str:
    """The module name of generated files (the spec's title made an identifier): ASCII letters, digits and
    '_', starting with a letter, not a module it would shadow nor a reserved name."""
    cleaned = re.sub("_+", "_", "".join(c if c.isascii() and c.isalnum() else "_" for c in title)).strip("_")
    cleaned = cleaned or "spec"
    if not cleaned[0].isalpha():
        cleaned = "spec_" + cleaned
    while cleaned in MODULES or is_reserved(cleaned):
        cleaned += "_"
    return cleaned

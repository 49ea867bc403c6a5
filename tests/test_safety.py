"""Safety: user text never runs, verdicts are earned, work is bounded, files are all or nothing.

Each payload below tries to leave the comment, docstring, verbatim block or code fence its spec text
would be quoted in, and to run something that creates a marker file. None may run, and no output may
contain a payload as it was written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

import softgrad
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.rows import applicable_kernels, lower
from softgrad.derive import parse_spec
from softgrad.errors import SoftgradError
from softgrad.verify import check_gradient
from softgrad.verify.generated import check_generated

pytestmark = pytest.mark.slow  # subprocesses, compilers and browsers: CI runs them; -m 'not slow' skips

SOFTMAX = "y[i] = exp(x[i]) / sum(exp(x[k]), k)"


def payloads(marker: Path) -> list[str]:
    """Texts that would run `touch marker` (or leak a file) if quoted raw into an output."""
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f'"""+str({touch})+"""',  # leaves a Python docstring
        f"'''+str({touch})+'''",
        f"\\\n{touch}",  # a backslash-newline continuing a comment
        f"*/ __attribute__((constructor)) static void pwn(void) {{ system(\"touch {marker}\"); }} /*",
        f"??/\n*/ int pwned = system(\"touch {marker}\"); /*",  # a trigraph then a comment close
        "\\end{verbatim}\\input{/etc/passwd}\\begin{verbatim}",
        f"\\immediate\\write18{{touch {marker}}}",
        "\\catcode`\\{=12 \\csname end\\endcsname",
        "</pre><script>document.title='PWNED'</script><pre>",
        "```\n<img src=x onerror=alert(1)>\n```",
        "\x00 NUL \x07 bell \x1b]0;PWNED\x07 \x1b[31m red",
        f"\u2028{touch}\u2029 and \x85 and \x0c",
    ]


def distinctive(payload: str) -> list[str]:
    """The parts of a payload that must not appear in any output (whole lines of it)."""
    return [line for line in payload.splitlines() if len(line.strip()) > 8] or [payload]


def assert_quoted_safely(text: str, payload: str) -> None:
    for part in distinctive(payload):
        assert part not in text, f"payload leaked raw: {part[:60]!r}"
    assert "\x00" not in text and "\x1b" not in text


def test_no_payload_runs_or_leaks_through_derive_codegen_and_verify(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    for payload in payloads(marker):
        source = f"{SOFTMAX}  # " + "\n# ".join(payload.split("\n"))
        derivation = softgrad.derive(source)
        for fmt in ("text", "latex", "markdown", "html", "json"):
            assert_quoted_safely(derivation.render(fmt), payload)
        assert_quoted_safely(derivation.render("latex", standalone=True), payload)
        for language in ("numpy", "c"):
            files = emit(derivation, language)
            for text in files.values():
                assert_quoted_safely(text, payload)
            kernels = [lower(derivation, name) for name in applicable_kernels(derivation)]
            assert all(check.passed for check in check_generated(derivation, files, kernels))
        report = check_gradient(lambda x, g: g * 0, against=source)  # imports the generated reference
        assert not report.passed
    assert not marker.exists()


def test_payload_in_a_file_name_and_comment_through_the_command_line(tmp_path):
    require_tool("cc")
    marker = tmp_path / "PWNED"
    name = 'evil"""+str(__import__(\'os\').system(\'touch PWNED\'))+"""*'
    spec = tmp_path / f"{name}.sg"
    spec.write_text(f"{SOFTMAX}  # */ int x = system(\"touch {marker}\"); /* \\input{{/etc/passwd}}\n")
    for args in (["derive", "-f", str(spec), "--format", "latex", "--standalone", "-o", str(tmp_path / "d.tex")],
                 ["derive", "-f", str(spec), "--format", "markdown", "-o", str(tmp_path / "d.md")],
                 ["codegen", "-f", str(spec), "--lang", "c", "-o", str(tmp_path / "c"), "--check"],
                 ["codegen", "-f", str(spec), "--lang", "numpy", "-o", str(tmp_path / "py"), "--check"]):
        result = subprocess.run([sys.executable, "-m", "softgrad", *args], capture_output=True, text=True,
                                cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != spec]
    for path in written:
        text = path.read_text()
        assert "system(" not in text and "\\input{/etc" not in text and '"""+str' not in text, path
    assert not marker.exists()
    assert {p.name for p in (tmp_path / "py").iterdir()} == {"evil_str_import_os_system_touch_PWNED.py"}


def test_latex_with_a_payload_compiles_without_reading_other_files(tmp_path):
    pdflatex = require_tool("pdflatex")
    source = f"{SOFTMAX}  # \\end{{verbatim}}\\input{{{tmp_path / 'secret'}}}\\begin{{verbatim}}"
    (tmp_path / "secret.tex").write_text("SECRET-CONTENT")
    document = tmp_path / "d.tex"
    document.write_text(softgrad.derive(source).render("latex", standalone=True))
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-recorder", "d.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "secret.tex" not in (tmp_path / "d.fls").read_text()  # the recorder lists every file read


# ---------------------------------------------------------------- an honest verifier

HOSTILE = '''
import ctypes, os, sys, time
import numpy as np

def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

def right(x, g):
    y = _softmax(x)
    return y * (g - (g * y).sum(-1, keepdims=True))

def exits(x, g):
    sys.exit(0)

def exits_hard(x, g):
    os._exit(0)

def loops(x, g):
    while True:
        pass

def crashes(x, g):
    ctypes.string_at(0)

def mutates(x, g):
    y = _softmax(x)
    g -= (g * y).sum(-1, keepdims=True)
    g *= y
    return g

def complex_result(x, g):
    return right(x, g).astype(complex)

def lower_precision(x, g):
    return right(x, g).astype(np.float32)

def returns_text(x, g):
    return "dx"

def returns_nan(x, g):
    out = right(x, g)
    out[0, 0] = np.nan
    return out

_noise = np.random.default_rng()

def noisy(x, g):
    return right(x, g) + _noise.normal(size=x.shape) * 1e-3

def noisy_tensor(X, W, dy):
    return dy @ W + _noise.normal(size=X.shape) * 1e-3, dy.T @ X

def chatty(x, g):
    print("{not json", flush=True)
    os.write(1, b"raw bytes on fd 1\\n")
    return right(x, g)
'''

C_EXIT = """
#include <stdlib.h>
void exits(const double *x, const double *g, double *dx, size_t rows, size_t n)
{ (void)x; (void)g; (void)dx; (void)rows; (void)n; exit(0); }
"""


@pytest.fixture
def hostile(tmp_path):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    (tmp_path / "exits.c").write_text(C_EXIT)
    return tmp_path


def verify(folder: Path, *args: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", *args], capture_output=True, text=True,
                          cwd=folder, timeout=timeout, env=dict(os.environ, TMPDIR=str(folder)))


@pytest.mark.parametrize("function, fragment", [
    ("exits", "called sys.exit(0)"),
    ("exits_hard", "ended the process with exit status 0"),
    ("loops", "did not return within 1 s"),
    ("crashes", "killed by SIGSEGV"),
    ("returns_text", "is a str, not an array"),
])
def test_code_that_ends_hangs_or_crashes_is_never_a_pass(hostile, function, fragment):
    result = verify(hostile, f"hostile.py:{function}", "--against", "softmax", "--timeout", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softgrad: error:") and fragment in lines[0], lines


def test_c_exit_is_named_and_the_build_folder_removed(hostile):
    require_tool("cc")
    result = verify(hostile, "exits.c:exits", "--against", "softmax")
    assert result.returncode == 2 and "ended the process with exit status 0" in result.stderr
    assert not list(hostile.glob("softgrad-*")), "verify left a temporary folder behind"


@pytest.mark.parametrize("function, fragment", [
    ("mutates", "changed its input g in place"),
    ("complex_result", "is complex"),
    ("lower_precision", "float32 for float64 inputs"),
    ("returns_nan", "is nan at (0, 0)"),
    ("noisy", "the function is not repeatable: two calls with the same inputs returned dx["),
])
def test_wrong_results_fail_with_their_reason(hostile, function, fragment):
    result = verify(hostile, f"hostile.py:{function}", "--against", "softmax")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAIL") and fragment in result.stdout


def test_unrepeatable_code_is_named_with_several_indices_and_a_spec_file_is_an_against(hostile):
    (hostile / "linear.sg").write_text("y[b, c] = sum(W[c, d] * X[b, d], d)\n")
    result = verify(hostile, "hostile.py:noisy_tensor", "--against", "linear.sg", "--signature", "X,W,dy->dX,dW")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the function is not repeatable: two calls with the same inputs returned dX[" in result.stdout


def test_a_dotted_module_name_is_a_target(hostile):
    (hostile / "package" / "inner").mkdir(parents=True)
    (hostile / "package" / "__init__.py").write_text("")
    (hostile / "package" / "inner" / "__init__.py").write_text("")
    (hostile / "package" / "inner" / "grads.py").write_text(HOSTILE)
    result = verify(hostile, "package.inner.grads:right", "--against", "softmax")
    assert result.returncode == 0 and result.stdout.startswith("PASS"), result.stdout + result.stderr
    missing = verify(hostile, "package.inner.absent:right", "--against", "softmax")
    assert missing.returncode == 2 and "cannot import 'package.inner.absent'" in missing.stderr


def test_a_module_that_loops_on_import_is_stopped_within_seconds(hostile):
    (hostile / "spins.py").write_text("while True:\n    pass\n")
    started = time.perf_counter()
    result = verify(hostile, "spins.py:f", "--against", "softmax")
    assert result.returncode == 2 and "did not return within" in result.stderr
    assert time.perf_counter() - started < 15 + 5  # the loading budget, and the start-up around it


def test_json_stays_valid_whatever_the_function_prints(hostile):
    result = verify(hostile, "hostile.py:chatty", "--against", "softmax", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "PASS"
    assert "{not json" in result.stderr and "raw bytes on fd 1" in result.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1.5", "abc"])
def test_parameters_outside_the_domain_are_refused_before_any_code_runs(hostile, value):
    result = verify(hostile, "hostile.py:exits", "--against", "softmax-temperature", "--param", f"T={value}")
    assert result.returncode == 2 and "--param" in result.stderr and len(result.stderr.splitlines()) == 1


def test_unknown_parameter_and_negative_seed_are_refused(hostile):
    unknown = verify(hostile, "hostile.py:right", "--against", "softmax", "--param", "T=2")
    assert unknown.returncode == 2 and "no parameter 'T'" in unknown.stderr
    seed = verify(hostile, "hostile.py:right", "--against", "softmax", "--seed", "-3")
    assert seed.returncode == 2 and "--seed" in seed.stderr and len(seed.stderr.splitlines()) == 1


def test_the_api_catches_sys_exit_and_mutation_in_process():
    def exits(x, g):
        raise SystemExit(0)

    with pytest.raises(SoftgradError, match=r"sys\.exit"):
        check_gradient(exits, against="softmax")

    def mutates(x, g):
        g *= 0
        return g

    report = check_gradient(mutates, against="softmax")
    assert not report.passed and "in place" in report.text()


def test_an_implicit_zero_logit_is_judged_at_logits_of_1000():
    """softmax with an implicit zero logit: its reference once overflowed at logits of 1000 (the max shift
    does not cancel against the 1) and the check stopped. The reference now shifts by max(0, max x), so
    right code passes and code that overflows there fails: neither verdict is unearned."""
    def right(x, g):
        shift = np.maximum(x.max(-1, keepdims=True), 0)
        e = np.exp(x - shift)
        y = e / (np.exp(-shift) + e.sum(-1, keepdims=True))
        return y * (g - (g * y).sum(-1, keepdims=True))

    def naive(x, g):
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(x)
            y = e / (1 + e.sum(-1, keepdims=True))
        return y * (g - (g * y).sum(-1, keepdims=True))

    spec = "y[i] = exp(x[i]) / (1 + sum(exp(x[k]), k))"
    assert check_gradient(right, against=spec).passed
    assert not check_gradient(naive, against=spec).passed


# ---------------------------------------------------------------- bounded work, clean errors

@pytest.mark.parametrize("spec, fragment", [
    ("y[i] = x[i] / 0", "division by zero"),
    ("y[i] = log(0) * x[i]", "log(0)"),
    ("y[i] = " + "9" * 5000 + " * x[i]", "number literal longer"),
    ("y[i] = 9^9^9 * x[i]", "out of range"),
    ("y[i] = 1e400 * x[i]", "out of range"),
    ("y[i] = 1e999999 * x[i]", "out of range"),  # SymPy alone takes minutes to build it
    ("y[i] = 1e-999999 * x[i]", "out of range"),
    ("y[i] = 1e300 * 1e300 * x[i]", "out of range"),
    ("y[i] = sqrt(-1) * x[i]", "not a real number"),
    ("y[i] = (-8)^(1/3) * x[i]", "not a real number"),
    ("y[i] = _hidden * x[i]", "reserves those for generated code"),
    ("y[i] = " + "-" * 500 + "x[i]", "nested more than"),
    ("y[i] = " + "x[i]^" * 500 + "x[i]", "nested more than"),
])
def test_out_of_bounds_specs_are_refused_quickly(spec, fragment):
    started = time.perf_counter()
    with pytest.raises(SoftgradError) as raised:
        parse_spec(spec)
    assert fragment in str(raised.value)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("literal", ["0.0", "000.000e5", "5e-324", "1e308"])
def test_zero_and_the_edges_of_double_precision_are_numbers(literal):
    parse_spec(f"y[i] = {literal} * x[i] + x[i]")


def test_values_beyond_double_precision_are_left_out_not_an_internal_error():
    """exp(exp(exp(exp(x)))) at x ~ 10 is beyond any double (and mpmath's integers): those points are drawn at a
    smaller scale where doubles hold them, for one range as for several, and the summary says so."""
    for source in ("y[i] = exp(exp(exp(exp(x[i]))))", "y[b, i] = w[i] * exp(exp(exp(exp(x[b, i]))))"):
        derivation = softgrad.derive(source)
        assert all(step.checked for step in derivation.steps)
        assert "drawn at a smaller scale, where doubles overflow at their own" in derivation.check_summary, \
            derivation.check_summary


@pytest.mark.parametrize("source", ["y[i] = exp(exp(exp(exp(x[i]))))",
                                    "y[b, i] = exp(exp(exp(exp(sum(W[i, d] * x[b, d], d)))))"])
@pytest.mark.parametrize("language", ["numpy", "c"])
def test_code_for_values_beyond_double_precision_is_checked_where_doubles_hold_them(tmp_path, source, language):
    """codegen --check of exp(exp(exp(exp(x)))): at inputs of order 3 the exact values are beyond mpmath's own
    exponents (an internal error once) and beyond doubles; the kernels are checked at inputs drawn smaller,
    where the function is finite, and pass, with nothing on stderr but the checks' own lines."""
    if language == "c":
        require_tool("cc")
    spec = tmp_path / "towers.spec"
    spec.write_text(source + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "-f", str(spec), "--lang", language, "-o",
                           str(tmp_path / "out"), "--check"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("ok   ") for line in lines), done.stderr  # no warning, no FAIL
    assert (tmp_path / "out").is_dir()


def tower_vjp(x, g, drop_last_factor=False):
    """The vjp of exp(exp(exp(exp(x)))), right (or with the last chain-rule factor left out)."""
    with np.errstate(over="ignore"):
        a = np.exp(x)
        b = np.exp(a)
        c = np.exp(b)
        return g * np.exp(c) * c * b * (1 if drop_last_factor else a)


def test_code_for_values_beyond_double_precision_is_verified_where_doubles_hold_them():
    """verify against exp(exp(exp(exp(x)))): a right vjp returns inf where the exact value is beyond any double,
    which was read as a wrong gradient (exit 1 for right code). Rows whose exact values no double holds are not
    judged, a case with none left is drawn smaller, and the report says so; a wrong vjp still fails."""
    spec = "y[i] = exp(exp(exp(exp(x[i]))))"
    right = check_gradient(tower_vjp, spec, "x,g->dx")
    assert right.passed, right.text()
    assert any("drawn ÷4, where float64 holds" in line for line in right.conventions), right.conventions
    wrong = check_gradient(lambda x, g: tower_vjp(x, g, True), spec, "x,g->dx")
    assert not wrong.passed and wrong.worst is not None


def test_float32_code_is_judged_only_where_float32_holds_the_exact_values():
    """exp(10x) at x ~ 10 is e^100, a double but beyond float32 (3.4e38): float32 code returns inf there, as it
    must, which was a FAIL of right code; those rows are not judged, and the report says so."""
    def vjp(x, g):
        with np.errstate(over="ignore"):
            return g * 10 * np.exp(10 * x)

    report = check_gradient(vjp, "y[i] = exp(10 * x[i])", "x,g->dx", dtype="float32")
    assert report.passed, report.text()
    assert any("beyond float32's range" in line for line in report.conventions), report.conventions


def test_float32_code_of_an_ill_conditioned_function_is_allowed_what_float32_allows():
    """exp(exp(exp(exp(x)))) in float32 near its largest values: each exp multiplies the relative error of its
    argument by the argument (up to 88), so right float32 code errs by 2e-5 relative, beyond the float32 floor
    against the exact result — as softgrad's own derived kernel does in float32. Code may err by 4× what that
    kernel errs, so right code passes and code with a factor left out still fails."""
    spec = "y[i] = exp(exp(exp(exp(x[i]))))"
    right = check_gradient(tower_vjp, spec, "x,g->dx", dtype="float32")
    assert right.passed, right.text()
    wrong = check_gradient(lambda x, g: tower_vjp(x, g, True), spec, "x,g->dx", dtype="float32")
    assert not wrong.passed


def test_code_over_named_arrays_beyond_double_precision_is_verified_where_doubles_hold_them(tmp_path):
    """The same for named arrays: the spec's reference not finite at inputs of order 1 was a FAIL of right code
    ("the spec's own reference is not finite"), and inf twice read as not repeatable. The inputs are drawn
    smaller where doubles hold the exact values; a case where they never do is said, not failed."""
    def gradients(W, x, dy):
        with np.errstate(over="ignore", invalid="ignore"):
            z = x @ W.T
            a = np.exp(z)
            b = np.exp(a)
            c = np.exp(b)
            dz = dy * np.exp(c) * c * b * a
        return dz.T @ x, dz @ W

    spec = tmp_path / "towers.spec"
    spec.write_text("y[b, i] = exp(exp(exp(exp(sum(W[i, d] * x[b, d], d)))))\n", encoding="utf-8")
    report = check_gradient(gradients, str(spec), "W,x,dy->dW,dx")
    assert report.passed, report.text()
    assert "inputs of order 1: drawn at order 0.25, where float64 holds the spec's exact values" in \
        report.conventions and report.cases_checked == ["inputs of order 1", "inputs of order 10"]
    assert [name for name, ok, _ in report.checks if ok] == ["repeatable", "linear in dy", "0 where dy = 0"]


def test_large_constants_that_fit_derive_correctly():
    """exp(1000) overflows double precision but is a fine constant: the checks widen to mpmath."""
    derivation = softgrad.derive("y[i] = exp(1000) * x[i]")
    assert all(step.checked for step in derivation.steps)
    assert "exp(1000)" in str(derivation.results["jacobian"].rhs)


def test_comments_never_hold_code():
    """A ';' or a Unicode line separator inside a comment does not start a new statement."""
    spec = parse_spec("y[i] = exp(x[i])  # note; z[i] = 1\u2028w[i] = 2\x0cv[i] = 3")
    assert [d.name for d in spec.definitions] == ["y"]
    assert spec.statements == ["y[i] = exp(x[i])"]


def test_derive_has_a_time_limit():
    result = subprocess.run([sys.executable, "-m", "softgrad", "derive", "softmax-temperature", "--time-limit", "0.05"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "softgrad: error: deriving y did not finish within 0.05 s (raise the limit with --time-limit)"]


def test_names_the_spec_language_cannot_take_are_clear():
    for spec in ("y[i] = g[i] * dy[i] * grad_out[i] * x[i]", "L = sum(l[k] * ell[k] * loss[k] * x[k], k)"):
        derivation = softgrad.derive(spec)  # the engine's own names step aside
        assert derivation.steps


# ---------------------------------------------------------------- files: all or nothing

def codegen(folder: Path, *args: str, umask: int | None = None):
    def set_umask():
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-m", "softgrad", "codegen", *args], capture_output=True, text=True,
                          cwd=folder, timeout=300, preexec_fn=set_umask)


def test_codegen_refuses_to_overwrite_a_file_it_did_not_generate(tmp_path):
    (tmp_path / "softmax.c").write_text("/* mine */\n")
    refused = codegen(tmp_path, "softmax", "--lang", "c", "-o", ".")
    assert refused.returncode == 2 and "refusing to overwrite" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["softmax.c"]
    assert (tmp_path / "softmax.c").read_text() == "/* mine */\n"
    forced = codegen(tmp_path, "softmax", "--lang", "c", "-o", ".", "--force")
    assert forced.returncode == 0 and "Generated by softgrad" in (tmp_path / "softmax.c").read_text()
    again = codegen(tmp_path, "softmax", "--lang", "c", "-o", ".")  # its own files it replaces
    assert again.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["softmax.c", "softmax.h", "softmax_ctypes.py"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_generated_files_follow_the_umask(tmp_path, umask, mode):
    result = codegen(tmp_path, "softmax", "--lang", "numpy", "-o", "out", umask=umask)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "softmax.py").stat().st_mode & 0o777 == mode


def test_a_replaced_file_keeps_its_mode(tmp_path):
    """derive -o and codegen -o replace a file whole, and the replacement keeps the old file's mode."""
    document = tmp_path / "softmax.txt"
    document.write_text("old\n")
    document.chmod(0o640)
    result = subprocess.run([sys.executable, "-m", "softgrad", "derive", "softmax", "-o", str(document)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Jacobian" in document.read_text()
    assert document.stat().st_mode & 0o777 == 0o640
    assert codegen(tmp_path, "softmax", "--lang", "c", "-o", "out").returncode == 0
    (tmp_path / "out" / "softmax.h").chmod(0o600)
    assert codegen(tmp_path, "softmax", "--lang", "c", "-o", "out").returncode == 0
    assert (tmp_path / "out" / "softmax.h").stat().st_mode & 0o777 == 0o600


def test_a_spec_file_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "bom.sg").write_bytes("\ufeffy[i] = exp(x[i]) / sum(exp(x[k]), k)\n".encode())
    result = subprocess.run([sys.executable, "-m", "softgrad", "derive", "-f", "bom.sg"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "proved" in result.stdout


def test_output_to_standard_output(tmp_path):
    numpy_module = codegen(tmp_path, "softmax", "--lang", "numpy", "-o", "-")
    assert numpy_module.returncode == 0 and numpy_module.stdout.startswith('"""Generated by softgrad')
    assert list(tmp_path.iterdir()) == []
    three_files = codegen(tmp_path, "softmax", "--lang", "c", "-o", "-")
    assert three_files.returncode == 2 and "give a folder" in three_files.stderr


SIGNAL_MIDWAY = """
import os, signal, sys
sys.argv = ["softgrad", "codegen", "softmax", "--lang", "c", "-o", "out"]
rename = os.replace

def rename_then_terminate(source, destination):
    rename(source, destination)
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the files are being moved in

os.replace = rename_then_terminate
from softgrad.cli import entry
entry()
"""


SIGNAL_WHILE_STAGING = """
import os, signal, sys
sys.argv = ["softgrad", "codegen", "softmax", "--lang", "c", "-o", "out"]
import softgrad.files as files
stage = files._stage

def stage_then_terminate(folder, name, text, mode=None):
    staged = stage(folder, name, text, mode)
    os.kill(os.getpid(), signal.SIGTERM)  # after the first file is staged, before the others
    return staged

files._stage = stage_then_terminate
from softgrad.cli import entry
entry()
"""


@pytest.mark.parametrize("script, left", [
    (SIGNAL_MIDWAY, ["softmax.c", "softmax.h", "softmax_ctypes.py"]),  # held until every file is in
    (SIGNAL_WHILE_STAGING, []),  # nothing moved in yet: nothing left, not even a temporary file
], ids=["while moving in", "while staging"])
def test_a_signal_leaves_all_files_or_none_and_no_temporary_file(tmp_path, script, left):
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == left


# ---------------------------------------------------------------- masked rows

#: What each catalog kernel returns for a row whose logits are all −inf (docs/codegen.md says the same):
#: the mathematical limit where one exists, NaN where the function is undefined there (as PyTorch).
FULLY_MASKED = {
    ("softmax", "forward"): "nan", ("softmax", "vjp"): "nan", ("softmax", "jacobian"): "nan",
    ("log-softmax", "forward"): "nan", ("log-softmax", "vjp"): "nan", ("log-softmax", "jacobian"): "nan",
    ("softmax-temperature", "forward"): "nan", ("softmax-temperature", "vjp"): "nan",
    ("softmax-temperature", "jacobian"): "nan",
    ("logsumexp", "forward"): "-inf", ("logsumexp", "loss_and_grad"): "-inf, nan",
    ("cross-entropy", "forward"): "nan", ("cross-entropy", "loss_and_grad"): "nan, nan",
    ("cross-entropy-onehot", "forward"): "nan", ("cross-entropy-onehot", "loss_and_grad"): "nan, nan",
    ("kl-divergence", "forward"): "nan", ("kl-divergence", "loss_and_grad"): "nan, nan",
    ("sigmoid", "forward"): "0", ("sigmoid", "vjp"): "0", ("sigmoid", "jacobian"): "0",
    ("binary-cross-entropy", "forward"): "inf", ("binary-cross-entropy", "loss_and_grad"): "inf, -t",
}


def _summary(value: np.ndarray, targets: np.ndarray) -> str:
    value = np.asarray(value, dtype=np.float64).ravel()
    for name, test in (("nan", np.isnan), ("-inf", lambda v: v == -np.inf), ("inf", lambda v: v == np.inf),
                       ("0", lambda v: v == 0), ("-t", lambda v: np.isclose(v, -targets.ravel()[: v.size]))):
        if test(value).all():
            return name
    return repr(value)


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_fully_masked_rows_give_the_documented_values(language, tmp_path):
    if language == "c":
        require_tool("cc")
    from softgrad.codegen.build import import_path, load_c
    from softgrad.codegen.lower.rows import identifier
    from softgrad.derive import CATALOG

    for name in CATALOG:
        derivation = softgrad.derive(name)
        files = emit(derivation, language)
        folder = tmp_path / f"{name}-{language}"
        folder.mkdir()
        if language == "c":
            module = load_c(files, folder, identifier(derivation))
        else:
            ((file_name, text),) = files.items()
            (folder / file_name).write_text(text)
            module = import_path(folder / file_name)
        masked = np.full((2, 5), -np.inf)
        targets = np.full((2, 5), 0.2)
        for kernel in applicable_kernels(derivation):
            if (name, kernel) not in FULLY_MASKED:
                continue
            arguments = [masked] + [targets] * (len(derivation.spec.inputs) - 1)
            if kernel == "vjp":
                arguments.append(np.ones((2, 5)))
            arguments += [1.5] * len(derivation.spec.parameters)
            result = getattr(module, f"{identifier(derivation)}_{kernel}")(*arguments)
            results = result if isinstance(result, tuple) else (result,)
            got = ", ".join(_summary(r, targets) for r in results)
            assert got == FULLY_MASKED[name, kernel], (name, kernel, language)


def test_fully_masked_rows_agree_with_pytorch():
    from conftest import require_module

    torch = require_module("torch")
    masked = torch.full((1, 4), -float("inf"), dtype=torch.float64)
    assert torch.softmax(masked, -1).isnan().all() and torch.log_softmax(masked, -1).isnan().all()
    assert torch.logsumexp(masked, -1).item() == -float("inf")


def test_check_builds_with_the_compiler_named_by_cc(tmp_path):
    """$CC chooses the compiler of --check and verify; clang builds the generated C warning-free too."""
    require_tool("clang")
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "cross-entropy", "--lang", "c", "-o", "out",
                             "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, CC="clang"))
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "softmax", "--lang", "c", "-o", "out2",
                              "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, CC="no-such-compiler"))
    assert missing.returncode == 2 and "$CC" in missing.stderr and not (tmp_path / "out2").exists()


def test_check_samples_inputs_inside_the_domain(tmp_path):
    """sqrt(x) is checked at x > 0 (a reference outside the domain would be NaN, not a verdict)."""
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "y[i] = sqrt(x[i]) / sum(sqrt(x[k]), k)",
                             "--lang", "numpy", "-o", "out", "--check"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


def test_a_formula_with_an_imaginary_part_or_nan_never_passes():
    from softgrad.derive import derive_spec, load_spec
    from softgrad.verify.formula import verify_formula

    derivation = derive_spec(load_spec("softmax"))
    right = verify_formula("y[i] * (delta(i, j) - y[j])", derivation)
    assert right.passed and right.formula == "(delta(i, j) - y[j])*y[i]"
    imaginary = verify_formula("y[i] * (delta(i, j) - y[j]) + sqrt(y[i] - 2) * 0.5 - sqrt(y[i] - 2) / 2 "
                               "+ log(y[j] - 1) - log(y[j] - 1) + sqrt(y[j] - 3)", derivation)
    assert not imaginary.passed


def test_projection_mode_keeps_every_input_case():
    """Above n = 64 (random projections) the extreme logits stay: code that overflows there fails."""
    def naive(x, g):
        e = np.exp(x)
        y = e / e.sum(-1, keepdims=True)
        return y * (g - (g * y).sum(-1, keepdims=True))

    with np.errstate(over="ignore", invalid="ignore"):
        report = check_gradient(naive, against="softmax", n=100)
    assert not report.passed and "1000²" in report.text()


def test_one_hot_targets_at_large_n_need_no_n_by_n_memory():
    def gradient(z, t):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True) * t.sum(-1, keepdims=True) - t

    assert check_gradient(gradient, against="cross-entropy", n=100_000, batch=2).passed


def test_the_40_digit_reference_keeps_a_real_infinity_real():
    """Binary cross-entropy at a logit of 800 with target 0 is +inf even at 40 digits (1 − σ(800) rounds to 0):
    the reference says +inf — beyond every dtype, a row not judged — not a NaN (what complex arithmetic on an
    infinite log made of it), and a root of a negative input stays NaN (no real value)."""
    from softgrad.verify.reference import exact_outputs

    loss = softgrad.derive("p[i] = sigmoid(x[i])\nL = -sum(t[k]*log(p[k]) + (1-t[k])*log(1-p[k]), k)")
    values = exact_outputs(loss, "loss_and_grad", {"x": np.array([[0.5, 800.0, -2.0]]),
                                                    "t": np.array([[1.0, 0.0, 0.0]])}, {})
    assert values["L"][0] == np.inf and np.all(np.isfinite(values["dx"]))
    root = exact_outputs(softgrad.derive("y[i] = sqrt(x[i])"), "forward", {"x": np.array([[-1.0, 4.0]])}, {})
    assert np.isnan(root["y"][0, 0]) and root["y"][0, 1] == 2.0

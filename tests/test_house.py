"""The house in order: no global state changed, Ctrl-C's status, every input case in every mode, facts carried."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mpmath
import numpy as np
import pytest

import softgrad
from softgrad.codegen.backends.c import vector_math
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.rows import KERNEL_KINDS, applicable_kernels, lower
from softgrad.verify import check_gradient


def test_no_global_mpmath_precision_is_changed():
    before = (mpmath.mp.prec, mpmath.mp.dps)
    vector_math.polynomial.cache_clear()
    vector_math._helper_values.cache_clear()
    emit(softgrad.derive("y[i] = exp(1000) * x[i] / sum(exp(x[k]), k)"), "c", dtype="float32")
    check_gradient(lambda x, g: g * 0, against="softmax")
    assert (mpmath.mp.prec, mpmath.mp.dps) == before


@pytest.mark.slow
def test_ctrl_c_while_loading_user_code_exits_130(tmp_path):
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(60)\n\ndef f(x, g):\n    return g\n")
    process = subprocess.Popen([sys.executable, "-m", "softgrad", "verify", "slow.py:f", "--against", "softmax"],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(4)  # softgrad has started the child that imports slow.py
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["softgrad: interrupted"]


def test_projection_mode_checks_every_input_case_full_mode_checks():
    def gradient(z, t):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True) * t.sum(-1, keepdims=True) - t

    cases = {}
    for mode in ("full", "projections"):
        seen: list[str] = []
        report = check_gradient(gradient, against="cross-entropy", n=80, mode=mode,
                                progress=lambda done, total, case, seen=seen: seen.append(case))
        assert report.passed, report.text()
        cases[mode] = seen
    assert cases["full"] == cases["projections"]
    assert any("near-tied logits" in case for case in cases["projections"])
    assert any("1000²" in case for case in cases["projections"])


def test_results_and_kernels_carry_their_roles():
    derivation = softgrad.derive("cross-entropy")
    gradient = derivation.results["gradient"]
    assert [str(i) for i in gradient.indices] == [str(gradient.lhs.var.indices[0])]
    assert set(gradient.inputs) >= {"t"}
    softmax = softgrad.derive("softmax")
    assert softmax.results["vjp"].upstream == "g" and len(softmax.results["jacobian"].indices) == 2
    assert [o.role for o in lower(derivation, "loss_and_grad").outputs] == ["value", "gradient"]
    assert set(applicable_kernels(softmax)) <= set(KERNEL_KINDS)


def test_generated_files_carry_their_options():
    files = emit(softgrad.derive("softmax"), "c", openmp=True, dtype="float32")
    assert (files.language, files.module, files.dtype, files.openmp) == ("c", "softmax", "float32", True)


def test_each_benchmark_rewrites_only_its_own_section_of_the_results(tmp_path):
    """bench/results.md is shared by the benchmark scripts: one script's run must keep the others' sections,
    names with spaces included ("long rows" was once dropped by every other script's run)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from sections import replace_section

    results = tmp_path / "results.md"
    for name, text in [("kernels", "K1\n"), ("long rows", "L1\n"), ("compilers", "C1\n"), ("derive", "D1\n")]:
        replace_section(results, name, text)
    replace_section(results, "long rows", "L2\n")
    replace_section(results, "compilers", "C2\n")
    written = results.read_text()
    assert all(text in written for text in ("K1", "L2", "C2", "D1")) and "L1" not in written and "C1" not in written
    assert written.count("<!-- begin long rows -->") == 1

"""Generated C that runs a block of rows at a time (codegen.lower.blocking): which functions are blocked, over which
index, and that every blocking gives the results of the whole arrays — one row per block, a last block that is
not full, one block for all."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import require_tool

from softgrad.codegen.backends.c.arrays import lower_arrays_c
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.blocking import row_blocking
from softgrad.derive import derive_spec, parse_spec

ATTENTION = """S[i, j] = sum(Q[i, e] * K[j, e], e) / sqrt(size(e))
P[i, j] = exp(S[i, j]) / sum(exp(S[i, k]), k)
O[i, f] = sum(P[i, j] * V[j, f], j)"""
HEADS = """S[b, h, i, j] = sum(Q[b, h, i, e] * K[b, h, j, e], e) / sqrt(size(e))
P[b, h, i, j] = exp(S[b, h, i, j]) / sum(exp(S[b, h, i, k]), k)
O[b, h, i, f] = sum(P[b, h, i, j] * V[b, h, j, f], j)"""
CAUSAL = """S[i, j] = sum(Q[i, e] * K[j, e], e) / sqrt(size(e))
P[i, j] = [j <= i] * exp(S[i, j]) / sum([k <= i] * exp(S[i, k]), k)
O[i, f] = sum(P[i, j] * V[j, f], j)"""
# an additive bias, a loss over the output and a term without the rows (initialised before the blocks)
BIAS_AND_DECAY = """S[i, j] = sum(Q[i, e] * K[j, e], e) + B[i, j]
P[i, j] = exp(S[i, j]) / sum(exp(S[i, k]), k)
O[i, f] = sum(P[i, j] * V[j, f], j)
L = sum(O[i, f]^2, i, f) + 0.5 * sum(V[j, f]^2, j, f)"""
REGRESSION = """z[b, c] = sum(W[c, d] * X[b, d], d) + bias[c]
P[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)
L = -sum(log(P[b, label[b]]), b) / size(b) + 0.5 * reg * sum(W[e, f]^2, e, f)"""
LAYER_NORM = """m[b] = sum(x[b, k], k) / size(k)
v[b] = sum((x[b, k] - m[b])**2, k) / size(k)
xhat[b, k] = (x[b, k] - m[b]) / sqrt(v[b] + 1e-5)
y[b, k] = gamma[k] * xhat[b, k] + beta[k]"""


def derived(source):
    return derive_spec(parse_spec(source, name="blocked"), time_limit=None)


def test_attention_runs_a_block_of_query_rows_at_a_time_and_sums_dK_dV_over_the_blocks():
    derivation = derived(ATTENTION)
    module = lower_arrays_c(derivation, "float32")
    forward_work = {array.name: array.extents for array in module.forward.work}
    assert forward_work == {"S": ("_rows", "_n_j"), "P": ("_rows", "_n_j")}  # never n_i × n_j
    gradients_work = {array.name: array.extents for array in module.gradients_body.work}
    assert all(extents[0] == "_rows" for extents in gradients_work.values()) and set(gradients_work) == {
        "S", "P", "O", "dP", "dS"}
    text = "\n".join(line for statement in module.gradients_body.statements for line in statement.lines)
    assert "memset(dK, 0" in text and "memset(dV, 0" in text  # sums over the rows, block after block
    assert text.count("SOFTGRAD_GEMM(") == 6  # every contraction still one gemm per block


def test_heads_and_batch_are_taken_one_value_at_a_time_and_queries_a_block_at_a_time():
    derivation = derived(HEADS)
    spec, tensor = derivation.spec, derivation.tensor
    work = [d.name for d in spec.definitions if d is not spec.output]
    plan = row_blocking(spec.definitions, tensor.axes, spec.sizes, work)
    assert plan is not None and (plan.fixed, plan.blocked) == (("b", "h"), "i") and plan.local == {"S", "P"}


@pytest.mark.parametrize("source", [
    # a softmax over the rows (a column softmax): a row needs every other row
    "S[i, j] = sum(Q[i, e] * K[j, e], e)\nP[i, j] = exp(S[i, j]) / sum(exp(S[k, j]), k)\n"
    "O[i, f] = sum(P[i, j] * V[j, f], j)",
    # a row read at the next row
    "S[i, j] = sum(Q[i, e] * K[j, e], e)\nT[i, j] = S[i, j] * S[i + 1, j]\ny = sum(T[i, j], i, j)",
    # a sum over the rows read back by every row
    "S[i, j] = sum(Q[i, e] * K[j, e], e)\nc[j] = sum(S[i, j], i)\nT[i, j] = S[i, j] * c[j]\ny = sum(T[i, j]^2, i, j)",
])
def test_a_function_that_needs_every_row_at_once_is_not_blocked(source):
    derivation = derived(source)
    spec, tensor = derivation.spec, derivation.tensor
    work = [d.name for d in spec.definitions if d is not spec.output]
    plan = row_blocking(spec.definitions, tensor.axes, spec.sizes, work)
    assert plan is None or "S" not in plan.local


@pytest.mark.parametrize("source", [ATTENTION, HEADS, CAUSAL, BIAS_AND_DECAY, REGRESSION, LAYER_NORM,
                                    "S[i, j] = sum(Q[i, e] * K[j, e], e)\nc[j] = sum(S[i, j], i)\n"
                                    "T[i, j] = S[i, j] * c[j]\ny = sum(T[i, j]^2, i, j)",
                                    ATTENTION.rpartition("\n")[0]],  # the output a softmax, written a block at a time
                         ids=["attention", "heads", "causal", "bias-and-decay", "regression", "layer-norm", "column",
                              "probabilities"])
def test_every_block_size_gives_the_whole_arrays_results(source, tmp_path):
    """Compiled with one row per block, with blocks of a few rows (the last one short) and with one block
    for all, the C's and the NumPy module's forward and gradients (and their backward from what forward_saving
    kept) equal the NumPy module's with whole arrays (float64) — and both are blocked at all."""
    from softgrad.codegen.build import import_path, load_c
    from softgrad.codegen.lower.plan import functions
    from softgrad.verify.generated import call_module, module_backward, module_gradients, sample_array_inputs

    require_tool("cc")
    derivation = derived(source)
    files = emit(derivation, "c")
    ((file_name, text),) = emit(derivation, "numpy").items()
    (tmp_path / file_name).write_text(text)
    whole = import_path(tmp_path / file_name)
    whole._BLOCK_BYTES = whole._CACHE_BYTES = 1 << 40
    # the blocked range longer than the others, so that even blocks as long as the sums they add into (dW of
    # regression: C·D entries, so C·D / (2C) rows) leave several blocks and a short last one
    plan = functions(derivation)
    blocked_range = (plan.gradients_block or plan.forward_block or SimpleNamespace(blocked=None)).blocked
    sizes = {r: 13 if r == blocked_range else 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, parameters = sample_array_inputs(derivation, sizes, seed=3, scale=2.0)
    expected_forward = call_module(whole, derivation, arrays, parameters, "forward")
    expected = module_gradients(whole, derivation, arrays, parameters)
    blocked = "_r0 += _rows" in files[f"{files.module}.c"]
    assert blocked == ("for _r0 in range(" in text)  # the C and the NumPy module block the same functions
    for block_bytes in (1, 300, 1 << 30):
        kernels = load_c(files, tmp_path, extra_flags=[f"-DSOFTGRAD_BLOCK_BYTES={block_bytes}",
                                                       f"-DSOFTGRAD_CACHE_BYTES={block_bytes}"],
                         library_name=f"lib{block_bytes}.so")
        numpy_module = import_path(tmp_path / file_name)
        numpy_module._BLOCK_BYTES = numpy_module._CACHE_BYTES = block_bytes
        for module, path in ((kernels, module_gradients), (kernels, module_backward), (numpy_module, module_gradients),
                             (numpy_module, module_backward)):
            forward = call_module(module, derivation, arrays, parameters, "forward")
            np.testing.assert_allclose(forward, expected_forward, rtol=1e-12,
                                       atol=1e-13 * np.abs(expected_forward).max())
            for name, gradient in path(module, derivation, arrays, parameters).items():
                scale = np.abs(expected[name]).max()
                np.testing.assert_allclose(gradient, expected[name], rtol=1e-11, atol=1e-12 * scale,
                                           err_msg=f"{name}, {block_bytes} bytes, {path.__name__}")
    assert blocked or "c[j] = sum" in source  # the one function that must run as written


def test_a_block_holds_as_many_entries_as_the_sums_it_adds_into(tmp_path):
    """Softmax regression adds every block's dZᵀX into dW (C·D entries): blocks of a few rows would re-read
    and re-write all of dW once per block (4.5× slower than whole arrays at 32,000 classes), so a block holds at
    least C·D + C entries of its work arrays (2C per row) however small the byte budget — while attention, whose
    sums dK, dV are as small as a few rows of S and P, still runs a few rows at a time."""
    from softgrad.codegen.build import import_path

    def steps(source: str, sizes: dict[str, int]) -> list[int]:
        derivation = derived(source)
        ((file_name, text),) = emit(derivation, "numpy").items()
        (tmp_path / file_name).write_text(text)
        module = import_path(tmp_path / file_name)
        module._BLOCK_BYTES = module._CACHE_BYTES = 1  # one row per block, were it not for the sums
        taken: list[int] = []

        def recording_range(*arguments: int) -> range:
            taken.append(arguments[2] if len(arguments) == 3 else 1)
            return range(*arguments)

        module.range = recording_range  # the module's loop over blocks: range(0, n, _rows)
        from softgrad.verify.generated import module_gradients, sample_array_inputs

        arrays, parameters = sample_array_inputs(derivation, sizes, seed=1)
        module_gradients(module, derivation, arrays, parameters)
        return taken

    regression = steps(REGRESSION, {"b": 40, "c": 30, "d": 20})
    least = -(-(30 * 20 + 30) // (2 * 30))  # 11 rows: C·D + C entries over 2C per row
    assert regression == [-(-40 // -(-40 // least))]  # then blocks of one size: 4 blocks of 10 rows
    attention = steps(ATTENTION, {"i": 40, "j": 40, "e": 4, "f": 4})
    assert attention and max(attention) < 40  # dK, dV (j·e + j·f entries) are a few rows of S, P, dP, dS


def test_blocks_that_multiply_matrices_are_tall_and_others_stay_in_cache():
    """The NumPy module sizes a block by _BLOCK_BYTES where a statement in it multiplies two matrices (BLAS wants
    tall blocks) and by _CACHE_BYTES where none does (layer norm's passes: fresh 16 MiB temporaries cost more
    than the passes themselves)."""
    budgets = {}
    for name in ("attention", "layer-norm-affine", "two-layer"):
        examples = Path(__file__).parent.parent / "docs" / "examples"
        ((_, text),) = emit(derive_spec(parse_spec((examples / f"{name}.spec").read_text(), name=name)),
                            "numpy").items()
        budgets[name] = set(re.findall(r"_rows = max\(1, min\(_n_\w+, max\((_\w+_BYTES) //", text))
    assert budgets == {"attention": {"_BLOCK_BYTES"}, "layer-norm-affine": {"_CACHE_BYTES"},
                       "two-layer": {"_BLOCK_BYTES"}}
    for name, budget in budgets.items():  # the C the same: SOFTGRAD_BLOCK_BYTES where gemm reads the block
        files = emit(derive_spec(parse_spec((examples / f"{name}.spec").read_text(), name=name)), "c")
        sized = set(re.findall(r"_rows = \(size_t\)(SOFTGRAD_\w+_BYTES) /", files[f"{files.module}.c"]))
        assert sized == {f"SOFTGRAD{next(iter(budget))}"}, (name, sized)


#: the regression's loss summed over the rows, not their mean (which has no value without rows: refused), and
#: without decay, so that dW is a sum over the rows from 0
SUMMED_REGRESSION = REGRESSION.rpartition(" + 0.5")[0].replace(" / size(b)", "")


@pytest.mark.parametrize("source", [ATTENTION, SUMMED_REGRESSION])
def test_a_sum_over_rows_the_first_block_writes_is_zero_without_rows(source, tmp_path):
    """dK, dV (attention) and dW (regression) are written by the first block's gemm (C: beta 0, no zeros written
    first and read back; NumPy: matmul into the array, no product made and added); with no rows at all, no block
    runs, and they are zeros, not what the memory held."""
    from softgrad.codegen.build import import_path, load_c

    require_tool("cc")
    derivation = derived(source)
    files = emit(derivation, "c")
    text = files[f"{files.module}.c"]
    assert "(_r0 == 0 ? 0 : 1)" in text and re.search(r"if \(_n_\w+ == 0\) memset\(d", text)
    ((file_name, numpy_text),) = emit(derivation, "numpy").items()
    assert "_add_product(dK, _r0 == 0, " in numpy_text if source == ATTENTION else \
        "_add_product(dW, _r0 == 0, 1, _t1.T, X[_r0:_r1])" in numpy_text
    assert "np.clip(" not in numpy_text  # P[b − _r0, label[b]] in a block's rows is read directly, never clipped
    (tmp_path / file_name).write_text(numpy_text)
    for kernels in (load_c(files, tmp_path), import_path(tmp_path / file_name)):
        _zero_without_rows(kernels, derivation, source)


def _zero_without_rows(kernels, derivation, source):
    from softgrad.verify.generated import module_gradients, sample_array_inputs

    blocked = "i" if source == ATTENTION else "b"
    sizes = {r: 0 if r == blocked else 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, parameters = sample_array_inputs(derivation, sizes, seed=1)
    for _ in range(3):  # memory a previous call of the same sizes filled
        sizes_with_rows = {**sizes, blocked: 5}
        with_rows, _ = sample_array_inputs(derivation, sizes_with_rows, seed=2)
        module_gradients(kernels, derivation, with_rows, parameters)
        gradients = module_gradients(kernels, derivation, arrays, parameters)
        for name in ("K", "V") if source == ATTENTION else ("W",):
            assert gradients[name].size and np.all(gradients[name] == 0), name


def test_the_statements_at_a_row_of_a_block_run_in_one_pass_and_the_sums_over_rows_after():
    """Layer norm: m, v, xhat (and dx) are one loop over a block's rows, each row's work done by every statement
    while the row is in L1; dgamma and dbeta, sums over the rows, are passes of their own after it; a block that
    gemm reads (attention) keeps a loop per statement."""
    examples = Path(__file__).parent.parent / "docs" / "examples"
    row_loop = re.compile(r"^( +)for \(size_t (_ix_\w+) = _r0; \2 < _r1; \+\+\2\) \{$", re.M)
    for name, fused in (("layer-norm-affine", True), ("attention", False)):
        files = emit(derive_spec(parse_spec((examples / f"{name}.spec").read_text(), name=name)), "c")
        text = files[f"{files.module}.c"]
        gradients = text[text.index(f"int {files.module}_gradients("):text.index(f"int {files.module}_forward_saving(")]
        if fused:
            assert len(row_loop.findall(gradients)) == 3, gradients  # m … dx in one; dgamma, dbeta one each
            first = row_loop.search(gradients)
            body = gradients[first.end():gradients.index(f"\n{first.group(1)}}}\n", first.end())]
            assert all(f"// {array}" in body for array in ("m[b]", "v[b]", "xhat[b, k]", "dx[b, k]"))
            assert "// dgamma" not in body and "// dbeta" not in body
        else:
            assert "SOFTGRAD_GEMM(" in gradients and len(row_loop.findall(gradients)) != 1


def test_a_costly_part_invariant_along_the_innermost_loop_is_computed_once_outside_it():
    """Layer norm: 1/√(v[b] + ε) and −Σ/n are computed once per row, outside the loops over k, which multiply
    (a division per entry costs as much as the memory traffic) — in every function, the results unchanged."""
    examples = Path(__file__).parent.parent / "docs" / "examples"
    files = emit(derive_spec(parse_spec((examples / "layer-norm-affine.spec").read_text(), name="ln")), "c")
    text = files["ln.c"]
    innermost = re.findall(r"#pragma omp simd[^\n]*\n\s*for \(size_t _ix_k2? = 0;[^\n]*\n((?:[^\n]*\n)*?)\s*\}\n", text)
    assert len(innermost) > 10
    for body in innermost:
        assert "sqrt(" not in body and "/" not in body, body
    assert re.search(r"softgrad_real _h\d+ = \(1/sqrt\(v\[_ix_b\] \+ [\d.e-]+\)\);", text)

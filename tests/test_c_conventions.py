"""verify of C as real projects write it (issue #30): pointers in any order with their roles declared in the
signature (`out,mean[b,t] <- inp,weight; dinp+= <- dout,inp,mean`), `+=` gradients, int or size_t sizes
matched by name, float or double from the prototype, guard regions around every array. Correct code
passes; each bug is caught with the array and the offset or index named; a crash is exit 2, never a pass."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool

from softgrad.errors import SoftgradError
from softgrad.verify.c_conventions import parse_c_signature, prototype

LAYER_NORM_SPEC = """\
# layer normalisation over the channels c of each position t of each sequence b
m[b, t] = sum(inp[b, t, c], c) / size(c)
v[b, t] = sum((inp[b, t, c] - m[b, t])**2, c) / size(c)
out[b, t, c] = weight[c] * (inp[b, t, c] - m[b, t]) / sqrt(v[b, t] + 1e-5) + bias[c]
"""

# The layout of GPT-2 training code in C: outputs first, (B, T, C) flattened, gradients accumulated.
LAYER_NORM_C = r"""
#include <math.h>

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *row = inp + (b * T + t) * C;
            float sum = 0.0f;
            for (int c = 0; c < C; c++) sum += row[c];
            float m = sum / C;
            float spread = 0.0f;
            for (int c = 0; c < C; c++) spread += (row[c] - m) * (row[c] - m);
            float s = 1.0f / sqrtf(spread / C + 1e-5f);
            float *out_row = out + (b * T + t) * C;
            for (int c = 0; c < C; c++) out_row[c] = (row[c] - m) * s * weight[c] + bias[c];
            mean[b * T + t] = m;
            rstd[b * T + t] = s;
        }
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const float *g = dout + (b * T + t) * C;
            const float *row = inp + (b * T + t) * C;
            float *dx = dinp + (b * T + t) * C;
            float m = mean[b * T + t], s = rstd[b * T + t];
            float g_mean = 0.0f, g_xhat_mean = 0.0f;
            for (int c = 0; c < C; c++) {
                float xhat = (row[c] - m) * s, gx = weight[c] * g[c];
                g_mean += gx;
                g_xhat_mean += gx * xhat;
            }
            g_mean /= C;
            g_xhat_mean /= C;
            for (int c = 0; c < C; c++) {
                float xhat = (row[c] - m) * s, gx = weight[c] * g[c];
                dbias[c] += g[c];
                dweight[c] += xhat * g[c];
                dx[c] += (gx - g_mean - xhat * g_xhat_mean) * s;
            }
        }
    }
}
"""
PAIR = "out,mean[b,t],rstd[b,t] <- inp,weight,bias; dinp+=,dweight+=,dbias+= <- dout,inp,weight,mean,rstd"
SIZES = "B=2,T=3,C=8"

# One bug each, as a port of the code above might have it.
MUTANTS = {
    "writes past the end": ("mean[b * T + t] = m;", "mean[b * T + t + 1] = m;"),
    "reads past the end": ("for (int c = 0; c < C; c++) sum += row[c];", "for (int c = 0; c <= C; c++) sum += row[c];"),
    "overwrites a += gradient": ("dx[c] += (gx", "dx[c] = (gx"),
    "reads the wrong row": ("const float *row = inp + (b * T + t) * C;\n            float *dx",
                            "const float *row = inp + (t * B + b) * C;\n            float *dx"),
    "changes its input": ("dbias[c] += g[c];", "dbias[c] += g[c]; ((float *)inp)[0] = 0.0f;"),
}

SOFTMAX_LOSS_SPEC = """\
z[b, c] = sum(W[c, d] * X[b, d], d)
P[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)
L = -sum(log(P[b, y[b]]), b) / size(b) + 0.5 * reg * sum(W[e, f]^2, e, f)
"""

# Course code's softmax classifier in C: double, size_t sizes, labels, the decay factor as an argument.
SOFTMAX_LOSS_C = r"""
#include <math.h>
#include <stddef.h>
#include <stdint.h>

void softmax_loss(double *loss, double *dW, const double *W, const double *X, const int64_t *y, double reg,
                  size_t N, size_t C, size_t D) {
    double total = 0.0, scores[64];
    for (size_t e = 0; e < C * D; e++) dW[e] = reg * W[e];
    for (size_t n = 0; n < N; n++) {
        double top = -INFINITY, sum = 0.0;
        for (size_t c = 0; c < C; c++) {
            double s = 0.0;
            for (size_t d = 0; d < D; d++) s += W[c * D + d] * X[n * D + d];
            scores[c] = s;
            if (s > top) top = s;
        }
        for (size_t c = 0; c < C; c++) sum += exp(scores[c] - top);
        total += log(sum) + top - scores[y[n]];
        for (size_t c = 0; c < C; c++) {
            double p = exp(scores[c] - top) / sum - (c == (size_t)y[n]);
            for (size_t d = 0; d < D; d++) dW[c * D + d] += p * X[n * D + d] / N;
        }
    }
    double decay = 0.0;
    for (size_t e = 0; e < C * D; e++) decay += W[e] * W[e];
    *loss = total / N + 0.5 * reg * decay;
}
"""


def _verify(folder: Path, target: str, spec_text: str, signature: str, *extra: str) -> subprocess.CompletedProcess:
    (folder / "layer.spec").write_text(spec_text)
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", target, "--against", "layer.spec",
                           "--signature", signature, *extra], capture_output=True, text=True, cwd=folder, timeout=300)


@pytest.fixture
def layer_norm(tmp_path: Path) -> Path:
    require_tool("cc")
    (tmp_path / "ln.c").write_text(LAYER_NORM_C)
    return tmp_path


def test_c_written_outputs_first_with_a_cache_and_accumulated_gradients_passes(layer_norm: Path) -> None:
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, PAIR,
                     "--size", SIZES, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "PASS" and report["dtype"] == "float32"  # float, from the prototype
    assert report["sizes"] == {"b": 2, "t": 3, "c": 8} and report["signature"] == PAIR
    assert any("layernorm_forward(out, mean, rstd, inp, weight, bias, B=2, T=3, C=8)" in note
               for note in report["conventions"])
    assert report["elements"] >= 3 * (48 + 48 + 8 + 8)  # out, dinp, dweight, dbias at every input case


def test_the_signature_may_list_what_is_read_first(layer_norm: Path) -> None:
    """'READ -> WRITTEN': names that are the prototype's own are passed in the prototype's order."""
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC,
                     "inp,weight,bias -> out,mean[b,t],rstd[b,t]; "
                     "dout,inp,weight,mean,rstd -> dinp+=,dweight+=,dbias+=",
                     "--size", SIZES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("bug", sorted(MUTANTS))
def test_each_bug_of_a_port_is_caught_with_its_array(layer_norm: Path, bug: str) -> None:
    original, replacement = MUTANTS[bug]
    assert original in LAYER_NORM_C
    (layer_norm / "ln.c").write_text(LAYER_NORM_C.replace(original, replacement, 1))
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, PAIR,
                     "--size", SIZES, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    said = "\n".join(report["failures"])
    if bug == "writes past the end":
        assert "layernorm_forward wrote outside mean (6 entries, shape (2, 3)): at offset(s) 6, past its end" in said
        assert "leaves 1 of the 6 entries of mean unwritten (first mean[0, 0])" in said
    elif bug == "reads past the end":
        assert "layernorm_forward reads outside inp (48 entries, shape (2, 3, 8)): offset 48, past its end" in said
    elif bug == "overwrites a += gradient":
        assert "layernorm_backward overwrites dinp where the signature says dinp+=" in said
        assert "dweight" not in said and "dbias" not in said
    elif bug == "changes its input":
        assert "layernorm_backward changed its input inp (first at offset 0)" in said
    else:
        assert report["worst"]["array"] in ("dinp", "dweight") and report["worst"]["index"]


def test_accumulation_into_an_output_not_declared_so_is_caught(layer_norm: Path) -> None:
    """The same correct code, with a signature saying its gradients are written: it adds to them instead."""
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC,
                     PAIR.replace("+=", ""), "--size", SIZES)
    assert result.returncode == 1
    assert "layernorm_backward adds to dinp instead of writing it" in result.stdout
    assert "accumulation into an unzeroed buffer" in result.stdout


def test_a_scratch_buffer_is_zeroed_and_only_its_guards_are_checked(layer_norm: Path) -> None:
    """A backward that keeps each row's normalised entries in a buffer of the caller's, accumulated into."""
    scratch = LAYER_NORM_C.replace("const float *mean, const float *rstd, int B", "const float *mean, "
                                   "const float *rstd, float *xhats, int B").replace(
        "float xhat = (row[c] - m) * s, gx = weight[c] * g[c];\n                dbias",
        "xhats[c] += (row[c] - m) * s; float xhat = xhats[c], gx = weight[c] * g[c]; xhats[c] = 0.0f;\n"
        "                dbias")
    assert scratch.count("xhats") == 4
    (layer_norm / "ln.c").write_text(scratch)
    signature = PAIR.replace("dbias+= <-", "dbias+=,xhats[c] <-")  # passed where the prototype takes it
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, signature,
                     "--size", SIZES)
    assert result.returncode == 0, result.stdout + result.stderr
    (layer_norm / "ln.c").write_text(scratch.replace("xhats[c] = 0.0f;", "xhats[c + 1] = 0.0f;"))
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, signature,
                     "--size", SIZES)
    assert result.returncode == 1 and "wrote outside xhats (8 entries, shape (8,)): at offset(s) 8" in result.stdout


def test_a_write_far_outside_every_array_is_a_crash_never_a_pass(layer_norm: Path) -> None:
    (layer_norm / "ln.c").write_text(LAYER_NORM_C.replace("mean[b * T + t] = m;", "mean[b * T + t + (1L << 40)] = m;"))
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, PAIR,
                     "--size", SIZES)
    assert result.returncode == 2 and result.stdout == ""
    assert "SIGSEGV" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_library_without_source_is_called_in_the_signatures_order(layer_norm: Path) -> None:
    """No prototype to read: the signature's order, then every range's size; --dtype gives the entries."""
    from softgrad.codegen.build import compile_shared

    compile_shared(layer_norm / "ln.c", layer_norm / "libln.so", generated=False)
    result = _verify(layer_norm, "libln.so:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, PAIR,
                     "--size", SIZES, "--dtype", "float32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "B=" not in result.stdout and "n_b=2" in result.stdout


@pytest.mark.parametrize("signature", ["loss,dW <- W,X,y,reg", "W,X,y,reg->loss,dW", "loss,dW <- W,X,y"])
def test_a_loss_in_double_with_labels_size_t_sizes_and_a_parameter_passes(tmp_path: Path, signature: str) -> None:
    """reg by value, named in the signature or matched by the prototype's name; N (no index of the spec) takes
    the range left over."""
    require_tool("cc")
    (tmp_path / "loss.c").write_text(SOFTMAX_LOSS_C)
    result = _verify(tmp_path, "loss.c:softmax_loss", SOFTMAX_LOSS_SPEC, signature, "--param", "reg=0.3",
                     "--size", "b=4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "float64" in result.stdout and "softmax_loss(loss, dW, W, X, y, reg, N=4, C=6, D=4)" in result.stdout


def test_weight_decay_with_its_factor_off_is_named(tmp_path: Path) -> None:
    require_tool("cc")
    (tmp_path / "loss.c").write_text(SOFTMAX_LOSS_C.replace("dW[e] = reg * W[e]", "dW[e] = 2 * reg * W[e]"))
    result = _verify(tmp_path, "loss.c:softmax_loss", SOFTMAX_LOSS_SPEC, "loss,dW <- W,X,y,reg", "--param", "reg=0.3")
    assert result.returncode == 1
    assert "hint: dW differs from the exact gradient by 0.3·W: a weight-decay term" in result.stdout


def test_a_one_index_spec_checks_c_by_rows(tmp_path: Path) -> None:
    """softmax's forward and backward in C with (rows, n) sizes under names of their own."""
    require_tool("cc")
    (tmp_path / "softmax.c").write_text(r"""
#include <math.h>
void softmax_forward(float *y, const float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float top = xr[0], sum = 0.0f;
        for (int i = 1; i < n; i++) if (xr[i] > top) top = xr[i];
        for (int i = 0; i < n; i++) { y[r * n + i] = expf(xr[i] - top); sum += y[r * n + i]; }
        for (int i = 0; i < n; i++) y[r * n + i] /= sum;
    }
}
void softmax_backward(float *dx, const float *y, const float *dy, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float dot = 0.0f;
        for (int i = 0; i < n; i++) dot += y[r * n + i] * dy[r * n + i];
        for (int i = 0; i < n; i++) dx[r * n + i] = y[r * n + i] * (dy[r * n + i] - dot);
    }
}
""")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", "softmax.c:softmax_forward,softmax_backward",
                             "--against", "softmax", "--signature", "y <- x; dx <- y,dy", "--size", "b=3,i=5"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "softmax_forward(y, x, rows=3, n=5)" in result.stdout


@pytest.mark.parametrize(("signature", "message"), [
    ("out,mean,rstd[b,t] <- inp,weight,bias; dinp+=,dweight+=,dbias+= <- dout,inp,weight,mean,rstd",
     "give the shape of mean, which the spec does not name, in the signature: e.g. mean[b,t]"),
    ("out,mean[b,t] <- inp,weight,bias; dinp+=,dweight+=,dbias+= <- dout,inp,weight,mean,rstd",
     "layernorm_backward reads rstd, which is no input or parameter of the spec"),
    ("out,mean[b,t],rstd[b,t] <- inp,weight,bias; dinp+=,dweight+= <- dout,inp,weight,mean,rstd",
     "layernorm_backward takes 8 pointer(s)"),
    ("out,mean[b,z],rstd[b,t] <- inp,weight,bias; dinp+= <- dout,inp,weight,mean,rstd", "the spec has no index 'z'"),
    ("out <- inp+=,weight; dinp <- dout", "only an array the function writes can be accumulated into"),
    ("out,mean[b,t],rstd[b,t] <- inp,weight,bias", "names 2 function(s); the signature has 1 part(s)"),
])
def test_a_signature_that_does_not_fit_is_one_line_before_any_code_runs(layer_norm: Path, signature: str,
                                                                       message: str) -> None:
    result = _verify(layer_norm, "ln.c:layernorm_forward,layernorm_backward", LAYER_NORM_SPEC, signature,
                     "--size", SIZES)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_signatures_and_prototypes_are_read_as_written() -> None:
    forward, backward = parse_c_signature("out, mean[b,t] <- inp, weight; dinp+= , dweight+= <- dout, inp, mean")
    assert forward.writes == ("out", "mean") and forward.reads == ("inp", "weight")
    assert forward.arrays[1].declared == ("b", "t") and backward.arrays[0].accumulated
    with pytest.raises(SoftgradError, match="is not NAME"):
        parse_c_signature("out <- in-put")
    parameters = prototype(LAYER_NORM_C, "layernorm_backward")
    assert parameters is not None and [p.name for p in parameters][:3] == ["dinp", "dweight", "dbias"]
    assert parameters[-1].type == "int" and not parameters[-1].pointer and parameters[0].type == "float"
    assert prototype("/* void f(float *x) { } */ int g(void) { return 0; }", "f") is None  # comments are not code
    assert prototype(SOFTMAX_LOSS_C, "softmax_loss")[4].type == "int64_t"

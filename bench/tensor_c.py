"""Generated C for specs with several indices against torch on the CPU, one thread (issue #29's table).

Attention backward (Q, K, V, dO → dQ, dK, dV, the forward recomputed inside, as torch's autograd runs it here:
forward and backward timed together) at n = 256, 1024, 4096 with d = 64, causal (the mask written as [j <= i]) at n
= 1024, 4096, and over a batch of 8 heads at n = 512, 1024; softmax regression with labels (W, X, bias, labels →
loss, dW, dX, dbias) at (B 4096, D 512, C 1000); affine layer norm (4096 × 1024) and the two-layer classifier (B
1024, D 784, J 512, C 10); in float32 and float64. The generated C calls the BLAS of scipy-openblas32 for its
contractions; torch uses its own. The generated C runs a block of rows at a time where the row-blocking pass finds
one (its default SOFTGRAD_BLOCK_BYTES or SOFTGRAD_CACHE_BYTES); the same source built with whole arrays (a block
of every row) is timed beside it. One process, every implementation interleaved round by round, medians; ratio =
generated C / torch eager (< 1: faster), and for attention also against torch's scaled_dot_product_attention. The
generated NumPy module is timed beside them. Then the peak memory one attention backward adds at n = 8192, d = 64
(float32), each implementation in a fresh process. The tables go into bench/results.md ("tensor-c" section).

    python bench/tensor_c.py [--quick]      # --quick: small shapes, few rounds, nothing written
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the BLAS's and OpenMP's threads: one documented variable
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT.parent / "docs" / "examples"
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402

#: Attention over a batch of heads (batch·heads flattened into b), as issue #29 measures it.
BATCHED_ATTENTION = """S[b, i, j] = sum(Q[b, i, e] * K[b, j, e], e) / sqrt(size(e))
P[b, i, j] = exp(S[b, i, j]) / sum(exp(S[b, i, k]), k)
O[b, i, f] = sum(P[b, i, j] * V[b, j, f], j)"""
#: Causal attention, the mask written as a condition on the indices.
CAUSAL_ATTENTION = """S[i, j] = sum(Q[i, e] * K[j, e], e) / sqrt(size(e))
P[i, j] = [j <= i] * exp(S[i, j]) / sum([k <= i] * exp(S[i, k]), k)
O[i, f] = sum(P[i, j] * V[j, f], j)"""
#: A block of every row: the generated C with whole arrays, as it ran before the row-blocking pass (both budgets:
#: blocks that gemm reads and blocks it does not).
WHOLE_ARRAYS = ["-DSOFTGRAD_BLOCK_BYTES=((size_t)1 << 50)", "-DSOFTGRAD_CACHE_BYTES=((size_t)1 << 50)"]


def kernels(name: str, dtype: str, folder: Path, source: str | None = None) -> tuple[object, object, object]:
    """(the generated C kernels in dtype, the same built with whole arrays, the generated NumPy module) for a
    docs example (or a spec's text)."""
    derivation = derive_spec(load_spec(source or str(EXAMPLES / f"{name}.spec")))
    c_folder, numpy_folder = folder / f"{name}-{dtype}-c", folder / f"{name}-numpy"
    c_folder.mkdir(exist_ok=True)
    numpy_folder.mkdir(exist_ok=True)
    files = emit(derivation, "c", dtype=dtype)
    c_kernels = load_c(files, c_folder)
    whole = load_c(files, c_folder, extra_flags=WHOLE_ARRAYS, library_name="libwhole.so")
    ((file_name, text),) = emit(derivation, "numpy").items()
    (numpy_folder / file_name).write_text(text)
    return c_kernels, whole, import_path(numpy_folder / file_name)


def torch_attention(Q, K, V, dO):
    Q, K, V = (t.detach().requires_grad_() for t in (Q, K, V))
    P = torch.softmax(Q @ K.T / Q.shape[1] ** 0.5, dim=1)
    (P @ V).backward(dO)
    return Q.grad, K.grad, V.grad


def torch_sdpa(Q, K, V, dO, causal=False):
    Q, K, V = (t.detach().requires_grad_() for t in (Q, K, V))
    torch.nn.functional.scaled_dot_product_attention(Q[None], K[None], V[None], is_causal=causal)[0].backward(dO)
    return Q.grad, K.grad, V.grad


def torch_causal_attention(Q, K, V, dO):
    Q, K, V = (t.detach().requires_grad_() for t in (Q, K, V))
    S = Q @ K.T / Q.shape[1] ** 0.5
    S = S.masked_fill(torch.ones_like(S, dtype=torch.bool).triu(1), float("-inf"))
    (torch.softmax(S, dim=1) @ V).backward(dO)
    return Q.grad, K.grad, V.grad


def torch_causal_sdpa(Q, K, V, dO):
    return torch_sdpa(Q, K, V, dO, causal=True)


def gemm_rate(dtype: str, n: int) -> float:
    """GFLOP/s of one n × n × n matrix product in NumPy (its BLAS, one thread), best of 5."""
    a, b = (np.random.default_rng(1).normal(size=(n, n)).astype(dtype) for _ in range(2))
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n ** 3 / best / 1e9


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def peak_memory(implementation: str, n: int, library: str = "") -> float:
    """MiB the peak resident memory grows by in one attention backward at (n, 64), float32, in a fresh process
    (the 6 MiB of gradients it returns included)."""
    command = [sys.executable, __file__, "--memory", implementation, str(n), library]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def measure_memory(implementation: str, n: int, library: str) -> None:
    """The child of peak_memory: one call, the growth of the peak resident memory around it."""
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(n, 64)).astype(np.float32) for _ in range(4)]
    if implementation.startswith("torch"):
        call, given = (torch_sdpa if implementation == "torch-sdpa" else torch_attention), [
            torch.from_numpy(a) for a in arrays]
    else:
        call, given = import_path(Path(library).parent / "attention_ctypes.py").load(Path(library)).gradients, arrays
    before = peak_resident_kib()
    call(*given)
    print((peak_resident_kib() - before) / 1024)


def peak_resident_kib() -> int:
    """This process's peak resident memory: VmHWM (ru_maxrss survives exec on Linux, so a child started by a
    large parent would start at the parent's peak)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def torch_batched_sdpa(Q, K, V, dO):
    Q, K, V = (t.detach().requires_grad_() for t in (Q, K, V))
    torch.nn.functional.scaled_dot_product_attention(Q, K, V).backward(dO)
    return Q.grad, K.grad, V.grad


def torch_batched_attention(Q, K, V, dO):
    Q, K, V = (t.detach().requires_grad_() for t in (Q, K, V))
    P = torch.softmax(Q @ K.transpose(1, 2) / Q.shape[2] ** 0.5, dim=2)
    (P @ V).backward(dO)
    return Q.grad, K.grad, V.grad


def torch_regression(W, X, bias, labels):
    W, X, bias = (t.detach().requires_grad_() for t in (W, X, bias))
    loss = torch.nn.functional.cross_entropy(X @ W.T + bias, labels)
    loss.backward()
    return loss, W.grad, X.grad, bias.grad


def torch_layer_norm(x, gamma, beta, dy):
    x, gamma, beta = (t.detach().requires_grad_() for t in (x, gamma, beta))
    torch.nn.functional.layer_norm(x, x.shape[1:], gamma, beta, eps=1e-5).backward(dy)
    return x.grad, gamma.grad, beta.grad


def torch_two_layer(W1, X, W2, T):
    W1, X, W2 = (t.detach().requires_grad_() for t in (W1, X, W2))
    z = torch.tanh(X @ W1.T) @ W2.T
    loss = -(T * torch.log_softmax(z, dim=1)).sum() / X.shape[0]
    loss.backward()
    return loss, W1.grad, X.grad, W2.grad


def compiled_step(forward, upstream: bool):
    """torch.compile of a forward (its backward compiled by AOTAutograd), called as the eager steps are: the
    first three tensors differentiated, the last one the upstream gradient where upstream."""
    compiled = torch.compile(forward)

    def step(*tensors):
        given = tensors[:-1] if upstream else tensors
        inputs = [t.detach().requires_grad_() if position < 3 else t for position, t in enumerate(given)]
        result = compiled(*inputs)
        result.backward(tensors[-1] if upstream else None)
        return [t.grad for t in inputs[:3]]

    return step


def medians(functions: dict[str, tuple], rounds: int, pause: float = 0.0) -> dict[str, float]:
    """Median ms of each (function, arguments), interleaved round by round after one warm-up call; each round
    starts with the next implementation (the first after another's run pays for the caches it left). `pause`:
    seconds slept before each call, where several runtimes' thread pools share the process and the threads one
    leaves spinning after its call would take a core from the next (bench/tensor_scale.py on two threads)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function, arguments in functions.values():
        function(*arguments)
    entries = list(functions.items())
    for round_number in range(rounds):
        start = round_number % len(entries)
        for name, (function, arguments) in entries[start:] + entries[:start]:
            time.sleep(pause)
            start = time.perf_counter()
            function(*arguments)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)  # the child process of peak_memory
    arguments = parser.parse_args()
    if arguments.memory:
        implementation, n, library = arguments.memory
        measure_memory(implementation, int(n), library)
        return
    torch.set_num_threads(1)
    rounds = 3 if arguments.quick else 9
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for dtype in ("float32", "float64"):
            for what, name, source, eager, sdpa, lengths in [
                    ("attention backward (dQ, dK, dV)", "attention", None, torch_attention, torch_sdpa,
                     [256, 1024, 4096]),
                    ("causal attention backward", "causal-attention", CAUSAL_ATTENTION, torch_causal_attention,
                     torch_causal_sdpa, [1024, 4096])]:
                attention_c, attention_whole, attention_numpy = kernels(name, dtype, folder, source)
                for n in ([64] if arguments.quick else lengths):
                    arrays = [rng.normal(size=(n, 64)).astype(dtype) for _ in range(4)]
                    tensors = [torch.from_numpy(a) for a in arrays]
                    times = medians({"c": (attention_c.gradients, arrays), "whole": (attention_whole.gradients, arrays),
                                     "numpy": (attention_numpy.gradients, arrays), "torch": (eager, tensors),
                                     "sdpa": (sdpa, tensors)}, rounds)
                    rows.append((what, f"n {n}, d 64", dtype, times, 12 * n * n * 64))
            batched_c, batched_whole, batched_numpy = kernels("batched-attention", dtype, folder, BATCHED_ATTENTION)
            for n in ([64] if arguments.quick else [512, 1024]):
                arrays = [rng.normal(size=(8, n, 64)).astype(dtype) for _ in range(4)]
                tensors = [torch.from_numpy(a) for a in arrays]
                times = medians({"c": (batched_c.gradients, arrays), "whole": (batched_whole.gradients, arrays),
                                 "numpy": (batched_numpy.gradients, arrays),
                                 "torch": (torch_batched_attention, tensors), "sdpa": (torch_batched_sdpa, tensors)},
                                rounds)
                rows.append(("attention backward, batch·heads 8", f"n {n}, d 64", dtype, times, 8 * 12 * n * n * 64))
            regression_c, regression_whole, regression_numpy = kernels("softmax-regression-labels", dtype, folder)
            B, D, C = (256, 64, 100) if arguments.quick else (4096, 512, 1000)
            X = rng.normal(size=(B, D)).astype(dtype)
            W = (rng.normal(size=(C, D)) / np.sqrt(D)).astype(dtype)
            bias = rng.normal(size=C).astype(dtype)
            labels = rng.integers(0, C, size=B)
            given = (W, X, bias, labels)
            times = medians({"c": (regression_c.gradients, given), "whole": (regression_whole.gradients, given),
                             "numpy": (regression_numpy.gradients, given),
                             "torch": (torch_regression, [torch.from_numpy(a) for a in given]),
                             "compile": (compiled_step(lambda W, X, bias, labels: torch.nn.functional.cross_entropy(
                                 X @ W.T + bias, labels), upstream=False), [torch.from_numpy(a) for a in given])},
                            rounds)
            rows.append(("softmax regression, labels: loss, dW, dX, dbias", f"B {B}, D {D}, C {C}", dtype, times,
                         6 * B * D * C))
            norm_c, norm_whole, norm_numpy = kernels("layer-norm-affine", dtype, folder)
            rows_, features = (256, 128) if arguments.quick else (4096, 1024)
            given = (rng.normal(size=(rows_, features)).astype(dtype), rng.normal(size=features).astype(dtype),
                     rng.normal(size=features).astype(dtype), rng.normal(size=(rows_, features)).astype(dtype))
            times = medians({"c": (norm_c.gradients, given), "whole": (norm_whole.gradients, given),
                             "numpy": (norm_numpy.gradients, given),
                             "torch": (torch_layer_norm, [torch.from_numpy(a) for a in given]),
                             "compile": (compiled_step(lambda x, gamma, beta: torch.nn.functional.layer_norm(
                                 x, x.shape[1:], gamma, beta, eps=1e-5), upstream=True),
                                 [torch.from_numpy(a) for a in given])}, rounds)
            rows.append(("affine layer norm: dx, dgamma, dbeta", f"{rows_} × {features}", dtype, times, 0))
            two_c, two_whole, two_numpy = kernels("two-layer", dtype, folder)
            B, D, J, C = (128, 64, 32, 10) if arguments.quick else (1024, 784, 512, 10)
            T = rng.random((B, C)).astype(dtype)
            given = ((rng.normal(size=(J, D)) / np.sqrt(D)).astype(dtype), rng.normal(size=(B, D)).astype(dtype),
                     (rng.normal(size=(C, J)) / np.sqrt(J)).astype(dtype), T / T.sum(axis=1, keepdims=True))
            times = medians({"c": (two_c.gradients, given), "whole": (two_whole.gradients, given),
                             "numpy": (two_numpy.gradients, given),
                             "torch": (torch_two_layer, [torch.from_numpy(a) for a in given]),
                             "compile": (compiled_step(lambda W1, X, W2, T: -(T * torch.log_softmax(
                                 torch.tanh(X @ W1.T) @ W2.T, dim=1)).sum() / X.shape[0], upstream=False),
                                 [torch.from_numpy(a) for a in given])}, rounds)
            rows.append(("two-layer classifier: loss, dW1, dX, dW2", f"B {B}, D {D}, J {J}, C {C}", dtype, times,
                         6 * B * J * (D + C)))
    rates = {dtype: gemm_rate(dtype, 256 if arguments.quick else 2048) for dtype in ("float32", "float64")}
    lines = ["## Specs with several indices: generated C against torch (one thread)", "",
             f"`python bench/tensor_c.py` (OMP_NUM_THREADS=1, torch.set_num_threads(1); medians of {rounds} "
             "interleaved rounds; ratio = generated / torch eager, < 1 is faster). Each generated gradients() "
             "computes the forward too, as torch's forward and backward are timed together; torch.compile compiles the "
             "forward (and so its backward). \"C whole\": the same "
             "source built with a block of every row (whole arrays). \"gemm share\": the FLOPs its matrix products "
             f"must do (attention: 12·n²·d, the forward recomputed) per second, over this run's sgemm "
             f"({rates['float32']:.1f} GFLOP/s) or dgemm ({rates['float64']:.1f} GFLOP/s) rate (NumPy's BLAS, "
             "n = 2048, one thread).", "",
             "| function | shape | dtype | C ms | C whole ms | NumPy ms | torch eager ms | C / torch | "
             "NumPy / torch | C / torch SDPA | C / torch.compile | gemm share |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {what} | {shape} | {dtype} | {t['c']:.2f} | {t['whole']:.2f} | {t['numpy']:.2f} | "
              f"{t['torch']:.2f} | {t['c'] / t['torch']:.2f} | {t['numpy'] / t['torch']:.2f} | "
              + (f"{t['c'] / t['sdpa']:.2f} | " if "sdpa" in t else "– | ")
              + (f"{t['c'] / t['compile']:.2f} | " if "compile" in t else "– | ")
              + (f"{flops / (t['c'] * 1e6) / rates[dtype]:.0%} |" if flops else "– |")
              for what, shape, dtype, t, flops in rows]
    if not arguments.quick:
        n = 8192
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            files = emit(derive_spec(load_spec(str(EXAMPLES / "attention.spec"))), "c", dtype="float32")
            load_c(files, folder)
            load_c(files, folder, extra_flags=WHOLE_ARRAYS, library_name="libwhole.so")
            memory = {"generated C": peak_memory("c", n, str(folder / "libattention.so")),
                      "generated C, whole arrays": peak_memory("c", n, str(folder / "libwhole.so")),
                      "torch SDPA": peak_memory("torch-sdpa", n), "torch eager": peak_memory("torch", n)}
        lines += ["", f"Peak memory one attention backward adds at n = {n}, d = 64, float32 (peak resident memory "
                  "in a fresh process, VmHWM; the 6 MiB of gradients returned included; the n × n float32 array alone "
                  "is 256 MiB):", "",
                  "| implementation | MiB |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in memory.items())]
    document = "\n".join(lines) + "\n"
    print(document)
    if not arguments.quick:
        replace_section(ROOT / "results.md", "tensor-c", document)


if __name__ == "__main__":
    main()

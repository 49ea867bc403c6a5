"""Several-index kernels at the shapes and thread counts bench/tensor_c.py leaves out, with jax.jit as a peer.

Issue #29 asks for one thread and two, for jax.jit beside torch, and for attention over 8 heads at n = 4096 and
softmax regression at (B 256, D 4096, C 32000). This script runs each function on one thread, then on two (a
child process per thread count: OMP_NUM_THREADS, the one documented variable, sets the generated C's OpenMP
threads and its BLAS's; torch.set_num_threads likewise; the process is pinned to that many cores, which XLA's
threads cannot leave), float32, forward and backward timed together, medians of interleaved rounds. The
generated C is built with --openmp (one thread runs it as one). Ratios are generated C / peer (< 1: faster);
"2 threads / 1" is each implementation's own speed-up. The table goes into bench/results.md ("tensor-scale" section).

    python bench/tensor_scale.py [--quick]      # --quick: small shapes, few rounds, nothing written
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--threads" in sys.argv:  # a child: its thread count before any library loads
    threads = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = threads
    # threads that sleep when idle: several runtimes share this process (torch's OpenMP, the generated C's, the
    # BLAS's, XLA's), and one's threads spinning after its call would take the cores from the next one's
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.pop("XLA_FLAGS", None)
    # and the process on that many cores: XLA's CPU runtime ran jax.jit on 1.24 cores with its one-thread flags
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(threads)])

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def jax_functions() -> dict[str, Any]:
    """The same functions in jax.numpy, their gradients under jax.jit (what a JAX user would write)."""
    import jax
    import jax.numpy as jnp

    def attention(Q, K, V, causal=False):
        S = jnp.einsum("...ie,...je->...ij", Q, K) / Q.shape[-1] ** 0.5
        if causal:
            S = jnp.where(jnp.tril(jnp.ones(S.shape[-2:], dtype=bool)), S, -jnp.inf)
        return jnp.einsum("...ij,...jf->...if", jax.nn.softmax(S, axis=-1), V)

    def backward(function):
        return jax.jit(lambda Q, K, V, dO: jax.vjp(function, Q, K, V)[1](dO))

    def regression(W, X, bias, labels):
        logits = X @ W.T + bias
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0])

    def layer_norm(x, gamma, beta):
        mean = x.mean(axis=1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        return gamma * (x - mean) / jnp.sqrt(variance + 1e-5) + beta

    def two_layer(W1, X, W2, T):
        return -(T * jax.nn.log_softmax(jnp.tanh(X @ W1.T) @ W2.T, axis=1)).sum() / X.shape[0]

    return {
        "attention": backward(attention),
        "causal": backward(lambda Q, K, V: attention(Q, K, V, causal=True)),
        "regression": jax.jit(jax.value_and_grad(regression, argnums=(0, 1, 2))),
        "layer norm": jax.jit(lambda x, gamma, beta, dy: jax.vjp(layer_norm, x, gamma, beta)[1](dy)),
        "two-layer": jax.jit(jax.value_and_grad(two_layer, argnums=(0, 1, 2))),
    }


def blocked(function: Any) -> Any:
    """function, waiting for JAX's asynchronous results (so that their time is counted)."""
    import jax

    return lambda *arguments: jax.block_until_ready(function(*arguments))


def run(threads: int, quick: bool) -> list[dict[str, Any]]:
    """Median ms of every implementation of every function, in this process (its thread count set above)."""
    import tensor_c as peers  # torch's implementations and the interleaved medians, as bench/tensor_c.py runs them
    import torch

    from softgrad.codegen.build import import_path, load_c
    from softgrad.codegen.emit import emit
    from softgrad.derive import derive_spec, load_spec

    torch.set_num_threads(threads)
    jax_of = jax_functions()
    rng = np.random.default_rng(0)
    rounds = 2 if quick else 5
    rows: list[dict[str, Any]] = []

    def kernels(name: str, folder: Path, source: str | None = None) -> tuple[Any, Any]:
        derivation = derive_spec(load_spec(source or str(peers.EXAMPLES / f"{name}.spec")))
        (folder / name).mkdir()
        files = emit(derivation, "c", dtype="float32", openmp=True)
        ((file_name, text),) = emit(derivation, "numpy").items()
        (folder / name / file_name).write_text(text)
        return load_c(files, folder / name), import_path(folder / name / file_name)

    def add(what: str, shape: str, functions: dict[str, tuple[Any, Any]]) -> None:
        # a pause before each call: two OpenBLAS builds, torch's OpenMP and XLA share this process, and the
        # generated C on two threads measured 29 ms after the others, 7 ms alone, 13 ms with the pause
        times = peers.medians(functions, 1 if quick else rounds, pause=0.1)
        rows.append({"what": what, "shape": shape, "times": times})
        print(threads, what, shape, {k: round(v, 2) for k, v in times.items()}, flush=True, file=sys.stderr)

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for what, name, source, lengths, batch, eager, sdpa, jax_name in [
                ("attention backward", "attention", None, [1024, 4096], (), peers.torch_attention, peers.torch_sdpa,
                 "attention"),
                ("causal attention backward", "causal-attention", peers.CAUSAL_ATTENTION, [4096], (),
                 peers.torch_causal_attention, peers.torch_causal_sdpa, "causal"),
                ("attention backward, batch·heads 8", "batched-attention", peers.BATCHED_ATTENTION, [4096], (8,),
                 peers.torch_batched_attention, peers.torch_batched_sdpa, "attention")]:
            attention_c, attention_numpy = kernels(name, folder, source)
            for n in [64] if quick else lengths:
                arrays = [rng.normal(size=(*batch, n, 64)).astype(np.float32) for _ in range(4)]
                tensors = [torch.from_numpy(a) for a in arrays]
                add(what, f"n {n}, d 64", {
                    "c": (attention_c.gradients, arrays), "numpy": (attention_numpy.gradients, arrays),
                    "torch": (eager, tensors), "sdpa": (sdpa, tensors), "jax": (blocked(jax_of[jax_name]), arrays)})
        regression_c, regression_numpy = kernels("softmax-regression-labels", folder)
        for B, D, C in [(128, 64, 100)] if quick else [(4096, 512, 1000), (256, 4096, 32000)]:
            given = ((rng.normal(size=(C, D)) / np.sqrt(D)).astype(np.float32), rng.normal(size=(B, D)).astype(
                np.float32), rng.normal(size=C).astype(np.float32), rng.integers(0, C, size=B))
            tensors = [torch.from_numpy(a) for a in given]
            add("softmax regression, labels: loss, dW, dX, dbias", f"B {B}, D {D}, C {C}", {
                "c": (regression_c.gradients, given), "numpy": (regression_numpy.gradients, given),
                "torch": (peers.torch_regression, tensors),
                "compile": (peers.compiled_step(lambda W, X, bias, labels: torch.nn.functional.cross_entropy(
                    X @ W.T + bias, labels), upstream=False), tensors),
                "jax": (blocked(jax_of["regression"]), given)})
        norm_c, norm_numpy = kernels("layer-norm-affine", folder)
        rows_, features = (256, 128) if quick else (4096, 1024)
        given = (rng.normal(size=(rows_, features)).astype(np.float32), rng.normal(size=features).astype(np.float32),
                 rng.normal(size=features).astype(np.float32), rng.normal(size=(rows_, features)).astype(np.float32))
        tensors = [torch.from_numpy(a) for a in given]
        add("affine layer norm: dx, dgamma, dbeta", f"{rows_} × {features}", {
            "c": (norm_c.gradients, given), "numpy": (norm_numpy.gradients, given),
            "torch": (peers.torch_layer_norm, tensors),
            "compile": (peers.compiled_step(lambda x, gamma, beta: torch.nn.functional.layer_norm(
                x, x.shape[1:], gamma, beta, eps=1e-5), upstream=True), tensors),
            "jax": (blocked(jax_of["layer norm"]), given)})
        two_c, two_numpy = kernels("two-layer", folder)
        B, D, J, C = (128, 64, 32, 10) if quick else (1024, 784, 512, 10)
        T = rng.random((B, C)).astype(np.float32)
        given = ((rng.normal(size=(J, D)) / np.sqrt(D)).astype(np.float32), rng.normal(size=(B, D)).astype(np.float32),
                 (rng.normal(size=(C, J)) / np.sqrt(J)).astype(np.float32), T / T.sum(axis=1, keepdims=True))
        tensors = [torch.from_numpy(a) for a in given]
        add("two-layer classifier: loss, dW1, dX, dW2", f"B {B}, D {D}, J {J}, C {C}", {
            "c": (two_c.gradients, given), "numpy": (two_numpy.gradients, given),
            "torch": (peers.torch_two_layer, tensors),
            "compile": (peers.compiled_step(lambda W1, X, W2, T: -(T * torch.log_softmax(
                torch.tanh(X @ W1.T) @ W2.T, dim=1)).sum() / X.shape[0], upstream=False), tensors),
            "jax": (blocked(jax_of["two-layer"]), given)})
    return rows


def table(by_threads: dict[int, list[dict[str, Any]]]) -> list[str]:
    """The Markdown table: each function at each thread count, and each implementation's two-thread speed-up."""
    def ratio(times: dict[str, float], peer: str) -> str:
        return f"{times['c'] / times[peer]:.2f}" if peer in times else "–"

    lines = ["| function | shape | threads | C ms | NumPy ms | torch eager ms | C / torch | C / SDPA | "
             "C / torch.compile | C / jax.jit | NumPy / torch | C: 2 threads / 1 | torch: 2 threads / 1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    one = {(row["what"], row["shape"]): row["times"] for row in by_threads[1]}
    for threads, rows in sorted(by_threads.items()):
        for row in rows:
            t, single = row["times"], one[(row["what"], row["shape"])]
            speedups = (f"{single['c'] / t['c']:.2f}× | {single['torch'] / t['torch']:.2f}× |" if threads > 1
                        else "– | – |")
            lines.append(f"| {row['what']} | {row['shape']} | {threads} | {t['c']:.2f} | {t['numpy']:.2f} | "
                         f"{t['torch']:.2f} | {ratio(t, 'torch')} | {ratio(t, 'sdpa')} | {ratio(t, 'compile')} | "
                         f"{ratio(t, 'jax')} | {t['numpy'] / t['torch']:.2f} | {speedups}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # a child: measure at this thread count
    arguments = parser.parse_args()
    if arguments.threads:
        print(json.dumps(run(arguments.threads, arguments.quick)))
        return
    by_threads = {}
    for threads in (1, 2):
        command = [sys.executable, __file__, "--threads", str(threads)] + (["--quick"] if arguments.quick else [])
        by_threads[threads] = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE,
                                                        text=True).stdout)
    lines = ["## Several-index kernels: one thread and two, jax.jit, the large shapes (float32)", "",
             "`python bench/tensor_scale.py` (a process per thread count, OMP_NUM_THREADS = 1 or 2 for the generated "
             "C, built with --openmp, and its BLAS; torch.set_num_threads to match; the process pinned to that "
             "many cores (sched_setaffinity), XLA's threads included; "
             "medians of 5 interleaved rounds, a 0.1 s pause before each call so that "
             "the threads the previous runtime left spinning are asleep; forward and backward timed together; "
             "ratio = generated C / peer, < 1 is faster; jax.jit runs the same function's jax.vjp or "
             "jax.value_and_grad in jax.numpy).", "", *table(by_threads)]
    document = "\n".join(lines) + "\n"
    print(document)
    if not arguments.quick:
        from sections import replace_section

        replace_section(ROOT / "results.md", "tensor-scale", document)


if __name__ == "__main__":
    main()

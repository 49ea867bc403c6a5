"""Check generated NumPy or C (`codegen --check`) against the exact result and finite differences.

`check_files` takes what emit wrote, for any spec. Per-row kernels (forward, vjp, …, called on (rows, n) arrays)
are compared with the 40-digit result of the derived formulas at n = 1, 2, 7, at logits of magnitude 1000 and on an
empty batch. A module's forward() and gradients() over named arrays is compared three ways, each a line of the
report:
- against the derivation: every gradient the module returns (from gradients(), and from backward() given what
  forward_saving() kept) equals the derivation's own result evaluated entry by entry (complex arithmetic,
  independent of NumPy) at small, different range sizes;
- against finite differences of the module's own forward(): a directional derivative along a random
  direction of each input, central differences in float64;
- at extreme inputs (entries scaled to ±1000): every output finite where the function is.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy as sp

from softgrad import tolerances
from softgrad.codegen.build import GeneratedFiles, import_path, load_c
from softgrad.codegen.emit import kernels_for
from softgrad.codegen.lower.kernel import Kernel
from softgrad.codegen.lower.rows import exponent_coefficients
from softgrad.derive.algebra import inline, positive_inputs
from softgrad.derive.check.numbers import Point, wide_precision
from softgrad.derive.check.numeric import StepChecker
from softgrad.derive.check.numeric import sample_inputs as sample_arrays
from softgrad.derive.steps import Derivation
from softgrad.verify.cases import SMALLER
from softgrad.verify.reference import UndefinedReference, exact_outputs, forward_directional


@dataclass
class KernelCheck:
    kernel: str
    output: str
    against: str  # "exact" or "finite differences"
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.error <= self.tolerance)

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        return (f"{verdict} {self.kernel}: {self.output} vs {self.against}: "
                f"error {self.error:.2e} (tolerance {self.tolerance:.0e})")


@dataclass
class SkippedSize:
    """A row length at which the spec has no value (1/0), so there is nothing to check the kernels against."""

    size: int
    output: str
    passed: bool = True

    def line(self) -> str:
        return f"skip every kernel at n = {self.size}: {self.output} has no value there (a division by 0)"


def sample_inputs(
    derivation: Derivation, rows: int, size: int, seed: int, scale: float = 3.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random inputs of the spec: the differentiated input ~ N(0, scale²) (positive, up to `scale`, where
    the spec takes its log or square root); others in (0, 1), normalised when the spec says they sum to
    a constant; parameters in (0.5, 2)."""
    rng = np.random.default_rng(seed)
    spec = derivation.spec
    positive = positive_inputs(spec.definitions, spec.inputs)  # under a log or a square root
    arrays = {}
    for name in spec.inputs:
        if name == derivation.wrt and name not in positive:
            arrays[name] = rng.normal(0, scale, (rows, size))
        else:
            arrays[name] = rng.uniform(0.05, 1, (rows, size)) * (scale if name == derivation.wrt else 1)
    for constraint in spec.constraints:
        arrays[constraint.input_name] *= float(constraint.rhs) / arrays[constraint.input_name].sum(-1, keepdims=True)
    parameters = {name: float(rng.uniform(0.5, 2.0)) for name in spec.parameters}
    return arrays, parameters


def extreme_logits_apply(derivation: Derivation) -> bool:
    """Logits of magnitude 1000 make sense for a signed differentiated input (not one under a log)."""
    spec = derivation.spec
    return derivation.wrt not in positive_inputs(spec.definitions, spec.inputs)


def masks_apply(derivation: Derivation) -> bool:
    """−inf masks make sense where the differentiated input enters only through exp (softmax-like), and
    no other input is under a log (KL's q log q: a masked class's target 0 would leave it undefined)."""
    spec = derivation.spec
    if set(positive_inputs(spec.definitions, spec.inputs)) - {derivation.wrt}:
        return False
    base = sp.IndexedBase(derivation.wrt)
    written = inline(spec.output.expr, spec.definitions[:-1])
    hidden = written.replace(lambda e: isinstance(e, sp.exp), lambda e: sp.S.One)
    return (written.has(base) and not any(entry.base == base for entry in hidden.atoms(sp.Indexed))
            and all(c.is_positive for c in exponent_coefficients(written, base)))  # exp(−x) masks with +inf


def extreme_logits(derivation: Derivation, rows: int, size: int, seed: int) -> np.ndarray:
    """Rows of logits of magnitude 1000 (one dominating, all large, all very negative, near ties), with
    −inf masks in the last row where masks apply (never a whole row: that row would be undefined)."""
    rng = np.random.default_rng(seed + 7)
    logits = rng.normal(0, 1, (rows, size))
    patterns = [1000.0 + logits[0], 1000.0 * np.sign(logits[1]) + logits[1], -1000.0 + logits[2]]
    for row, pattern in enumerate(patterns[:rows]):
        logits[row] = pattern
    if rows > 3 and masks_apply(derivation):
        logits[3, ::2] = -np.inf
    return logits


def row_scales(magnitudes: np.ndarray) -> np.ndarray:
    """The size each row's error is measured against: the row's own magnitude, but at least 1e-3 of the
    batch's (a row whose exact value is 0 is judged against its neighbours), and 1 — an absolute
    comparison — when the whole batch is below 1e-9: such a batch is zero up to rounding (x²/Σx² at
    n = 1, or p − t where Σt = 1 holds only to float rounding), and its relative error means nothing."""
    batch = float(magnitudes.max()) if magnitudes.size else 0.0
    if batch <= 1e-9:
        return np.ones_like(magnitudes)
    return np.asarray(np.maximum(magnitudes, 1e-3 * batch))


def normwise_error(got: np.ndarray, expected: np.ndarray, magnitudes: np.ndarray | None = None) -> float:
    """max over rows of max|got − expected| / (the row's scale, see row_scales): the row's largest exact
    value, or, where given, the largest magnitude of the sums the formula adds up (reference.magnitude)."""
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape[0], -1)
    expected = expected.reshape(expected.shape[0], -1)
    if got.shape != expected.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    judged = np.isfinite(expected)  # where the exact value is itself ±inf or undefined, nothing is judged
    got, expected = np.where(judged, got, 0.0), np.where(judged, expected, 0.0)
    largest = np.abs(expected).max(axis=1)
    if magnitudes is not None:
        sizes = np.abs(magnitudes.reshape(expected.shape))
        largest = np.maximum(largest, np.where(judged & np.isfinite(sizes), sizes, 0.0).max(axis=1))
    scale = row_scales(largest)
    error = np.abs(got - expected).max(axis=1) / scale
    error[~np.isfinite(got).all(axis=1)] = np.inf
    return float(error.max())


def check_kernels(derivation: Derivation, kernels: list[Kernel], functions: Any, dtype: str = "float64",
                  rows: int = 4, size: int = 7, seed: int = 0, cache: dict[Any, Any] | None = None,
                  scale: float = 3.0, extremes: bool = False) -> list[KernelCheck]:
    """Call each generated kernel on random batches; compare with the references.

    `cache` (any dict) keeps the high-precision references between calls with the same inputs.
    `extremes`: the differentiated input gets logits of magnitude 1000 (and −inf masks where it only
    enters through exp), judged against the exact values where those are finite; no finite differences.
    """
    cache = {} if cache is None else cache

    def cached(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        key = (id(derivation), rows, size, seed, scale, *key)
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    given_scale = scale
    for shrink in SMALLER:  # where the spec overflows doubles at these inputs (exp(exp(exp(exp(x))))), smaller ones
        scale = given_scale / shrink  # the cache's keys name the scale drawn at
        arrays, parameters = sample_inputs(derivation, rows, size, seed, scale)
        if extremes or all(np.isfinite(values).all() for values in cached(
                ("forward",), lambda: exact_outputs(derivation, "forward", arrays, parameters)).values()):
            break
    if extremes:
        arrays[derivation.wrt] = extreme_logits(derivation, rows, size, seed)
        masked = np.isneginf(arrays[derivation.wrt])
        for name in derivation.spec.inputs:  # no target mass on a masked class (its loss would be +inf)
            if name != derivation.wrt and arrays[name].shape == masked.shape:
                arrays[name] = np.where(masked, 0.0, arrays[name])
        for constraint in derivation.spec.constraints:
            values = arrays[constraint.input_name]
            arrays[constraint.input_name] = values * float(constraint.rhs) / values.sum(-1, keepdims=True)
    rng = np.random.default_rng(seed + 1)
    upstream = rng.normal(size=(rows, size))
    direction = rng.choice([-1.0, 1.0], size=(rows, size))
    tolerance = tolerances.GENERATED_KERNEL[dtype]
    difference_tolerance = max(tolerance, tolerances.GENERATED_KERNEL_AGAINST_DIFFERENCES)
    results: list[KernelCheck] = []
    output_name = derivation.spec.output.name
    forward_values = cached(("forward",), lambda: exact_outputs(derivation, "forward", arrays, parameters))
    for kernel in kernels:
        kind = kernel.kind
        given = dict(arrays)  # what the kernel is called with, and what the reference is evaluated at
        if kernel.upstream:
            given[kernel.origin[kernel.upstream]] = upstream
        if kind == "vjp_from_output":
            given[output_name] = forward_values[output_name]
        call_arguments = ([given[kernel.origin[name]].astype(dtype) for name, _ in kernel.inputs]
                          + [parameters[p] for p in derivation.spec.parameters])
        produced = getattr(functions, kernel.name)(*call_arguments)
        produced = produced if isinstance(produced, tuple) else (produced,)
        names = [o.name for o in kernel.outputs if o.shape == "scalar"] + [
            o.name for o in kernel.outputs if o.shape != "scalar"
        ]
        expected = cached((kind,), lambda: exact_outputs(derivation, kind, given, parameters))
        for name, value in zip(names, produced):
            reference = expected[kernel.origin[name]]
            error = normwise_error(value, reference)
            if error > tolerance:  # judged again against what rounding scales with (computed only when needed)
                sizes = cached((kind, "magnitudes"), lambda: exact_outputs(derivation, kind, given, parameters, True))
                error = normwise_error(value, reference, sizes[kernel.origin[name]])
            if extremes:  # x − max x of magnitude 1000 is rounded to 1000 ulps of 1
                results.append(KernelCheck(kernel.name, name, "exact, logits of magnitude 1000 and −inf masks",
                                           error, tolerance * 1e3))
                continue
            results.append(KernelCheck(kernel.name, name, "exact", error, tolerance))
            gradient = next(o for o in kernel.outputs if o.name == name).role == "gradient"
            if gradient:
                numeric = cached(("directional", bool(kernel.upstream)), lambda: forward_directional(
                    derivation, arrays, parameters, direction, upstream if kernel.upstream else None))
                analytic = (np.asarray(value, dtype=np.float64) * direction).sum(-1)
                magnitude = row_scales(np.abs(reference).sum(-1))
                error = float((np.abs(analytic - numeric) / magnitude).max()) if rows else 0.0
                results.append(KernelCheck(kernel.name, name, "finite differences", error, difference_tolerance))
    return results



def check_files(derivation: Derivation, files: GeneratedFiles,
                kernel_names: list[str] | None = None) -> list[KernelCheck | SkippedSize]:
    """What `codegen --check` runs on generated NumPy or C: the module's forward() and gradients() where the
    derivation is over named arrays, else each per-row kernel emit wrote (`kernel_names`, None: the default)."""
    with np.errstate(all="ignore"):  # overflow or 0/0 in the code is judged by the checks, not printed on stderr
        if derivation.tensor is not None:
            return list(check_array_module(derivation, files))
        return check_generated(derivation, files, kernels_for(derivation, kernel_names), files.dtype)


def check_generated(derivation: Derivation, files: GeneratedFiles, kernels: list[Kernel],
                    dtype: str = "float64") -> list[KernelCheck | SkippedSize]:
    """Build per-row kernels in a temporary folder (compile C with the strict flags) and check them."""
    with tempfile.TemporaryDirectory(prefix="softgrad-check-") as temporary:
        functions = load_module(files, Path(temporary))
        results: list[KernelCheck | SkippedSize] = []
        for size in (1, 2, 7):
            try:
                results += check_kernels(derivation, kernels, functions, dtype, rows=3, size=size)
            except UndefinedReference:
                results.append(SkippedSize(size, derivation.spec.output.name))
        if extreme_logits_apply(derivation):
            results += check_kernels(derivation, kernels, functions, dtype, rows=4, size=6, extremes=True)
        results.append(_empty_batch_check(derivation, kernels, functions, dtype))
        return results


def _empty_batch_check(derivation: Derivation, kernels: list[Kernel], functions: Any, dtype: str) -> KernelCheck:
    """rows = 0 must work and return empty outputs."""
    _arrays, parameters = sample_inputs(derivation, 0, 5, 0)
    try:
        for kernel in kernels:
            given = [np.zeros((0, 5), dtype=dtype) for _ in kernel.inputs]
            getattr(functions, kernel.name)(*given, *[parameters[p] for p in derivation.spec.parameters])
        return KernelCheck("every kernel", "an empty batch", "rows = 0", 0.0, 0.0)
    except Exception:  # a crash on an empty batch is a failed check, reported like the others
        return KernelCheck("every kernel", "an empty batch", "rows = 0", float("inf"), 0.0)


def sample_array_inputs(derivation: Derivation, sizes: dict[str, int], seed: int,
                         scale: float = 1.0) -> tuple[dict[str, Any], dict[str, float]]:
    """Random inputs (and upstream gradient) of a tensor derivation at the given range sizes, as the step
    checks draw them (derive.check.sample_inputs)."""
    spec, tensor = derivation.spec, derivation.tensor
    names = [*spec.inputs, *([tensor.upstream] if tensor.upstream else [])]
    return sample_arrays(spec, tensor.axes, names, sizes, positive_inputs(spec.definitions, spec.inputs),
                         np.random.default_rng(seed), scale)


def call_module(module: Any, derivation: Derivation, arrays: dict[str, Any], parameters: dict[str, float],
                function: str) -> Any:
    """A generated module's forward() or gradients() called with the spec's arrays and parameters."""
    spec, tensor = derivation.spec, derivation.tensor
    arguments = [arrays[name] for name in spec.inputs]
    if function == "gradients" and tensor.upstream:
        arguments.append(arrays[tensor.upstream])
    return getattr(module, function)(*arguments, *[parameters[p] for p in spec.parameters])


def module_gradients(module: Any, derivation: Derivation, arrays: dict[str, Any],
                     parameters: dict[str, float]) -> dict[str, Any]:
    """input → its gradient, as a generated module's gradients() returns them (the loss left out)."""
    returned = call_module(module, derivation, arrays, parameters, "gradients")
    names = list(derivation.tensor.gradients)
    if not derivation.spec.output.is_vector:
        returned = returned[1:]
    return dict(zip(names, returned))


def check_array_module(derivation: Derivation, files: GeneratedFiles, seed: int = 0) -> list[KernelCheck]:
    """Import the generated module from a temporary folder and run the three comparisons."""
    with tempfile.TemporaryDirectory(prefix="softgrad-check-") as temporary:
        module = load_module(files, Path(temporary))
        return check_module(module, derivation, seed, files.dtype if files.language == "c" else "float64")


def check_module(module: Any, derivation: Derivation, seed: int, dtype: str) -> list[KernelCheck]:
    """The three comparisons for anything with the generated modules' forward() and gradients()."""
    return [*_against_derivation(module, derivation, seed, dtype),
            *_against_differences(module, derivation, seed, dtype), _extremes(module, derivation, seed),
            *_zero_targets(module, derivation, seed)]


def module_backward(module: Any, derivation: Derivation, arrays: dict[str, Any],
                    parameters: dict[str, float]) -> dict[str, Any]:
    """input → its gradient, from a generated module's backward() given what its forward_saving() kept."""
    spec, tensor = derivation.spec, derivation.tensor
    _, cache = module.forward_saving(*[arrays[name] for name in spec.inputs], *[parameters[p] for p in spec.parameters])
    returned = module.backward(*([arrays[tensor.upstream]] if tensor.upstream else []), cache)
    return dict(zip(tensor.gradients, returned))


def _against_derivation(module: Any, derivation: Derivation, seed: int, dtype: str) -> list[KernelCheck]:
    """gradients() (and backward() after forward_saving(), where the module has them) against the derivation's
    exact result at the step checker's points."""
    spec, tensor = derivation.spec, derivation.tensor
    checker = StepChecker(spec, dict(tensor.axes), None, seed)
    checker.backward = list(tensor.backward)
    paths = {"gradients": module_gradients, **({"backward": module_backward} if hasattr(module, "backward") else {})}
    worst: dict[tuple[str, str], float] = {}
    for point in checker.points[::2]:
        sizes = {name: point.sizes[symbol] for name, symbol in spec.sizes.items()}
        arrays, parameters = sample_array_inputs(derivation, sizes, seed)
        values = {name: np.asarray(value, dtype=complex) for name, value in arrays.items()}
        full = Point(point.sizes, values, {k: complex(v) for k, v in parameters.items()})
        checker.complete(full, checker.forward + checker.backward)
        for path, gradients in paths.items():
            generated = gradients(module, derivation, arrays, parameters)
            for name, gradient in tensor.gradients.items():
                exact = np.real(full.value(gradient))
                error = float(np.max(np.abs(np.asarray(generated[name]) - exact), initial=0.0)
                              / max(1.0, float(np.max(np.abs(exact), initial=0.0))))
                worst[path, name] = max(worst.get((path, name), 0.0), error)
    return [KernelCheck(path, f"d{name}", "the derivation's result" + (
        ", from what forward_saving() kept" if path == "backward" else ""), error, tolerances.GENERATED_MODULE[dtype])
            for (path, name), error in worst.items()]


def module_loss(module: Any, derivation: Derivation, arrays: dict[str, Any], parameters: dict[str, float]) -> float:
    """ℓ from a generated module's forward(): the loss, or Σ dO·O with the upstream gradient in `arrays`."""
    output = np.asarray(call_module(module, derivation, arrays, parameters, "forward"), dtype=np.float64)
    upstream = derivation.tensor.upstream
    return float(np.sum(output * arrays[upstream])) if upstream else float(output)


def load_module(files: GeneratedFiles, folder: Path) -> Any:
    """A generated module (NumPy) or library (C, compiled with its loader) from a folder, ready to call."""
    if files.language == "c":
        return load_c(files, folder)
    (name, text), = files.items()
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return import_path(path)


def _against_differences(module: Any, derivation: Derivation, seed: int, dtype: str) -> list[KernelCheck]:
    spec, tensor = derivation.spec, derivation.tensor
    rng = random.Random(seed)
    sizes = spec.consistent_sizes({name: rng.randint(3, 6) for name in spec.sizes})
    for shrink in SMALLER:  # smaller where doubles overflow at order 1 (exp(exp(exp(exp(x)))))
        arrays, parameters = sample_array_inputs(derivation, sizes, seed + 1, 1.0 / shrink)
        with np.errstate(all="ignore"):
            if np.all(np.isfinite(call_module(module, derivation, arrays, parameters, "forward"))):
                break
    gradients = module_gradients(module, derivation, arrays, parameters)
    checks = []
    directions = np.random.default_rng(seed + 2)
    for name in tensor.gradients:
        direction = directions.normal(size=np.shape(arrays[name]))
        step = tolerances.GENERATED_MODULE_STEP[dtype]
        plus = dict(arrays, **{name: arrays[name] + step * direction})
        minus = dict(arrays, **{name: arrays[name] - step * direction})
        numeric = (module_loss(module, derivation, plus, parameters)
                   - module_loss(module, derivation, minus, parameters)) / (2 * step)
        analytic = float(np.sum(np.asarray(gradients[name]) * direction))
        error = abs(numeric - analytic) / max(1.0, abs(analytic))
        checks.append(KernelCheck("gradients", f"d{name}", "finite differences of forward()", error,
                                  tolerances.GENERATED_MODULE_AGAINST_DIFFERENCES[dtype]))
    return checks


def _extremes(module: Any, derivation: Derivation, seed: int) -> KernelCheck:
    """Every output entry (of forward(), and the loss and gradients of gradients() and backward()) finite at
    inputs of magnitude 1000 wherever its exact value (computed in extended precision) is a finite double:
    exp(Σx) truly overflows, a stable softmax or log-sum-exp must not."""
    spec, tensor = derivation.spec, derivation.tensor
    sizes = spec.consistent_sizes({name: 4 for name in spec.sizes})
    arrays, parameters = sample_array_inputs(derivation, sizes, seed + 3, scale=1000.0)
    representable = _representable_values(derivation, sizes, arrays, parameters)
    if not any(np.any(mask) for mask in representable.values()):
        return KernelCheck("gradients", "every output", "inputs of magnitude 1000: not judged (no exact value "
                           "there is a finite double, or it has none in 40 digits)", 0.0, 0.0)
    paths = [module_gradients, *([module_backward] if hasattr(module, "backward") else [])]

    def finite(value: Any, name: str) -> bool:
        return bool(np.all(np.isfinite(np.asarray(value, dtype=float))[representable[name]]))

    output = spec.output.name
    try:
        with np.errstate(all="ignore"):
            results = [path(module, derivation, arrays, parameters) for path in paths]
            outputs = [call_module(module, derivation, arrays, parameters, "forward")]
            if not spec.output.is_vector:  # gradients() returns the loss first
                outputs.append(call_module(module, derivation, arrays, parameters, "gradients")[0])
        every = (all(finite(gradients[name], name) for gradients in results for name in tensor.gradients)
                 and all(finite(value, output) for value in outputs))
    except Exception:  # a crash at extreme inputs is a failed check, reported like the others
        every = False
    return KernelCheck("gradients", "every output", "inputs of magnitude 1000 (finite where the exact value is)",
                       0.0 if every else float("inf"), 0.0)


def _zero_targets(module: Any, derivation: Derivation, seed: int) -> list[KernelCheck]:
    """Targets with entries of 0 — a masked class, a one-hot row, KL's q — give the outputs' limit from above:
    the module at targets of 0 against itself at 1e-300 there, wherever that limit exists (the same at 1e-150),
    so that 0·log 0 is 0, never NaN. Targets: the float inputs not differentiated; none, no check."""
    spec, tensor = derivation.spec, derivation.tensor
    targets = [name for name in spec.inputs
               if name not in tensor.gradients and name not in spec.labels and spec.facts.get(name) != "binary"]
    if not targets:
        return []
    sizes = spec.consistent_sizes({name: 4 for name in spec.sizes})
    arrays, parameters = sample_array_inputs(derivation, sizes, seed + 4)
    rng = np.random.default_rng(seed + 4)
    masks = {name: rng.random(np.shape(arrays[name])) < 0.5 for name in targets}  # the entries made 0
    for mask in masks.values():
        mask.reshape(-1)[:1] = True  # at least one

    def outputs(value: float) -> list[Any]:
        given = dict(arrays)
        for name in targets:
            target = np.where(masks[name], value, np.abs(np.asarray(arrays[name], dtype=float)))
            constraint = next((c for c in spec.constraints if c.input_name == name), None)
            if constraint is not None:  # rows still sum to the constraint's value
                target = target / target.sum(axis=constraint.summed_axis, keepdims=True) * float(constraint.rhs)
            given[name] = target
        with np.errstate(all="ignore"):
            forward = call_module(module, derivation, given, parameters, "forward")
            gradients = module_gradients(module, derivation, given, parameters)
            return [np.asarray(value, dtype=float) for value in (forward, *gradients.values())]

    try:
        at_zero, near, nearer = outputs(0.0), outputs(1e-150), outputs(1e-300)
    except Exception:  # a crash at targets of 0 is a failed check, reported like the others
        return [KernelCheck("gradients", "every output", "targets with entries of 0", float("inf"), 0.0)]
    worst = 0.0
    for zero, first, second in zip(at_zero, near, nearer):
        scale = np.maximum(1.0, np.abs(second))
        limit = np.isfinite(second) & np.isfinite(first) & (np.abs(first - second) <= 1e-9 * scale)
        error = np.where(limit, np.abs(zero - second) / scale, 0.0)
        worst = max(worst, float(np.max(np.where(np.isnan(error), np.inf, error), initial=0.0)))
    return [KernelCheck("gradients", "every output", f"targets with entries of 0 ({', '.join(targets)}): the limit "
                        "from above", worst, tolerances.GENERATED_MODULE["float64"])]


def _representable_values(derivation: Derivation, sizes: dict[str, int], arrays: dict[str, Any],
                          parameters: dict[str, float]) -> dict[str, Any]:
    """input → a mask of the gradient entries whose exact value at these inputs is a finite double, and the
    output's name → the same mask of the output's entries."""
    import mpmath

    spec, tensor = derivation.spec, derivation.tensor
    shapes = {name: tuple(sizes[r] for r in tensor.axes.get(name, ()))
              for name in [*tensor.gradients, spec.output.name]}
    with wide_precision():
        checker = StepChecker(spec, dict(tensor.axes), None, wide=True)
        checker.backward = list(tensor.backward)
        values = {name: np.vectorize(mpmath.mpc, otypes=[object])(np.asarray(value, dtype=float))
                  for name, value in arrays.items()}
        point = Point({spec.sizes[name]: size for name, size in sizes.items()}, values,
                      {k: mpmath.mpc(v) for k, v in parameters.items()})
        try:
            checker.complete(point, checker.forward + checker.backward)
        except (ZeroDivisionError, OverflowError, ValueError):  # 0 to a negative power even in 40 digits
            return {name: np.zeros(shape, dtype=bool) for name, shape in shapes.items()}
        largest = mpmath.mpf(np.finfo(float).max)
        representable = np.vectorize(lambda v: bool(mpmath.isfinite(v) and abs(v.real) <= largest), otypes=[bool])
        masks = {name: representable(point.value(gradient)) for name, gradient in tensor.gradients.items()}
        masks[spec.output.name] = np.reshape(representable(point.value(spec.output.name)), shapes[spec.output.name])
        return masks

"""Check a generated module for a spec with several index ranges (`codegen --check`).

Three comparisons, each a line of the report:
- against the derivation: every gradient the module returns equals the derivation's own result evaluated
  entry by entry (complex arithmetic, independent of NumPy) at small, different range sizes;
- against finite differences of the module's own forward(): a directional derivative along a random
  direction of each input, central differences in float64;
- at extreme inputs (entries scaled to ±1000): every output finite where the function is.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from softgrad import tolerances
from softgrad.codegen.build import GeneratedFiles, import_path, load_c
from softgrad.derive.algebra import positive_inputs
from softgrad.derive.check import wide_precision
from softgrad.derive.steps import Derivation
from softgrad.derive.tensor_check import Point, TensorChecker, sample_inputs
from softgrad.verify.generated import KernelCheck


def sample_tensor_inputs(derivation: Derivation, sizes: dict[str, int], seed: int,
                         scale: float = 1.0) -> tuple[dict[str, Any], dict[str, float]]:
    """Random inputs (and upstream gradient) of a tensor derivation at the given range sizes, as the step
    checks draw them (derive.tensor_check.sample_inputs)."""
    spec, tensor = derivation.spec, derivation.tensor
    names = [*spec.inputs, *([tensor.upstream] if tensor.upstream else [])]
    return sample_inputs(spec, tensor.axes, names, sizes, positive_inputs(spec.definitions, spec.inputs),
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


def check_tensor_module(derivation: Derivation, files: GeneratedFiles, seed: int = 0) -> list[KernelCheck]:
    """Import the generated module from a temporary folder and run the three comparisons."""
    with tempfile.TemporaryDirectory(prefix="softgrad-check-") as temporary:
        module = load_module(files, Path(temporary))
        return check_module(module, derivation, seed, files.dtype if files.language == "c" else "float64")


def check_module(module: Any, derivation: Derivation, seed: int, dtype: str) -> list[KernelCheck]:
    """The three comparisons for anything with the generated modules' forward() and gradients()."""
    return [*_against_derivation(module, derivation, seed, dtype),
            *_against_differences(module, derivation, seed, dtype), _extremes(module, derivation, seed)]


def _against_derivation(module: Any, derivation: Derivation, seed: int, dtype: str) -> list[KernelCheck]:
    spec, tensor = derivation.spec, derivation.tensor
    checker = TensorChecker(spec, dict(tensor.axes), None, positive_inputs(spec.definitions, spec.inputs), seed)
    checker.backward = list(tensor.backward)
    worst: dict[str, float] = {}
    for point in checker.points[::2]:
        sizes = {name: point.sizes[symbol] for name, symbol in spec.sizes.items()}
        arrays, parameters = sample_tensor_inputs(derivation, sizes, seed)
        values = {name: np.asarray(value, dtype=complex) for name, value in arrays.items()}
        full = Point(point.sizes, values, {k: complex(v) for k, v in parameters.items()})
        checker.complete(full, checker.forward + checker.backward)
        generated = module_gradients(module, derivation, arrays, parameters)
        for name, gradient in tensor.gradients.items():
            exact = np.real(full.value(gradient))
            error = float(np.max(np.abs(np.asarray(generated[name]) - exact)) / max(1.0, float(np.max(np.abs(exact)))))
            worst[name] = max(worst.get(name, 0.0), error)
    return [KernelCheck("gradients", f"d{name}", "the derivation's result", error, tolerances.GENERATED_MODULE[dtype])
            for name, error in worst.items()]


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
    arrays, parameters = sample_tensor_inputs(derivation, sizes, seed + 1)
    gradients = module_gradients(module, derivation, arrays, parameters)
    checks = []
    directions = np.random.default_rng(seed + 2)
    for name in tensor.gradients:
        direction = directions.normal(size=np.shape(arrays[name]))
        step = 1e-6 if dtype == "float64" else 1e-2
        plus = dict(arrays, **{name: arrays[name] + step * direction})
        minus = dict(arrays, **{name: arrays[name] - step * direction})
        numeric = (module_loss(module, derivation, plus, parameters)
                   - module_loss(module, derivation, minus, parameters)) / (2 * step)
        analytic = float(np.sum(np.asarray(gradients[name]) * direction))
        error = abs(numeric - analytic) / max(1.0, abs(analytic))
        checks.append(KernelCheck("gradients", f"d{name}", "finite differences of forward()", error,
                                  1e-6 if dtype == "float64" else 2e-2))
    return checks


def _extremes(module: Any, derivation: Derivation, seed: int) -> KernelCheck:
    """Every gradient entry finite at inputs of magnitude 1000 wherever its exact value (computed in
    extended precision) is a finite double: exp(Σx) truly overflows, a stable softmax must not."""
    spec, tensor = derivation.spec, derivation.tensor
    sizes = spec.consistent_sizes({name: 4 for name in spec.sizes})
    arrays, parameters = sample_tensor_inputs(derivation, sizes, seed + 3, scale=1000.0)
    representable = _representable_gradients(derivation, sizes, arrays, parameters)
    if not any(np.any(mask) for mask in representable.values()):
        return KernelCheck("gradients", "every output", "inputs of magnitude 1000: not judged (no exact value "
                           "there is a finite double, or it has none in 40 digits)", 0.0, 0.0)
    try:
        with np.errstate(all="ignore"):
            gradients = module_gradients(module, derivation, arrays, parameters)
        finite = all(np.all(np.isfinite(np.asarray(gradients[name], dtype=float))[representable[name]])
                     for name in tensor.gradients)
    except Exception:  # a crash at extreme inputs is a failed check, reported like the others
        finite = False
    return KernelCheck("gradients", "every output", "inputs of magnitude 1000 (finite where the exact value is)",
                       0.0 if finite else float("inf"), 0.0)


def _representable_gradients(derivation: Derivation, sizes: dict[str, int], arrays: dict[str, Any],
                             parameters: dict[str, float]) -> dict[str, Any]:
    """input → a mask of the gradient entries whose exact value at these inputs is a finite double."""
    import mpmath

    spec, tensor = derivation.spec, derivation.tensor
    with wide_precision():
        positive = positive_inputs(spec.definitions, spec.inputs)
        checker = TensorChecker(spec, dict(tensor.axes), None, positive, wide=True)
        checker.backward = list(tensor.backward)
        values = {name: np.vectorize(mpmath.mpc, otypes=[object])(np.asarray(value, dtype=float))
                  for name, value in arrays.items()}
        point = Point({spec.sizes[name]: size for name, size in sizes.items()}, values,
                      {k: mpmath.mpc(v) for k, v in parameters.items()})
        try:
            checker.complete(point, checker.forward + checker.backward)
        except (ZeroDivisionError, OverflowError, ValueError):  # 0 to a negative power even in 40 digits
            return {name: np.zeros(tuple(sizes[r] for r in tensor.axes[name]), dtype=bool)
                    for name in tensor.gradients}
        largest = mpmath.mpf(np.finfo(float).max)
        return {name: np.vectorize(lambda v: bool(mpmath.isfinite(v) and abs(v.real) <= largest), otypes=[bool])(
                    point.value(gradient)) for name, gradient in tensor.gradients.items()}

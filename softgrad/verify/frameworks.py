"""Check a generated torch or JAX module (`codegen --lang torch|jax --check`).

The module is called through the framework's own autodiff (torch.autograd.grad, jax.vjp), so what is
checked is what a user gets: the derived backward, reached through the Function or custom_vjp rule.
- the framework's own checker: torch.autograd.gradcheck in float64, jax.test_util.check_grads;
- that the derived backward is the one called (the output's grad_fn is the Function's; the traced
  program holds the custom_vjp call);
- the comparisons every generated module passes (softgrad.verify.generated): against the
  derivation entry by entry, against finite differences, finite at inputs of magnitude 1000.
torch and JAX are imported here only, and only when a module written for them is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.codegen.backends.frameworks import FrameworkModule, framework_derivation, lower_framework
from softgrad.codegen.build import GeneratedFiles, import_path
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError
from softgrad.verify.adapters import framework_gradients, holding
from softgrad.verify.generated import KernelCheck, check_module, sample_array_inputs

__all__ = ["FrameworkAdapter", "check_framework_module", "double_precision"]


@contextlib.contextmanager
def double_precision(framework: str) -> Iterator[None]:
    """float64 arrays for the duration (JAX computes in float32 unless told; torch needs nothing)."""
    if framework != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


class FrameworkAdapter:
    """A generated torch or JAX module seen as a generated NumPy module: forward(*inputs, *parameters) and
    gradients(*inputs[, upstream], *parameters), arrays in and out, gradients by the framework's autodiff."""

    def __init__(self, module: Any, parts: FrameworkModule, derivation: Derivation, framework: str):
        self.module, self.parts, self.derivation, self.framework = module, parts, derivation, framework
        self.function = getattr(module, parts.function_name)

    def _arrays(self, values: list[Any]) -> list[Any]:
        spec = self.derivation.spec
        names = [*spec.inputs, *spec.parameters]
        converted: list[Any] = []
        for name, value in zip(names, values):
            if name in spec.parameters:
                converted.append(float(value))
            elif self.framework == "torch":
                import torch

                array = np.asarray(value)
                converted.append(torch.tensor(array, dtype=torch.long if name in spec.labels else torch.float64))
            else:
                import jax.numpy as jnp

                converted.append(jnp.asarray(value, dtype=jnp.int32 if name in spec.labels else jnp.float64))
        return converted

    def forward(self, *values: Any) -> Any:
        with double_precision(self.framework):
            result = self.function(*self._arrays(list(values)))
            return np.asarray(result.detach() if self.framework == "torch" else result)

    def gradients(self, *values: Any) -> tuple[Any, ...]:
        spec, tensor = self.derivation.spec, self.derivation.tensor
        inputs = list(values[:len(spec.inputs)])
        upstream = values[len(spec.inputs)] if tensor.upstream else None
        parameters = list(values[len(spec.inputs) + (1 if tensor.upstream else 0):])
        wanted = [spec.inputs.index(name) for name in tensor.gradients]
        with double_precision(self.framework):
            value, gradients = framework_gradients(self.framework, self.function, self._arrays(inputs + parameters),
                                                   wanted, upstream)
        return (value, *gradients) if not spec.output.is_vector else tuple(gradients)


def check_framework_module(derivation: Derivation, files: GeneratedFiles, seed: int = 0,
                           weights: tuple[str, ...] = ()) -> list[KernelCheck]:
    """Import the generated module from a temporary folder and check it (see the module's docstring)."""
    framework = files.language
    if files.printed_from:  # what emit printed the module from: not derived again
        lifted, parts = files.printed_from
    else:  # derived before the framework starts its threads
        lifted = framework_derivation(derivation)
        parts = lower_framework(lifted, framework, files.module, weights)
    try:
        __import__(framework)
    except ImportError:
        raise SoftgradError(f"--check of --lang {framework} needs {framework} installed "
                            f"(pip install {framework})") from None
    with tempfile.TemporaryDirectory(prefix="softgrad-check-") as temporary:
        for name, text in files.items():  # the module, and the C kernels it calls on the CPU (--cpu c)
            (Path(temporary) / name).write_text(text, encoding="utf-8")
        module = import_path(Path(temporary) / f"{files.module}.py")
        adapter = FrameworkAdapter(module, parts, lifted, framework)
        built = _built(module) if hasattr(module, "C_ON_CPU") else []  # first: the build's warning is said once
        checks = [*_framework_checks(adapter, seed), *check_module(adapter, lifted, seed, "float64")]
        return [*built, *checks, *_torch_operations(adapter, seed)] if built else checks


def _built(module: Any) -> list[KernelCheck]:
    """That the C kernels a torch module calls on the CPU were built; a SoftgradError (exit 2: nothing to check)
    saying why where they were not, rather than checking the torch operations that would run instead."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = module._c_kernels(torch.zeros(1, dtype=torch.float64)) is not None
    if not built:
        raise SoftgradError(next((str(item.message) for item in caught), "the C kernels were not built"))
    return [KernelCheck("gradients", "the C kernels", "built on the CPU (float64)", 0.0, 0.0)]


def _torch_operations(adapter: FrameworkAdapter, seed: int) -> list[KernelCheck]:
    """The same checks of the torch operations a module with C kernels runs off the CPU (C_ON_CPU = False)."""
    adapter.module.C_ON_CPU = False
    try:
        checks = [*_framework_checks(adapter, seed), *check_module(adapter, adapter.derivation, seed, "float64")]
    finally:
        adapter.module.C_ON_CPU = True
    return [dataclasses.replace(check, kernel=f"{check.kernel} (torch operations)") for check in checks]


def _framework_checks(adapter: FrameworkAdapter, seed: int) -> list[KernelCheck]:
    """The framework's own gradient checker, and whether the derived backward is what it reached."""
    derivation, framework = adapter.derivation, adapter.framework
    spec, tensor = derivation.spec, derivation.tensor
    # 3 entries per range; 2 where there are many ranges (a 2-D convolution's seven), as the derivation's checks do
    size = 3 if len(spec.sizes) < 6 else 2
    sizes = spec.consistent_sizes({name: size for name in spec.sizes})
    arrays, parameters = sample_array_inputs(derivation, sizes, seed + 5)
    wanted = [spec.inputs.index(name) for name in tensor.gradients]
    with double_precision(framework):
        arguments = adapter._arrays([arrays[name] for name in spec.inputs] + [parameters[p] for p in spec.parameters])
        function, floats = holding(adapter.function, arguments, wanted), [arguments[p] for p in wanted]
        if framework == "torch":
            import torch

            for position in wanted:
                arguments[position].requires_grad_(True)
            passed = torch.autograd.gradcheck(function, floats, raise_exception=False)
            backward = type(adapter.function(*arguments).grad_fn).__name__
            called = backward == f"{adapter.parts.class_name}FunctionBackward"
            checker, where = "torch.autograd.gradcheck (float64)", f"the output's grad_fn is {backward}"
        else:
            import jax
            from jax.test_util import check_grads

            try:
                check_grads(function, tuple(floats), order=1, modes=["rev"])  # type: ignore[no-untyped-call]
                passed = True
            except AssertionError:
                passed = False
            called = "custom_vjp_call" in str(jax.make_jaxpr(function)(*floats))
            checker, where = "jax.test_util.check_grads (float64)", "the traced program calls the custom_vjp rule"
    return [KernelCheck("gradients", "every gradient", checker, 0.0 if passed else float("inf"), 0.0),
            KernelCheck("gradients", "the backward", where if called else "the derived backward is not the one called",
                        0.0 if called else float("inf"), 0.0)]

"""Code as users write it, called through one convention: plain functions, stateful layer classes (forward,
then backward), torch.autograd.Function and nn.Module (backward by autograd), JAX custom_vjp functions.

Each adapter is a callable taking the signature's arrays (NumPy, in the code's layout) and returning its
outputs in the signature's order; `how` says in a line how the code was called (the report prints it).
Torch and JAX are never imported here: an adapter uses the module the code under test already imported.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import CodeType, FunctionType, ModuleType
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError
from softgrad.verify.signatures import Signature

Adapter = Callable[..., Any]


def adapt(target: Any, signature: Signature, name: str) -> tuple[Adapter, str]:
    """(callable with the signature's convention, how it calls `target`; "" for a plain function)."""
    torch = sys.modules.get("torch")
    if torch is not None and _is_torch(target, torch):
        return _torch_adapter(target, signature, name, torch)
    if _is_jax_custom(target):
        return _jax_adapter(target, signature, name)
    if _has_forward_and_backward(target):
        return _stateful_adapter(target, signature, name)
    if isinstance(target, type):
        raise SoftgradError(f"{name} is a class without forward and backward methods: name a function, a layer "
                            "class with forward() and backward(), a torch.autograd.Function or an nn.Module")
    return on_its_arrays(target, [target])


def framework_used(functions: list[Any]) -> str | None:
    """'torch' or 'jax' when the code is written on that framework's arrays: the global names its functions
    read (and those of the functions of its module they call) include torch's or JAX's. None otherwise."""
    roots: set[str] = set()
    seen: set[int] = set()

    def visit(function: Any) -> None:
        function = getattr(function, "__func__", function)  # a bound method's function
        if not isinstance(function, FunctionType) or id(function) in seen:
            return
        seen.add(id(function))
        codes = [function.__code__]
        while codes:
            code = codes.pop()
            codes += [c for c in code.co_consts if isinstance(c, CodeType)]
            for name in code.co_names:
                value = function.__globals__.get(name)
                module = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
                if isinstance(module, str):
                    roots.add(module.split(".")[0])
                if isinstance(value, FunctionType) and value.__module__ == function.__module__:
                    visit(value)  # a helper of the same module (softmax inside softmax_backward)

    for function in functions:
        visit(function)
    return "torch" if "torch" in roots else "jax" if "jax" in roots or "jaxlib" in roots else None


def framework_array(framework: str) -> Callable[[Any], Any]:
    """NumPy array → the framework's array (torch: sharing its memory, so that a change in place shows)."""
    if framework == "torch":
        torch = sys.modules["torch"]
        return lambda value: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    jax = sys.modules["jax"]
    jax.config.update("jax_enable_x64", True)  # checked in float64, as the NumPy arrays it is given
    return lambda value: jax.numpy.asarray(value) if isinstance(value, np.ndarray) else value


def on_its_arrays(call: Callable[..., Any], functions: list[Any], how: str = "") -> tuple[Adapter, str]:
    """`call` as a function of NumPy arrays: unchanged for NumPy code; code written on torch tensors or JAX
    arrays (see framework_used) is called with them, and its results are read back as NumPy arrays."""
    framework = framework_used(functions)
    if framework is None:
        return call, how
    convert = framework_array(framework)

    def called_with_its_arrays(*arguments: Any) -> Any:
        return call(*[convert(argument) for argument in arguments])

    called_with_its_arrays.__name__ = getattr(call, "__name__", "function")
    kind = "torch tensors" if framework == "torch" else "JAX arrays"
    said = f"{how}, with {kind}" if how else f"called with {kind} (the code is written on them)"
    return called_with_its_arrays, said


def _has_forward_and_backward(target: Any) -> bool:
    return callable(getattr(target, "forward", None)) and callable(getattr(target, "backward", None))


def _instance(target: Any, name: str) -> Any:
    """A fresh instance of a class (built with no arguments), or the given instance."""
    if not isinstance(target, type):
        return target
    try:
        return target()
    except TypeError as problem:
        raise SoftgradError(f"cannot build {name}() without arguments ({problem}); name an instance instead, "
                            "e.g. a module-level layer = {name}(...)") from None


def _split(signature: Signature, arrays: tuple[np.ndarray, ...]) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The forward's arguments (every input but the upstream gradient), and the upstream gradient."""
    forward = [a for role, a in zip(signature.takes, arrays) if role != "g"]
    upstream = next((a for role, a in zip(signature.takes, arrays) if role == "g"), None)
    return forward, upstream


def _ordered(signature: Signature, loss: Any, gradient: Any) -> Any:
    values = {"loss": loss, "dx": gradient}
    results = tuple(values[role] for role in signature.returns)
    return results if len(results) > 1 else results[0]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def holding(function: Callable[..., Any], arguments: list[Any], positions: list[int]) -> Callable[..., Any]:
    """The function as a function of the arguments at `positions` only, the others held at their values."""
    def partial(*chosen: Any) -> Any:
        full = list(arguments)
        for position, value in zip(positions, chosen):
            full[position] = value
        return function(*full)

    return partial


def framework_gradients(framework: str, function: Callable[..., Any], arguments: list[Any], wanted: list[int],
                        seed: Any = None) -> tuple[Any, list[Any]]:
    """(the output, the gradient of each argument at `wanted`; None where autograd gives none), both NumPy, by
    the framework's own autodiff seeded with `seed` (ones if None): torch.autograd.grad, or jax.vjp with the
    other arguments held. Its first result is the output of a function that returns several."""
    if framework == "torch":
        torch = sys.modules["torch"]
        for position in wanted:
            arguments[position].requires_grad_(True)
        output = _first(function(*arguments))
        cotangent = torch.ones_like(output) if seed is None else torch.as_tensor(np.asarray(seed), dtype=output.dtype)
        found = torch.autograd.grad(output, [arguments[p] for p in wanted], cotangent, allow_unused=True)
        return output.detach().numpy(), [None if g is None else g.detach().numpy() for g in found]
    jnp = sys.modules["jax"].numpy
    output, pullback = sys.modules["jax"].vjp(holding(lambda *full: _first(function(*full)), arguments, wanted),
                                              *[arguments[p] for p in wanted])
    cotangent = jnp.ones_like(output) if seed is None else jnp.asarray(seed, dtype=output.dtype)
    return np.asarray(output), [np.asarray(g) for g in pullback(cotangent)]


def _stateful_adapter(target: Any, signature: Signature, name: str) -> tuple[Adapter, str]:
    """A layer that saves what backward needs: a fresh instance per call, forward(inputs), backward(g).

    For a loss, backward takes no argument or the upstream gradient of the loss (1, or ones per row)."""
    if "y" in signature.takes or signature.single_row:
        raise SoftgradError(f"{name} has forward and backward: check it as x,g->dx (or z,t->loss,dz), the "
                            "forward computing what backward uses")
    required = [p for p in inspect.signature(_instance(target, name).backward).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    arguments = ", ".join(name for name, r in zip(signature.input_names, signature.takes) if r != "g")
    upstream_name = next((name for name, r in zip(signature.input_names, signature.takes) if r == "g"), "")

    layer_type = target if isinstance(target, type) else type(target)
    framework = framework_used([layer_type.forward, layer_type.backward])  # type: ignore[attr-defined]
    convert = framework_array(framework) if framework else (lambda value: value)

    def call(*arrays: np.ndarray) -> Any:
        layer = _instance(target, name)
        inputs, upstream = _split(signature, arrays)
        output = layer.forward(*map(convert, inputs))
        if upstream is not None:
            gradient = layer.backward(convert(upstream))
        elif required:
            loss = _first(output)
            gradient = layer.backward(convert(np.ones(np.shape(loss), dtype=inputs[0].dtype)))
        else:
            gradient = layer.backward()
        return _ordered(signature, _first(output), _first(gradient))

    given = upstream_name or ("1" if required else "")
    kind = {"torch": ", with torch tensors", "jax": ", with JAX arrays"}.get(framework or "", "")
    return call, f"called as {name}().forward({arguments}), then .backward({given}){kind}"


def _is_torch(target: Any, torch: Any) -> bool:
    classes = (torch.autograd.Function, torch.nn.Module)
    return (isinstance(target, type) and issubclass(target, classes)) or isinstance(target, torch.nn.Module)


def _torch_adapter(target: Any, signature: Signature, name: str, torch: Any) -> tuple[Adapter, str]:
    """Forward through Function.apply or the module, backward by autograd (so the custom backward runs)."""
    if "y" in signature.takes or signature.single_row:
        raise SoftgradError(f"{name} is torch code: check it as x,g->dx or z,t->loss,dz (autograd runs backward)")
    is_function = isinstance(target, type) and issubclass(target, torch.autograd.Function)
    module = None if is_function else _instance(target, name)

    def call(*arrays: np.ndarray) -> Any:
        inputs, upstream = _split(signature, arrays)
        tensors = [torch.from_numpy(np.array(a)) for a in inputs]
        position = [r for r in signature.takes if r != "g"].index("x")
        if module is not None:
            module.to(tensors[position].dtype)
        output, (gradient,) = framework_gradients("torch", module if module is not None else target.apply, tensors,
                                                  [position], upstream)
        if gradient is None:
            raise SoftgradError(f"{name}: autograd gave no gradient for the input (is it detached, or does "
                                "backward return None for it?)")
        return _ordered(signature, output, gradient)

    how = f"{name}.apply(…), backward by torch autograd" if is_function else f"{name}()(…), backward by torch autograd"
    return call, how


def _is_jax_custom(target: Any) -> bool:
    kind = type(target)
    return kind.__module__.startswith("jax") and kind.__name__ in ("custom_vjp", "custom_jvp")


def _jax_adapter(target: Any, signature: Signature, name: str) -> tuple[Adapter, str]:
    """jax.vjp of the function with respect to x (the other inputs held), seeded with g or ones."""
    jax = sys.modules["jax"]
    jax.config.update("jax_enable_x64", True)
    if "y" in signature.takes or signature.single_row:
        raise SoftgradError(f"{name} is a JAX function: check it as x,g->dx or z,t->loss,dz (jax.vjp runs it)")

    def call(*arrays: np.ndarray) -> Any:
        inputs, upstream = _split(signature, arrays)
        position = [r for r in signature.takes if r != "g"].index("x")
        output, (gradient,) = framework_gradients("jax", target, [jax.numpy.asarray(a) for a in inputs],
                                                  [position], upstream)
        return _ordered(signature, output, gradient)

    seed = "g" if "g" in signature.takes else "1"
    return call, f"jax.vjp({name}) with respect to its input, seeded with {seed}"


def adapt_arrays(target: Any, text: str, name: str) -> tuple[Adapter, str] | None:
    """Framework code for a spec with several indices — a torch.autograd.Function or nn.Module with any
    number of arrays, a jax.custom_vjp function — as a function of NumPy arrays with the signature's
    results (INPUTS[, dO]->[loss, ]d<input>…), its gradients by the framework's own autodiff (so its custom
    backward runs). None for anything else (a plain function is called as it is)."""
    torch = sys.modules.get("torch")
    is_torch = torch is not None and _is_torch(target, torch)
    if not is_torch and not _is_jax_custom(target):
        return None
    left, _, right = text.replace(" ", "").partition("->")
    takes, returns = left.split(","), right.split(",")
    upstream = [t for t in takes if t.startswith("d") and t[1:] not in takes]
    inputs = [t for t in takes if t not in upstream]
    wanted = [inputs.index(r[1:]) for r in returns if r.startswith("d") and r[1:] in inputs]

    def values(arrays: tuple[np.ndarray, ...]) -> tuple[list[Any], Any]:
        named = dict(zip(takes, arrays))
        # a spec parameter arrives as a 0-d array: the code gets the Python float it was written for
        given = [float(named[t]) if np.ndim(named[t]) == 0 else named[t] for t in inputs]
        return given, (named[upstream[0]] if upstream else None)

    def ordered(output: Any, gradients: list[Any]) -> tuple[Any, ...]:
        found = iter(gradients)
        return tuple(output if not (r.startswith("d") and r[1:] in inputs) else next(found) for r in returns)

    if is_torch:
        assert torch is not None
        is_function = isinstance(target, type) and issubclass(target, torch.autograd.Function)
        module = None if is_function else _instance(target, name)

        def call_torch(*arrays: np.ndarray) -> Any:
            given, seed = values(arrays)
            tensors = [torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a for a in given]
            output, found = framework_gradients("torch", module if module is not None else target.apply, tensors,
                                                wanted, seed)
            missing = next((inputs[p] for p, g in zip(wanted, found) if g is None), None)
            if missing is not None:
                raise SoftgradError(f"{name}: autograd gave no gradient for {missing} (is it detached, or does "
                                    "backward return None for it?)")
            return ordered(output, found)

        return call_torch, (f"{name}.apply(…)" if is_function else f"{name}()(…)") + ", backward by torch autograd"

    jax = sys.modules["jax"]
    jax.config.update("jax_enable_x64", True)

    def call_jax(*arrays: np.ndarray) -> Any:
        given, seed = values(arrays)
        held = [jax.numpy.asarray(a) if isinstance(a, np.ndarray) else a for a in given]
        return ordered(*framework_gradients("jax", target, held, wanted, seed))

    return call_jax, f"jax.vjp({name}), the custom_vjp rule"


def adapt_several(target: Any, text: str, name: str) -> tuple[Adapter, str] | None:
    """Code for a spec with several indices that is not a plain function: framework code (adapt_arrays), or a
    layer with forward() and backward() whose state links the two, checked with a two-part signature
    ('x,gamma,beta->out; dout->dx,dgamma,dbeta': see verify.pairs). None for a plain function."""
    adapted = adapt_arrays(target, text, name)
    if adapted is not None:
        return adapted
    if not _has_forward_and_backward(target):  # a plain function: as it is, or with its framework's arrays
        called, how = on_its_arrays(target, [target])
        return (called, how) if how else None
    from softgrad.verify.pairs import compose, parse_pair

    pair = parse_pair(text)
    if pair is None:
        raise SoftgradError(f"{name} has forward() and backward(): give a signature in two parts, e.g. "
                            "'x,gamma,beta->out; dout->dx,dgamma,dbeta'")
    layer = _instance(target, name)
    return on_its_arrays(compose(layer.forward, layer.backward, pair), [layer.forward, layer.backward],
                         f"{name}().forward(…), then its backward(…)")

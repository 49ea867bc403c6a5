"""lower → emit for the array frameworks: a torch.autograd.Function (with torch.library custom ops) or a
jax.custom_vjp function, printed from the derivation's forward and backward statements.

Every spec takes one path here: a one-index spec is lowered with its row index written out
(softgrad.derive.spec.with_rows), as vmap lifts a per-example function, so that softmax and attention
are printed by the same array lowering (softgrad.codegen.backends.numpy.arrays) in the framework's dialect.
The backward keeps exactly what the derived backward reads — for softmax its output, not its input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from softgrad._version import __version__
from softgrad.codegen.backends.numpy.arrays import ArrayModule, lower_arrays
from softgrad.codegen.backends.numpy.dialects import DIALECTS
from softgrad.codegen.lower.plan import printed_names, shape_of
from softgrad.codegen.lower.rows import hoisted_softmax_ratios
from softgrad.derive.engine import derive_spec
from softgrad.derive.spec import with_rows
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError

__all__ = ["FRAMEWORKS", "FrameworkModule", "framework_derivation", "lower_framework"]

FRAMEWORKS = ("torch", "jax")


@dataclass
class FrameworkModule:
    """What a framework template prints, besides the lowered statements."""

    lowered: ArrayModule
    function_name: str  # the plain function that applies the Function (torch) or is the custom_vjp (jax)
    class_name: str  # the autograd.Function is class_name + "Function"; the nn.Module is class_name
    operators: str  # the torch.library namespace of the custom ops (spec, options and version in its hash)
    floats: list[str]  # printed names of the float inputs
    labels: list[str]  # printed names of the integer label inputs
    saved_inputs: list[str]  # inputs the backward reads (or that fix a size it needs)
    saved_forward: list[str]  # forward arrays the backward reads, besides the output
    output_saved: bool  # whether the backward reads the output itself
    backward_sizes: list[tuple[str, str, int]]  # (size variable, array, axis) the backward reads sizes from
    shapes: dict[str, str]  # printed array name → its shape, in size variables: "(_n_b, _n_i)"
    gradient_of: dict[str, str]  # float input → its gradient's printed name
    rows_added: bool  # a one-index spec: arrays of any leading shape, flattened to rows around the ops
    weights: list[str] = field(default_factory=list)  # inputs the nn.Module holds as nn.Parameter
    weight_ranges: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def arguments(self) -> list[str]:
        """The inputs and parameters, in the spec's order (inputs first), as every entry point takes them."""
        return [name for name, _, _ in self.lowered.inputs] + self.lowered.parameters

    @property
    def module_inputs(self) -> list[str]:
        """What nn.Module.forward takes: the inputs that are not weights."""
        return [name for name, _, _ in self.lowered.inputs if name not in self.weights]

    @property
    def weight_sizes(self) -> list[str]:
        """The ranges whose sizes the nn.Module's constructor takes (those of its weights), in order."""
        return list(dict.fromkeys(r for name in self.weights for r in self.weight_ranges[name]))

    @property
    def saved(self) -> list[str]:
        """Everything the backward receives besides the upstream gradient, in a fixed order."""
        return [*self.saved_inputs, *([self.lowered.output] if self.output_saved else []), *self.saved_forward]


def framework_derivation(derivation: Derivation) -> Derivation:
    """The derivation the framework targets lower: the spec itself if it has several indices, else the
    spec with its row index written out, derived (every step checked) by the same engine."""
    if derivation.tensor is not None:
        return derivation
    # the input asked for or chosen (a loss's non-target input); for a vector output softgrad chose the first
    # input, where a function with its own backward differentiates every input
    chosen = derivation.wrt_reason and derivation.spec.output.is_vector
    return derive_spec(with_rows(derivation.spec), wrt=None if chosen else derivation.wrt)


def _camel(identifier: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in identifier.split("_") if part) or "Spec"


def lower_framework(derivation: Derivation, language: str, module: str,
                    weights: tuple[str, ...] = ()) -> FrameworkModule:
    """The framework module's parts for a derivation (lifted to rows by framework_derivation first)."""
    if language not in FRAMEWORKS:
        raise SoftgradError(f"unknown framework {language!r} (known: {', '.join(FRAMEWORKS)})")
    derivation = hoisted_softmax_ratios(derivation)  # inline exp(E)/Σexp(E) as arrays kept finite
    spec, tensor = derivation.spec, derivation.tensor
    printed = printed_names(derivation)
    lowered = lower_arrays(derivation, DIALECTS[language])
    axes = {printed[name]: ranges for name, ranges in tensor.axes.items() if name in printed}
    axes.setdefault(lowered.output, lowered.output_ranges)  # a scalar loss: no axes
    for statement in lowered.forward:  # arrays made beside a statement's: its log (_log_P), its exp (_exp_y)
        for made in (f"_log_{statement.name}", f"_exp_{statement.name}"):
            if made in {line.split(" ")[0] for line in statement.lines}:
                axes[made] = axes[statement.name]
    shapes = {name: shape_of(ranges) for name, ranges in axes.items()}

    inputs = [name for name, _, _ in lowered.inputs]
    labels = [printed[name] for name in spec.labels]
    floats = [name for name in inputs if name not in labels]
    forward_arrays = [printed[d.name] for d in spec.definitions]
    reads: set[str] = set()  # what the backward statements read, as lowered (stable forms may read inputs)
    for statement in lowered.backward:
        reads |= statement.reads | {f"_log_{name}" for name in statement.logs_read}
    backward_arrays = {statement.name for statement in lowered.backward}
    saved_inputs = [name for name in inputs if name in reads]
    output_saved = lowered.output in reads
    saved_forward = [name for name in forward_arrays if name in reads and name != lowered.output
                     and name not in backward_arrays]
    saved_forward += [f"{prefix}{name}" for prefix in ("_log_", "_exp_") for name in forward_arrays
                      if f"{prefix}{name}" in reads]

    # the backward reads each range's size from an array it receives; an input that alone fixes one is kept
    received = [*([lowered.upstream] if lowered.upstream else []), *saved_inputs,
                *([lowered.output] if output_saved else []), *saved_forward]
    backward_sizes: list[tuple[str, str, int]] = []
    for variable, source, axis in lowered.sizes:
        range_name = variable[3:]
        if axis < 0:  # a formula in sizes found before it (n_t = n_s − n_k + 1)
            backward_sizes.append((variable, source, axis))
            continue
        found = next(((name, axes[name].index(range_name)) for name in received if range_name in axes.get(name, ())),
                     None)
        if found is None:
            saved_inputs.append(source)
            received.append(source)
            found = (source, axis)
        backward_sizes.append((variable, *found))
    saved_inputs = [name for name in inputs if name in saved_inputs]

    unknown = [name for name in weights if name not in printed or printed[name] not in floats]
    if unknown:
        raise SoftgradError(f"--weights {unknown[0]}: not a float input of this spec (its inputs: "
                            f"{', '.join(spec.inputs)})")
    taken = set(printed.values())  # the three names the module defines differ from every spec name and each other
    function_name = module
    while function_name in taken:
        function_name += "_"
    taken.add(function_name)
    class_name = _camel(module)
    while class_name in taken or f"{class_name}Function" in taken:
        class_name += "_"
    options = f"{spec.digest} {derivation.wrt} {language} {__version__}"
    operators = f"softgrad_{module}_{hashlib.sha256(options.encode()).hexdigest()[:10]}"
    return FrameworkModule(
        lowered=lowered, function_name=function_name, class_name=class_name, operators=operators,
        floats=floats, labels=labels, saved_inputs=saved_inputs, saved_forward=saved_forward,
        output_saved=output_saved, backward_sizes=backward_sizes, shapes=shapes,
        gradient_of=dict(lowered.gradients), rows_added=bool(spec.rows_added),
        weights=[printed[name] for name in weights],
        weight_ranges={printed[name]: tensor.axes[name] for name in weights})


def emit_framework(lifted: Derivation, language: str, module: str, header: dict[str, Any], render: Any,
                   weights: tuple[str, ...] = (), c_sources: dict[str, str] | None = None,
                   c_flags: list[str] | None = None, c_blas: bool = False) -> tuple[str, FrameworkModule]:
    """The torch or JAX module's text for a derivation framework_derivation lifted, with the parts it was printed
    from (what --check reads). c_sources: dtype → the stem of the C kernels a torch module calls on the CPU
    (built with c_flags, linked with the BLAS where c_blas)."""
    parts = lower_framework(lifted, language, module, weights)
    text = str(render(f"{language}/module.py.j2", module=parts, lowered=parts.lowered,
                      check_summary=lifted.check_summary, c_sources=c_sources or {}, c_flags=c_flags or [],
                      c_blas=c_blas, **header))
    return text, parts

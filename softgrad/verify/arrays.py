"""Verify code for a spec with several index ranges: any inputs and outputs, named by a signature.

    softgrad verify grad.py:softmax_regression --against softmax-regression.spec \
        --signature "X,W,bias,T->loss,dW,dbias" --size b=8,c=10,d=5

The function is called with the named arrays (each axis in the spec's index order) and must return the
named outputs: `loss` (or the spec's output name) and `d<input>` for each gradient. Every returned
element is compared with the exact result (the spec's generated code, itself checked against the
derivation) and, at inputs of order 1, with central finite differences of the spec's forward function.
The report names the worst element by array and full index (dW[3, 1]).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softgrad import tolerances
from softgrad.codegen.emit import emit
from softgrad.derive.spec import spec_text
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError
from softgrad.verify.cases import SMALLER
from softgrad.verify.generated import (
    call_module,
    load_module,
    module_gradients,
    module_loss,
    sample_array_inputs,
)
from softgrad.verify.hints import array_hints
from softgrad.verify.pairs import parse_pair
from softgrad.verify.report import Report, Worst
from softgrad.verify.signatures import WrongOutput, as_array, call_code, real_floats
from softgrad.verify.structure import structural_checks, unrepeatable

#: The central finite differences' step, on inputs of order 1 (float64).
DIFFERENCE_STEP = 1e-6

#: Entries of one gradient up to which mode "auto" compares each with its own central difference (two calls of
#: the forward per entry); above, random ±1 projections, two calls each, with bisection to a wrong entry.
EVERY_ENTRY_UP_TO = 4096

#: Default sizes of the ranges, all different, so that an array read along the wrong axis shows.
DEFAULT_SIZES = (5, 6, 4, 7, 3, 8, 9, 10)


@dataclass
class ArraySignature:
    text: str
    takes: tuple[str, ...]
    returns: tuple[str, ...]
    gradients: dict[str, str]  # returned name → the input it is the gradient of
    output_name: str | None  # the returned name of the forward output, if any


def example_signature(spec: Any) -> str:
    """A signature that names every array of the spec: its inputs (and dO for an array output) → gradients."""
    takes = [*spec.inputs, *([f"d{spec.output.name}"] if spec.output.is_vector else [])]
    returns = ([] if spec.output.is_vector else ["loss"]) + ["d" + n for n in spec.inputs if n not in spec.labels]
    return ",".join(takes) + "->" + ",".join(returns)


def parse_array_signature(text: str, derivation: Derivation, settings: Iterable[str] = ()) -> ArraySignature:
    """`X,W,bias,T->loss,dW,dbias`: every spec input taken (and the upstream gradient for an array output),
    outputs among the spec's output (`loss` or its name) and d<input> for inputs. A spec parameter may be
    named among the inputs (`W,X,y,reg->loss,dW`): its --param value is passed there; parameters the
    signature does not name are passed after its inputs, in the spec's order. `settings` names arguments given
    as dicts (`--param ln_param='{"eps": 1e-5}'`), which the signature may take too."""
    spec, tensor = derivation.spec, derivation.tensor
    pair = parse_pair(text)
    if pair is not None:  # a forward/backward pair: checked as the one function it composes into
        if spec.output.is_vector and not pair.upstream:
            raise SoftgradError(f"the backward must take the upstream gradient of {spec.output.name} (a name the "
                                f"forward neither takes nor returns, e.g. d{pair.forward_returns[0]})")
        if not spec.output.is_vector and pair.upstream:
            raise SoftgradError(f"{spec.output.name} is a loss: its backward takes only what the forward kept, not "
                                f"{pair.upstream[0]}")
        composed = ",".join(pair.forward_takes + ((tensor.upstream,) if pair.upstream else ())) + "->" + ",".join(
            ("loss" if not spec.output.is_vector else spec.output.name, *pair.backward_returns))
        return dataclasses.replace(parse_array_signature(composed, derivation, settings), text=text)
    if "->" not in text:
        raise SoftgradError(f"a signature is INPUTS->OUTPUTS, e.g. {','.join(spec.inputs)}->"
                            f"{','.join('d' + n for n in spec.inputs if n not in spec.labels)}; got {text!r}")
    left, right = text.replace(" ", "").split("->", 1)
    takes, returns = tuple(filter(None, left.split(","))), tuple(filter(None, right.split(",")))
    allowed = (set(spec.inputs) | ({tensor.upstream} if tensor.upstream else set()) | set(spec.parameters)
               | set(settings))
    for name in takes:
        if name not in allowed:
            raise SoftgradError(f"signature input {name!r} is not an input or parameter of the spec (inputs and "
                                f"parameters: {', '.join(sorted(allowed))})")
    missing = [name for name in [*spec.inputs, *([tensor.upstream] if tensor.upstream else [])] if name not in takes]
    if missing:
        raise SoftgradError(f"the signature does not pass {', '.join(missing)}, which the spec needs")
    if len(set(takes)) != len(takes) or len(set(returns)) != len(returns):
        raise SoftgradError(f"a name appears twice in the signature {text!r}")
    gradients, output_name = {}, None
    for name in returns:
        if name in ("loss", spec.output.name):
            output_name = name
        elif name.startswith("d") and name[1:] in spec.inputs and name[1:] not in spec.labels:
            gradients[name] = name[1:]
        else:
            inputs = ", ".join(n for n in spec.inputs if n not in spec.labels)
            raise SoftgradError(f"signature output {name!r}: expected 'loss' (or {spec.output.name}) or d<input> "
                                f"for an input of the spec ({inputs})")
    if not gradients:
        raise SoftgradError("the signature returns no gradient (d<input>)")
    return ArraySignature(text, takes, returns, gradients, output_name)


def size_names(spec: Any) -> dict[str, str]:
    """Every name a range may be called by, to the range: its own name and the index letters the spec uses
    for it, as written, in upper case (`B` for b, as C code names sizes) and after n_ (`n_b`, `N_b`)."""
    aliases: dict[str, str] = {name: name for name in spec.sizes}
    for definition in spec.definitions:
        for symbol, range_name in zip(definition.indices, spec.axes.get(definition.name, ())):
            aliases.setdefault(str(symbol), range_name)
    names = dict(aliases)
    for alias, range_name in aliases.items():
        for form in (alias.upper(), f"n_{alias}", f"N_{alias}"):
            names.setdefault(form, range_name)
    return names


def parse_sizes(text: str | None, spec: Any) -> dict[str, int]:
    """`b=8,c=10` (or `B=8,C=10`) → sizes by range; any index letter the spec uses for a range names it."""
    aliases = size_names(spec)
    sizes = {name: DEFAULT_SIZES[position % len(DEFAULT_SIZES)] for position, name in enumerate(spec.sizes)}
    for item in filter(None, (text or "").replace(" ", "").split(",")):
        name, _, value = item.partition("=")
        if name not in aliases:
            known = ", ".join(sorted(name for name in aliases if not name.startswith(("n_", "N_"))))
            raise SoftgradError(f"--size {item!r}: the spec has no index {name!r} (indices: {known})")
        if not value.isdigit() or not 1 <= int(value) <= 4096:
            raise SoftgradError(f"--size {item!r}: the size must be a whole number from 1 to 4096")
        sizes[aliases[name]] = int(value)
    given = {aliases[item.partition("=")[0]] for item in filter(None, (text or "").replace(" ", "").split(","))}
    consistent = spec.consistent_sizes(sizes)
    for name in spec.derived_sizes:  # a range that shifted reads reach follows from the others
        if name in given and consistent[name] != sizes[name]:
            raise SoftgradError(f"--size {name}={sizes[name]}: the other sizes make index {name} "
                                f"{consistent[name]} long ({spec_text(spec.derived_sizes[name])})")
    return dict(consistent)


def _reference(derivation: Derivation) -> Any:
    """The spec's generated NumPy module: the exact result every element is compared with."""
    with tempfile.TemporaryDirectory(prefix="softgrad-reference-") as folder:
        return load_module(emit(derivation, "numpy"), Path(folder))


def verify_arrays(function: Callable[..., Any], derivation: Derivation, signature: ArraySignature,
                  sizes: dict[str, int], *, label: str, against: str, dtype: str = "float64", seed: int = 0,
                  parameters: dict[str, Any] | None = None, extremes: bool = True, mode: str = "auto") -> Report:
    """Check `function` against the derivation; returns the report (never raises on FAIL).

    extremes: also call it at inputs of order 1000: its outputs must be finite where the spec's are, and
    equal to the exact ones within a tolerance that grows as the square of the inputs' order (what
    rounding allows in products of two inputs, such as attention's Q·Kᵀ). mode: how the finite differences
    judge the gradients at inputs of order 1 — "full" (every entry), "projections" (random ±1 directions,
    bisection on a mismatch) or "auto" (full up to EVERY_ENTRY_UP_TO entries per gradient); every entry is
    compared with the exact result in every mode."""
    spec = derivation.spec
    settings = {name: value for name, value in (parameters or {}).items() if isinstance(value, dict)}
    values = {name: float(value) for name, value in (parameters or {}).items() if name not in settings}
    for setting in settings.values():  # a settings dict's numbers that name spec parameters set them
        values.update({key: float(item) for key, item in setting.items() if key in spec.parameters and
                       isinstance(item, (int, float)) and not isinstance(item, bool) and key not in values})
    missing = [p for p in spec.parameters if p not in values]
    if missing:
        raise SoftgradError(f"give a value for the parameter(s) {', '.join(missing)} (e.g. --param {missing[0]}=1.5)")
    if mode not in ("auto", "full", "projections"):
        raise SoftgradError(f"unknown mode {mode!r} (auto, full or projections)")
    largest = max(int(np.prod([sizes[r] for r in derivation.tensor.axes[name]], dtype=np.int64))
                  for name in signature.gradients.values())
    projections = mode == "projections" or (mode == "auto" and largest > EVERY_ENTRY_UP_TO)
    reference = _reference(derivation)
    report = Report(label, signature.text, against, dtype, "random projections" if projections else "every element",
                    seed, DIFFERENCE_STEP, sizes=sizes)
    for name, setting in settings.items():
        named = [key for key in setting if key in spec.parameters]
        report.convention(f"{name} = {json.dumps(setting)} is passed as the code's argument {name}" + (
            f"; the spec's {', '.join(named)} = {', '.join(f'{values[key]:g}' for key in named)}" if named else ""))
    cases = [("inputs of order 1", 1.0, True), ("inputs of order 10", 10.0, False)]
    if extremes:
        cases.append(("inputs of order 1000", 1000.0, False))
    else:
        report.convention("--extremes off: not called at inputs of order 1000")
    representable = float(np.finfo(dtype).max)  # what the code's dtype holds: beyond it, no code can be right
    first_drawn: float | None = None  # the scale of the first case checked: the structural checks' inputs
    for number, (case, scale, with_differences) in enumerate(cases):
        for shrink in SMALLER:  # code cannot return values its dtype does not hold: where the exact ones are, smaller
            drawn = scale / shrink
            arrays, _ = sample_array_inputs(derivation, sizes, seed + number, scale=drawn)
            exact_output, exact = _exact(reference, derivation, arrays, values)
            if all(np.all(np.abs(e) <= representable) for e in [exact_output, *exact.values()]):
                break
        else:
            report.convention(f"{case}: not checked: the spec's exact values are beyond {dtype}'s range there "
                              f"(and at inputs down to order {drawn:g})")
            continue
        if shrink > 1:
            report.convention(f"{case}: drawn at order {drawn:g}, where {dtype} holds the spec's exact values")
        first_drawn = drawn if first_drawn is None else first_drawn
        report.cases_checked.append(case)
        tolerance = tolerances.USER_CODE_SEVERAL_INDICES[dtype] * max(1.0, drawn / 10) ** 2
        try:
            got = _call(function, signature, arrays, values, dtype, sizes, derivation, report.conventions, settings)
        except WrongOutput as wrong:  # ran, but what it did cannot be right: every returned entry counts as wrong
            entries = sum(int(np.prod([sizes[r] for r in derivation.tensor.axes[input_name]], dtype=np.int64))
                          for input_name in signature.gradients.values())
            report.fail(f"{wrong} (inputs: {case})")
            report.case_counts.append((case, entries, entries))
            report.bad_elements += entries
            report.elements += entries
            continue
        for finding in getattr(function, "findings", None) or ():  # what C did outside its arrays, say
            if finding not in report.failures:
                report.fail(finding)
        not_finite = next(((name, value) for name, value in got.items() if not np.all(np.isfinite(value))), None)
        if not_finite is not None:
            name, value = not_finite
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0]) if value.ndim else ()
            where = f"{name}[{', '.join(map(str, index))}]" if index else name
            report.fail(f"the function's {where} is {value[index]} for {case}, where the exact value is finite "
                        "(an overflow, or a log of 0, in the code?)")
            continue
        bad, compared_before = 0, report.elements
        for returned, input_name in signature.gradients.items():
            bad += _compare(report, returned, got[returned], exact[input_name], case, "exact", tolerance)
        if signature.output_name is not None:
            bad += _compare(report, signature.output_name, got[signature.output_name], exact_output, case, "exact",
                            tolerance)
        if with_differences and dtype == "float64":
            for returned, input_name in signature.gradients.items():
                if projections:
                    bad += _compare_projections(report, reference, derivation, arrays, values, returned, input_name,
                                                got[returned], exact[input_name], case, seed)
                    continue
                numeric = _differences(reference, derivation, arrays, values, input_name)
                bad += _compare(report, returned, got[returned], numeric, case, "finite differences",
                                tolerances.USER_CODE_SEVERAL_INDICES_DIFFERENCES)
        if bad:
            report.bad_elements += bad
            report.case_counts.append((case, bad, report.elements - compared_before))
            report.fail(f"{bad} element(s) differ for {case}")
            for returned, input_name in signature.gradients.items():
                report.hint(*array_hints(returned, input_name, got[returned], exact, sizes, arrays, dtype))
    if report.elements == 0 and report.passed:  # never a pass that compared nothing
        raise SoftgradError("no element was compared: nothing was checked")
    if report.passed:
        try:
            _structure(report, function, signature, derivation, sizes, values, dtype, seed, settings,
                       first_drawn or 1.0)
        except WrongOutput as wrong:
            report.fail(f"{wrong} (structural checks)")
    else:  # a failure may have a cause that no element shows: say it first
        arrays, _ = sample_array_inputs(derivation, sizes, seed, scale=first_drawn or 1.0)
        try:
            varying = unrepeatable(lambda: _call(function, signature, arrays, values, dtype, sizes, derivation,
                                                 settings=settings),
                                   tolerances.USER_CODE_STRUCTURE[dtype])
        except (SoftgradError, WrongOutput):
            varying = None
        if varying:
            report.failures.insert(0, varying)
    return report


def _structure(report: Report, function: Callable[..., Any], signature: ArraySignature, derivation: Derivation,
               sizes: dict[str, int], values: dict[str, float], dtype: str, seed: int,
               settings: dict[str, dict[str, Any]], scale: float) -> None:
    """The structural checks every gradient gets (softgrad.verify.structure), at inputs of the first checked
    case's order, under the code's own name of the upstream gradient where it takes one."""
    arrays, _ = sample_array_inputs(derivation, sizes, seed + 5, scale)
    upstream = derivation.tensor.upstream

    def gradients(given: Any) -> dict[str, Any]:
        returned = _call(function, signature, dict(given), values, dtype, sizes, derivation, settings=settings)
        return {name: returned[name] for name in signature.gradients}

    structural_checks(report, gradients, arrays, upstream if upstream and upstream in signature.takes else None,
                      tolerances.USER_CODE_STRUCTURE[dtype], np.random.default_rng(seed + 6))


def _exact(reference: Any, derivation: Derivation, arrays: dict[str, Any],
           values: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    with np.errstate(all="ignore"):  # where it overflows, the caller draws smaller inputs: nothing to print
        return _exact_values(reference, derivation, arrays, values)


def _exact_values(reference: Any, derivation: Derivation, arrays: dict[str, Any],
                  values: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    output = np.asarray(call_module(reference, derivation, arrays, values, "forward"), dtype=np.float64)
    gradients = module_gradients(reference, derivation, arrays, values)
    return output, {name: np.asarray(gradient, dtype=np.float64) for name, gradient in gradients.items()}


def _differences(reference: Any, derivation: Derivation, arrays: dict[str, Any], values: dict[str, float],
                 input_name: str, step: float = DIFFERENCE_STEP) -> Any:
    """∂ℓ/∂input by central differences of the reference forward, every entry (ℓ = Σ dO·O for an array)."""
    base = np.asarray(arrays[input_name], dtype=np.float64)
    numeric = np.zeros_like(base)
    for entry in itertools.product(*(range(s) for s in base.shape)):
        plus, minus = base.copy(), base.copy()
        plus[entry] += step
        minus[entry] -= step
        numeric[entry] = (module_loss(reference, derivation, dict(arrays, **{input_name: plus}), values)
                          - module_loss(reference, derivation, dict(arrays, **{input_name: minus}), values)) / (
            2 * step)
    return numeric


def _directional(reference: Any, derivation: Derivation, arrays: dict[str, Any], values: dict[str, float],
                 input_name: str, direction: Any, step: float = DIFFERENCE_STEP) -> float:
    """d/ds ℓ(input + s·direction) at s = 0 by central differences of the reference forward."""
    base = np.asarray(arrays[input_name], dtype=np.float64)
    moved = [module_loss(reference, derivation, dict(arrays, **{input_name: base + sign * step * direction}), values)
             for sign in (1, -1)]
    return (moved[0] - moved[1]) / (2 * step)


def _compare_projections(report: Report, reference: Any, derivation: Derivation, arrays: dict[str, Any],
                         values: dict[str, float], returned: str, input_name: str, got: Any, exact: Any, case: str,
                         seed: int, probes: int = 3) -> int:
    """⟨d input, u⟩ against the central difference of ℓ along u, for random ±1 directions u (two calls of the
    forward each, whatever the size); on a mismatch, bisection finds the entry (both sides are linear in u, so
    the other half's mismatch is the whole's minus this half's) and its own central difference is reported.
    The tolerance is the entrywise one times the size of what the projection adds up, max(1, Σ|exact|)."""
    from softgrad.verify.localise import bisect

    tolerance = tolerances.USER_CODE_SEVERAL_INDICES_DIFFERENCES
    scale = max(1.0, float(np.sum(np.abs(exact))))
    shape = np.shape(got)
    flat = np.asarray(got, dtype=np.float64).reshape(-1)
    report.elements += flat.size
    rng = np.random.default_rng(seed + 17)
    for _ in range(probes):
        direction = rng.choice([-1.0, 1.0], size=flat.size)

        def signed_mismatch(mask: Any) -> float:
            masked = np.where(mask, direction, 0.0)
            return float(flat @ masked) - _directional(reference, derivation, arrays, values, input_name,
                                                       masked.reshape(shape))

        if abs(signed_mismatch(np.ones(flat.size, dtype=bool))) <= tolerance * scale:
            continue
        entry = bisect(signed_mismatch, flat.size)
        unit = np.zeros(flat.size)
        unit[entry] = 1.0
        numeric = _directional(reference, derivation, arrays, values, input_name, unit.reshape(shape))
        index = tuple(int(i) for i in np.unravel_index(entry, shape))
        report.offer_worst(Worst(returned, index, float(flat[entry]), numeric, None, tolerance * scale,
                                 f"{tolerance:g} × max(1, Σ|{returned}| = {scale:.3g}), the tolerance of a projection",
                                 case))
        report.fail(f"{returned} projected on a random ±1 direction differs from finite differences of the spec's "
                    f"forward ({case}); bisection found {returned}[{', '.join(map(str, index))}]")
        return 1
    return 0


def _call(function: Callable[..., Any], signature: ArraySignature, arrays: dict[str, Any],
          values: dict[str, float], dtype: str, sizes: dict[str, int], derivation: Derivation,
          notes: list[str] | None = None, settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The function's outputs by name, each checked to be a finite-dtype array of the spec's shape (axes of
    size 1 that a keepdims reduction leaves are accepted and said in `notes`)."""
    spec, tensor = derivation.spec, derivation.tensor
    settings = settings or {}
    arguments = [settings[n] if n in settings else values[n] if n in spec.parameters else np.array(arrays[n]) if n in
                 spec.labels else np.array(arrays[n], dtype=dtype) for n in signature.takes]  # copies: the code's own
    given = {key for name in signature.takes if name in settings for key in settings[name]}  # in a dict it takes
    extra = [p for p in spec.parameters if p not in signature.takes and p not in given]
    outputs = call_code(function, arguments + [values[p] for p in extra], [*signature.takes, *extra])
    if len(outputs) != len(signature.returns):
        raise SoftgradError(f"the function returned {len(outputs)} value(s); the signature {signature.text} expects "
                            f"{len(signature.returns)}")
    got = {}
    for name, value in zip(signature.returns, outputs):
        value = as_array(name, value)
        if name in signature.gradients:
            ranges = tensor.axes[signature.gradients[name]]
            expected = tuple(sizes[r] for r in ranges)
        else:
            expected = tuple(sizes[r] for r in tensor.axes.get(spec.output.name, ()))
        if value.shape != expected and not (expected == () and value.size == 1):
            kept = tuple(d for d in value.shape if d != 1) == tuple(d for d in expected if d != 1)
            if not kept or value.size != int(np.prod(expected, dtype=np.int64)):
                transposed = " (transposed: the spec's axes are " + ", ".join(
                    ranges) + ")" if name in signature.gradients and value.shape == expected[::-1] else ""
                raise SoftgradError(f"the function's {name} has shape {value.shape}, expected {expected}{transposed}")
            # dgamma as (1, D) where the spec's is (D,): a reduction with keepdims, every value in its place
            note = f"{name} is returned with shape {value.shape} and read as {expected} (axes of size 1 kept)"
            if notes is not None and note not in notes:
                notes.append(note)
        got[name] = real_floats(name, value, dtype).reshape(expected)
    return got


def _compare(report: Report, name: str, got: Any, expected: Any, case: str, against: str,
             tolerance: float) -> int:
    """Count the elements of `got` off `expected` by more than tolerance × max(1, the largest |expected|), and
    offer the worst of them to the report."""
    scale = max(1.0, float(np.max(np.abs(expected))) if np.size(expected) else 1.0)
    error = np.abs(got - expected) / scale
    report.elements += int(np.size(error))
    bad = int(np.count_nonzero(~(error <= tolerance)))
    if bad:
        index = tuple(int(i) for i in np.unravel_index(int(np.nanargmax(error)), np.shape(error)))
        value = float(np.asarray(expected)[index])
        exact = against == "exact"
        report.offer_worst(Worst(name, index, float(np.asarray(got)[index]), None if exact else value,
                                 value if exact else None, tolerance * scale,
                                 f"{tolerance:g} × max(1, largest |{name}| = {scale:.3g}), against the "
                                 + ("exact result" if exact else "finite differences of the spec's forward"), case))
    return bad

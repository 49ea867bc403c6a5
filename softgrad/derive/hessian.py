"""Second order: the Hessian of a loss as the Jacobian of its derived gradient.

The gradient that the first-order derivation finds, g_j = ∂L/∂x_j (under the spec's constraints where it
has them: p − t for cross-entropy with targets that sum to 1), is written back as a spec —
`g[j] = p[j] - t[j]` after the loss's own definitions — and derived again, every step checked and proved
as first-order steps are. Its Jacobian is the Hessian, ∂²L/∂x_j∂x_i = ∂g_j/∂x_i, by the same cases
(i = j, i ≠ j), Kronecker form and matrix form (diag(p) − ppᵀ); and since the Hessian is symmetric, the
gradient's vector–Jacobian product is the Hessian–vector product, H·v = p ⊙ (v − ⟨p, v⟩), in O(n).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy as sp

from softgrad.derive.engine import derive_spec
from softgrad.derive.prose import prose
from softgrad.derive.spec import Spec, parse_spec, spec_text, statement_text
from softgrad.derive.steps import Derivation, Section, Step
from softgrad.derive.symbols import Partial
from softgrad.errors import SpecError

__all__ = ["gradient_spec", "hessian"]


def _fresh(preferred: list[str], taken: set[str]) -> str:
    return next(name for name in [*preferred, *(f"g{k}" for k in range(1, 99))] if name not in taken)


def gradient_spec(first: Derivation) -> tuple[str, str]:
    """(the spec text whose output is the first-order gradient, the gradient's name)."""
    spec = first.spec
    if spec.output.is_vector:
        raise SpecError(f"--order 2 applies to a loss (a scalar output): {spec.output.name} is an array")
    if spec.tensor:
        return _array_gradient_spec(first)
    result = first.results.get("gradient_constrained") or first.results["gradient"]
    (entry,) = result.indices
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters)
    name = _fresh(["g", "grad"], taken)
    reads = {str(e.base) for e in result.rhs.atoms(sp.Indexed)} | {str(s) for s in result.rhs.free_symbols}
    # the loss itself stays a definition only where the gradient reads it (log-sum-exp: exp(x_j − L))
    kept = len(spec.definitions) - (spec.output.name not in reads)
    # the spec as it prints itself: its definitions, then its constraints (the gradient goes between)
    lines = [*spec.statements[:kept], f"{name}[{entry}] = {spec_text(result.rhs)}",
             *spec.statements[len(spec.definitions):]]
    return "\n".join(lines), name


def _array_gradient_spec(first: Derivation) -> tuple[str, str]:
    """The gradient of a loss of several indices with respect to one array (dW of softmax regression) as a
    spec: the loss's definitions, the backward arrays it reads, then the gradient — whose vector–Jacobian
    product with a vector V of W's shape is H·V, the Hessian–vector product for the weights."""
    spec, tensor = first.spec, first.tensor
    if len(tensor.gradients) != 1:
        return _directional_gradient_spec(first)
    ((_, gradient),) = tensor.gradients.items()
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters) | {
        d.name for d in tensor.backward}
    name = _fresh(["g", "grad"], taken)
    renamed = {sp.IndexedBase(gradient): sp.IndexedBase(name)}
    backward = [statement_text(spec, name if d.name == gradient else d.name, d.indices, d.expr.xreplace(renamed))
                for d in tensor.backward]
    if tensor.upstream is not None:
        raise SpecError("--order 2 applies to a loss (a scalar output)")
    definitions, declarations = _around_the_gradient(spec, tensor.backward)
    return "\n".join([*definitions, *backward, *declarations]), name


def _around_the_gradient(spec: Spec, backward: list[Any]) -> tuple[list[str], list[str]]:
    """What a gradient's spec holds beside its backward arrays: the loss's definitions they read, directly or
    through each other (a definition nothing reads, layer norm's y once dy is given, is left out; the loss itself
    stays where they read it, as log-sum-exp's do), and its declarations (constraints, padding)."""
    def reads(expr: sp.Expr) -> set[str]:
        return {str(e.base) for e in expr.atoms(sp.Indexed)} | {str(s) for s in expr.free_symbols}

    read = set().union(*(reads(d.expr) for d in backward))
    for definition in reversed(spec.definitions):
        if definition.name in read:
            read |= reads(definition.expr)
    definitions = [statement_text(spec, d.name, d.indices, d.expr) for d in spec.definitions[:-1] if d.name in read]
    if spec.output.name in read:
        definitions.append(statement_text(spec, spec.output.name, (), spec.output.expr))
    return definitions, [*spec.statements[len(spec.definitions):], *_padding(spec, backward)]


def _padding(spec: Spec, backward: list[Any]) -> list[str]:
    """`pad` declarations for the arrays a backward definition reads at shifted positions (a convolution's
    upstream gradient, dy[b, o, i − p + 1, …]): their edges are brackets already, so reading 0 outside agrees."""
    shifted = {str(e.base) for d in backward for e in d.expr.atoms(sp.Indexed)
               if any(not (p.is_Symbol or isinstance(p, sp.Indexed)) for p in e.indices)}
    return [f"pad {name}" for name in sorted(shifted - set(spec.padded) - {d.name for d in spec.definitions}
                                            - {d.name for d in backward})]


def second_order_arrays(first: Derivation, text: str) -> tuple[list[str], list[str]]:
    """(the arrays of --wrt the gradient's spec reads, those it does not): the Hessian's rows for the second are
    0 — the gradient does not depend on them (layer norm's beta only shifts its output)."""
    inputs = set(parse_spec(text).inputs)
    arrays = first.wrt.split(",")
    return [a for a in arrays if a in inputs], [a for a in arrays if a not in inputs]


def vector_names(first: Derivation) -> dict[str, str]:
    """input → the name of the vector H multiplies for it, with several arrays (v_W, v_bias): free names."""
    spec, tensor = first.spec, first.tensor
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters) | {
        d.name for d in tensor.backward}
    names = {}
    for array in tensor.gradients:
        names[array] = _fresh([f"v_{array}", f"V_{array}"], taken)
        taken.add(names[array])
    return names


def _directional_gradient_spec(first: Derivation) -> tuple[str, str]:
    """With respect to several arrays (--wrt W,bias): the loss's gradient in the direction of vectors v_W,
    v_bias of their shapes, g = Σ dW·v_W + Σ dbias·v_bias, as a spec — whose gradient is the Hessian–vector
    product, ∇g = H·v, every block included (∂²L/∂W∂bias·v_bias in its W part): ∇⟨∇L, v⟩ = H·v."""
    spec, tensor = first.spec, first.tensor
    if tensor.upstream is not None:
        raise SpecError("--order 2 applies to a loss (a scalar output)")
    vectors = vector_names(first)
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters) | {
        d.name for d in tensor.backward} | set(vectors.values())
    name = _fresh(["g", "grad"], taken)
    definitions, declarations = _around_the_gradient(spec, tensor.backward)
    backward = [statement_text(spec, d.name, d.indices, d.expr) for d in tensor.backward]
    terms = []
    for array, gradient in tensor.gradients.items():
        axes = tensor.axes.get(array, ())
        if not axes:  # a learnable scalar: its gradient times its own number
            terms.append(f"{gradient} * {vectors[array]}")
            continue
        indices = ", ".join(axes)
        terms.append(f"sum({gradient}[{indices}] * {vectors[array]}[{indices}], {indices})")
    return "\n".join([*definitions, *backward, f"{name} = " + " + ".join(terms), *declarations]), name


def weighted_output_spec(spec: Spec) -> Spec:
    """A spec with an array output y as the scalar L = Σ dy·y, dy an input of y's shape: the second-order
    quantity of a layer inside a network (backpropagating a Hessian–vector product through it), and for dy a
    unit vector e_k the Hessian of the one output entry y_k."""
    output = spec.output
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters)
    weight = _fresh([f"d{output.name}", "u", "w"], taken)
    loss = _fresh(["L", "loss"], taken | {weight})  # l is the name of the products' own surrogate (Σ v·g)
    indices = ", ".join(map(str, output.indices))
    total = f"{loss} = sum({weight}[{indices}] * {output.name}[{indices}], {indices})"
    lines = [*spec.statements[:len(spec.definitions)], total, *spec.statements[len(spec.definitions):]]
    weighted = parse_spec("\n".join(lines), name=spec.name)
    weighted.source = spec.source
    return weighted


def hessian(first: Derivation, seed: int = 0) -> Derivation:
    """The second-order derivation of a loss: its gradient, then the gradient's Jacobian (the Hessian) and
    vector–Jacobian product (the Hessian–vector product), every step checked. A spec with an array output y is
    taken to second order as L = Σ dy·y (weighted_output_spec)."""
    if first.spec.output.is_vector:
        first = derive_spec(weighted_output_spec(first.spec), wrt=first.wrt, seed=seed)
    text, name = gradient_spec(first)
    spec = parse_spec(text, name=f"{first.spec.name or first.spec.output.name}-hessian")
    spec.source, spec.upstream_names = first.spec.source, ("v", "u", "w", "dy")
    spec.array_upstream_names = ("V", "v", "U") if spec.tensor else ()
    # the inputs in the loss's order (the gradient's text may name them in another): one signature for both
    spec.inputs = [*(n for n in first.spec.inputs if n in spec.inputs), *(n for n in spec.inputs
                                                                          if n not in first.spec.inputs)]
    arrays, constant = second_order_arrays(first, text)
    if not arrays:
        raise SpecError(f"the gradient of {first.spec.output.name} does not depend on {', '.join(constant)}: its "
                        "Hessian is 0")
    second = derive_spec(spec, wrt=",".join(arrays), seed=seed)
    if first.tensor is not None:
        gradients = [(array, first.results[first.tensor.gradients[array]]) for array in arrays]
    else:
        gradients = [(first.wrt, first.results.get("gradient_constrained") or first.results["gradient"])]
    last = first.steps[-1]
    loss = first.spec.output.name
    directional = len(first.wrt.split(",")) > 1  # the directional gradient's spec (even if one array is left)
    reason = ("derived and checked as `softgrad derive` shows it; its product with vectors {v} of the arrays' shapes "
              "is the spec {g} below, whose gradient is the Hessian–vector product: ∇⟨∇L, v⟩ = H·v" if directional
              else "derived and checked as `softgrad derive` shows it; call it {g}: the Hessian of {L} is its "
              "Jacobian, and, being symmetric, its vector–Jacobian product is the Hessian–vector product")
    vectors = {a: v for a, v in vector_names(first).items() if a in arrays} if directional else {}
    gradient = Section("Gradient (first order)", [Step(
        rule="the gradient, derived first",
        lhs=Partial(sp.Symbol(loss), sp.IndexedBase(variable)[result.indices] if result.indices else
                    sp.Symbol(variable)),
        forms=[result.rhs],
        reason=prose(reason, g=sp.Symbol(name) if directional else sp.IndexedBase(name)[result.indices],
                     L=sp.Symbol(loss), v=sp.Symbol(", ".join(vectors.values()))),
        assumes=(result.note.removeprefix("assuming "),) if result.note else (),
        checked=last.checked, check_detail=last.check_detail, check_sizes=last.check_sizes,
        proved=last.proved, proof_detail=last.proof_detail) for variable, result in gradients])
    titles = {f"Jacobian of {name}": f"Hessian of {loss}: the Jacobian of its gradient {name}",
              "Vector–Jacobian product (backward pass)": "Hessian–vector product (the gradient's vector–Jacobian "
                                                          "product: H is symmetric)"}
    sections = [gradient, *(dataclasses.replace(s, title=titles.get(s.title, s.title)) for s in second.sections)]
    words = {"Jacobian, matrix form": "Hessian, matrix form (the Jacobian of the gradient)",
             "Vector–Jacobian product": "Hessian–vector product", "Backward pass, vector form":
             "Hessian–vector product, vector form"}
    results = {key: dataclasses.replace(r, title=words.get(r.title, r.title.replace("Jacobian", "Hessian")),
                                        lhs=r.lhs.xreplace({sp.Symbol("J"): sp.Symbol("H")}))
               for key, r in second.results.items()}
    if second.tensor is not None:  # H·V: the gradient's vector–Jacobian product, or the directional gradient's
        for array in arrays:
            product = second.tensor.gradients[array]
            vector = f"({', '.join(vectors.values())})" if directional else second.tensor.upstream
            note = (f"{vector}: the vectors H multiplies, of {', '.join(arrays)}'s shapes" if directional else
                    f"{vector}: the vector H multiplies, of {array}'s shape")
            results = {key: dataclasses.replace(
                r, title=r.title.replace(f"Gradient with respect to {array}",
                                         f"Hessian–vector product for {array} (H·{vector})"), note=note)
                if key.startswith(product) else r for key, r in results.items()}
    if "vjp" in results:
        results["vjp"] = dataclasses.replace(results["vjp"], note=f"{results['vjp'].upstream}: the vector H "
                                                                  "multiplies")
    zero = (f"; the gradient does not depend on {', '.join(constant)}: the Hessian's rows for "
            f"{'it' if len(constant) == 1 else 'them'} are 0") if constant else ""
    return dataclasses.replace(second, sections=sections, results=results, order=2,
                               check_summary=second.check_summary + zero + f"; the gradient: {first.check_summary}")

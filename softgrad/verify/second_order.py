"""Second order: a Hessian–vector product (or the Hessian itself) is checked as the vector–Jacobian product of
the loss's gradient, H·v being that VJP with upstream v (H is symmetric). These functions turn the user's
signature into the gradient's spec and the VJP's signature; verify and the C loaders both read them."""

from __future__ import annotations

from typing import Any


def second_order_signature(against: str, signature: str | None, wrt: str | None) -> tuple[str, str, int | None]:
    """(the spec of the loss's gradient, the signature of its vector–Jacobian product, and where the vector is
    among its arguments when the function returns the Hessian itself) for checking a Hessian–vector product
    'x,t,v->hv' (H·v is the gradient's VJP with upstream v: H is symmetric) or a Hessian 'x,t->H'."""
    from softgrad.derive import derive_spec, load_spec
    from softgrad.derive.hessian import gradient_spec, weighted_output_spec
    from softgrad.derive.spec import parse_spec, with_rows
    from softgrad.errors import SoftgradError

    first = derive_spec(load_spec(against), wrt=wrt)
    if first.spec.output.is_vector:  # an array output y: the second order of L = Σ dy·y (dy an input)
        first = derive_spec(weighted_output_spec(first.spec), wrt=first.wrt)
    text, _ = gradient_spec(first)
    spec = first.spec
    arrays = first.wrt.split(",")
    if len(arrays) > 1:  # H·v over several arrays: the directional gradient's gradient (see derive.hessian)
        return _second_order_of_several(first, text, signature, arrays)
    example = f"{','.join(spec.inputs)},v->hv"
    if signature is None:
        raise SoftgradError("a Hessian–vector product needs --signature naming the inputs, the vector and the "
                            f"product, e.g. {example}")
    takes, returns, vectors = _product_signature(signature, spec)
    if len(vectors) > 1 or len(returns) != 1:
        hessian = example.replace(",v->hv", "->H")
        raise SoftgradError(f"a Hessian–vector product takes the spec's inputs and one vector and returns the product, "
                            f"e.g. {example} (or, without the vector, the Hessian: {hessian}); got {signature!r}")
    upstream = derive_spec(with_rows(parse_spec(text)), wrt=first.wrt).tensor.upstream
    if not vectors:  # the Hessian itself: called as a product with the vector after the inputs it takes
        return text, ",".join([*takes, upstream]) + f"->d{first.wrt}", len(takes)
    return text, ",".join(upstream if name == vectors[0] else name for name in takes) + f"->d{first.wrt}", None


def _product_signature(signature: str, spec: Any) -> tuple[list[str], list[str], list[str]]:
    """A second-order signature's (arguments, results, and the arguments that are vectors: neither the spec's
    inputs nor its parameters)."""
    left, _, right = signature.replace(" ", "").partition("->")
    takes, returns = left.split(","), [name for name in right.split(",") if name]
    return takes, returns, [name for name in takes if name not in spec.inputs and name not in spec.parameters]


def _second_order_of_several(first: Any, text: str, signature: str | None,
                             arrays: list[str]) -> tuple[str, str, int | None]:
    """The product with respect to several arrays ('W,X,bias,label,VW,Vb->hvW,hvb'): one vector per array and one
    product per array, in --wrt's order, checked as the gradient of g = Σ dW·v_W + Σ dbias·v_bias."""
    from softgrad.derive.hessian import second_order_arrays, vector_names
    from softgrad.errors import SoftgradError

    spec = first.spec
    example = (f"{','.join(spec.inputs)},{','.join('v' + a for a in arrays)}->"
               f"{','.join('hv' + a for a in arrays)}")
    if signature is None:
        raise SoftgradError(f"a Hessian–vector product needs --signature naming the inputs, the vectors and the "
                            f"products, e.g. {example}")
    takes, returns, vectors = _product_signature(signature, spec)
    if len(vectors) != len(arrays) or len(returns) != len(arrays):
        raise SoftgradError(f"a Hessian–vector product with respect to {', '.join(arrays)} takes one vector for each "
                            f"and returns one product for each, in that order, e.g. {example}; got {signature!r}")
    _, constant = second_order_arrays(first, text)
    if constant:
        raise SoftgradError(f"the gradient does not depend on {', '.join(constant)}: the Hessian's rows for "
                            f"{'it' if len(constant) == 1 else 'them'} are 0; leave {', '.join(constant)} out of --wrt "
                            "(and its vector and product out of the signature)")
    names = vector_names(first)
    renamed = dict(zip(vectors, (names[array] for array in arrays)))
    return text, ",".join(renamed.get(name, name) for name in takes) + "->" + ",".join(
        f"d{array}" for array in arrays), None

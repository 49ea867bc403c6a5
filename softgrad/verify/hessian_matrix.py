"""Checking a hand-written Hessian matrix: H is checked through its product with vectors, H·v, against the
derived Hessian–vector product (and finite differences of the exact gradient), as a Hessian–vector product is;
where it is wrong, the exact matrix (the derived product with each unit vector) names the worst entry H[i, j].

A loss of several indices returns the whole matrix, of shape (wrt's shape) × (wrt's shape): (c, d, c, d) for
W[c, d]. A one-index loss is checked by rows (its row index implicit), and returns one block per row, (b, n, n):
the loss is a sum over rows, so its Hessian is block-diagonal and the blocks are what code computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softgrad.errors import SoftgradError


class HessianAsProduct:
    """The function under test (inputs → H) called as a Hessian–vector product (inputs, v → H·v): the vector is
    argument `position` (what the product signature takes there), dropped from the call and multiplied after."""

    def __init__(self, function: Any, position: int, name: str, by_rows: bool):
        self.function, self.position, self.name, self.by_rows = function, position, name, by_rows
        self.first: tuple[list[Any], Any] | None = None  # the first call's inputs and matrix (the order-1 case)

    def __call__(self, *arguments: Any) -> Any:
        vector = np.asarray(arguments[self.position], dtype=np.float64)
        inputs = [*arguments[:self.position], *arguments[self.position + 1:]]
        matrix = self.function(*inputs)
        matrix = np.asarray(matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else matrix, dtype=np.float64)
        if self.first is None:
            self.first = (inputs, matrix)
        return _product(matrix, vector, self.name, self.by_rows)

    def __getattr__(self, name: str) -> Any:  # findings, how, close: the loaded function's own
        return getattr(self.function, name)


def _product(matrix: Any, vector: Any, name: str, by_rows: bool) -> Any:
    """H·v for the whole matrix, or row by row for blocks (b, n, n)."""
    shape = vector.shape
    if matrix.shape == shape + shape:
        return np.tensordot(matrix, vector, axes=vector.ndim)
    if by_rows and matrix.shape == shape + shape[1:]:
        return np.einsum("bij,bj->bi", matrix.reshape(shape[0], -1, int(np.prod(shape[1:]))),
                         vector.reshape(shape[0], -1)).reshape(shape)
    expected = f"{shape + shape}" + (f" (or one block per row, {shape + shape[1:]})" if by_rows else "")
    raise SoftgradError(f"the function's {name} has shape {matrix.shape}, expected {expected}: the Hessian with "
                        "respect to the input the signature's gradient names")


def worst_entry(wrapped: HessianAsProduct, derivation: Any, sizes: dict[str, int], seed: int,
                parameters: dict[str, Any]) -> str | None:
    """The Hessian entry furthest from the exact one at the first input case, as a report line; None where
    every entry is right there (the product went wrong elsewhere) or nothing was computed."""
    from softgrad.verify.arrays import _reference
    from softgrad.verify.generated import module_gradients, sample_array_inputs

    if wrapped.first is None:
        return None
    _, matrix = wrapped.first
    tensor = derivation.tensor
    wrt = next(iter(tensor.gradients))
    arrays, _ = sample_array_inputs(derivation, sizes, seed, scale=1.0)
    values = {name: float(value) for name, value in parameters.items() if not isinstance(value, dict)}
    reference = _reference(derivation)
    shape = np.shape(arrays[tensor.upstream])
    columns = []
    for position in range(int(np.prod(shape))):  # H·e_j is column j of H
        unit = np.zeros(int(np.prod(shape)))
        unit[position] = 1.0
        columns.append(np.asarray(module_gradients(reference, derivation, {**arrays, tensor.upstream:
                                                                           unit.reshape(shape)}, values)[wrt]))
    exact = np.stack([c.ravel() for c in columns], axis=1).reshape(shape + shape)
    if matrix.shape != exact.shape:  # blocks by rows: the diagonal blocks of the exact matrix
        rows = shape[0]
        flat = exact.reshape(rows, -1, rows, int(np.prod(shape[1:])))
        exact = np.stack([flat[b, :, b, :] for b in range(rows)]).reshape(matrix.shape)
    error = np.abs(matrix - exact) / np.maximum(1.0, np.abs(exact))
    if not np.any(error > 1e-6):
        return None
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(error)), error.shape))
    return (f"worst entry {wrapped.name}[{', '.join(map(str, index))}] (inputs of order 1): got "
            f"{matrix[index]:.6g}, exact {exact[index]:.6g}; {int(np.sum(error > 1e-6))} of {error.size} entries wrong")

"""The end-to-end example: classifiers trained on scikit-learn's digits with generated gradients (the torch
Function and the C through the Python API) follow torch autograd's losses step by step."""

import tempfile
from pathlib import Path

import pytest
from conftest import require_module, require_tool

from softgrad.codegen.build import import_path

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "train_digits.py"


@pytest.mark.parametrize("model", ["softmax-regression-labels", "two-layer"])
def test_generated_gradients_train_as_torch_autograd_does(model):
    require_module("torch")
    require_module("sklearn")
    require_tool("cc")
    example = import_path(EXAMPLE)
    features, labels = example.digits()
    with tempfile.TemporaryDirectory() as folder:
        curves = example.train(model, 25, features, labels, Path(folder))
    assert set(curves) == {"torch autograd", "generated torch Function", "generated C"}
    assert example.largest_difference(curves) < 1e-6  # float64, every one of 25 steps
    reference = curves["torch autograd"]
    assert reference[-1] < 0.5 * reference[0]  # it learns: the comparison is not of flat curves

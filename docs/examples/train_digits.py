"""Train two classifiers on scikit-learn's digits (shipped inside the package: no download) with the
gradients softgrad generates, beside torch autograd, step by step from the same start.

Each model is a docs example spec: softmax regression with integer labels, and the two-layer tanh
network with one-hot targets. Three trainings of each, plain full-batch gradient descent in float64:
torch autograd on the formula written in torch (the reference), the generated torch.autograd.Function
(`softgrad codegen --lang torch`), and the generated C through the Python API (`emit(…, "c")`, built and
loaded with ctypes). The losses agree to rounding at every step; the script prints the largest relative
difference and draws the curves.

    python docs/examples/train_digits.py [--steps 150] [--svg docs/digits-training.svg]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parent
LEARNING_RATE = 0.5
HIDDEN = 32


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8×8 digit images as standardised rows of 64 features, and their labels 0…9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    features = data.data.astype(np.float64)
    spread = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0), data.target.astype(np.int64)


def _derived(name: str) -> Any:
    return derive_spec(parse_spec((EXAMPLES / f"{name}.spec").read_text(encoding="utf-8"), name=name))


def _reference_loss(name: str) -> Callable[..., Any]:
    """The model's loss written in torch by hand: what torch autograd differentiates."""
    import torch

    if name == "softmax-regression-labels":
        return lambda W, X, bias, label: torch.nn.functional.cross_entropy(X @ W.T + bias, label)
    return lambda W1, X, W2, T: -(T * torch.log_softmax(torch.tanh(X @ W1.T) @ W2.T, dim=1)).sum() / X.shape[0]


def _start(name: str, features: np.ndarray, labels: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(weights, data): the same initial weights for every training, and the arrays that are not trained."""
    rng = np.random.default_rng(0)
    if name == "softmax-regression-labels":
        weights = {"W": rng.normal(scale=0.01, size=(10, 64)), "bias": np.zeros(10)}
        return weights, {"X": features, "label": labels}
    weights = {"W1": rng.uniform(-1 / 8, 1 / 8, size=(HIDDEN, 64)), "W2": rng.uniform(-0.2, 0.2, size=(10, HIDDEN))}
    return weights, {"X": features, "T": np.eye(10)[labels]}


def train(name: str, steps: int, features: np.ndarray, labels: np.ndarray, folder: Path) -> dict[str, list[float]]:
    """The loss at every step of the three trainings of one model: reference, torch Function, C."""
    import torch

    derivation = _derived(name)
    inputs = derivation.spec.inputs
    weights, data = _start(name, features, labels)

    def tensor(name: str, value: np.ndarray) -> Any:
        return torch.tensor(value, dtype=torch.long if value.dtype.kind == "i" else torch.float64)

    # the generated torch module, and the generated C loaded through ctypes
    (file_name, text), = emit(derivation, "torch").items()
    (folder / file_name).write_text(text, encoding="utf-8")
    function = getattr(import_path(folder / file_name), file_name[:-3])
    c_folder = folder / "c"
    c_folder.mkdir(exist_ok=True)
    library = load_c(emit(derivation, "c"), c_folder)
    gradient_names = list(derivation.tensor.gradients)

    def autograd_step(loss_of: Callable[..., Any], current: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
        arrays = {n: tensor(n, current[n] if n in current else data[n]) for n in inputs}
        for n in weights:
            arrays[n].requires_grad_(True)
        loss = loss_of(*[arrays[n] for n in inputs])
        grads = torch.autograd.grad(loss, [arrays[n] for n in weights])
        return float(loss.detach()), {n: g.numpy() for n, g in zip(weights, grads)}

    def c_step(current: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
        loss, *grads = library.gradients(*[current[n] if n in current else data[n] for n in inputs])
        by_input = dict(zip(gradient_names, grads))
        return float(np.asarray(loss)), {n: np.asarray(by_input[n]) for n in weights}

    steppers = {"torch autograd": lambda current: autograd_step(_reference_loss(name), current),
                "generated torch Function": lambda current: autograd_step(function, current),
                "generated C": c_step}
    curves: dict[str, list[float]] = {}
    for label, step in steppers.items():
        current = {n: w.copy() for n, w in weights.items()}
        losses = []
        for _ in range(steps):
            loss, grads = step(current)
            losses.append(loss)
            for n in weights:
                current[n] = current[n] - LEARNING_RATE * grads[n]
        curves[label] = losses
    return curves


def largest_difference(curves: dict[str, list[float]]) -> float:
    """The largest relative difference between a generated training's loss and torch autograd's."""
    reference = np.asarray(curves["torch autograd"])
    return max(float(np.max(np.abs(np.asarray(losses) - reference) / np.abs(reference)))
               for label, losses in curves.items() if label != "torch autograd")


def svg(results: dict[str, dict[str, list[float]]]) -> str:
    """Both models' loss curves side by side, one line per training (they overlap: that is the point)."""
    width, height, margin = 360, 240, 40
    styles = {"torch autograd": 'stroke="#888" stroke-width="6"',
              "generated torch Function": 'stroke="#d62728" stroke-width="2.5"',
              "generated C": 'stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="5,4"'}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 40}" '
             'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>']
    for panel, (model, curves) in enumerate(results.items()):
        left = panel * width + margin
        top, plot_width, plot_height = 30, width - 2 * margin, height - 2 * margin
        highest = max(max(losses) for losses in curves.values())
        parts.append(f'<text x="{left}" y="20">{model}: loss per step</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}" fill="none" '
                     'stroke="#ccc"/>')
        parts.append(f'<text x="{left - 30}" y="{top + 10}">{highest:.2f}</text>'
                     f'<text x="{left - 30}" y="{top + plot_height}">0</text>'
                     f'<text x="{left}" y="{top + plot_height + 15}">step 0</text>'
                     f'<text x="{left + plot_width - 20}" y="{top + plot_height + 15}">'
                     f'{len(next(iter(curves.values()))) - 1}</text>')
        for label, losses in curves.items():
            steps = max(len(losses) - 1, 1)
            points = " ".join(f"{left + plot_width * k / steps:.1f},{top + plot_height * (1 - loss / highest):.1f}"
                              for k, loss in enumerate(losses))
            parts.append(f'<polyline fill="none" {styles[label]} points="{points}"/>')
    for number, (label, style) in enumerate(styles.items()):
        x = margin + number * 220
        parts.append(f'<line x1="{x}" y1="{height + 20}" x2="{x + 30}" y2="{height + 20}" {style}/>'
                     f'<text x="{x + 36}" y="{height + 24}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--svg", type=Path, help="write the loss curves here (SVG)")
    options = parser.parse_args()
    features, labels = digits()
    results = {}
    with tempfile.TemporaryDirectory(prefix="softgrad-digits-") as temporary:
        for name in ("softmax-regression-labels", "two-layer"):
            folder = Path(temporary) / name
            folder.mkdir()
            results[name] = curves = train(name, options.steps, features, labels, folder)
            print(f"{name}: loss {curves['torch autograd'][0]:.4f} → {curves['torch autograd'][-1]:.4f} in "
                  f"{options.steps} steps; largest relative difference from torch autograd "
                  f"{largest_difference(curves):.1e}")
    if options.svg:
        options.svg.write_text(svg(results), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Code written on torch tensors or JAX arrays — plain functions, layer classes, forward/backward pairs — is
called with them (issue #30): softgrad reads which framework the code's functions use, converts its inputs and
reads its results back; a wrong gradient is still found, and no library warning reaches the output."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

TORCH_CODE = '''
import torch

def softmax(x):
    return torch.softmax(x, dim=-1)

def softmax_backward(x, g):  # the helper above uses torch: so does this function
    y = softmax(x)
    return y * (g - (g * y).sum(-1, keepdim=True))

def softmax_backward_wrong(x, g):
    y = softmax(x)
    return y * (g - (g * y).sum(0, keepdim=True))  # the sum over the batch

class Softmax:
    def forward(self, x):
        self.out = torch.softmax(x, dim=1)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        return dx - self.out * dx.sum(dim=1, keepdim=True)

def layernorm_forward(x, gamma, beta):
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    xhat = (x - mean) / torch.sqrt(var + 1e-5)
    return gamma * xhat + beta, (xhat, gamma, var + 1e-5)

def layernorm_backward(dout, cache):
    xhat, gamma, v = cache
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(1, keepdim=True) - xhat * (dxhat * xhat).mean(1, keepdim=True)) / torch.sqrt(v)
    return dx, (dout * xhat).sum(0), dout.sum(0)
'''

JAX_CODE = '''
import jax.numpy as jnp

def softmax_backward(x, g):
    y = jnp.exp(x - x.max(-1, keepdims=True))
    y = y / y.sum(-1, keepdims=True)
    return y * (g - (g * y).sum(-1, keepdims=True))
'''


def _verify(folder: Path, target: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", target, *arguments], capture_output=True,
                          text=True, timeout=300, cwd=folder)


@pytest.fixture
def torch_code(tmp_path: Path) -> Path:
    require_module("torch")
    (tmp_path / "code.py").write_text(TORCH_CODE)
    return tmp_path


@pytest.mark.parametrize("target, arguments, said", [
    ("code.py:softmax_backward", ["--against", "softmax"], "called with torch tensors"),
    ("code.py:Softmax", ["--against", "softmax", "--signature", "x,g->dx"], "Softmax().forward(x), then .backward(g), "
                                                                            "with torch tensors"),
    ("code.py:layernorm_forward,layernorm_backward",
     ["--against", str(EXAMPLES / "layer-norm-affine.spec"), "--signature",
      "x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta"], "called with torch tensors"),
])
def test_code_on_torch_tensors_is_called_with_them(torch_code: Path, target: str, arguments: list, said: str) -> None:
    result = _verify(torch_code, target, *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    assert said in result.stdout and result.stderr == ""  # no warning of torch's reaches the user


def test_a_wrong_gradient_on_torch_tensors_is_still_caught(torch_code: Path) -> None:
    result = _verify(torch_code, "code.py:softmax_backward_wrong", "--against", "softmax")
    assert result.returncode == 1 and "FAIL" in result.stdout


def test_code_on_jax_arrays_is_called_with_them(tmp_path: Path) -> None:
    require_module("jax")
    (tmp_path / "code.py").write_text(JAX_CODE)
    result = _verify(tmp_path, "code.py:softmax_backward", "--against", "softmax")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "called with JAX arrays" in result.stdout


def test_which_framework_code_is_written_on_is_read_from_the_names_it_uses(tmp_path: Path) -> None:
    from softgrad.codegen.build import import_path
    from softgrad.verify.adapters import framework_used

    (tmp_path / "mixed.py").write_text("import numpy as np\nimport math\n\ndef on_numpy(x):\n    return np.exp(x)\n\n"
                                       "def scalar(x):\n    return math.exp(x)\n")
    module = import_path(tmp_path / "mixed.py")
    assert framework_used([module.on_numpy]) is None and framework_used([module.scalar]) is None
    if require_module("torch"):
        (tmp_path / "t.py").write_text("import numpy as np\nfrom torch import softmax\n\n"
                                       "def f(x):\n    return softmax(x, 0) + np.float64(0)\n")
        assert framework_used([import_path(tmp_path / "t.py").f]) == "torch"


def test_a_layer_class_on_jax_arrays_is_checked_in_float64(tmp_path: Path) -> None:
    """The layer adapter makes JAX arrays too: in float64, as every JAX code under test (float32 would fail)."""
    require_module("jax")
    (tmp_path / "code.py").write_text('''
import jax.numpy as jnp

class Softmax:
    def forward(self, x):
        e = jnp.exp(x - x.max(axis=1, keepdims=True))
        self.out = e / e.sum(axis=1, keepdims=True)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        return dx - self.out * dx.sum(axis=1, keepdims=True)
''')
    # from Python (in the caller's process, where no worker sets JAX_ENABLE_X64), then from the command line
    script = ("import sys; sys.path.insert(0, '.'); from code import Softmax; from softgrad.verify import "
              "check_gradient; report = check_gradient(Softmax, against='softmax', signature='x,g->dx'); "
              "print(report.passed, report.conventions)")
    environment = {key: value for key, value in os.environ.items() if key != "JAX_ENABLE_X64"}
    in_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                                cwd=tmp_path, env=environment)
    assert in_process.stdout.startswith("True") and "with JAX arrays" in in_process.stdout, in_process.stderr
    result = _verify(tmp_path, "code.py:Softmax", "--against", "softmax", "--signature", "x,g->dx")
    assert result.returncode == 0, result.stdout + result.stderr

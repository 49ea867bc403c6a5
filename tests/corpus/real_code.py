"""Gradients written the way public code writes them: course solutions, layer classes, torch and JAX custom
gradients. Each right one has wrong twins with a mistake seen in the wild. softgrad checks them as they
are, with no adapter code (tests/test_real_code.py lists how each is called)."""

import numpy as np


def _softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


# 1. A course solution: class labels, mean loss, returns (loss, dx).
def softmax_loss(x, y):
    """Computes the loss and gradient for softmax classification (x: (N, C) scores, y: (N,) labels)."""
    shifted_logits = x - np.max(x, axis=1, keepdims=True)
    Z = np.sum(np.exp(shifted_logits), axis=1, keepdims=True)
    log_probs = shifted_logits - np.log(Z)
    probs = np.exp(log_probs)
    N = x.shape[0]
    loss = -np.sum(log_probs[np.arange(N), y]) / N
    dx = probs.copy()
    dx[np.arange(N), y] -= 1
    dx /= N
    return loss, dx


def softmax_loss_not_divided(x, y):  # the loss is a mean, the gradient the sum's
    loss, dx = softmax_loss(x, y)
    return loss, dx * x.shape[0]


# 2. A layer class with a saved state (the "from scratch" books): one-hot targets, mean loss.
class SoftmaxWithLoss:
    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = _softmax(x)
        batch_size = self.t.shape[0]
        log_y = x - x.max(axis=1, keepdims=True)
        log_y -= np.log(np.exp(log_y).sum(axis=1, keepdims=True))
        self.loss = -np.sum(self.t * log_y) / batch_size
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        return (self.y - self.t) * dout / batch_size


class SoftmaxWithLossSignFlip(SoftmaxWithLoss):
    def backward(self, dout=1):
        return (self.t - self.y) * dout / self.t.shape[0]


# 3. A softmax layer class: backward gets the upstream gradient.
class Softmax:
    def forward(self, x):
        self.out = _softmax(x)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        return dx - self.out * np.sum(dx, axis=1, keepdims=True)


class SoftmaxDiagonalOnly(Softmax):  # only the i = j entries of the Jacobian: y(1 − y)
    def backward(self, dout):
        return dout * self.out * (1 - self.out)


# 4. The whole batch in one softmax (axis=None): right for one row, wrong for a batch.
def softmax_backward(x, g):
    y = _softmax(x)
    return y * (g - np.sum(g * y, axis=-1, keepdims=True))


def softmax_backward_whole_batch(x, g):
    e = np.exp(x - x.max())
    y = e / e.sum()
    return y * (g - np.sum(g * y))


# 5. Log-softmax backward from its saved output (y = log softmax x).
def log_softmax_backward(y, g):
    return g - np.exp(y) * g.sum(axis=-1, keepdims=True)


def log_softmax_backward_forgot_exp(y, g):
    return g - y * g.sum(axis=-1, keepdims=True)


# 6. The gradient with respect to the probabilities (--wrt y): -t / p.
def cross_entropy_grad_wrt_probs(p, t):
    return -t / p


def cross_entropy_grad_wrt_probs_as_logits(p, t):  # the logits' formula used for the probabilities
    return p - t


# 7. KL divergence of softmax(z) from q, any q (unnormalised too).
def kl_grad(z, q):
    return _softmax(z) * q.sum(axis=-1, keepdims=True) - q


def kl_grad_assumes_normalised(z, q):  # p − q: right only where q sums to 1
    return _softmax(z) - q


# 8. A float64 kernel with a float32 accumulator.
def softmax_backward_float32_dot(x, g):
    y = _softmax(x)
    dot = np.sum((g * y).astype(np.float32), axis=-1, keepdims=True)
    return y * (g - dot.astype(np.float64))


# 9. The class axis first (arrays (C, N), as column-major frameworks store them).
def softmax_backward_classes_first(x, g):
    y = _softmax(x, axis=0)
    return y * (g - np.sum(g * y, axis=0, keepdims=True))


# 10. Per-row losses (reduction none) of binary cross-entropy with logits, returned as (dz, loss).
def bce_with_logits(z, t):
    loss = np.sum(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), axis=-1)
    return 1 / (1 + np.exp(-z)) - t, loss


def bce_with_logits_extra_factor(z, t):  # the sigmoid's derivative applied once more
    p = 1 / (1 + np.exp(-z))
    loss = np.sum(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))), axis=-1)
    return (p - t) * p * (1 - p), loss


# 11. Naive softmax: right in the textbook, overflows for logits of order 1000.
def softmax_backward_naive(x, g):
    e = np.exp(x)
    y = e / e.sum(axis=-1, keepdims=True)
    return np.nan_to_num(y * (g - np.sum(g * y, axis=-1, keepdims=True)))

"""Hand-written gradients for the verify tests: each correct one has wrong twins with a known defect."""

import numpy as np


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x):
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# --- x,g->dx (softmax)
def softmax_vjp(x, g):
    y = softmax(x)
    return y * (g - (g * y).sum(-1, keepdims=True))


def softmax_vjp_wrong_axis(x, g):  # reduces over the batch: right for one row, wrong for many
    y = softmax(x)
    return y * (g - (g * y).sum(0, keepdims=True))


def softmax_vjp_sign(x, g):
    y = softmax(x)
    return y * (g + (g * y).sum(-1, keepdims=True))


def softmax_vjp_one_element(x, g):  # element 3 of every row off by 0.1 %
    dx = softmax_vjp(x, g)
    dx[..., 3] *= 1.001
    return dx


def softmax_vjp_relative_1e6(x, g):
    return softmax_vjp(x, g) * (1 + 1e-6)


def softmax_vjp_naive(x, g):  # overflows for large logits
    e = np.exp(x)
    y = e / e.sum(-1, keepdims=True)
    return y * (g - (g * y).sum(-1, keepdims=True))


# --- y,g->dx (Caffe style)
def softmax_backward_from_output(y, g):
    return y * (g - (g * y).sum(-1, keepdims=True))


def softmax_backward_from_output_transposed(y, g):  # uses the row's sum over the wrong factor
    return y * (g - g.sum(-1, keepdims=True))


# --- z,t->dz (cross-entropy, any targets)
def cross_entropy_grad(z, t):
    return softmax(z) * t.sum(-1, keepdims=True) - t


def cross_entropy_grad_p_minus_t(z, t):  # right only when the targets sum to 1
    return softmax(z) - t


def cross_entropy_grad_mean(z, t):  # the gradient of the mean over rows
    return (softmax(z) * t.sum(-1, keepdims=True) - t) / len(z)


# --- z,t->loss,dz
def cross_entropy_loss_and_grad(z, t):
    return -(t * log_softmax(z)).sum(-1), cross_entropy_grad(z, t)


def cross_entropy_loss_and_grad_wrong_loss(z, t):
    return -(t * np.log(softmax(z) + 1e-3)).sum(-1), cross_entropy_grad(z, t)


# --- x->J (one row)
def softmax_jacobian(x):
    y = softmax(x)
    return np.diag(y) - np.outer(y, y)


def softmax_jacobian_transposed_index(x):  # δ_ij y_i − y_i y_i: the index typo from the reference notes
    y = softmax(x)
    return np.diag(y) - np.outer(y, y) * 0 - (y * y)[:, None] * np.ones_like(y)[None, :]


# --- for input-error tests
def raises(x, g):
    raise ValueError("shapes do not match")


def wrong_shape(x, g):
    return softmax_vjp(x, g)[:, :-1]


def returns_nan(x, g):
    dx = softmax_vjp(x, g)
    dx[0, 0] = np.nan
    return dx


# --- generic mode (no spec): f and its gradient
def squared_norm_ratio(x):
    return x**2 / (x**2).sum(-1, keepdims=True)


def squared_norm_ratio_vjp(x, g):
    s = (x**2).sum(-1, keepdims=True)
    y = x**2 / s
    return 2 * x / s * (g - (g * y).sum(-1, keepdims=True))

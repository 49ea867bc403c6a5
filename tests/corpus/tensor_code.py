"""Gradients written the way course solutions, tutorials and papers write them (several indices)."""

import numpy as np


def softmax_regression(X, W, b, T):
    """Soft targets, batch-mean cross-entropy, log-softmax for the loss: (loss, dW, db)."""
    z = X @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    loss = -np.sum(T * log_p) / X.shape[0]
    dz = (p - T) / X.shape[0]
    return loss, dz.T @ X, dz.sum(axis=0)

def sum_reduction(X, W, b, T):
    """A mean loss with a summed gradient."""
    z = X @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.sum(T * np.log(p)) / X.shape[0]
    dz = (p - T)
    return loss, dz.T @ X, dz.sum(axis=0)

def naive(X, W, b, T):
    """No max shift: overflows at large logits."""
    z = X @ W.T + b
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.sum(T * np.log(p)) / X.shape[0]
    dz = (p - T) / X.shape[0]
    return loss, dz.T @ X, dz.sum(axis=0)

def attention_backward(Q, K, V, dO):
    d = Q.shape[1]
    S = Q @ K.T / np.sqrt(d)
    S -= S.max(axis=1, keepdims=True)
    P = np.exp(S)
    P /= P.sum(axis=1, keepdims=True)
    out = P @ V
    dV = P.T @ dO
    dP = dO @ V.T
    D = (dO * out).sum(axis=1, keepdims=True)
    dS = P * (dP - D)
    return dS @ K / np.sqrt(d), dS.T @ Q / np.sqrt(d), dV

def attention_wrong_scale(Q, K, V, dO):
    dQ, dK, dV = attention_backward(Q, K, V, dO)
    return dQ * np.sqrt(Q.shape[1]), dK, dV


def labels_mean_loss(X, W, b, y):
    """Class labels, mean cross-entropy, returning (loss, dW, dX, db) as course solutions do."""
    z = X @ W.T + b
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = X.shape[0]
    loss = -log_p[np.arange(n), y].mean()
    dz = np.exp(log_p)
    dz[np.arange(n), y] -= 1
    dz /= n
    return loss, dz.T @ X, dz @ W, dz.sum(axis=0)


def labels_sign_flip(X, W, b, y):
    loss, dW, dX, db = labels_mean_loss(X, W, b, y)
    return loss, -dW, dX, db


def layer_norm_backward(x, gamma, beta, dy):
    """The textbook O(n) layer-norm backward."""
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    inv = 1 / np.sqrt(var + 1e-5)
    xhat = (x - mean) * inv
    g = dy * gamma
    dx = inv * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def layer_norm_transposed_dgamma(x, gamma, beta, dy):
    dx, dgamma, dbeta = layer_norm_backward(x, gamma, beta, dy)
    return dx, dgamma[::-1].copy(), dbeta


def layer_norm_keepdims(x, gamma, beta, dy):
    """dgamma and dbeta with keepdims=True, shape (1, D), as course code often returns them."""
    dx, dgamma, dbeta = layer_norm_backward(x, gamma, beta, dy)
    return dx, dgamma[None, :], dbeta.reshape(1, -1)

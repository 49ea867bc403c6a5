"""JAX code as users write it: functions with jax.custom_vjp."""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def _softmax_forward(x):
    y = jax.nn.softmax(x, axis=-1)
    return y, y


def _softmax_backward(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_forward, _softmax_backward)


@jax.custom_vjp
def softmax_forgot_weights(x):
    return jax.nn.softmax(x, axis=-1)


def _wrong_backward(y, g):  # Σ g where Σ g·y belongs
    return (y * (g - jnp.sum(g, axis=-1, keepdims=True)),)


softmax_forgot_weights.defvjp(_softmax_forward, _wrong_backward)


@jax.custom_vjp
def log_softmax(x):
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def _log_softmax_forward(x):
    y = log_softmax(x)
    return y, y


def _log_softmax_backward(y, g):
    return (g - jnp.exp(y) * jnp.sum(g, axis=-1, keepdims=True),)


log_softmax.defvjp(_log_softmax_forward, _log_softmax_backward)


@jax.custom_vjp
def log_softmax_elementwise(x):
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def _elementwise_backward(y, g):  # g − softmax·g: the sum is missing
    return (g - jnp.exp(y) * g,)


log_softmax_elementwise.defvjp(_log_softmax_forward, _elementwise_backward)

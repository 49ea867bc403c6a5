"""Functions users write that the catalog does not have: every test that claims generality runs them."""

OUTSIDE_THE_CATALOG = [
    "y[i] = exp(-x[i]) / sum(exp(-x[k]), k)",  # softmin
    "y[i] = x[i]^2 / sum(x[k]^2, k)",  # spherical softmax
    "y[i] = (1 + x[i] + x[i]^2/2) / sum(1 + x[k] + x[k]^2/2, k)",  # Taylor softmax
    "y[i] = x[i] / sqrt(sum(x[k]^2, k))",  # L2 normalisation
    "y[i] = 0.5*x[i]*(1 + tanh(0.7978845608*(x[i] + 0.044715*x[i]^3)))",  # GELU, tanh form
    "y[i] = x[i]*sigmoid(x[i])",  # SiLU
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); H = -sum(p[k]*log(p[k]), k)",  # softmax entropy
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*(1-p[k])^2*log(p[k]), k)",  # focal loss, γ = 2
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum((0.9*t[k] + 0.1*s)*log(p[k]), k)",  # label smoothing
    "y[i] = tanh(x[i])",
    "y[i] = x[i]*tanh(log(1 + exp(x[i])))",  # Mish
    "y[i] = log(1 + exp(x[i]))",  # softplus, written out
    "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)",  # layer norm
    "y[i] = x[i]/sqrt(sum(x[k]^2, k)/n + 0.00001)",  # RMSNorm
    "y[i] = 0.5*x[i]*(1 + erf(x[i]/sqrt(2)))",  # GELU, erf form
    "y[i] = max(x[i], 0)",  # ReLU
    "y[i] = max(x[i], 0.01*x[i])",  # leaky ReLU
    "y[i] = x[i]/(1 + abs(x[i]))",  # softsign
    "y[i] = softplus(x[i])",
    "y[i] = log1p(x[i]^2)",
    "y[i] = x[i] - sum(x[k], k)/n",  # mean centering
    "y[i] = exp(x[i] + b[i]) / sum(exp(x[k] + b[k]), k)",  # softmax with a bias input
    "L = sum(softplus(x[k]) - t[k]*x[k], k)",  # binary cross-entropy with logits, stable form
    "L = sum(max(0, 1 - t[k]*x[k]), k)",  # hinge loss
    "L = sum((x[k] - t[k])^2, k)/n",  # mean squared error
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = sum(p[k]^2, k)",  # collision probability
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*log(p[k]), k) + sum(t[k]*(1 - p[k]), k)",  # Poly-1
    "p[i] = sigmoid(x[i]); L = -sum(t[k]*(1 - p[k])^2*log(p[k]) + (1 - t[k])*p[k]^2*log(1 - p[k]), k)",  # sigmoid focal
    "y[i] = exp(sum(x[k], k))*x[i]",  # an exp of a sum (SymPy's expand and cancel write it as a product Π)
]

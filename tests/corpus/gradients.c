/* Hand-written C gradients for the verify tests (row-major (rows, n) arrays). */
#include <math.h>
#include <stddef.h>

static void softmax_row(const double *x, double *y, size_t n)
{
    double m = -INFINITY, s = 0.0;
    for (size_t i = 0; i < n; ++i) m = fmax(m, x[i]);
    for (size_t i = 0; i < n; ++i) { y[i] = exp(x[i] - m); s += y[i]; }
    for (size_t i = 0; i < n; ++i) y[i] /= s;
}

void softmax_vjp(const double *x, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        const double *xr = x + r * n, *gr = g + r * n;
        double *out = dx + r * n;
        double dot = 0.0;
        softmax_row(xr, out, n);
        for (size_t i = 0; i < n; ++i) dot += gr[i] * out[i];
        for (size_t i = 0; i < n; ++i) out[i] = out[i] * (gr[i] - dot);
    }
}

/* A float accumulator in a double kernel: relative errors ~1e-7. */
void softmax_vjp_float_accumulator(const double *x, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        const double *xr = x + r * n, *gr = g + r * n;
        double *out = dx + r * n;
        float dot = 0.0f;
        softmax_row(xr, out, n);
        for (size_t i = 0; i < n; ++i) dot += (float)(gr[i] * out[i]);
        for (size_t i = 0; i < n; ++i) out[i] = out[i] * (gr[i] - (double)dot);
    }
}

void cross_entropy_loss_and_grad(const double *z, const double *t, double *loss, double *dz, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        const double *zr = z + r * n, *tr = t + r * n;
        double *out = dz + r * n;
        double m = -INFINITY, s = 0.0, total = 0.0, weighted = 0.0;
        for (size_t i = 0; i < n; ++i) m = fmax(m, zr[i]);
        for (size_t i = 0; i < n; ++i) { s += exp(zr[i] - m); total += tr[i]; weighted += tr[i] * (zr[i] - m); }
        loss[r] = total * log(s) - weighted;
        for (size_t i = 0; i < n; ++i) out[i] = exp(zr[i] - m) / s * total - tr[i];
    }
}

void cross_entropy_grad_p_minus_t(const double *z, const double *t, double *dz, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        softmax_row(z + r * n, dz + r * n, n);
        for (size_t i = 0; i < n; ++i) dz[r * n + i] -= t[r * n + i];
    }
}

void softmax_jacobian(const double *x, double *J, size_t n)
{
    double y[64];
    softmax_row(x, y, n);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) J[i * n + j] = (i == j ? y[i] : 0.0) - y[i] * y[j];
}

void softmax_jacobian_sign(const double *x, double *J, size_t n)
{
    double y[64];
    softmax_row(x, y, n);
    for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) J[i * n + j] = (i == j ? y[i] : 0.0) + y[i] * y[j];
}

void softmax_vjp_float(const float *x, const float *g, float *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        const float *xr = x + r * n, *gr = g + r * n;
        float *out = dx + r * n;
        float m = -INFINITY, s = 0.0f, dot = 0.0f;
        for (size_t i = 0; i < n; ++i) m = fmaxf(m, xr[i]);
        for (size_t i = 0; i < n; ++i) { out[i] = expf(xr[i] - m); s += out[i]; }
        for (size_t i = 0; i < n; ++i) { out[i] /= s; dot += gr[i] * out[i]; }
        for (size_t i = 0; i < n; ++i) out[i] = out[i] * (gr[i] - dot);
    }
}

/* Caffe style: from the saved output y. The wrong twin forgets the factor y in the dot product. */
void softmax_backward_from_output(const double *y, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        double dot = 0.0;
        for (size_t i = 0; i < n; ++i) dot += g[r * n + i] * y[r * n + i];
        for (size_t i = 0; i < n; ++i) dx[r * n + i] = y[r * n + i] * (g[r * n + i] - dot);
    }
}

void softmax_backward_from_output_no_y(const double *y, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        double dot = 0.0;
        for (size_t i = 0; i < n; ++i) dot += g[r * n + i];
        for (size_t i = 0; i < n; ++i) dx[r * n + i] = y[r * n + i] * (g[r * n + i] - dot);
    }
}

/* Softmax backward with the class axis first: x, g, dx are (n, rows), entry (i, r) at i * rows + r. */
#include <math.h>
#include <stddef.h>

void softmax_backward_classes_first(const double *x, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0.0, dot = 0.0;
        for (size_t i = 0; i < n; ++i) m = fmax(m, x[i * rows + r]);
        for (size_t i = 0; i < n; ++i) s += exp(x[i * rows + r] - m);
        for (size_t i = 0; i < n; ++i) dot += g[i * rows + r] * exp(x[i * rows + r] - m) / s;
        for (size_t i = 0; i < n; ++i) {
            double y = exp(x[i * rows + r] - m) / s;
            dx[i * rows + r] = y * (g[i * rows + r] - dot);
        }
    }
}

/* The same with the row's sum taken over the wrong stride (reads row-major): wrong for rows > 1. */
void softmax_backward_classes_first_wrong_stride(const double *x, const double *g, double *dx, size_t rows, size_t n)
{
    for (size_t r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0.0, dot = 0.0;
        for (size_t i = 0; i < n; ++i) m = fmax(m, x[i * rows + r]);
        for (size_t i = 0; i < n; ++i) s += exp(x[r * n + i] - m);
        for (size_t i = 0; i < n; ++i) dot += g[i * rows + r] * exp(x[i * rows + r] - m) / s;
        for (size_t i = 0; i < n; ++i) {
            double y = exp(x[i * rows + r] - m) / s;
            dx[i * rows + r] = y * (g[i * rows + r] - dot);
        }
    }
}

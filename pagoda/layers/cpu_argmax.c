/* Row-wise argmax of float32 logits on the CPU (AVX-512), torch.argmax's rule: the first maximal value of a row, a
 * NaN counting as larger than any number (the first NaN wins). One thread, two passes over a row: its maximum (and
 * whether it holds a NaN), then the first index holding that value. A maximum does not depend on the order it is
 * taken in, so 16 lanes give the row's exact maximum; `m = max(v, m)` keeps m where v is NaN, and NaNs are found by
 * their own unordered compare. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static int64_t argmax_row(const float *x, int64_t n) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m = _mm512_max_ps(v, m);
    }
    float best = _mm512_reduce_max_ps(m);
    int tail_nan = 0;
    for (int64_t j = i; j < n; j++) {
        tail_nan |= x[j] != x[j];
        best = x[j] > best ? x[j] : best;
    }
    if (nan || tail_nan) {
        for (int64_t j = 0; j < n; j++)
            if (x[j] != x[j]) return j;
    }
    const __m512 b = _mm512_set1_ps(best);
    for (i = 0; i + 16 <= n; i += 16) {
        const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), b, _CMP_EQ_OQ);
        if (eq) return i + __builtin_ctz((unsigned)eq);
    }
    for (; i < n; i++)
        if (x[i] == best) return i;
    return 0; /* not reached for n > 0: best is one of the values */
}

/* out[r] = argmax of row r of x [rows][n] (row stride `stride` floats). Returns 0, or -1 for a bad shape. */
int pagoda_argmax_rows(const float *x, int64_t rows, int64_t n, int64_t stride, int64_t *out) {
    if (rows < 0 || n <= 0 || stride < n) return -1;
    for (int64_t r = 0; r < rows; r++) out[r] = argmax_row(x + r * stride, n);
    return 0;
}

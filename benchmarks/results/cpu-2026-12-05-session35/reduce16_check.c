#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
__attribute__((target("avx512f"))) static inline __m512 reduce16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int k = 0; k < 8; k++)
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int m = 0; m < 4; m++)
        c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int n = 0; n < 2; n++)
        d[n] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * n], c[2 * n + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(c[2 * n], c[2 * n + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
int main() {
    srand(1);
    int bad = 0;
    for (int t = 0; t < 10000; t++) {
        float x[16][16];
        __m512 a[16];
        for (int i = 0; i < 16; i++) { for (int l = 0; l < 16; l++) x[i][l] = (rand() / (float)RAND_MAX - 0.5f) * (1 << (rand() % 20)); a[i] = _mm512_loadu_ps(x[i]); }
        float out[16];
        _mm512_storeu_ps(out, reduce16(a));
        for (int L = 0; L < 16; L++) {
            float ref = _mm512_reduce_add_ps(a[4 * (L % 4) + L / 4]);
            if (memcmp(&ref, &out[L], 4)) { if (bad < 5) printf("t %d L %d ref %g got %g\n", t, L, ref, out[L]); bad++; }
        }
    }
    printf("bad %d\n", bad);
}

/* out[m][n] = sum_k x[m][k] * w[n][k] in float32, for bf16 x [M][K] and a bf16 weight w [N][K] (the LM head),
 * on x86 AVX2 + FMA: for CPUs without native bf16 (no AVX512-BF16/AMX), where oneDNN cannot prepack a bf16
 * weight and torch's bf16 matmul runs a GEMV per row (3.4 ms per row for the default model's 49152 x 576 head on
 * the AVX2 dev VM), and an fp32 copy of the weight would double its bytes.
 *
 * Arithmetic, for every output element (independent of M, of the tile and of the thread: a row computed alone
 * gets the same bits as inside any batch):
 *   8 lane sums s[j] = fma chains over k = j, j+8, j+16, ... (fp32, in k order), from 0;
 *   out = ((s0+s4) + (s2+s6)) + ((s1+s5) + (s3+s7))     (the fixed horizontal reduction of hsum8 below).
 * bf16 -> fp32 is a 16-bit shift (exact). K must be a multiple of 8 (else -1: the caller keeps torch's matmul).
 * Tiles: 3 weight rows x 3 activation rows (9 accumulators, 3 + 3 operand registers); threads split N. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define TN 3
#define TM 3

static inline __m256 load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* s0+s4 .. s3+s7 */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                           /* (s0+s4)+(s2+s6), ... */
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline)) void tile(const float *X, const uint16_t *W, float *out, int K,
                                                        int N, int n0, int m0, const int tn, const int tm) {
    __m256 acc[TN][TM];
#pragma GCC unroll 3
    for (int i = 0; i < tn; i++)
#pragma GCC unroll 3
        for (int j = 0; j < tm; j++) acc[i][j] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 8) {
        __m256 w[TN], x[TM];
#pragma GCC unroll 3
        for (int i = 0; i < tn; i++) w[i] = load_bf16(W + (size_t)(n0 + i) * K + k);
#pragma GCC unroll 3
        for (int j = 0; j < tm; j++) x[j] = _mm256_loadu_ps(X + (size_t)(m0 + j) * K + k);
#pragma GCC unroll 3
        for (int i = 0; i < tn; i++)
#pragma GCC unroll 3
            for (int j = 0; j < tm; j++) acc[i][j] = _mm256_fmadd_ps(x[j], w[i], acc[i][j]);
    }
#pragma GCC unroll 3
    for (int i = 0; i < tn; i++)
#pragma GCC unroll 3
        for (int j = 0; j < tm; j++) out[(size_t)(m0 + j) * N + n0 + i] = hsum8(acc[i][j]);
}

#define TILE_M(TNV)                                                         \
    switch (tm) {                                                           \
        case 1: tile(X, W, out, K, N, n0, m0, TNV, 1); break;              \
        case 2: tile(X, W, out, K, N, n0, m0, TNV, 2); break;              \
        default: tile(X, W, out, K, N, n0, m0, TNV, 3); break;             \
    }

static void run_tile(const float *X, const uint16_t *W, float *out, int K, int N, int n0, int m0, int tn, int tm) {
    switch (tn) {
        case 1: TILE_M(1) break;
        case 2: TILE_M(2) break;
        default: TILE_M(3) break;
    }
}

int pagoda_bf16_head(const uint16_t *X16, const uint16_t *W, float *out, int M, int N, int K, int threads) {
    if (M <= 0 || N <= 0 || K <= 0 || K % 8) return -1;
    float *X = (float *)aligned_alloc(32, ((size_t)M * K * sizeof(float) + 31) / 32 * 32);
    if (!X) return -1;
    for (size_t i = 0; i < (size_t)M * K; i++) {
        union { uint32_t u; float f; } t;
        t.u = (uint32_t)X16[i] << 16;
        X[i] = t.f;
    }
    const int tiles = (N + TN - 1) / TN;
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
    for (int t = 0; t < tiles; t++) {
        const int n0 = t * TN, tn = N - n0 < TN ? N - n0 : TN;
        for (int m0 = 0; m0 < M; m0 += TM) run_tile(X, W, out, K, N, n0, m0, tn, M - m0 < TM ? M - m0 : TM);
    }
    free(X);
    return 0;
}

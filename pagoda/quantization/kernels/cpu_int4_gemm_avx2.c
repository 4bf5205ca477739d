/* Multi-row int4 weight-only matmul for x86 AVX2 (no AVX-512), computing exactly what torch's
 * aten::_weight_int4pack_mm_for_cpu computes in its AVX2 build, bit for bit, faster from a few rows.
 * The AVX-512 twin is cpu_int4_gemm.c; the two torch kernels differ in layout and in arithmetic.
 *
 * Arithmetic of the torch kernel (int4mm_kernel.cpp, AVX2 tinygemm_kernel), for every output element:
 *   z'      = fma(float(scale[k/G][n]), -8, float(zero[k/G][n]))                        (fp32, one rounding)
 *   w[k][n] = fma(float(q[k][n]), float(scale[k/G][n]), z')        q the raw nibble 0..15 (fp32, one rounding)
 *   acc     = 0;  for k = 0..K-1:  acc = fma(float(a[m][k]), w[k][n], acc)            (fp32, in k order)
 *   c[m][n] = bf16(acc), round to nearest even by integer add (torch's cvtfp32_bf16), NaN -> 0xffff
 * Nothing here depends on M: each row is computed alone with the same operation sequence, so this kernel and the
 * torch kernel agree for every batch size.
 *
 * Why faster: torch's AVX2 kernel keeps 4 rows x 32 columns of accumulators plus 4 weight, 4 scale and 4 zero
 * vectors live (29 of AVX2's 16 registers: it spills) and re-dequantizes the weight for every 4-row block. Here a
 * task owns 16 columns (one nibble half of a 32-column block): up to SMALL_ROWS rows dequantize in registers
 * (2 weight vectors per k for all rows, 15 registers), more rows dequantize the half once into an fp32 panel
 * [K][16] and run TILE_ROWS rows at a time over it (12 accumulators; broadcasts and panel reads are loads).
 *
 * Layouts (torch's AVX2 int4pack, N a multiple of 32): packed B is uint8 [N/32][K][16]; byte j of row k of block b
 * holds column 32b + j in its low nibble and 32b + 16 + j in its high nibble. scales_zeros is bf16 [K/G][N][2]
 * (scale, zero). A is bf16 [M][K] row-major (lda = K), C is bf16 [M][N].
 * Threads: OpenMP over the 2*N/32 half-blocks, as many as torch uses (the same libgomp runtime as torch). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define SMALL_ROWS 4 /* up to this many rows: direct_tile (no fp32 panel) */
#define TILE_ROWS 6  /* rows per pass over a panel */

static inline float bf16_to_f32(uint16_t v) {
    union { uint32_t u; float f; } t;
    t.u = (uint32_t)v << 16;
    return t.f;
}

/* torch's cvtfp32_bf16 (AVX2): round to nearest even by integer add, NaN -> 0xffff; 8 values to 8 bf16. */
static inline __m128i f32_to_bf16(__m256 a) {
    __m256i x = _mm256_castps_si256(a);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)), x);
    t = _mm256_srli_epi32(t, 16);
    __m256 ordered = _mm256_cmp_ps(a, a, _CMP_ORD_Q);
    t = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(0xffff)),
                                             _mm256_castsi256_ps(t), ordered));
    return _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* Scales and z' = fma(s, -8, z) of 8 columns starting at `col` for group kb. */
static inline void load_sz(const uint16_t *SZ, int N, int kb, int col, __m256 *s, __m256 *z) {
    __m256i t = _mm256_loadu_si256((const __m256i *)(SZ + ((size_t)kb * N + col) * 2)); /* 8 (s, z) pairs */
    __m256 sv = _mm256_castsi256_ps(_mm256_slli_epi32(t, 16));
    __m256 zv = _mm256_castsi256_ps(_mm256_and_si256(t, _mm256_set1_epi32((int)0xffff0000)));
    *s = sv;
    *z = _mm256_fmadd_ps(sv, _mm256_set1_ps(-8.0f), zv);
}

/* The 16 weights of row k of half `half` of a block (bytes Bp[k*16 .. +15]) as two fp32 vectors. */
static inline void dequant_row(const uint8_t *row, int half, __m256 s0, __m256 z0, __m256 s1, __m256 z1,
                               __m256 *w0, __m256 *w1) {
    __m256i q0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)row));
    __m256i q1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + 8)));
    const __m256i fifteen = _mm256_set1_epi32(15);
    if (half) {
        q0 = _mm256_srli_epi32(q0, 4);
        q1 = _mm256_srli_epi32(q1, 4);
    } else {
        q0 = _mm256_and_si256(q0, fifteen);
        q1 = _mm256_and_si256(q1, fifteen);
    }
    *w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q0), s0, z0);
    *w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), s1, z1);
}

/* C[r][col0 .. col0+15] for `rows` (<= SMALL_ROWS) rows, dequantizing in registers. */
static inline __attribute__((always_inline)) void direct_tile(const float *A, int lda, const uint8_t *B,
                                                               const uint16_t *SZ, int N, int K, int G, int blk,
                                                               int half, uint16_t *C, int ldc, const int rows) {
    const uint8_t *Bp = B + (size_t)blk * K * 16;
    const int col0 = blk * 32 + half * 16;
    __m256 acc[SMALL_ROWS][2];
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++) {
        acc[r][0] = _mm256_setzero_ps();
        acc[r][1] = _mm256_setzero_ps();
    }
    for (int kb = 0; kb < K / G; kb++) {
        __m256 s0, z0, s1, z1;
        load_sz(SZ, N, kb, col0, &s0, &z0);
        load_sz(SZ, N, kb, col0 + 8, &s1, &z1);
        for (int k = kb * G; k < (kb + 1) * G; k++) {
            __m256 w0, w1;
            dequant_row(Bp + (size_t)k * 16, half, s0, z0, s1, z1, &w0, &w1);
#pragma GCC unroll 4
            for (int r = 0; r < rows; r++) {
                __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);
                acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < rows; r++) {
        _mm_storeu_si128((__m128i *)(C + (size_t)r * ldc + col0), f32_to_bf16(acc[r][0]));
        _mm_storeu_si128((__m128i *)(C + (size_t)r * ldc + col0 + 8), f32_to_bf16(acc[r][1]));
    }
}

/* W[k][0..15] for half `half` of block `blk`: the values direct_tile computes in registers. */
static void dequant_panel(const uint8_t *B, const uint16_t *SZ, int N, int K, int G, int blk, int half, float *W) {
    const uint8_t *Bp = B + (size_t)blk * K * 16;
    const int col0 = blk * 32 + half * 16;
    for (int kb = 0; kb < K / G; kb++) {
        __m256 s0, z0, s1, z1;
        load_sz(SZ, N, kb, col0, &s0, &z0);
        load_sz(SZ, N, kb, col0 + 8, &s1, &z1);
        for (int k = kb * G; k < (kb + 1) * G; k++) {
            __m256 w0, w1;
            dequant_row(Bp + (size_t)k * 16, half, s0, z0, s1, z1, &w0, &w1);
            _mm256_store_ps(W + (size_t)k * 16, w0);
            _mm256_store_ps(W + (size_t)k * 16 + 8, w1);
        }
    }
}

/* C[r][0..15] for `rows` rows of fp32 activations A (lda floats) over the panel W [K][16]. */
static inline __attribute__((always_inline)) void rows_tile(const float *A, int lda, const float *W, int K,
                                                             uint16_t *C, int ldc, const int rows) {
    __m256 acc[TILE_ROWS][2];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) {
        acc[r][0] = _mm256_setzero_ps();
        acc[r][1] = _mm256_setzero_ps();
    }
    for (int k = 0; k < K; k++) {
        __m256 w0 = _mm256_load_ps(W + (size_t)k * 16);
        __m256 w1 = _mm256_load_ps(W + (size_t)k * 16 + 8);
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);
            acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) {
        _mm_storeu_si128((__m128i *)(C + (size_t)r * ldc), f32_to_bf16(acc[r][0]));
        _mm_storeu_si128((__m128i *)(C + (size_t)r * ldc + 8), f32_to_bf16(acc[r][1]));
    }
}

#define DIRECT_CASE(R) case R: direct_tile(A, K, B, SZ, N, K, G, t >> 1, t & 1, C, N, R); break;

static void run_direct(const float *A, const uint8_t *B, const uint16_t *SZ, int N, int K, int G, int t,
                       uint16_t *C, int rows) {
    switch (rows) {
        DIRECT_CASE(1) DIRECT_CASE(2) DIRECT_CASE(3) DIRECT_CASE(4)
        default: break;
    }
}

#define TILE_CASE(R) case R: rows_tile(A, K, W, K, C, N, R); break;

static void run_rows(const float *A, const float *W, int K, uint16_t *C, int N, int rows) {
    switch (rows) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6)
        default: break;
    }
}

/* C = A @ dequant(B).T on `threads` OpenMP threads (torch's count, passed by the caller); returns 0, or -1 when the
 * shapes are outside this kernel (the caller then runs torch's). */
int pagoda_int4_mm(const uint16_t *A16, const uint8_t *B, const uint16_t *SZ, uint16_t *C,
                   int M, int N, int K, int G, int threads) {
    if (M <= 0 || N % 32 || K % G || G % 16 || K <= 0) return -1;
    float *A = (float *)aligned_alloc(32, ((size_t)M * K * sizeof(float) + 31) / 32 * 32);
    if (!A) return -1;
    const size_t total = (size_t)M * K;
    size_t i = 0;
    for (; i + 8 <= total; i += 8) { /* bf16 -> fp32 is a 16-bit shift: exact */
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(A16 + i)));
        _mm256_store_ps(A + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < total; i++) A[i] = bf16_to_f32(A16[i]);
    const int tasks = (N / 32) * 2;
    int failed = 0;
    if (M <= SMALL_ROWS) {
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
        for (int t = 0; t < tasks; t++) run_direct(A, B, SZ, N, K, G, t, C, M);
        free(A);
        return 0;
    }
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        float *W = (float *)aligned_alloc(32, (size_t)K * 16 * sizeof(float));
        if (!W) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int t = 0; t < tasks; t++) {
            if (!W) continue;
            const int blk = t >> 1, half = t & 1;
            dequant_panel(B, SZ, N, K, G, blk, half, W);
            const int col0 = blk * 32 + half * 16;
            for (int m = 0; m < M; m += TILE_ROWS) {
                const int rows = M - m < TILE_ROWS ? M - m : TILE_ROWS;
                run_rows(A + (size_t)m * K, W, K, C + (size_t)m * N + col0, N, rows);
            }
        }
        free(W);
    }
    free(A);
    return failed ? -1 : 0;
}

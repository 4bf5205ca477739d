/* Multi-row int4 weight-only matmul for x86 AVX-512, computing exactly what torch's
 * aten::_weight_int4pack_mm_for_cpu computes (torch 2.x, AVX-512 build), bit for bit, faster from a few rows.
 *
 * Arithmetic of the torch kernel (int4mm_kernel.cpp, tinygemm_kernel), for every output element:
 *   w[k][n] = fma(float(q[k][n] - 8), float(scale[k/G][n]), float(zero[k/G][n]))     (fp32, one rounding)
 *   acc     = 0;  for k = 0..K-1:  acc = fma(float(a[m][k]), w[k][n], acc)            (fp32, in k order)
 *   c[m][n] = bf16(acc), round to nearest even (torch's integer rounding, NaN -> 0xffff)
 * Nothing here depends on M: each row is computed alone with the same operation sequence, so this kernel and the
 * torch kernel agree for every batch size.
 *
 * Why faster: torch re-dequantizes the weight for every 4-row block and broadcasts each activation through a
 * shuffle port. Here one task dequantizes a 32-column half of a 64-column packed block once into an fp32 panel
 * [K][32], then runs up to 12 rows at a time over it (24 accumulators; broadcasts and panel reads are loads).
 * Up to 8 rows (a decode step, a speculative verify) no panel is stored: direct_tile dequantizes each k row in
 * registers and applies it to all rows at once.
 *
 * Layouts (torch's AVX-512 int4pack, N a multiple of 64): packed B is uint8 [N/64][K][32]; byte j of row k of
 * block b holds column 64b + j in its low nibble and 64b + 32 + j in its high nibble. scales_zeros is bf16
 * [K/G][N][2] (scale, zero). A is bf16 [M][K] row-major (lda = K), C is bf16 [M][N].
 * Threads: OpenMP over the 2*N/64 half-blocks, as many as torch uses (the same libgomp runtime as torch). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"
#include "bf16_avx512.h"

#define MAX_ROWS 12
#define SMALL_ROWS 8      /* up to this many rows: direct_tile (no fp32 panel) */
#define FULL_BLOCK_ROWS 4 /* up to this many rows direct_tile takes whole 64-column blocks, above it halves */

/* W[k][0..31] = fma(q - 8, s, z) for the columns of one nibble (half) of block `blk`. */
static void dequant_panel(const uint8_t *B, const uint16_t *SZ, int N, int K, int G, int blk, int half, float *W) {
    const uint8_t *Bp = B + (size_t)blk * K * 32;
    const int col0 = blk * 64 + half * 32;
    const __m512i hi_mask = _mm512_set1_epi32(0xffff0000);
    const __m512i eight = _mm512_set1_epi32(8);
    const __m512i fifteen = _mm512_set1_epi32(15);
    for (int kb = 0; kb < K / G; kb++) {
        const uint16_t *sz = SZ + ((size_t)kb * N + col0) * 2;
        __m512i t0 = _mm512_loadu_si512((const void *)sz);        /* columns col0 .. +15: (s, z) pairs */
        __m512i t1 = _mm512_loadu_si512((const void *)(sz + 32)); /* columns col0+16 .. +31 */
        __m512 s0 = _mm512_castsi512_ps(_mm512_slli_epi32(t0, 16));
        __m512 z0 = _mm512_castsi512_ps(_mm512_and_si512(t0, hi_mask));
        __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(t1, 16));
        __m512 z1 = _mm512_castsi512_ps(_mm512_and_si512(t1, hi_mask));
        for (int k = kb * G; k < (kb + 1) * G; k++) {
            const uint8_t *row = Bp + (size_t)k * 32;
            __m512i q0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)row));
            __m512i q1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + 16)));
            if (half) {
                q0 = _mm512_srli_epi32(q0, 4);
                q1 = _mm512_srli_epi32(q1, 4);
            }
            __m512 f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(q0, fifteen), eight));
            __m512 f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(q1, fifteen), eight));
            _mm512_store_ps(W + (size_t)k * 32, _mm512_fmadd_ps(f0, s0, z0));
            _mm512_store_ps(W + (size_t)k * 32 + 16, _mm512_fmadd_ps(f1, s1, z1));
        }
    }
}

/* C[r][0..31] for `rows` rows of fp32 activations A (lda floats) over the panel W [K][32]. */
static inline __attribute__((always_inline)) void rows_tile(const float *A, int lda, const float *W, int K,
                                                             uint16_t *C, int ldc, const int rows) {
    __m512 acc[MAX_ROWS][2];
#pragma GCC unroll 12
    for (int r = 0; r < rows; r++) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (int k = 0; k < K; k++) {
        __m512 w0 = _mm512_load_ps(W + (size_t)k * 32);
        __m512 w1 = _mm512_load_ps(W + (size_t)k * 32 + 16);
#pragma GCC unroll 12
        for (int r = 0; r < rows; r++) {
            __m512 a = _mm512_set1_ps(A[(size_t)r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(a, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, w1, acc[r][1]);
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_si256((__m256i *)(C + (size_t)r * ldc), f32x16_to_bf16(acc[r][0]));
        _mm256_storeu_si256((__m256i *)(C + (size_t)r * ldc + 16), f32x16_to_bf16(acc[r][1]));
    }
}

/* Few rows (a speculative verify, a small batch): no panel. Each k row of the block is dequantized in registers and
 * used at once by all `rows` rows (one dequantization per weight for all rows). float(q - 8) is read from a 16-entry
 * table (vpermps uses an index's low 4 bits, so the low nibble needs no mask), then w = fma(q - 8, s, z) as in
 * dequant_panel: the same values, fewer operations than torch's kernel, activations broadcast from memory.
 * `part`: 0 = the whole 64-column block (4 vectors: low nibbles of bytes 0-15, 16-31, high nibbles of 0-15, 16-31),
 * 1 / 2 = only its low / high nibble half (32 columns, 2 vectors; for more rows than registers allow with 4). */
static inline __attribute__((always_inline)) void direct_tile(const float *A, int lda, const uint8_t *B,
                                                               const uint16_t *SZ, int N, int K, int G, int blk,
                                                               uint16_t *C, int ldc, const int rows, const int part) {
    const uint8_t *Bp = B + (size_t)blk * K * 32;
    const int nv = part == 0 ? 4 : 2;
    const int col0 = blk * 64 + (part == 2 ? 32 : 0);
    const __m512i hi_mask = _mm512_set1_epi32(0xffff0000);
    const __m512 lut = _mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f, 5.f,
                                      6.f, 7.f);
    __m512 acc[SMALL_ROWS][4];
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int kb = 0; kb < K / G; kb++) {
        __m512 sc[4], zr[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512i t = _mm512_loadu_si512((const void *)(SZ + ((size_t)kb * N + col0 + 16 * v) * 2));
            sc[v] = _mm512_castsi512_ps(_mm512_slli_epi32(t, 16));
            zr[v] = _mm512_castsi512_ps(_mm512_and_si512(t, hi_mask));
        }
        for (int k = kb * G; k < (kb + 1) * G; k++) {
            const uint8_t *row = Bp + (size_t)k * 32;
            __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)row));
            __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + 16)));
            __m512i q[4];
            if (part == 0) {
                q[0] = b0; q[1] = b1; q[2] = _mm512_srli_epi32(b0, 4); q[3] = _mm512_srli_epi32(b1, 4);
            } else if (part == 1) {
                q[0] = b0; q[1] = b1;
            } else {
                q[0] = _mm512_srli_epi32(b0, 4); q[1] = _mm512_srli_epi32(b1, 4);
            }
            __m512 w[4];
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) w[v] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q[v], lut), sc[v], zr[v]);
#pragma GCC unroll 8
            for (int r = 0; r < rows; r++) {
                __m512 a = _mm512_set1_ps(A[(size_t)r * lda + k]);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm256_storeu_si256((__m256i *)(C + (size_t)r * ldc + col0 + 16 * v), f32x16_to_bf16(acc[r][v]));
}

#define FULL_CASE(R) case R: direct_tile(A, K, B, SZ, N, K, G, t, C, N, R, 0); break;
#define HALF_CASE(R) case R: if (t & 1) direct_tile(A, K, B, SZ, N, K, G, t >> 1, C, N, R, 2); \
                             else direct_tile(A, K, B, SZ, N, K, G, t >> 1, C, N, R, 1); break;

/* Task t of a few-row call: block t (rows <= 4), or half t & 1 of block t >> 1 (5..8 rows). */
static void run_direct(const float *A, const uint8_t *B, const uint16_t *SZ, int N, int K, int G, int t,
                       uint16_t *C, int rows) {
    switch (rows) {
        FULL_CASE(1) FULL_CASE(2) FULL_CASE(3) FULL_CASE(4)
        HALF_CASE(5) HALF_CASE(6) HALF_CASE(7) HALF_CASE(8)
        default: break;
    }
}

#define TILE_CASE(R) case R: rows_tile(A, K, W, K, C, N, R); break;

static void run_rows(const float *A, const float *W, int K, uint16_t *C, int N, int rows) {
    switch (rows) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6)
        TILE_CASE(7) TILE_CASE(8) TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) TILE_CASE(12)
        default: break;
    }
}

/* C = A @ dequant(B).T on `threads` OpenMP threads (torch's count, passed by the caller); returns 0, or -1 when the
 * shapes are outside this kernel (the caller then runs torch's). */
int pagoda_int4_mm(const uint16_t *A16, const uint8_t *B, const uint16_t *SZ, uint16_t *C,
                   int M, int N, int K, int G, int threads) {
    if (M <= 0 || N % 64 || K % G || G % 16 || K <= 0) return -1;
    float *A = (float *)aligned_alloc(64, ((size_t)M * K * sizeof(float) + 63) / 64 * 64);
    if (!A) return -1;
    const size_t total = (size_t)M * K;
    size_t i = 0;
    for (; i + 16 <= total; i += 16) { /* bf16 -> fp32 is a 16-bit shift: exact */
        __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(A16 + i)));
        _mm512_store_ps(A + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
    for (; i < total; i++) A[i] = bf16_to_f32(A16[i]);
    const int tasks = (N / 64) * 2;
    int failed = 0;
    if (M <= SMALL_ROWS) {
        const int ntasks = M <= FULL_BLOCK_ROWS ? N / 64 : tasks;
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
        for (int t = 0; t < ntasks; t++) run_direct(A, B, SZ, N, K, G, t, C, M);
        free(A);
        return 0;
    }
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        float *W = (float *)aligned_alloc(64, (size_t)K * 32 * sizeof(float));
        if (!W) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int t = 0; t < tasks; t++) {
            if (!W) continue;
            const int blk = t >> 1, half = t & 1;
            dequant_panel(B, SZ, N, K, G, blk, half, W);
            const int col0 = blk * 64 + half * 32;
            for (int m = 0; m < M; m += MAX_ROWS) {
                const int rows = M - m < MAX_ROWS ? M - m : MAX_ROWS;
                run_rows(A + (size_t)m * K, W, K, C + (size_t)m * N + col0, N, rows);
            }
        }
        free(W);
    }
    free(A);
    return failed ? -1 : 0;
}

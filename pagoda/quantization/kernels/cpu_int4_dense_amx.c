/* The prefill's dense GEMM of a 4-bit int4pack weight on AMX tiles, without a dense copy of the weight
 * (pagoda/quantization/kernels/cpu_int4_dequant.py, dense_matmul).
 *
 * C = A @ W.T for bf16 rows A [M][K] (M >= 16), W the dense bf16 values of the weight (int4_dequant_avx512.h: the
 * values cpu_woq._dequantized_t gives, the ones the oneDNN path multiplies by), C bf16 [M][N]. Each thread takes
 * 64-column blocks; a block's K x 64 values are written once, by that formula, into a panel in the tdpbf16ps B
 * layout (four tiles of 16 columns: row kp holds each column's (w[2kp], w[2kp+1]) pair), then every 16-row tile of
 * A is multiplied by it over the whole K (one tdpbf16ps a tile and 32 k's into four float32 C tiles), and the sums are
 * rounded once to bf16 (round to nearest even, as torch). The last row tile starts at M - 16 (rows computed twice get
 * the same bits). A row's sum runs over k in the tiles' own order: it does not depend on M or on the other rows.
 *
 * Why (RESULTS.md, session 39): the oneDNN path writes the dense W.T to memory (~212 MB for the default model's
 * linears) and oneDNN then packs it again for its own kernel on every call; here the values go from the 4-bit codes
 * to the tiles through L1/L2 once.
 *
 * Layouts as cpu_int4_dot.c: B uint8 [N/64][K][32] (byte j of row k: column j in the low nibble, 32 + j in the high
 * one), scales_zeros bf16 [K/G][N][2]. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "int4_dequant_avx512.h"

/* Linux hands AMX's tile state to a process only on request; returns 0 once granted (process-wide). */
int pagoda_int4_dense_amx_init(void) { return (int)syscall(SYS_arch_prctl, 0x1023, 18); }

/* Tiles: 0 = A (16 rows x 32 bf16), 1-3 = B (16 k pairs x 16 columns' bf16 pairs), 4-7 = C (16 x 16 float32). */
static void amx_config(void) {
    struct {
        uint8_t palette_id, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } __attribute__((packed, aligned(64))) cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    __asm__ __volatile__("" : : "r"(&cfg) : "memory"); /* ldtilecfg reads the whole struct (cpu_int4_dot.c) */
    _tile_loadconfig(&cfg);
}

/* Block `blk`'s dense values into `panel`: tile v (columns 16v..16v+15) is [K/2][16][2] words at v * K * 16. */
static void fill_panel(const uint8_t *Bp, const uint16_t *SZ, int N, int K, int G, int blk, uint16_t *panel) {
    for (int g = 0; g < K / G; g++) {
        const uint16_t *sz = SZ + ((size_t)g * N + (size_t)blk * 64) * 2;
        __m512 s[4], o[4];
        for (int v = 0; v < 4; v++) int4dq_scale_offset(sz + v * 32, 1, &s[v], &o[v]);
        for (int k = g * G; k < (g + 1) * G; k += 2) {
            const __m256i r0 = _mm256_loadu_si256((const __m256i *)(Bp + (size_t)k * 32));
            const __m256i r1 = _mm256_loadu_si256((const __m256i *)(Bp + (size_t)(k + 1) * 32));
            for (int v = 0; v < 4; v++) {
                const __m512i w0 = _mm512_cvtepu16_epi32(f32x16_to_bf16(int4dq_values(r0, v, s[v], o[v])));
                const __m512i w1 = _mm512_cvtepu16_epi32(f32x16_to_bf16(int4dq_values(r1, v, s[v], o[v])));
                _mm512_store_si512((void *)(panel + (size_t)v * K * 16 + (size_t)(k / 2) * 32),
                                   _mm512_or_si512(w0, _mm512_slli_epi32(w1, 16)));
            }
        }
    }
}

#define KC 256 /* k's per pass over the row tiles: a pass's panel part (32 KB) stays in L1 for all of them */

/* C = A @ W.T as above on `threads` OpenMP threads; returns 0, or -1 for shapes outside it (M < 16, N % 64, K % 32,
 * K % G, G odd) or memory short (nothing written then). The k's go in passes of KC: each row tile's float32 sums
 * wait in `sums` (one slot per tile, so the last tile's overlap is its own) between passes, an exact round trip. */
int pagoda_int4_dense_amx_mm(const uint16_t *A, const uint8_t *B, const uint16_t *SZ, uint16_t *C, int M, int N,
                             int K, int G, int threads) {
    if (M < 16 || N <= 0 || N % 64 || K <= 0 || K % 32 || G <= 0 || G % 2 || K % G) return -1;
    const int nthreads = threads > 0 ? threads : 1;
    const int tiles = (M + 15) / 16;
    const size_t panel_words = (size_t)K * 64, sums_floats = (size_t)tiles * 16 * 64;
    uint16_t *panels = (uint16_t *)aligned_alloc(64, (size_t)nthreads * panel_words * sizeof(uint16_t));
    float *sums_all = (float *)aligned_alloc(64, (size_t)nthreads * sums_floats * sizeof(float));
    if (!panels || !sums_all) {
        free(panels);
        free(sums_all);
        return -1;
    }
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        uint16_t *panel = panels + (size_t)omp_get_thread_num() * panel_words;
        float *sums = sums_all + (size_t)omp_get_thread_num() * sums_floats;
        amx_config();
#pragma omp for schedule(static)
        for (int blk = 0; blk < N / 64; blk++) {
            fill_panel(B + (size_t)blk * K * 32, SZ, N, K, G, blk, panel);
            const size_t vs = (size_t)K * 16; /* words between the panel's tiles */
            for (int kc = 0; kc < K; kc += KC) {
                const int kend = kc + KC < K ? kc + KC : K;
                for (int t = 0; t < tiles; t++) {
                    const int m0 = t == tiles - 1 ? M - 16 : t * 16;
                    float *st = sums + (size_t)t * 16 * 64; /* [16 rows][64 columns] */
                    if (kc == 0) {
                        _tile_zero(4);
                        _tile_zero(5);
                        _tile_zero(6);
                        _tile_zero(7);
                    } else {
                        _tile_loadd(4, st, 256);
                        _tile_loadd(5, st + 16, 256);
                        _tile_loadd(6, st + 32, 256);
                        _tile_loadd(7, st + 48, 256);
                    }
                    for (int k0 = kc; k0 < kend; k0 += 32) {
                        const uint16_t *bt = panel + (size_t)(k0 / 2) * 32;
                        _tile_loadd(0, A + (size_t)m0 * K + k0, K * 2);
                        _tile_loadd(1, bt, 64);
                        _tile_loadd(2, bt + vs, 64);
                        _tile_loadd(3, bt + 2 * vs, 64);
                        _tile_dpbf16ps(4, 0, 1);
                        _tile_dpbf16ps(5, 0, 2);
                        _tile_dpbf16ps(6, 0, 3);
                        _tile_loadd(1, bt + 3 * vs, 64);
                        _tile_dpbf16ps(7, 0, 1);
                    }
                    _tile_stored(4, st, 256);
                    _tile_stored(5, st + 16, 256);
                    _tile_stored(6, st + 32, 256);
                    _tile_stored(7, st + 48, 256);
                }
            }
            for (int t = 0; t < tiles; t++) {
                const int m0 = t == tiles - 1 ? M - 16 : t * 16;
                const float *st = sums + (size_t)t * 16 * 64;
                for (int r = 0; r < 16; r++)
                    for (int v = 0; v < 4; v++)
                        _mm256_storeu_si256((__m256i *)(C + (size_t)(m0 + r) * N + (size_t)blk * 64 + v * 16),
                                            f32x16_to_bf16(_mm512_load_ps(st + r * 64 + v * 16)));
            }
        }
        _tile_release();
    }
    free(panels);
    free(sums_all);
    return 0;
}

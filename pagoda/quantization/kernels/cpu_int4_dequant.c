/* The dense W.T of 4-bit planes in torch's AVX-512 int4pack layout, for the prefill's dequantize-once GEMM
 * (pagoda/quantization/kernels/cpu_int4_dequant.py; torch's ops for the same values: cpu_woq._dequantized_t).
 *
 * Layouts (as cpu_int4_dot.c): packed B is uint8 [N/64][K][32]; byte j of row k of block b holds column 64b + j in
 * its low nibble and 64b + 32 + j in its high nibble. scales_zeros is bf16 [K/G][N][2] (scale s, zero z: the weight
 * is (q - 8) s + z). W is [K][N], bf16 (out_bf16) or float32.
 *
 * Every element is what cpu_woq._dequantized_t's torch ops give, bit for bit:
 *     o = z - 8 s                  in float32 (8 s is exact), then rounded to bf16 when W is bf16
 *     w = o + q s                  in float32 (q s is exact: a 4-bit integer times a bf16), rounded once to W's dtype
 *     accumulate (a second plane): w = W + w in float32 (each operand in W's dtype), rounded once to W's dtype
 * bf16 rounding is torch's (round to nearest even, NaN -> 0xffff; bf16_avx512.h). The threads split (group, 64-column
 * block) tasks: a block's scales and offsets are read once for its group's G rows.
 */
#include <immintrin.h>
#include <stdint.h>

#include "bf16_avx512.h"

/* 16 bf16 values as float32. */
static inline __m512 bf16x16_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* W (+)= dequant(B) for all K rows; returns 0, or -1 for shapes outside the layout (N % 64, K % G). */
int pagoda_int4_dequant_t(const uint8_t *B, const uint16_t *SZ, void *W, int N, int K, int G, int out_bf16,
                          int accumulate, int threads) {
    if (N <= 0 || N % 64 || G <= 0 || K <= 0 || K % G) return -1;
    const int blocks = N / 64;
    const __m512i low4 = _mm512_set1_epi32(15), high16 = _mm512_set1_epi32((int)0xffff0000);
    const __m512 eight = _mm512_set1_ps(8.0f);
    const int groups = K / G;
    /* a task: one group's k's of one 64-column block; the block's (s, o) vectors computed once for its G rows */
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int t = 0; t < groups * blocks; t++) {
        const int g = t / blocks, b = t % blocks;
        const uint16_t *sz = SZ + ((size_t)g * N + (size_t)b * 64) * 2;
        __m512 s[4], o[4];
        for (int v = 0; v < 4; v++) { /* columns 16v..16v+15 of the block */
            const __m512i p = _mm512_loadu_si512((const void *)(sz + v * 32)); /* 16 (s, z) pairs */
            s[v] = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
            const __m512 z = _mm512_castsi512_ps(_mm512_and_si512(p, high16));
            o[v] = _mm512_sub_ps(z, _mm512_mul_ps(eight, s[v]));
            if (out_bf16) o[v] = bf16x16_to_f32(f32x16_to_bf16(o[v]));
        }
        for (int k = g * G; k < (g + 1) * G; k++) {
            const __m256i bytes = _mm256_loadu_si256((const __m256i *)(B + ((size_t)b * K + k) * 32));
            /* v: the low nibbles of bytes 0-15 / 16-31 (columns 0-31), then the high ones (columns 32-63) */
            for (int v = 0; v < 4; v++) {
                const __m128i half = (v & 1) ? _mm256_extracti128_si256(bytes, 1) : _mm256_castsi256_si128(bytes);
                __m512i q = _mm512_cvtepu8_epi32(half);
                q = v >= 2 ? _mm512_srli_epi32(q, 4) : _mm512_and_si512(q, low4);
                __m512 w = _mm512_add_ps(o[v], _mm512_mul_ps(_mm512_cvtepi32_ps(q), s[v]));
                const size_t at = (size_t)k * N + (size_t)b * 64 + v * 16;
                if (out_bf16) {
                    uint16_t *dst = (uint16_t *)W + at;
                    __m256i wb = f32x16_to_bf16(w);
                    if (accumulate)
                        wb = f32x16_to_bf16(_mm512_add_ps(bf16x16_to_f32(_mm256_loadu_si256((const __m256i *)dst)),
                                                          bf16x16_to_f32(wb)));
                    _mm256_storeu_si256((__m256i *)dst, wb);
                } else {
                    float *dst = (float *)W + at;
                    if (accumulate) w = _mm512_add_ps(_mm512_loadu_ps(dst), w);
                    _mm512_storeu_ps(dst, w);
                }
            }
        }
    }
    return 0;
}

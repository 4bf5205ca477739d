/* The dense value of 4-bit int4pack weights, 16 columns at a time: the one formula of the prefill's dense paths
 * (cpu_int4_dequant.c writes W.T with it, cpu_int4_dense_amx.c its AMX tiles), equal bit for bit to torch's ops
 * in cpu_woq._dequantized_t_torch:
 *     o = z - 8 s   in float32 (8 s is exact), then rounded to bf16 when the values are bf16
 *     w = o + q s   in float32 (q s is exact: a 4-bit integer times a bf16), rounded once to the values' dtype
 * (included through pagoda.native's compile_shared, like bf16_avx512.h). */
#ifndef PAGODA_INT4_DEQUANT_AVX512_H
#define PAGODA_INT4_DEQUANT_AVX512_H
#include <immintrin.h>
#include <stdint.h>

#include "bf16_avx512.h"

/* 16 bf16 values as float32. */
static inline __m512 int4dq_bf16_to_f32(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* s and o of 16 columns from their 16 (scale, zero) bf16 pairs at `sz`; o rounded to bf16 when `bf16`. */
static inline void int4dq_scale_offset(const uint16_t *sz, int bf16, __m512 *s, __m512 *o) {
    const __m512i p = _mm512_loadu_si512((const void *)sz);
    *s = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
    const __m512 z = _mm512_castsi512_ps(_mm512_and_si512(p, _mm512_set1_epi32((int)0xffff0000)));
    *o = _mm512_sub_ps(z, _mm512_mul_ps(_mm512_set1_ps(8.0f), *s));
    if (bf16) *o = int4dq_bf16_to_f32(f32x16_to_bf16(*o));
}

/* Vector v (0-3) of a 32-byte int4pack row of a 64-column block: columns 16v..16v+15, the low nibbles of bytes 0-15
 * / 16-31, then the high ones; w = o + q s in float32 (not yet rounded). */
static inline __m512 int4dq_values(__m256i bytes, int v, __m512 s, __m512 o) {
    const __m128i half = (v & 1) ? _mm256_extracti128_si256(bytes, 1) : _mm256_castsi256_si128(bytes);
    __m512i q = _mm512_cvtepu8_epi32(half);
    q = v >= 2 ? _mm512_srli_epi32(q, 4) : _mm512_and_si512(q, _mm512_set1_epi32(15));
    return _mm512_add_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(q), s));
}
#endif

/* 16 float32 lanes to bf16 as torch's AVX-512 kernels round them (its cvtfp32_bf16 without the BF16 ISA: round to
 * nearest even by an integer add, NaN -> 0xffff), shared by the int4 kernels whose outputs must round as torch's
 * int4pack kernel does (included through pagoda.native's compile_shared, like bf16.h). */
#ifndef PAGODA_BF16_AVX512_H
#define PAGODA_BF16_AVX512_H
#include <immintrin.h>

static inline __m256i f32x16_to_bf16(__m512 a) {
    __m512i x = _mm512_castps_si512(a);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i t = _mm512_add_epi32(_mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)), x);
    t = _mm512_srli_epi32(t, 16);
    __mmask16 ordered = _mm512_cmp_ps_mask(a, a, _CMP_ORD_Q);
    t = _mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(0xffff), t);
    return _mm512_cvtepi32_epi16(t);
}
#endif

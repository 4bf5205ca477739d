/* Scalar bf16 <-> float32 conversions shared by pagoda's native CPU kernels (included through pagoda.native's
 * compile_shared, which adds this folder to the include path and hashes its headers into the library's name). */
#ifndef PAGODA_BF16_H
#define PAGODA_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even, NaN kept quiet: c10::BFloat16's conversion (branch-free, so loops of it vectorize). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : rounded) >> 16);
}
#endif

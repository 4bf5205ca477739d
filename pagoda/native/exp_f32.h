/* exp(x) in float32 shared by pagoda's native CPU kernels (cpu_fused.c's silu, the decode attention's softmax). */
#ifndef PAGODA_EXP_F32_H
#define PAGODA_EXP_F32_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) in float32 from +, -, *, compares and exponent bits only (so every machine and vector width computes the
 * same bits where the file is compiled with -ffp-contract=off): x = n ln2 + r, |r| <= ln2/2, n by the 1.5 * 2^23
 * rounding trick, r by Cody-Waite with ln2 split in two, exp(r) by Cephes' degree-7 polynomial, 2^n from the
 * exponent field (as 2 * 2^(n-1), so n = 128 stays finite). x > 88.72 gives +inf and x < -86.5 gives 0 (the
 * float32 results below 2.7e-38 flushed: silu adds exp(-g) to 1, softmax adds it to at least 1). */
static inline float exp_f32(float x) {
    const float hi = 88.72283935546875f, lo = -86.5f;
    float xc = x > hi ? hi : (x < lo ? lo : x);
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 126) << 23; /* 2^(n - 1), n in [-125, 128] */
    float scale;
    memcpy(&scale, &bits, 4);
    float e = (p * 2.0f) * scale;
    e = x > hi ? INFINITY : e;
    return x < lo ? 0.0f : e;
}
#endif

/* The elementwise work of a bf16 decoder layer on the CPU in one call each (pagoda/layers/cpu_fused.py).
 *
 * Activations are bf16, the residual stream float32 (pagoda/models/llama.py). Every function works row by row and
 * computes a row the same way whatever the other rows: no result depends on the batch.
 *
 * pagoda_rms_norm: out = bf16((float32(h) * rstd) * w), rstd = 1 / sqrtf(sum(h*h) / D + eps), with an optional
 *   residual add first (h_out = h + float(delta), the float32 add torch does for `h + delta`). The products and the
 *   final rounding are torch's (RMSNorm's float32 path); the sum of squares is accumulated in 16 lanes
 *   (k mod 16) then added lane 0..15 in order, which is not torch's order: values may differ from torch's
 *   rms_norm by an ulp of rstd.
 * pagoda_rope: rotate-half rotary embedding in bf16 with torch's roundings, operation for operation
 *   (x1*c, x2*s, their difference; x2*c, x1*s, their sum: each rounded to bf16), so its output is bitwise
 *   pagoda.layers.rotary's torch path.
 * pagoda_silu_mul: bf16(float(bf16(g / (1 + exp(-g)))) * float(u)), torch's `F.silu(g) * u` in bf16 with its two
 *   roundings, but exp is pagoda's own (native/exp_f32.h, within an ulp of the true value), not torch's SLEEF: a
 *   result may differ from torch's by an ulp where the two exps round silu to different sides of a bf16 tie.
 *
 * Compile with -ffp-contract=off: a fused multiply-add would skip the roundings above.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "exp_f32.h"


/* rows x d: h float32 [rows, h_stride]; delta bf16 [rows, delta_stride] or NULL; h_out float32 [rows, d] (written
 * only with delta; may be h itself); w bf16 [d]; out bf16 [rows, out_stride]. */
int pagoda_rms_norm(const float *h, int64_t h_stride, const uint16_t *delta, int64_t delta_stride, float *h_out,
                    const uint16_t *w, uint16_t *out, int64_t out_stride, int64_t rows, int64_t d, float eps) {
    float wf[d > 0 ? d : 1];
    for (int64_t k = 0; k < d; k++) wf[k] = bf16_to_f32(w[k]);
    for (int64_t r = 0; r < rows; r++) {
        const float *x = h + r * h_stride;
        if (delta != NULL) {
            const uint16_t *dr = delta + r * delta_stride;
            float *xo = h_out + r * d;
            for (int64_t k = 0; k < d; k++) xo[k] = x[k] + bf16_to_f32(dr[k]);
            x = xo;
        }
        float lanes[16] = {0};
        int64_t k = 0;
        for (; k + 16 <= d; k += 16)
            for (int j = 0; j < 16; j++) lanes[j] += x[k + j] * x[k + j];
        for (int j = 0; k < d; k++, j++) lanes[j] += x[k] * x[k];
        float sum = 0.0f;
        for (int j = 0; j < 16; j++) sum += lanes[j];
        float rstd = 1.0f / sqrtf(sum / (float)d + eps);
        uint16_t *o = out + r * out_stride;
        for (int64_t k2 = 0; k2 < d; k2++) {
            float y = x[k2] * rstd;
            o[k2] = f32_to_bf16(y * wf[k2]);
        }
    }
    return 0;
}

/* One tensor's heads: x bf16 [tokens, x_stride] holding heads of head_dim at x[t*x_stride + h*head_dim];
 * cos/sin bf16 [tokens, head_dim/2]; out bf16 [tokens, heads, head_dim] contiguous. */
static void rope_one(const uint16_t *x, int64_t x_stride, int64_t heads, const uint16_t *cs, const uint16_t *sn,
                     uint16_t *out, int64_t tokens, int64_t head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < tokens; t++) {
        const uint16_t *c = cs + t * half, *s = sn + t * half;
        for (int64_t hh = 0; hh < heads; hh++) {
            const uint16_t *xh = x + t * x_stride + hh * head_dim;
            uint16_t *o = out + (t * heads + hh) * head_dim;
            for (int64_t j = 0; j < half; j++) {
                float x1 = bf16_to_f32(xh[j]), x2 = bf16_to_f32(xh[j + half]);
                float cj = bf16_to_f32(c[j]), sj = bf16_to_f32(s[j]);
                float a = bf16_to_f32(f32_to_bf16(x1 * cj)), b = bf16_to_f32(f32_to_bf16(x2 * sj));
                float e = bf16_to_f32(f32_to_bf16(x2 * cj)), f = bf16_to_f32(f32_to_bf16(x1 * sj));
                o[j] = f32_to_bf16(a - b);
                o[j + half] = f32_to_bf16(e + f);
            }
        }
    }
}

int pagoda_rope(const uint16_t *q, int64_t q_stride, int64_t q_heads, const uint16_t *k, int64_t k_stride,
                int64_t k_heads, const uint16_t *cs, const uint16_t *sn, uint16_t *q_out, uint16_t *k_out,
                int64_t tokens, int64_t head_dim) {
    rope_one(q, q_stride, q_heads, cs, sn, q_out, tokens, head_dim);
    rope_one(k, k_stride, k_heads, cs, sn, k_out, tokens, head_dim);
    return 0;
}

/* rows x inter: gu bf16 [rows, gu_stride] holding the gate in columns [0, inter) and the up projection in
 * [inter, 2 inter); out bf16 [rows, out_stride]. */
int pagoda_silu_mul(const uint16_t *gu, int64_t gu_stride, uint16_t *out, int64_t out_stride, int64_t rows,
                    int64_t inter) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *g = gu + r * gu_stride, *u = g + inter;
        uint16_t *o = out + r * out_stride;
        for (int64_t j = 0; j < inter; j++) {
            float x = bf16_to_f32(g[j]);
            float s = bf16_to_f32(f32_to_bf16(x / (1.0f + exp_f32(-x))));
            o[j] = f32_to_bf16(s * bf16_to_f32(u[j]));
        }
    }
    return 0;
}

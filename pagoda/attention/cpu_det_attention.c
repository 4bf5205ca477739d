/* Batch-invariant paged attention for the CPU, one query row and head at a time (pagoda/attention/deterministic.py).
 *
 * Every (query row, head) is computed alone, by the same instructions whatever the rest of the step: its keys in
 * position order, each score a dot product accumulated in 16 float32 lanes (element d in lane d % 16) whose lanes are
 * then added 0..15 in order; the maximum, the sum of the exponentials and the weighted sum of values run over the
 * positions in order. So a row's output is a function of its query, its request's K/V and its position only: not of
 * the other rows, of how its prompt was chunked, of padding or of which thread ran it (OpenMP splits the items).
 *
 * Roundings follow HF's eager attention in the model dtype: bf16 scores (q.k rounded to bf16), then scaled and
 * soft-capped in float32, a float32 softmax, probabilities rounded to bf16 for the product with V, the output rounded
 * to bf16 once. With float32 tensors (IS_BF16 = 0) nothing is rounded.
 *
 * Compile with -ffp-contract=off (the roundings above, and the same arithmetic under every compiler setting).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

#define LANES 16

/* One row's attention for one head. q: D values (float32, already read from the query); scratch: >= pos + 1 floats;
 * acc: D floats. Writes D outputs (float32, before the final rounding). */
static void attend_row(const float *q, const void *k_cache, const void *v_cache, int is_bf16, int64_t kvh,
                       int64_t hkv, int64_t bs, const int32_t *table, int64_t lo, int64_t pos, int64_t D, float scale,
                       float cap, float *scratch, float *acc, float *kv_row) {
    float m = -INFINITY;
    for (int64_t j = lo; j <= pos; j++) {
        int64_t off = (((int64_t)table[j / bs] * hkv + kvh) * bs + j % bs) * D;
        const float *k;
        if (is_bf16) {
            const uint16_t *kb = (const uint16_t *)k_cache + off;
            for (int64_t d = 0; d < D; d++) kv_row[d] = bf16_to_f32(kb[d]);
            k = kv_row;
        } else {
            k = (const float *)k_cache + off;
        }
        float lane[LANES] = {0};
        int64_t d0 = 0;
        for (; d0 + LANES <= D; d0 += LANES)
            for (int l = 0; l < LANES; l++) lane[l] += q[d0 + l] * k[d0 + l];
        for (int64_t d = d0; d < D; d++) lane[d % LANES] += q[d] * k[d];
        float dot = 0.0f;
        for (int l = 0; l < LANES; l++) dot += lane[l];
        if (is_bf16) dot = round_bf16(dot);
        float s = dot * scale;
        if (cap > 0.0f) s = tanhf(s / cap) * cap;
        scratch[j - lo] = s;
        if (s > m) m = s;
    }
    float den = 0.0f;
    for (int64_t j = lo; j <= pos; j++) {
        float e = expf(scratch[j - lo] - m);
        scratch[j - lo] = e;
        den += e;
    }
    for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int64_t j = lo; j <= pos; j++) {
        float p = scratch[j - lo] / den;
        if (is_bf16) p = round_bf16(p);
        int64_t off = (((int64_t)table[j / bs] * hkv + kvh) * bs + j % bs) * D;
        if (is_bf16) {
            const uint16_t *vb = (const uint16_t *)v_cache + off;
            for (int64_t d = 0; d < D; d++) acc[d] += p * bf16_to_f32(vb[d]);
        } else {
            const float *vf = (const float *)v_cache + off;
            for (int64_t d = 0; d < D; d++) acc[d] += p * vf[d];
        }
    }
}

/* q [T, H, D] (row stride q_st, head stride q_sh, elements); caches [N, hkv, bs, D] contiguous; block_tables int32
 * [R, bt_stride]; row_req / row_pos int32 [T]: each row's request and position; window 0: none; cap 0: none;
 * out [T, H, D] contiguous. Returns 0, or -1 when scratch memory could not be allocated. */
int pagoda_det_attention(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                         int64_t hkv, int64_t bs, const int32_t *block_tables, int64_t bt_stride,
                         const int32_t *row_req, const int32_t *row_pos, int64_t T, int64_t H, int64_t D,
                         int64_t max_pos, float scale, int64_t window, float cap, int is_bf16, void *out) {
    int64_t G = H / hkv;
    int failed = 0;
#pragma omp parallel
    {
        float *scratch = malloc(sizeof(float) * (size_t)(max_pos + 1));
        float *buf = malloc(sizeof(float) * (size_t)(3 * D));
        if (scratch == NULL || buf == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t item = 0; item < T * H; item++) {
            if (scratch == NULL || buf == NULL) continue;
            int64_t t = item / H, h = item % H;
            float *qf = buf, *acc = buf + D, *kv_row = buf + 2 * D;
            for (int64_t d = 0; d < D; d++)
                qf[d] = is_bf16 ? bf16_to_f32(((const uint16_t *)q)[t * q_st + h * q_sh + d])
                                : ((const float *)q)[t * q_st + h * q_sh + d];
            int64_t pos = row_pos[t];
            int64_t lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
            attend_row(qf, k_cache, v_cache, is_bf16, h / G, hkv, bs, block_tables + (int64_t)row_req[t] * bt_stride,
                       lo, pos, D, scale, cap, scratch, acc, kv_row);
            int64_t o = (t * H + h) * D;
            for (int64_t d = 0; d < D; d++) {
                if (is_bf16)
                    ((uint16_t *)out)[o + d] = f32_to_bf16(acc[d]);
                else
                    ((float *)out)[o + d] = acc[d];
            }
        }
        free(scratch);
        free(buf);
    }
    return failed ? -1 : 0;
}

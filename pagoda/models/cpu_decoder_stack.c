/* A Llama-family decoder stack's small CPU step in one call (pagoda/models/cpu_decoder_stack.py).
 *
 * This file computes nothing itself but the KV-cache copies and the residual adds: it runs, layer after layer, the
 * very kernels the Python path of pagoda.models.llama calls for a bf16 model on the CPU (received as function
 * pointers: cpu_fused's norm, rotary and silu * up, cpu_int4_dot's 4-bit matmul, cpu_decode_attention's paged
 * attention), with the same arguments, in the same order, on the same intermediate bf16 tensors. So a step's
 * outputs are bitwise those of the Python path; what goes is the ~150 µs a layer of Python and torch dispatch
 * between the kernels (a decode step of the default model: 30 layers).
 *
 * One layer, h the float32 residual stream [T][d] (updated in place):
 *     x  = rms_norm(h) * w1                       (bf16)
 *     qkv = x @ Wqkv.T                            (bf16 [T][(H + 2 Hk) D])
 *     q, k = rope(qkv's q, qkv's k) by positions  (bf16, new tensors); k and qkv's v copied to the slots' cache rows
 *     o  = attention(q, cache)                    (bf16 [T][H][D])
 *     h2 = h + float(o @ Wo.T);  x = rms_norm(h2) * w2
 *     h  = h2 + float(down(silu(gate(x)) * up(x)))
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

typedef int (*norm_fn)(const float *h, int64_t h_stride, const uint16_t *delta, int64_t delta_stride, float *h_out,
                       const uint16_t *w, uint16_t *out, int64_t out_stride, int64_t rows, int64_t d, float eps);
typedef int (*rope_fn)(const uint16_t *q, int64_t q_stride, int64_t q_heads, const uint16_t *k, int64_t k_stride,
                       int64_t k_heads, const uint16_t *cs, const uint16_t *sn, uint16_t *q_out, uint16_t *k_out,
                       int64_t tokens, int64_t head_dim);
typedef int (*silu_mul_fn)(const uint16_t *gu, int64_t gu_stride, uint16_t *out, int64_t out_stride, int64_t rows,
                           int64_t inter);
typedef int (*int4_fn)(const uint16_t *a, const uint8_t *b, const uint16_t *sz, uint16_t *c, int m, int n, int k,
                       int g, int threads);
typedef int (*attn_fn)(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                       int64_t hkv, int64_t bs, const int32_t *block_tables, int64_t bt_stride, const int32_t *row_req,
                       const int32_t *row_pos, int64_t T, int64_t H, int64_t D, int64_t max_pos, float scale,
                       int64_t window, int is_bf16, int threads, void *out);

/* A 4-bit weight as cpu_int4_dot reads it: int4pack codes, bf16 scales_zeros, out x in features, group size. */
typedef struct {
    const uint8_t *codes;
    const uint16_t *scales_zeros;
    int64_t n, k, group;
} pg_int4;

typedef struct {
    const uint16_t *norm1, *norm2; /* bf16 [d] */
    pg_int4 qkv, o, gate_up, down;
    uint16_t *k_cache, *v_cache; /* bf16 [blocks][Hk][block_size][D] */
    double eps1, eps2, scale;
    int64_t window; /* sliding window, 0: none */
} pg_layer;

typedef struct {
    norm_fn norm;
    rope_fn rope;
    silu_mul_fn silu_mul;
    int4_fn mm;
    attn_fn attn;
    const pg_layer *layers;
    const uint16_t *cos, *sin; /* bf16 [rope_rows][D / 2] */
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter, block_size, rope_rows;
} pg_stack;

/* Runs every layer on h (float32 [T][hidden], in place). positions, slots: int64 [T] (slot < 0: no cache write);
 * block_tables int32 [B][bt_stride]; row_req, row_pos: each row's request and position (the attention kernel's
 * inputs); threads: the kernels' thread count. Returns 0; -1 when scratch memory is short, -2 for a position
 * outside the rotary table, or a kernel's nonzero return (h is then partly updated). */
int pagoda_decoder_stack(const pg_stack *s, float *h, int64_t T, const int64_t *positions, const int64_t *slots,
                         const int32_t *block_tables, int64_t bt_stride, const int32_t *row_req,
                         const int32_t *row_pos, int64_t max_pos, int threads) {
    const int64_t d = s->hidden, H = s->heads, Hk = s->kv_heads, D = s->head_dim, I = s->inter, bs = s->block_size;
    const int64_t half = D / 2, qkv_n = (H + 2 * Hk) * D;
    for (int64_t t = 0; t < T; t++)
        if (positions[t] < 0 || positions[t] >= s->rope_rows) return -2;
    /* bf16 scratch: x [T][d], qkv [T][qkv_n], q [T][H][D], k [T][Hk][D], cos / sin [T][half], o [T][H][D],
     * a [T][d], gu [T][2I], act [T][I]; float32 h2 [T][d]. */
    const int64_t n16 = T * (d + qkv_n + H * D + Hk * D + 2 * half + H * D + d + 2 * I + I);
    uint16_t *buf = malloc((size_t)n16 * 2 + (size_t)T * d * 4 + 64);
    if (buf == NULL) return -1;
    uint16_t *x = buf, *qkv = x + T * d, *q = qkv + T * qkv_n, *k = q + T * H * D, *cs = k + T * Hk * D,
             *sn = cs + T * half, *o = sn + T * half, *a = o + T * H * D, *gu = a + T * d, *act = gu + T * 2 * I;
    float *h2 = (float *)(((uintptr_t)(act + T * I) + 63) & ~(uintptr_t)63);
    for (int64_t t = 0; t < T; t++) { /* the rotary table's rows of this step's positions (cos_sin's gather) */
        memcpy(cs + t * half, s->cos + positions[t] * half, (size_t)half * 2);
        memcpy(sn + t * half, s->sin + positions[t] * half, (size_t)half * 2);
    }
    int rc = 0;
    for (int64_t l = 0; l < s->num_layers && rc == 0; l++) {
        const pg_layer *L = &s->layers[l];
        rc |= s->norm(h, d, NULL, 0, NULL, L->norm1, x, d, T, d, (float)L->eps1);
        rc |= s->mm(x, L->qkv.codes, L->qkv.scales_zeros, qkv, (int)T, (int)L->qkv.n, (int)L->qkv.k,
                    (int)L->qkv.group, threads);
        rc |= s->rope(qkv, qkv_n, H, qkv + H * D, qkv_n, Hk, cs, sn, q, k, T, D);
        for (int64_t t = 0; t < T; t++) { /* write_kv: each (token, head) row to its slot */
            if (slots[t] < 0) continue;
            const int64_t blk = slots[t] / bs, off = slots[t] % bs;
            for (int64_t j = 0; j < Hk; j++) {
                const int64_t row = ((blk * Hk + j) * bs + off) * D;
                memcpy(L->k_cache + row, k + (t * Hk + j) * D, (size_t)D * 2);
                memcpy(L->v_cache + row, qkv + t * qkv_n + (H + Hk + j) * D, (size_t)D * 2);
            }
        }
        rc |= s->attn(q, H * D, D, L->k_cache, L->v_cache, Hk, bs, block_tables, bt_stride, row_req, row_pos, T, H,
                      D, max_pos, (float)L->scale, L->window, 1, threads, o);
        rc |= s->mm(o, L->o.codes, L->o.scales_zeros, a, (int)T, (int)L->o.n, (int)L->o.k, (int)L->o.group,
                    threads);
        rc |= s->norm(h, d, a, d, h2, L->norm2, x, d, T, d, (float)L->eps2);
        rc |= s->mm(x, L->gate_up.codes, L->gate_up.scales_zeros, gu, (int)T, (int)L->gate_up.n,
                    (int)L->gate_up.k, (int)L->gate_up.group, threads);
        rc |= s->silu_mul(gu, 2 * I, act, I, T, I);
        rc |= s->mm(act, L->down.codes, L->down.scales_zeros, a, (int)T, (int)L->down.n, (int)L->down.k,
                    (int)L->down.group, threads);
        for (int64_t i = 0; i < T * d; i++) h[i] = h2[i] + bf16_to_f32(a[i]);
    }
    free(buf);
    return rc;
}

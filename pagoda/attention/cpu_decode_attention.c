/* Paged attention for a CPU step's decode rows and its requests' few-row runs (a speculative verify, a short
 * prefill chunk), read straight from the paged cache (pagoda/attention/cpu_decode_native.py).
 *
 * Work item: (a run of at most MAX_GROUP_ROWS consecutive query rows of one request, a KV head, and where chunks are
 * on and the call reaches that far, a chunk of positions), i.e. R = rows * G (row, query head) pairs that share the KV head's
 * keys; a pair's chunks are merged in chunk order afterwards (pagoda_decode_attention_combine). Each K and V row is read (converted to float32 where needed)
 * once per item and used by every pair; each pair's arithmetic is its own and the same whatever else the item holds:
 * scores q . k_j (float32, one vectorized reduction over head_dim) for its positions lo..pos, the maximum,
 * exp(s - max), their sum, then sum_j p_j v_j in position order, divided by the sum, rounded once to the output dtype.
 * So a row's output depends on its query, its request's K/V and its position only (not on the batch, the other rows
 * of the run, or threads): a verify row gets the bits a decode step of that position gets.
 *
 * A bf16 cache on an AVX512-BF16 CPU (head_dim a multiple of 32) takes the scores by vdpbf16ps straight from the bf16
 * q and K rows (scores_bf16: exact products, the CPU's pair sums; no float32 copy of K), and an item of at most 4
 * pairs converts its V rows in registers instead of into a buffer (the same values). Which path a machine takes is
 * fixed per CPU, so every property above holds on it. Session 27, 1000 positions, one row of the default model's 9
 * heads on one thread: 79 -> 66 us (V in registers) -> 52 us (bf16 scores), caches warm. In a decode step the caches
 * are cold (the layers' weights went through them) and the rows, 16-token blocks wherever the block table puts them,
 * were waited for one by one: each loop prefetches the row PG_AHEAD positions ahead (and the first ones before it
 * starts): cold, 205 -> 118 us; a 1,000-token prompt's decode step 7.9-8.6 -> 6.9-7.1 ms (RESULTS.md).
 *
 * exp is a polynomial (native/exp_f32.h: within an ulp of the true value) so that the loop over positions vectorizes
 * (with -fno-trapping-math, which changes no result).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "exp_f32.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define MAX_GROUP_ROWS 16

/* Positions per chunk (0: none, the default) of a call whose rows reach that position: an item is then (run, KV
 * head, chunk c of positions [c * pos_chunk, (c + 1) * pos_chunk)), and each pair's chunks are merged afterwards
 * (pagoda_decode_attention_combine). The aim: a batch-1 decode has one run and, for the default model, 3 KV heads:
 * 3 items for however many threads; at 1,000 positions and chunks of 256, 12. The chunks are fixed by position, not
 * by the call, so a row's bits still depend on its own query, K/V and position only; a call whose rows all lie below
 * pos_chunk has one chunk, and its items write the outputs directly (the same bits as without chunks). Set once per
 * process (pagoda_decode_attention_set_chunk, before any call: the bits of rows past it depend on it). Off by
 * default: on the 2-vCPU dev VM chunks of 256 cost ~10 % at 3,000 positions on one thread and gained nothing on two
 * (RESULTS.md, session 28); not measured yet on a many-core CPU, where the idle threads are. */
static int64_t pos_chunk = 0;

void pagoda_decode_attention_set_chunk(int64_t positions) { pos_chunk = positions > 0 ? positions : 0; }


#define CHUNK 16

/* Sum of x[0..n) in 16 lanes by index (lane i % 16), the lanes added pairwise: the same order for the same n, wherever
 * x lies. */
static inline float lane_sum(const float *x, int64_t n) {
    float part[CHUNK] = {0};
    int64_t j = 0;
    for (; j + CHUNK <= n; j += CHUNK)
        for (int c = 0; c < CHUNK; c++) part[c] += x[j + c];
    for (int c = 0; j + c < n; c++) part[c] += x[j + c];
    for (int w = CHUNK / 2; w > 0; w /= 2)
        for (int c = 0; c < w; c++) part[c] += part[c + w];
    return part[0];
}

/* q . k over n elements: element d in lane d % 16, the lanes added pairwise. */
static inline float lane_dot(const float *q, const float *k, int64_t n) {
    float part[CHUNK] = {0};
    int64_t d = 0;
    for (; d + CHUNK <= n; d += CHUNK)
        for (int c = 0; c < CHUNK; c++) part[c] += q[d + c] * k[d + c];
    for (int c = 0; d + c < n; c++) part[c] += q[d + c] * k[d + c];
    for (int w = CHUNK / 2; w > 0; w /= 2)
        for (int c = 0; c < w; c++) part[c] += part[c + w];
    return part[0];
}

/* The largest of x[0..n) (exact in any order; in 16 lanes so that it vectorizes). */
static inline float lane_max(const float *x, int64_t n) {
    float part[CHUNK];
    for (int c = 0; c < CHUNK; c++) part[c] = -INFINITY;
    int64_t j = 0;
    for (; j + CHUNK <= n; j += CHUNK)
        for (int c = 0; c < CHUNK; c++) part[c] = x[j + c] > part[c] ? x[j + c] : part[c];
    for (int c = 0; j + c < n; c++) part[c] = x[j + c] > part[c] ? x[j + c] : part[c];
    float m = part[0];
    for (int c = 1; c < CHUNK; c++) m = part[c] > m ? part[c] : m;
    return m;
}

/* Position j's row of KV head kvh: its index in the cache's [blocks][hkv][bs] rows, by the block table. */
static inline int64_t block_row(const int32_t *table, int64_t j, int64_t bs, int64_t hkv, int64_t kvh) {
    return ((int64_t)table[j / bs] * hkv + kvh) * bs + j % bs;
}

/* block_row for increasing j: *base / *next carry the current cache block between calls (one table lookup a block;
 * start with *next = -1). */
static inline int64_t cached_row(const int32_t *table, int64_t j, int64_t bs, int64_t hkv, int64_t kvh, int64_t *base,
                                 int64_t *next) {
    if (j >= *next) {
        *base = block_row(table, j, bs, hkv, kvh) - j;
        *next = (j / bs + 1) * bs;
    }
    return *base + j;
}

/* Position j's K or V row of KV head kvh as float32: the cache's own row (float32 caches) or `buf` converted from
 * bf16 (cached_row's lookup). */
static inline const float *cache_row(const void *cache, int is_bf16, const int32_t *table, int64_t j, int64_t bs,
                                     int64_t hkv, int64_t kvh, int64_t D, int64_t *base, int64_t *next, float *buf) {
    int64_t off = cached_row(table, j, bs, hkv, kvh, base, next) * D;
    if (!is_bf16) return (const float *)cache + off;
    const uint16_t *b = (const uint16_t *)cache + off;
    for (int64_t d = 0; d < D; d++) buf[d] = bf16_to_f32(b[d]);
    return buf;
}

/* Position j's row of KV head kvh in a bf16 cache, unconverted (cache_row's lookup). */
static inline const uint16_t *cache_row_bf16(const void *cache, const int32_t *table, int64_t j, int64_t bs,
                                             int64_t hkv, int64_t kvh, int64_t D, int64_t *base, int64_t *next) {
    return (const uint16_t *)cache + cached_row(table, j, bs, hkv, kvh, base, next) * D;
}

#ifndef PG_AHEAD
#define PG_AHEAD 32
#endif
/* Prefetch position j's row of KV head kvh (esize-byte elements): the rows of a request's 16-token blocks lie wherever
 * its block table says, so the hardware prefetcher does not follow them; a step's layers have just flushed the caches,
 * and a long context's attention then waited on memory for every row (RESULTS.md, session 27). */
static inline void prefetch_row(const void *cache, int64_t esize, const int32_t *table, int64_t j, int64_t bs,
                                int64_t hkv, int64_t kvh, int64_t D) {
    const char *p = (const char *)cache + block_row(table, j, bs, hkv, kvh) * D * esize;
    for (int64_t b = 0; b < D * esize; b += 64) __builtin_prefetch(p + b, 0, 3);
}

/* prefetch_row for positions lo .. min(lo + PG_AHEAD, hi + 1) - 1: the rows before a loop's own prefetches start. */
static inline void prefetch_first(const void *cache, int64_t esize, const int32_t *table, int64_t lo, int64_t hi,
                                  int64_t bs, int64_t hkv, int64_t kvh, int64_t D) {
    for (int64_t j = lo; j < lo + PG_AHEAD && j <= hi; j++) prefetch_row(cache, esize, table, j, bs, hkv, kvh, D);
}

#if defined(__AVX512F__) && defined(__GNUC__)
/* Whether this CPU has AVX512-BF16 (vdpbf16ps), asked once. */
static int cpu_has_bf16_dot(void) {
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    return has;
}

/* The 16 horizontal sums of a[0..15] in one vector: lane L = _mm512_reduce_add_ps(a[4 * (L % 4) + L / 4]), by
 * that function's own tree (x[i] + x[i + 8], then + 4 lanes, then lanes 0 + 2 and 1 + 3, then those two), each add
 * pairing the same two values (float addition commutes bit for bit), so every lane is bitwise the value
 * _mm512_reduce_add_ps gives (GCC's avx512fintrin.h). 24 shuffles and 15 adds for 16 sums, instead of 16 reductions
 * of 5 dependent steps each. */
__attribute__((target("avx512f"))) static inline __m512 reduce16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int k = 0; k < 8; k++) /* lanes 0-7: a[2k]'s x[i] + x[i + 8]; lanes 8-15: a[2k + 1]'s */
        b[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int m = 0; m < 4; m++) /* 128-bit block q: a[4m + q]'s T3[i] + T3[i + 4] */
        c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int n = 0; n < 2; n++) /* block q: a[8n + q]'s T6[0] + T6[2], T6[1] + T6[3], then a[8n + 4 + q]'s */
        d[n] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * n], c[2 * n + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(c[2 * n], c[2 * n + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* block q: the sums of a[q], a[4 + q], a[8 + q], a[12 + q] */
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The scores of a bf16 cache on an AVX512-BF16 CPU (D % 32 == 0): for each pair r and position j,
 *     a = 0;  for each 32-element chunk of head_dim in order:  a = vdpbf16ps(a, q_r chunk, k_j chunk)
 *     score = _mm512_reduce_add_ps(a) * scale
 * (bf16 x bf16 products are exact; the CPU's pair sums, then the lanes' fixed tree): the bf16 q and k rows are read
 * as they are, no float32 copies. Positions go 16 at a time (their rows looked up once for every pair; a pair's 16
 * chains reduced together by reduce16, the same bits), the rest one at a time, four pairs a pass; the same
 * arithmetic for every pair whatever else the item holds. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void scores_bf16(
    const uint16_t *const *q_rows, const void *k_cache, const int32_t *table, int64_t bs, int64_t hkv, int64_t kvh,
    int64_t D, int64_t R, const int64_t *lo, const int64_t *hi, int64_t first, int64_t last, int64_t span,
    float scale, float *scores) {
    int64_t base = 0, next = -1;
    prefetch_first(k_cache, 2, table, first, last, bs, hkv, kvh, D);
    const __m512 vscale = _mm512_set1_ps(scale);
    int64_t j = first;
    for (; j + 15 <= last; j += 16) {
        const uint16_t *kr[16];
        for (int i = 0; i < 16; i++) {
            kr[i] = cache_row_bf16(k_cache, table, j + i, bs, hkv, kvh, D, &base, &next);
            if (j + i + PG_AHEAD <= last) prefetch_row(k_cache, 2, table, j + i + PG_AHEAD, bs, hkv, kvh, D);
        }
        for (int64_t r = 0; r < R; r++) {
            const int64_t from = lo[r] > j ? lo[r] - j : 0, to = hi[r] < j + 15 ? hi[r] - j : 15;
            if (from > to) continue; /* none of these positions is the pair's */
            __m512 a[16];
            for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 2 * CHUNK) {
                const __m512bh qv = (__m512bh)_mm512_loadu_si512(q_rows[r] + d);
                for (int i = 0; i < 16; i++) /* a[i]: position j + 4 (i % 4) + i / 4 (reduce16's lane order) */
                    a[i] = _mm512_dpbf16_ps(a[i], qv, (__m512bh)_mm512_loadu_si512(kr[4 * (i % 4) + i / 4] + d));
            }
            const __mmask16 keep = (__mmask16)(((1u << (to - from + 1)) - 1u) << from);
            _mm512_mask_storeu_ps(scores + r * span + (j - first), keep, _mm512_mul_ps(reduce16(a), vscale));
        }
    }
    for (; j <= last; j++) {
        const uint16_t *k = cache_row_bf16(k_cache, table, j, bs, hkv, kvh, D, &base, &next);
        if (j + PG_AHEAD <= last) prefetch_row(k_cache, 2, table, j + PG_AHEAD, bs, hkv, kvh, D);
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            const uint16_t *q0 = q_rows[r0], *q1 = q_rows[r0 + 1 < R ? r0 + 1 : r0],
                           *q2 = q_rows[r0 + 2 < R ? r0 + 2 : r0], *q3 = q_rows[r0 + 3 < R ? r0 + 3 : r0];
            for (int64_t d = 0; d < D; d += 2 * CHUNK) {
                const __m512bh kv = (__m512bh)_mm512_loadu_si512(k + d);
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(q0 + d), kv);
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(q1 + d), kv);
                a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_loadu_si512(q2 + d), kv);
                a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_loadu_si512(q3 + d), kv);
            }
            const float dots[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),
                                   _mm512_reduce_add_ps(a3)};
            for (int64_t i = 0; i < 4 && r0 + i < R; i++)
                if (j >= lo[r0 + i] && j <= hi[r0 + i]) scores[(r0 + i) * span + (j - first)] = dots[i] * scale;
        }
    }
}
#endif

/* Partial (m, l, acc[D]) of a pair's chunk c, pagoda_decode_attention_combine's input: float32 [T][H][nch][D + 2]. */
static inline float *partial_at(float *partials, int64_t t, int64_t h, int64_t H, int64_t nch, int64_t c, int64_t D) {
    return partials + ((t * H + h) * nch + c) * (D + 2);
}

/* The run's rows t0 .. t0 + n - 1 against KV head kvh over chunk c's positions (all of them when nch == 1). With
 * nch == 1 the outputs are written; else each pair's partial: m its scores' maximum, l = sum exp(s - m), acc =
 * sum exp(s - m) v (m = -inf, l = 0 where the pair has no position in the chunk). */
static void attend_group(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                         int is_bf16, int64_t kvh, int64_t G, int64_t hkv, int64_t bs, const int32_t *table,
                         const int32_t *row_pos, int64_t t0, int64_t n, int64_t window, int64_t D, float scale,
                         int64_t c, int64_t nch, float *partials,
                         float *scores, float *qf, float *acc, float *kv_buf, float *den, float *mx, int64_t *lo,
                         int64_t *hi, float *v_rows, const float **v_ptr, const uint16_t **q_rows, void *out) {
    int64_t R = n * G, first = INT64_MAX, last = -1;
    const int64_t c_lo = nch == 1 ? 0 : c * pos_chunk, c_hi = nch == 1 ? INT64_MAX : c_lo + pos_chunk - 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t pos = row_pos[t0 + i];
        int64_t l = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
        if (l < c_lo) l = c_lo;
        if (pos > c_hi) pos = c_hi;
        for (int64_t g = 0; g < G; g++) {
            int64_t r = i * G + g, h = kvh * G + g;
            lo[r] = l;
            hi[r] = pos;
            if (is_bf16) q_rows[r] = (const uint16_t *)q + (t0 + i) * q_st + h * q_sh;
            for (int64_t d = 0; d < D; d++)
                qf[r * D + d] = is_bf16 ? bf16_to_f32(((const uint16_t *)q)[(t0 + i) * q_st + h * q_sh + d])
                                        : ((const float *)q)[(t0 + i) * q_st + h * q_sh + d];
        }
        if (l > pos) continue; /* no position of this row in the chunk */
        if (l < first) first = l;
        if (pos > last) last = pos;
    }
    if (last < first) { /* only when nch > 1: a row's first chunk always holds its position */
        for (int64_t r = 0; r < R; r++) {
            float *p = partial_at(partials, t0 + r / G, kvh * G + r % G, hkv * G, nch, c, D);
            p[0] = -INFINITY;
            for (int64_t d = 1; d < D + 2; d++) p[d] = 0.0f;
        }
        return;
    }
    /* Scores: each a dot product over head_dim in 16 lanes (element d in lane d % 16), the lanes added pairwise, so
     * the same whatever else the item holds. */
    int64_t span = last - first + 1;
    int64_t base = 0, next = -1;
#if defined(__AVX512F__) && defined(__GNUC__)
    const int bf16_scores = is_bf16 && D % (2 * CHUNK) == 0 && cpu_has_bf16_dot();
    if (bf16_scores)
        scores_bf16(q_rows, k_cache, table, bs, hkv, kvh, D, R, lo, hi, first, last, span, scale, scores);
#else
    const int bf16_scores = 0;
#endif
    const int64_t esize = is_bf16 ? 2 : 4;
    if (!bf16_scores) prefetch_first(k_cache, esize, table, first, last, bs, hkv, kvh, D);
    for (int64_t j = first; j <= last && !bf16_scores; j++) {
        const float *k = cache_row(k_cache, is_bf16, table, j, bs, hkv, kvh, D, &base, &next, kv_buf);
        if (j + PG_AHEAD <= last) prefetch_row(k_cache, esize, table, j + PG_AHEAD, bs, hkv, kvh, D);
#if defined(__AVX512F__)
        if (D % CHUNK == 0) {  /* lane_dot's arithmetic, four rows at a time in registers */
            for (int64_t r0 = 0; r0 < R; r0 += 4) {
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                const float *q0 = qf + r0 * D, *q1 = q0 + (r0 + 1 < R) * D, *q2 = q0 + 2 * (r0 + 2 < R) * D,
                            *q3 = q0 + 3 * (r0 + 3 < R) * D;
                for (int64_t d = 0; d < D; d += CHUNK) {
                    __m512 kv = _mm512_loadu_ps(k + d);
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), kv, a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), kv, a1);
                    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), kv, a2);
                    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), kv, a3);
                }
                float dots[4] = {_mm512_reduce_add_ps(a0), _mm512_reduce_add_ps(a1), _mm512_reduce_add_ps(a2),
                                 _mm512_reduce_add_ps(a3)};
                for (int64_t i = 0; i < 4 && r0 + i < R; i++)
                    if (j >= lo[r0 + i] && j <= hi[r0 + i]) scores[(r0 + i) * span + (j - first)] = dots[i] * scale;
            }
            continue;
        }
#endif
        for (int64_t r = 0; r < R; r++) {
            if (j < lo[r] || j > hi[r]) continue;
            scores[r * span + (j - first)] = lane_dot(qf + r * D, k, D) * scale;
        }
    }
    prefetch_first(v_cache, esize, table, first, last, bs, hkv, kvh, D); /* arriving during the softmax */
    for (int64_t r = 0; r < R; r++) {
        for (int64_t d = 0; d < D; d++) acc[r * D + d] = 0.0f;
        if (lo[r] > hi[r]) { /* no position in this chunk */
            mx[r] = -INFINITY;
            den[r] = 0.0f;
            continue;
        }
        float *s = scores + r * span + (lo[r] - first);
        int64_t len = hi[r] - lo[r] + 1;
        float m = lane_max(s, len);
        for (int64_t j = 0; j < len; j++) s[j] = exp_f32(s[j] - m);
        mx[r] = m;
        den[r] = lane_sum(s, len);
    }
    next = -1;
#if defined(__AVX512F__)
    if (D == 4 * CHUNK) {
        /* The same sums (acc += p_j v_j, an FMA per element, positions in order) with four pairs' accumulators held
         * in registers across the positions instead of loaded and stored for every one; each V row converted once
         * for all the pairs (into v_rows). */
        const int inline_v = is_bf16 && R <= 4; /* one pass over the positions: convert V in registers, no copy */
        for (int64_t j = first; j <= last && !inline_v; j++) {
            if (j + PG_AHEAD <= last) prefetch_row(v_cache, esize, table, j + PG_AHEAD, bs, hkv, kvh, D);
            v_ptr[j - first] = cache_row(v_cache, is_bf16, table, j, bs, hkv, kvh, D, &base, &next,
                                         v_rows + (j - first) * D);
        }
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            int64_t nr = R - r0 < 4 ? R - r0 : 4, jlo = INT64_MAX, jhi = -1, clo = -1, chi = INT64_MAX;
            for (int64_t i = 0; i < nr; i++) { /* the pairs' positions (a pair may have none in this chunk) */
                if (lo[r0 + i] > hi[r0 + i]) { /* no common positions */
                    clo = INT64_MAX;
                    continue;
                }
                if (lo[r0 + i] < jlo) jlo = lo[r0 + i];
                if (hi[r0 + i] > jhi) jhi = hi[r0 + i];
                if (lo[r0 + i] > clo) clo = lo[r0 + i];
                if (hi[r0 + i] < chi) chi = hi[r0 + i];
            }
            /* [clo, chi]: the positions of all nr pairs (a verify's rows differ in hi only), taken without the
             * per-pair range checks; the same FMAs in the same order as the checked path */
            const float *srow[4];
            for (int i = 0; i < 4; i++) srow[i] = scores + (r0 + (i < nr ? i : 0)) * span;
            __m512 c[4][4];
            for (int i = 0; i < 4; i++)
                for (int e = 0; e < 4; e++) c[i][e] = _mm512_setzero_ps();
            for (int64_t j = jlo; j <= jhi; j++) {
                __m512 v0, v1, v2, v3;
                if (inline_v) { /* bf16 -> float32 is a 16-bit shift: the values cache_row would have stored */
                    const uint16_t *b = cache_row_bf16(v_cache, table, j, bs, hkv, kvh, D, &base, &next);
                    if (j + PG_AHEAD <= jhi) prefetch_row(v_cache, 2, table, j + PG_AHEAD, bs, hkv, kvh, D);
#define PG_BF16X16(P) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(P))), 16))
                    v0 = PG_BF16X16(b);
                    v1 = PG_BF16X16(b + CHUNK);
                    v2 = PG_BF16X16(b + 2 * CHUNK);
                    v3 = PG_BF16X16(b + 3 * CHUNK);
#undef PG_BF16X16
                } else {
                    const float *v = v_ptr[j - first];
                    v0 = _mm512_loadu_ps(v);
                    v1 = _mm512_loadu_ps(v + CHUNK);
                    v2 = _mm512_loadu_ps(v + 2 * CHUNK);
                    v3 = _mm512_loadu_ps(v + 3 * CHUNK);
                }
                if (j >= clo && j <= chi) {
                    for (int i = 0; i < 4; i++) {
                        if (i >= nr) break;
                        const __m512 p = _mm512_set1_ps(srow[i][j - first]);
                        c[i][0] = _mm512_fmadd_ps(p, v0, c[i][0]);
                        c[i][1] = _mm512_fmadd_ps(p, v1, c[i][1]);
                        c[i][2] = _mm512_fmadd_ps(p, v2, c[i][2]);
                        c[i][3] = _mm512_fmadd_ps(p, v3, c[i][3]);
                    }
                    continue;
                }
                for (int i = 0; i < 4; i++) {
                    int64_t r = r0 + i;
                    if (i >= nr || j < lo[r] || j > hi[r]) continue;
                    __m512 p = _mm512_set1_ps(scores[r * span + (j - first)]);
                    c[i][0] = _mm512_fmadd_ps(p, v0, c[i][0]);
                    c[i][1] = _mm512_fmadd_ps(p, v1, c[i][1]);
                    c[i][2] = _mm512_fmadd_ps(p, v2, c[i][2]);
                    c[i][3] = _mm512_fmadd_ps(p, v3, c[i][3]);
                }
            }
            for (int64_t i = 0; i < nr; i++)
                for (int e = 0; e < 4; e++) _mm512_storeu_ps(acc + (r0 + i) * D + e * CHUNK, c[i][e]);
        }
    } else
#endif
    {
        for (int64_t j = first; j <= last; j++) {
            const float *v = cache_row(v_cache, is_bf16, table, j, bs, hkv, kvh, D, &base, &next, kv_buf);
            if (j + PG_AHEAD <= last) prefetch_row(v_cache, esize, table, j + PG_AHEAD, bs, hkv, kvh, D);
            for (int64_t r = 0; r < R; r++) {
                if (j < lo[r] || j > hi[r]) continue;
                float p = scores[r * span + (j - first)];
                float *ar = acc + r * D;
                for (int64_t d = 0; d < D; d++) ar[d] += p * v[d];
            }
        }
    }
    if (nch > 1) {
        for (int64_t r = 0; r < R; r++) {
            float *p = partial_at(partials, t0 + r / G, kvh * G + r % G, hkv * G, nch, c, D);
            p[0] = mx[r];
            p[1] = den[r];
            memcpy(p + 2, acc + r * D, (size_t)D * sizeof(float));
        }
        return;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < G; g++) {
            int64_t r = i * G + g, o = ((t0 + i) * (hkv * G) + kvh * G + g) * D;
            float inv = 1.0f / den[r];
            for (int64_t d = 0; d < D; d++) {
                float x = acc[r * D + d] * inv;
                if (is_bf16)
                    ((uint16_t *)out)[o + d] = f32_to_bf16(x);
                else
                    ((float *)out)[o + d] = x;
            }
        }
}

/* One thread's scratch for the items of a call (pagoda_decode_attention_item): bytes, and where each part lies. */
static int64_t align64(int64_t n) { return (n + 63) & ~(int64_t)63; }

int64_t pagoda_decode_attention_scratch(int64_t H, int64_t hkv, int64_t D, int64_t max_pos) {
    int64_t rmax = MAX_GROUP_ROWS * (H / hkv), p = max_pos + 1;
    return align64(4 * rmax * p) + align64(4 * (2 * rmax * D + D + 2 * rmax)) + align64(8 * 2 * rmax) +
           align64(4 * p * D) + align64((int64_t)sizeof(float *) * p) + align64((int64_t)sizeof(void *) * rmax);
}

/* Position chunks of a call whose rows' largest position is max_pos (1 without chunks or below pos_chunk). */
int64_t pagoda_decode_attention_chunks(int64_t max_pos) { return pos_chunk ? max_pos / pos_chunk + 1 : 1; }

/* The partials a call of T rows needs when it has several chunks: bytes (0 for one chunk). */
int64_t pagoda_decode_attention_partials(int64_t T, int64_t H, int64_t D, int64_t max_pos) {
    int64_t nch = pagoda_decode_attention_chunks(max_pos);
    return nch == 1 ? 0 : T * H * nch * (D + 2) * (int64_t)sizeof(float);
}

/* The call's runs of rows: run_start[0..runs] (T + 1 entries), a request's rows cut every MAX_GROUP_ROWS; returns
 * runs. Its items are (run, KV head, chunk) triples: runs * hkv * pagoda_decode_attention_chunks(max_pos). */
int64_t pagoda_decode_attention_runs(const int32_t *row_req, int64_t T, int64_t *run_start) {
    int64_t runs = 0;
    for (int64_t t = 0; t < T; t++)
        if (t == 0 || row_req[t] != row_req[t - 1] || t - run_start[runs - 1] == MAX_GROUP_ROWS) run_start[runs++] = t;
    run_start[runs] = T;
    return runs;
}

/* Item `item` ((run * hkv + KV head) * chunks + chunk) of a call, on one thread with its own scratch (64-byte
 * aligned, pagoda_decode_attention_scratch bytes); `partials` (pagoda_decode_attention_partials bytes, shared) when
 * the call has several chunks. Items write disjoint parts of out (or of partials); any split of them over threads
 * gives the same bits. */
void pagoda_decode_attention_item(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                                  int64_t hkv, int64_t bs, const int32_t *block_tables, int64_t bt_stride,
                                  const int32_t *row_req, const int32_t *row_pos, const int64_t *run_start,
                                  int64_t item, int64_t H, int64_t D, int64_t max_pos, float scale, int64_t window,
                                  int is_bf16, void *scratch, float *partials, void *out) {
    int64_t G = H / hkv, rmax = MAX_GROUP_ROWS * G, p = max_pos + 1, nch = pagoda_decode_attention_chunks(max_pos);
    char *at = scratch;
    float *scores = (float *)at;
    at += align64(4 * rmax * p);
    float *qf = (float *)at, *acc = qf + rmax * D, *kv_buf = acc + rmax * D, *den = kv_buf + D, *mx = den + rmax;
    at += align64(4 * (2 * rmax * D + D + 2 * rmax));
    int64_t *bounds = (int64_t *)at;
    at += align64(8 * 2 * rmax);
    float *v_rows = (float *)at;
    at += align64(4 * p * D);
    const float **v_ptr = (const float **)at;
    at += align64((int64_t)sizeof(float *) * p);
    const uint16_t **q_rows = (const uint16_t **)at;
    int64_t c = item % nch, run = item / nch / hkv, kvh = item / nch % hkv, t0 = run_start[run];
    attend_group(q, q_st, q_sh, k_cache, v_cache, is_bf16, kvh, G, hkv, bs,
                 block_tables + (int64_t)row_req[t0] * bt_stride, row_pos, t0, run_start[run + 1] - t0, window, D,
                 scale, c, nch, partials, scores, qf, acc, kv_buf, den, mx, bounds, bounds + rmax, v_rows, v_ptr,
                 q_rows, out);
}

/* The outputs of (row, head) pairs [p_lo, p_hi) (pair = row * H + head) of a call with nch > 1 chunks, from the
 * partials: chunks ascending, M the largest m of the chunks holding positions (l != 0), f_c = exp(m_c - M) (1 for
 * the chunk that holds M), L = sum f_c l_c, out = (sum f_c acc_c) * (1 / L), rounded once to the output dtype. A pair
 * whose positions lie in one chunk gets acc / l, the one-chunk result. */
void pagoda_decode_attention_combine(const float *partials, int64_t p_lo, int64_t p_hi, int64_t D, int64_t nch,
                                     int is_bf16, void *out) {
    float a[512];
    for (int64_t pair = p_lo; pair < p_hi; pair++) {
        const float *base = partials + pair * nch * (D + 2);
        float m = -INFINITY, l = 0.0f;
        /* a chunk without positions has l == 0 exactly (one with positions has l >= 1, or NaN, which must reach the
         * output as it does without chunks) */
        for (int64_t c = 0; c < nch; c++)
            if (base[c * (D + 2) + 1] != 0.0f && base[c * (D + 2)] > m) m = base[c * (D + 2)];
        for (int64_t d = 0; d < D; d++) a[d] = 0.0f;
        for (int64_t c = 0; c < nch; c++) {
            const float *pc = base + c * (D + 2);
            if (pc[1] == 0.0f) continue;
            const float f = pc[0] == m ? 1.0f : exp_f32(pc[0] - m);
            l += f * pc[1];
            for (int64_t d = 0; d < D; d++) a[d] += f * pc[2 + d];
        }
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < D; d++) {
            float x = a[d] * inv;
            if (is_bf16)
                ((uint16_t *)out)[pair * D + d] = f32_to_bf16(x);
            else
                ((float *)out)[pair * D + d] = x;
        }
    }
}

/* q [T, H, D] (row stride q_st, head stride q_sh, elements); caches [N, hkv, bs, D] contiguous; block_tables int32
 * [B, bt_stride]; row_req / row_pos int32 [T]: each row's request and position (a request's rows consecutive);
 * window 0: none; threads: OpenMP threads (torch's count, passed by the caller: a step that torch runs on one thread
 * runs this on one too); out [T, H, D] contiguous. Returns 0, or -1 when scratch memory could not be allocated, -2
 * for a head_dim above 512. */
int pagoda_decode_attention(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                            int64_t hkv, int64_t bs, const int32_t *block_tables, int64_t bt_stride,
                            const int32_t *row_req, const int32_t *row_pos, int64_t T, int64_t H, int64_t D,
                            int64_t max_pos, float scale, int64_t window, int is_bf16, int threads, void *out) {
    if (D > 512) return -2;
    int64_t *run_start = malloc(sizeof(int64_t) * (size_t)(T + 1));
    if (run_start == NULL) return -1;
    int64_t runs = pagoda_decode_attention_runs(row_req, T, run_start);
    const int64_t nch = pagoda_decode_attention_chunks(max_pos);
    float *partials = NULL;
    if (nch > 1 && (partials = malloc((size_t)pagoda_decode_attention_partials(T, H, D, max_pos))) == NULL) {
        free(run_start);
        return -1;
    }
    size_t bytes = (size_t)pagoda_decode_attention_scratch(H, hkv, D, max_pos);
    int failed = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        void *scratch = aligned_alloc(64, bytes);
        if (scratch == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t item = 0; item < runs * hkv * nch; item++) {
            if (scratch == NULL) continue;
            pagoda_decode_attention_item(q, q_st, q_sh, k_cache, v_cache, hkv, bs, block_tables, bt_stride, row_req,
                                         row_pos, run_start, item, H, D, max_pos, scale, window, is_bf16, scratch,
                                         partials, out);
        }
        free(scratch);
        if (nch > 1) {
#pragma omp for schedule(static)
            for (int64_t pair = 0; pair < T * H; pair++)
                pagoda_decode_attention_combine(partials, pair, pair + 1, D, nch, is_bf16, out);
        }
    }
    free(partials);
    free(run_start);
    return failed ? -1 : 0;
}

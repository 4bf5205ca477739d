/* The LM head for x86 AVX-512 with the BF16 extension: out[m][n] = sum_k x[m][k] * w[n][k] as float32, for bf16
 * hidden rows x [M][K] and a bf16 weight w [N][K] (row-major, the vocabulary's rows), by bf16 dot products.
 *
 * Why not oneDNN's prepacked bf16 matmul: its logits come out rounded to bf16 (pagoda.layers.logits then recomputes
 * the leading ones), it needs a second, prepacked copy of the weight, and at a few rows it reads the weight slower
 * than one row after another does: on the AMD EPYC dev VM, streams of 2-12 weight rows read interleaved (1,152 bytes
 * apart) moved 9-13 GB/s against 20.6 GB/s for the rows in order (RESULTS.md, session 26). So each thread here walks
 * its rows in order, every row once per call, and the rows of x are the inner loop (read from L1).
 *
 * Arithmetic, for every output element (independent of M, of the tile, of the item and of the thread: an entry
 * computed alone by pagoda_head_entries, or a row alone, gets the same bits as inside any batch):
 *   K in chunks of 32 (the last one zero-padded by a masked load); chunk c goes to accumulator c % 4:
 *       acc[c % 4] = vdpbf16ps(acc[c % 4], x chunk c, w chunk c), c ascending, accumulators from 0;
 *   out = hsum16((acc0 + acc1) + (acc2 + acc3)), hsum16 the fixed tree below.
 * vdpbf16ps is the CPU's own bf16 pair product-sum (denormals flushed); the sums are float32, 4 independent chains
 * per row so the dot products' latency overlaps.
 *
 * Work items: blocks of `rows` vocabulary rows (cpu_head_dot.ITEM_ROWS); pagoda_head_item has the team signature of
 * cpu_decoder_stack.c (pagoda_team_run), pagoda_head_dot runs the items on the calling thread. */
#include <immintrin.h>
#include <stdint.h>

typedef struct {
    const uint16_t *x; /* bf16 [M][K] */
    const uint16_t *w; /* bf16 [N][K] */
    float *out;        /* float32 [M][N] */
    int64_t m, n, k, rows; /* rows: vocabulary rows per item */
} head_job;

#define TM 4 /* activation rows per pass over a weight row (TM x 4 accumulators) */

static inline float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

static inline __m512bh load_chunk(const uint16_t *p, __mmask32 mask) {
    return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

/* Rows m0 .. m0 + tm - 1 of x against weight row n (tm <= TM, a compile-time constant after inlining). */
static inline __attribute__((always_inline)) void dot_rows(const head_job *j, int64_t n, int64_t m0, const int tm) {
    const int64_t K = j->k, full = K / 32;
    const __mmask32 tail = (__mmask32)((UINT64_C(1) << (K % 32)) - 1);
    const uint16_t *w = j->w + n * K;
    __m512 acc[TM][4];
#pragma GCC unroll 4
    for (int m = 0; m < tm; m++)
#pragma GCC unroll 4
        for (int a = 0; a < 4; a++) acc[m][a] = _mm512_setzero_ps();
    int64_t c = 0;
#define PG_STEP(A, WV, XLOAD)                                                             \
    do {                                                                                  \
        const __m512bh wv_ = (WV);                                                        \
        _Pragma("GCC unroll 4") for (int m = 0; m < tm; m++) {                            \
            const uint16_t *xp = j->x + (m0 + m) * K + c * 32;                            \
            acc[m][A] = _mm512_dpbf16_ps(acc[m][A], (XLOAD), wv_);                        \
        }                                                                                 \
    } while (0)
#define PG_FULL(A) PG_STEP(A, (__m512bh)_mm512_loadu_si512(w + c * 32), (__m512bh)_mm512_loadu_si512(xp))
    for (; c + 4 <= full;) { /* accumulator a takes chunks c with c % 4 == a */
        PG_FULL(0); c++;
        PG_FULL(1); c++;
        PG_FULL(2); c++;
        PG_FULL(3); c++;
    }
    /* at most 3 full chunks left (c % 4 == 0 here), then the masked tail chunk */
    if (c < full) { PG_FULL(0); c++; }
    if (c < full) { PG_FULL(1); c++; }
    if (c < full) { PG_FULL(2); c++; }
    if (tail) {
        switch (c % 4) {
            case 0: PG_STEP(0, load_chunk(w + c * 32, tail), load_chunk(xp, tail)); break;
            case 1: PG_STEP(1, load_chunk(w + c * 32, tail), load_chunk(xp, tail)); break;
            case 2: PG_STEP(2, load_chunk(w + c * 32, tail), load_chunk(xp, tail)); break;
            default: PG_STEP(3, load_chunk(w + c * 32, tail), load_chunk(xp, tail)); break;
        }
    }
#undef PG_FULL
#undef PG_STEP
#pragma GCC unroll 4
    for (int m = 0; m < tm; m++)
        j->out[(m0 + m) * j->n + n] =
            hsum16(_mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]), _mm512_add_ps(acc[m][2], acc[m][3])));
}

/* Item `item`: vocabulary rows [item * rows, (item + 1) * rows) for every row of x. */
void pagoda_head_item(void *ctx, int64_t item, int thread) {
    (void)thread;
    const head_job *j = ctx;
    const int64_t lo = item * j->rows, hi = lo + j->rows < j->n ? lo + j->rows : j->n;
    for (int64_t n = lo; n < hi; n++) {
        int64_t m0 = 0;
        for (; m0 + TM <= j->m; m0 += TM) dot_rows(j, n, m0, TM);
        switch (j->m - m0) {
            case 1: dot_rows(j, n, m0, 1); break;
            case 2: dot_rows(j, n, m0, 2); break;
            case 3: dot_rows(j, n, m0, 3); break;
            default: break;
        }
    }
}

/* The whole head on the calling thread (tests, the self-check). Returns 0, or -1 for a bad shape. */
int pagoda_head_dot(const uint16_t *x, const uint16_t *w, float *out, int64_t M, int64_t N, int64_t K, int64_t rows) {
    if (M <= 0 || N <= 0 || K <= 0 || rows <= 0) return -1;
    head_job j = {x, w, out, M, N, K, rows};
    for (int64_t i = 0; i < (N + rows - 1) / rows; i++) pagoda_head_item(&j, i, 0);
    return 0;
}

/* out[i] = the head's entry (row[i], col[i]) by the arithmetic above (the same bits as pagoda_head_item gives it):
 * the exact leading logits of rows another kernel computed. Returns 0, or -1 for a bad shape. */
int pagoda_head_entries(const uint16_t *x, const uint16_t *w, const int64_t *row, const int64_t *col, float *out,
                        int64_t count, int64_t K) {
    if (K <= 0 || count < 0) return -1;
    for (int64_t i = 0; i < count; i++) {
        float v;
        head_job j = {x + row[i] * K, w + col[i] * K, &v, 1, 1, K, 1};
        dot_rows(&j, 0, 0, 1);
        out[i] = v;
    }
    return 0;
}

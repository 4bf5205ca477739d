/* The LM head of a GGUF Q8_0 weight for x86 AVX-512 with VNNI: out[m][n] = sum_k x[m][k] * w[n][k] as float32, for
 * bf16 hidden rows x [M][K] and a weight kept as the file stores it, w[n][k] = d[n][g] * q[n][k] (int8 codes, one
 * scale per 32 columns, g = k / 32). 36 bytes per 32 weights against the bf16 copy's 64, and the table's exact values
 * (the bf16 copy rounds d * q to 8 significant bits).
 *
 * Layout (cpu_head_q8.Q8Head.pack): vocabulary rows in tiles of 16, tile t = rows 16t .. 16t + 15 (the last padded
 * with zeros); q is int8 [T][K/2][16][2] (k pair p of tile t: row 16t + i's (q[2p], q[2p+1]) at [t][p][i]), d is
 * float32 [T][K/32][16]. A tile's k pair is one 32-byte load, widened to 16 lanes of int16 pairs, lane = row.
 *
 * Arithmetic, for every output element (independent of M, of the tile's other rows, of the item and of the thread):
 *   1. Row m of x to int16, once per call (pagoda_q8_prepare): s = 15 - e, where max_k |x[m][k]| = f * 2^e with
 *      f in [0.5, 1) (frexp; s = 0 for a zero row); xi[m][k] = round-half-even(x[m][k] * 2^s). x is bf16 (8
 *      significant bits), so every element within 2^7 of the row's largest is exact, |xi| <= 32640, and the others
 *      are off by at most 2^-(s+1). A row with an infinite or NaN element gets NaN logits (s = NO_ROW).
 *   2. Per group g (K % 32 == 0): P_g = sum over its 32 k of q[n][k] * xi[m][k], an exact int32 (|P_g| < 2^27);
 *      acc = fma(d[n][g], float(P_g), acc) with float() round-to-nearest-even, g ascending, acc from 0.
 *   3. out = acc * 2^-s (exact unless the result is subnormal).
 * So the roundings are step 1's (elements over 128 times smaller than the row's largest), float(P_g) and the fmas.
 *
 * Work items: blocks of `rows` vocabulary rows (a multiple of 16: cpu_head_q8.ITEM_ROWS); pagoda_q8_head_item has the
 * team signature of cpu_decoder_stack.c (pagoda_team_run); each thread walks its tiles in order (see cpu_head_dot.c
 * on why in order). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define NO_ROW 100000 /* a row's s when it holds an infinite or NaN element */

typedef struct {
    const int16_t *xi;  /* [M][K], pagoda_q8_prepare's */
    const int32_t *s;   /* [M] */
    const int8_t *q;    /* [T][K/2][16][2] */
    const float *d;     /* [T][K/32][16] */
    float *out;         /* [M][N] */
    int64_t m, n, k, rows; /* rows: vocabulary rows per item */
} q8_job;

/* Bytes ahead of the codes a tile reads that it asks the cache for (_mm_prefetch): the table streams 16 rows at a
 * time, and on the dev VM the hardware prefetchers at times stream a pass at half the rate a software prefetch
 * reaches (RESULTS.md, session 38). No result depends on it. */
#ifndef HEAD_PREFETCH
#define HEAD_PREFETCH 4096
#endif

#define TM 8 /* activation rows per pass over a tile (up to 4 rows 4 int32 chains a row, above 2; in registers) */

/* Step 1 for M rows of K bf16 values. Returns 0, or -1 for a bad shape. */
int pagoda_q8_prepare(const uint16_t *x, int64_t M, int64_t K, int16_t *xi, int32_t *s) {
    if (M <= 0 || K <= 0 || K % 32) return -1;
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *row = x + m * K;
        float mx = 0.0f;
        int finite = 1;
        for (int64_t k = 0; k < K; k++) {
            uint32_t bits = (uint32_t)row[k] << 16;
            float v;
            __builtin_memcpy(&v, &bits, sizeof v);
            if (!isfinite(v)) finite = 0;
            else if (fabsf(v) > mx) mx = fabsf(v);
        }
        int e = 0;
        if (mx > 0.0f) frexpf(mx, &e);
        const int sh = mx > 0.0f ? 15 - e : 0;
        s[m] = finite ? sh : NO_ROW;
        const __m512 scale = _mm512_set1_ps((float)sh);
        for (int64_t k = 0; k < K; k += 16) {
            __m512 v = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + k))), 16));
            if (!finite) v = _mm512_setzero_ps();
            /* x * 2^sh exactly (scalef: no overflow of 2^sh itself), then round half to even (MXCSR's default) */
            __m512i r = _mm512_cvtps_epi32(_mm512_scalef_ps(v, scale));
            _mm256_storeu_si256((__m256i *)(xi + m * K + k), _mm512_cvtsepi32_epi16(r));
        }
    }
    return 0;
}

/* Tile t (vocabulary rows 16t .. 16t + 15, one per lane) for rows m0 .. m0 + tm - 1 of x (tm <= TM, a compile-time
 * constant after inlining), one pass over the tile's codes. Step 2 with the lanes as vocabulary rows: group g's 16 k
 * pairs feed 4 int32 chains a row by pair index % 4 (2 chains, % 2, above 4 rows: registers), vpdpwssd; integer
 * sums, so neither the chain count nor their order changes P. */
static inline __attribute__((always_inline)) void tile_rows(const q8_job *j, int64_t t, int64_t m0, const int tm) {
    const int64_t K = j->k, groups = K / 32;
    const int8_t *q = j->q + t * 16 * K;
    const float *d = j->d + t * 16 * groups;
    __m512 acc[TM];
#pragma GCC unroll 8
    for (int m = 0; m < tm; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const int chains = tm <= 4 ? 4 : 2;
        __m512i c[TM][4];
#pragma GCC unroll 8
        for (int m = 0; m < tm; m++)
#pragma GCC unroll 4
            for (int a = 0; a < chains; a++) c[m][a] = _mm512_setzero_si512();
#if HEAD_PREFETCH > 0
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 192, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 256, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 320, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 384, _MM_HINT_T0);
        _mm_prefetch((const char *)(q + g * 16 * 32) + HEAD_PREFETCH + 448, _MM_HINT_T0);
        _mm_prefetch((const char *)(d + g * 16) + HEAD_PREFETCH / 8, _MM_HINT_T0);
#endif
#pragma GCC unroll 16
        for (int p = 0; p < 16; p++) {
            const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q + (g * 16 + p) * 32)));
#pragma GCC unroll 8
            for (int m = 0; m < tm; m++) {
                int32_t pair; /* (xi[k], xi[k+1]) as one dword, low word first */
                __builtin_memcpy(&pair, j->xi + (m0 + m) * K + g * 32 + 2 * p, sizeof pair);
                c[m][p % chains] = _mm512_dpwssd_epi32(c[m][p % chains], w, _mm512_set1_epi32(pair));
            }
        }
        const __m512 dg = _mm512_loadu_ps(d + g * 16);
#pragma GCC unroll 8
        for (int m = 0; m < tm; m++) {
            const __m512i sum = chains == 4 ? _mm512_add_epi32(_mm512_add_epi32(c[m][0], c[m][1]),
                                                               _mm512_add_epi32(c[m][2], c[m][3]))
                                            : _mm512_add_epi32(c[m][0], c[m][1]);
            acc[m] = _mm512_fmadd_ps(dg, _mm512_cvtepi32_ps(sum), acc[m]);
        }
    }
    const int64_t lanes = j->n - t * 16 < 16 ? j->n - t * 16 : 16;
#pragma GCC unroll 8
    for (int m = 0; m < tm; m++) {
        /* acc * 2^-s by vscalefps: bitwise ldexpf's value (correctly rounded, subnormal results included; checked
         * against glibc on 2M random cases, RESULTS.md session 35), without a libm call per logit */
        const int32_t s = j->s[m0 + m];
        const __m512 v = s == NO_ROW ? _mm512_set1_ps(NAN) : _mm512_scalef_ps(acc[m], _mm512_set1_ps((float)-s));
        _mm512_mask_storeu_ps(j->out + (m0 + m) * j->n + t * 16, (__mmask16)((1u << lanes) - 1u), v);
    }
}

/* Item `item`: tiles [item * rows / 16, ...) (rows a multiple of 16) for every row of x. */
void pagoda_q8_head_item(void *ctx, int64_t item, int thread) {
    (void)thread;
    const q8_job *j = ctx;
    const int64_t tiles = (j->n + 15) / 16, per = j->rows / 16;
    const int64_t lo = item * per, hi = lo + per < tiles ? lo + per : tiles;
    for (int64_t t = lo; t < hi; t++) {
        int64_t m0 = 0;
        for (; m0 + TM <= j->m; m0 += TM) tile_rows(j, t, m0, TM);
        switch (j->m - m0) {
            case 1: tile_rows(j, t, m0, 1); break;
            case 2: tile_rows(j, t, m0, 2); break;
            case 3: tile_rows(j, t, m0, 3); break;
            case 4: tile_rows(j, t, m0, 4); break;
            case 5: tile_rows(j, t, m0, 5); break;
            case 6: tile_rows(j, t, m0, 6); break;
            case 7: tile_rows(j, t, m0, 7); break;
            default: break;
        }
    }
}

/* The whole head on the calling thread (tests, the self-check), xi and s from pagoda_q8_prepare. Returns 0, or -1
 * for a bad shape. */
int pagoda_q8_head(const int16_t *xi, const int32_t *s, const int8_t *q, const float *d, float *out, int64_t M,
                   int64_t N, int64_t K, int64_t rows) {
    if (M <= 0 || N <= 0 || K <= 0 || K % 32 || rows <= 0 || rows % 16) return -1;
    q8_job j = {xi, s, q, d, out, M, N, K, rows};
    for (int64_t i = 0; i < (N + rows - 1) / rows; i++) pagoda_q8_head_item(&j, i, 0);
    return 0;
}

/* out[i] = the head's entry (row[i], col[i]) by the arithmetic above (the same bits as pagoda_q8_head_item gives it),
 * xi and s from pagoda_q8_prepare. Returns 0, or -1 for a bad shape. */
int pagoda_q8_head_entries(const int16_t *xi, const int32_t *s, const int8_t *q, const float *d, const int64_t *row,
                           const int64_t *col, float *out, int64_t count, int64_t K) {
    if (K <= 0 || K % 32 || count < 0) return -1;
    const int64_t groups = K / 32;
    for (int64_t i = 0; i < count; i++) {
        const int16_t *x = xi + row[i] * K;
        const int64_t t = col[i] / 16, lane = col[i] % 16;
        const int8_t *qt = q + t * 16 * K;
        float acc = 0.0f;
        for (int64_t g = 0; g < groups; g++) {
            int32_t p = 0; /* exact: |p| < 2^27 */
            for (int64_t k = 0; k < 32; k++)
                p += (int32_t)qt[((g * 32 + k) / 2) * 32 + lane * 2 + k % 2] * x[g * 32 + k];
            acc = fmaf(d[t * 16 * groups + g * 16 + lane], (float)p, acc);
        }
        out[i] = s[row[i]] == NO_ROW ? NAN : ldexpf(acc, -s[row[i]]);
    }
    return 0;
}

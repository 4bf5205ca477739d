/* Int4 weight-only matmul for x86 AVX-512 with the BF16 extension, by bf16 dot products (vdpbf16ps).
 *
 * Same inputs as torch's aten::_weight_int4pack_mm_for_cpu (its AVX-512 int4pack layout and bf16 scales_zeros),
 * another arithmetic. torch's kernel dequantizes every weight, w = fma(q - 8, scale, zero), and runs one fp32 FMA per
 * weight and row. Here the weight is factored per group g of G k's,
 *     sum_k a[k] w[k][n] = sum_g ( scale_g[n] * S_g + zero_g[n] * X_g ),
 *     S_g = sum_{k in g} a[k] (q[k][n] - 8)   (bf16 x small-integer products: exact in fp32),
 *     X_g = sum_{k in g} a[k],
 * so a weight costs one lane of one vdpbf16ps per row (32 products an instruction, against 16 for an FMA) and its
 * dequantization is one vpermw table lookup of (q - 8) as bf16, shared by all rows. For every output element:
 *     X_g     = fp32 sum of a[k] over the group, k ascending (pagoda_int4_dot_mm computes it once per row)
 *     S       = 0;  for each k pair (k, k+1) of g, ascending:  S = vdpbf16ps(S, (a[k], a[k+1]), (q-8 of k, k+1))
 *     acc     = fma(scale_g, S, acc);  acc = fma(zero_g, X_g, acc)      (acc = 0 before group 0; groups ascending)
 *     c[m][n] = bf16(acc), round to nearest even (NaN -> 0xffff), as torch's kernel rounds
 * No step depends on M or on the other rows: every row gets the same bits alone or in any batch, at every row count
 * this kernel runs (a speculative verify's rows equal decode rows; deterministic mode holds).
 *
 * Activations on the group grid (groups of at most GRID_MAX_GROUP k's; pagoda_int4_prepare_rows). Before the dots each
 * row's group is rounded to a grid of step 2^s, s = e + 1 - b, for its largest |a| in [2^e, 2^(e+1)) and b =
 * grid_bits(G), the most with G * 8 * (2^b - 1) < 2^24: every a' is then an integer multiple of the step below 2^b
 * steps, every product a' (q - 8) and every partial sum of a group's products a multiple below 2^24 steps, so S is
 * the exact sum in fp32 whatever the order of its additions. The vdpbf16ps build (pairs in k order) and the AMX
 * build (the tile product's own order, which is not the SDM's sequential one: RESULTS.md, session 37) then give the
 * same bits, and a one-row call may use either. bf16 keeps 8 significant bits, so every a >= 2^(e + 8 - b) is a
 * multiple already and unchanged (G = 32: within 8 binades of the largest); smaller ones move by at most half a step,
 * 2^(e - b) (G = 32: b = 16, G = 128: b = 14; below the bf16 rounding of the group's largest element). A group whose
 * largest |a| is below 2^-100 becomes zeros (its steps would be subnormal); one holding inf or NaN is left as it is.
 * X_g is the sum of the rounded group (exact too). Larger groups (per-channel weights) are left unrounded: there
 * the two builds' bits can differ, and callers that need one answer at every row count run one build.
 *
 * Layouts (torch's AVX-512 int4pack, N a multiple of 64): packed B is uint8 [N/64][K][32]; byte j of row k of
 * block b holds column 64b + j in its low nibble and 64b + 32 + j in its high nibble. scales_zeros is bf16
 * [K/G][N][2] (scale, zero). A is bf16 [M][K] row-major, C is bf16 [M][N]. K and G even.
 *
 * A k pair of a block is four vectors of 16 lanes, each lane a column's (q[k] - 8, q[k+1] - 8) bf16 pair: rows k and
 * k+1 interleaved bytewise (vpunpck{l,h}bw, within 128-bit lanes) and widened to words give lanes in column order
 * 0-7, 16-23 (`lo`) and 8-15, 24-31 (`hi`) of each nibble half. Scales and outputs are permuted the same way (PERM_*).
 * Threads: OpenMP over column tasks (a 64-column block for up to FULL_BLOCK_ROWS rows, a 32-column half above). */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "bf16_avx512.h"

#ifdef INT4_DOT_AMX
/* The AMX build (-DINT4_DOT_AMX, CPUs with AMX-BF16). For groups of a multiple of 32 k's, a group's S for up to
 * 16 rows is one tile product (tdpbf16ps) per 32 k's and 16 columns, instead of one vdpbf16ps per row, k pair and 16
 * columns: the weights are decoded as below and stored as four B tiles (one per vector v: 16 k pairs x 16 lanes of
 * bf16 pairs, tdpbf16ps's pair layout), A's rows are the A tile, and the C tiles' sums are stored and applied as in
 * the other build. The tile product adds its pairs in the hardware's own order, so the bits differ from the vdpbf16ps
 * build's; as there, no step depends on M or the other rows (a row alone = the row in any batch). Measured on an AMX
 * Xeon (RESULTS.md, session 34): 2-4x faster from 5 rows, ~5-10 % slower at one (the tiles' stores and loads). */
#include <sys/syscall.h>
#include <unistd.h>
#define TILE_ROWS 16                     /* rows per AMX tile */
#define FULL_BLOCK_ROWS (1 << 30)        /* a task is always a whole 64-column block */
#else
#define TILE_ROWS 8       /* rows per pass over a task's weights */
#define FULL_BLOCK_ROWS 7 /* up to this many rows a task is a whole 64-column block, above it a half */
#endif

#ifndef CODE_PREFETCH
#define CODE_PREFETCH 4096
#endif

/* Lane i of a `lo` vector is column LO_COL(i) of its 32-column half, of a `hi` vector HI_COL(i). */
#define PERM_LO _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
#define PERM_HI _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31)

#ifdef INT4_DOT_AMX
/* Tiles: 0 = A (`rows` x 32 bf16), 1-3 = B (16 k pairs x 16 columns' bf16 pairs), 4-7 = C (`rows` x 16 fp32). Tile
 * state is per thread: every task loads its configuration and releases the tiles when done. */
static inline void amx_config(int rows) {
    struct {
        uint8_t palette_id, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } __attribute__((packed, aligned(64))) cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = (t >= 1 && t <= 3) ? 16 : (uint8_t)rows;
    }
    /* GCC does not see ldtilecfg read the whole struct: without this barrier it dropped the colsb / rows stores
     * once inlined into dot_rows_amx (every tile then unconfigured: SIGILL at the first tile instruction). */
    __asm__ __volatile__("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
}

/* Linux hands AMX's tile state to a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
 * returns 0 once granted (process-wide), else the error. */
int pagoda_int4_amx_init(void) {
    return (int)syscall(SYS_arch_prctl, 0x1023, 18);
}
#endif

/* bf16 bits of (i & 15) - 8 for index i < 32 (vpermw reads an index's low 5 bits). */
static inline __m512i nibble_lut(void) {
    return _mm512_set_epi16(
        0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000,
        (short)0xbf80, (short)0xc000, (short)0xc040, (short)0xc080, (short)0xc0a0, (short)0xc0c0, (short)0xc0e0,
        (short)0xc100,
        0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000,
        (short)0xbf80, (short)0xc000, (short)0xc040, (short)0xc080, (short)0xc0a0, (short)0xc0c0, (short)0xc0e0,
        (short)0xc100);
}

/* Vector v's (scale, zero) of one group for the columns of half `half` of a block (`sz`: the block's (s, z) pairs of
 * that group), in the lane order of a `lo` (v even) or `hi` (v odd) vector, as float32. */
static inline void scale_zero(const uint16_t *sz, int half, int v, __m512 *sc, __m512 *zr) {
    __m512i t0 = _mm512_loadu_si512((const void *)(sz + half * 64));      /* (s, z) of columns 0..15 */
    __m512i t1 = _mm512_loadu_si512((const void *)(sz + half * 64 + 32)); /* columns 16..31 */
    __m512i t = _mm512_permutex2var_epi32(t0, (v & 1) ? PERM_HI : PERM_LO, t1);
    *sc = _mm512_castsi512_ps(_mm512_slli_epi32(t, 16));
    *zr = _mm512_castsi512_ps(_mm512_and_si512(t, _mm512_set1_epi32(0xffff0000)));
}

/* A 32-column half's outputs at `c` from its `lo` / `hi` running sums, rounded to bf16: columns 0-15 are lanes 0-7 of
 * lo and of hi (indices PERM_LO of the pair), columns 16-31 their lanes 8-15 (PERM_HI). */
static inline void store_half(uint16_t *c, __m512 lo, __m512 hi) {
    _mm256_storeu_si256((__m256i *)c, f32x16_to_bf16(_mm512_permutex2var_ps(lo, PERM_LO, hi)));
    _mm256_storeu_si256((__m256i *)(c + 16), f32x16_to_bf16(_mm512_permutex2var_ps(lo, PERM_HI, hi)));
}

#ifdef INT4_DOT_AMX
/* The 32 k's from k0 of a block (`Bp`) as four B tiles at `bt` (tile v: 16 k pairs x 32 words, rows 64 bytes):
 * vector v of a k pair, as the vdpbf16ps build decodes it, is row kp of tile v. */
static inline void decode_b_tiles(const uint8_t *Bp, int k0, uint16_t *bt, __m512i lut) {
    for (int kp = 0; kp < 16; kp++) {
        const uint8_t *row = Bp + (size_t)(k0 + 2 * kp) * 32;
#if CODE_PREFETCH > 0
        _mm_prefetch((const char *)row + CODE_PREFETCH, _MM_HINT_T0);
#endif
        __m256i r0 = _mm256_loadu_si256((const __m256i *)row);
        __m256i r1 = _mm256_loadu_si256((const __m256i *)(row + 32));
        __m512i wlo = _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(r0, r1));
        __m512i whi = _mm512_cvtepu8_epi16(_mm256_unpackhi_epi8(r0, r1));
        _mm512_store_si512((void *)(bt + (0 * 16 + kp) * 32), _mm512_permutexvar_epi16(wlo, lut));
        _mm512_store_si512((void *)(bt + (1 * 16 + kp) * 32), _mm512_permutexvar_epi16(whi, lut));
        _mm512_store_si512((void *)(bt + (2 * 16 + kp) * 32), _mm512_permutexvar_epi16(_mm512_srli_epi16(wlo, 4), lut));
        _mm512_store_si512((void *)(bt + (3 * 16 + kp) * 32), _mm512_permutexvar_epi16(_mm512_srli_epi16(whi, 4), lut));
    }
}
#endif

/* One task: columns of block `blk` (`part` 0: all 64, 1: the low-nibble half, 2: the high-nibble half) for rows
 * [0, rows) of A, rows <= TILE_ROWS. X: [rows][K/G] group sums. Vector v of a part: v = 2 * half + (0: lo, 1: hi). */
static inline __attribute__((always_inline)) void dot_tile(const uint16_t *A, int lda, const float *X,
                                                            const uint8_t *B, const uint16_t *SZ, int N, int K, int G,
                                                            int blk, uint16_t *C, int ldc, const int rows,
                                                            const int part) {
    const uint8_t *Bp = B + (size_t)blk * K * 32;
    const int nv = part == 0 ? 4 : 2;
    const int half0 = part == 2 ? 1 : 0;
    const int groups = K / G;
    const __m512i lut = nibble_lut();
    /* The running sums live in memory (L1): touched once a group, they leave the registers to S. */
    float accm[TILE_ROWS][4][16] __attribute__((aligned(64)));
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) _mm512_store_ps(accm[r][v], _mm512_setzero_ps());
    /* The next block's (scale, zero) lines, one group's four a group, into L2 ahead of use: a block reads its groups'
     * lines N * 4 bytes apart, 18-odd streams beside the codes' one that the hardware prefetcher does not follow
     * (the default model's linears, two threads: 1 row -3-4 %, 5 rows -12 %; RESULTS.md session 27). */
    const char *next_sz = blk + 1 < N / 64 ? (const char *)(SZ + (size_t)(blk + 1) * 128) : NULL;
#ifdef INT4_DOT_AMX
    const int amx = part == 0 && G % 32 == 0;
    /* B tiles (16 k pairs x 16 lanes of bf16 pairs, one per vector v) and the C tiles' sums, in L1. */
    uint16_t bbuf[4][16][32] __attribute__((aligned(64)));
    float sbuf[4][TILE_ROWS][16] __attribute__((aligned(64)));
    if (amx) amx_config(rows);
#endif
    for (int g = 0; g < groups; g++) {
        if (next_sz) {
            const char *p = next_sz + (size_t)g * N * 4;
            _mm_prefetch(p, _MM_HINT_T1);
            _mm_prefetch(p + 64, _MM_HINT_T1);
            _mm_prefetch(p + 128, _MM_HINT_T1);
            _mm_prefetch(p + 192, _MM_HINT_T1);
        }
        __m512 S[TILE_ROWS][4];
#ifdef INT4_DOT_AMX
        if (amx) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            for (int k0 = g * G; k0 < (g + 1) * G; k0 += 32) {
                decode_b_tiles(Bp, k0, &bbuf[0][0][0], lut);
                _tile_loadd(0, A + k0, lda * 2);
                _tile_loadd(1, bbuf[0], 64);
                _tile_loadd(2, bbuf[1], 64);
                _tile_loadd(3, bbuf[2], 64);
                _tile_dpbf16ps(4, 0, 1);
                _tile_dpbf16ps(5, 0, 2);
                _tile_dpbf16ps(6, 0, 3);
                _tile_loadd(1, bbuf[3], 64);
                _tile_dpbf16ps(7, 0, 1);
            }
            _tile_stored(4, sbuf[0], 64);
            _tile_stored(5, sbuf[1], 64);
            _tile_stored(6, sbuf[2], 64);
            _tile_stored(7, sbuf[3], 64);
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < 4; v++) S[r][v] = _mm512_load_ps(sbuf[v][r]);
        } else
#endif
        {
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) S[r][v] = _mm512_setzero_ps();
        for (int k = g * G; k < (g + 1) * G; k += 2) {
            const uint8_t *row = Bp + (size_t)k * 32;
#if CODE_PREFETCH > 0
            _mm_prefetch((const char *)row + CODE_PREFETCH, _MM_HINT_T0);
#endif
            __m256i r0 = _mm256_loadu_si256((const __m256i *)row);
            __m256i r1 = _mm256_loadu_si256((const __m256i *)(row + 32));
            __m512i wlo = _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(r0, r1));
            __m512i whi = _mm512_cvtepu8_epi16(_mm256_unpackhi_epi8(r0, r1));
            __m512i w[4];
            if (part != 2) {
                w[0] = _mm512_permutexvar_epi16(wlo, lut);
                w[1] = _mm512_permutexvar_epi16(whi, lut);
            }
            if (part != 1) {
                w[part == 0 ? 2 : 0] = _mm512_permutexvar_epi16(_mm512_srli_epi16(wlo, 4), lut);
                w[part == 0 ? 3 : 1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(whi, 4), lut);
            }
#pragma GCC unroll 8
            for (int r = 0; r < rows; r++) {
                int32_t pair; /* (a[k], a[k+1]) as one dword, low word first */
                memcpy(&pair, A + (size_t)r * lda + k, sizeof pair);
                __m512i a = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++)
                    S[r][v] = _mm512_dpbf16_ps(S[r][v], (__m512bh)a, (__m512bh)w[v]);
            }
        }
        }
        const uint16_t *sz = SZ + ((size_t)g * N + blk * 64) * 2;
        __m512 sc[4], zr[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) scale_zero(sz, half0 + (v >> 1), v, &sc[v], &zr[v]);
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            const __m512 xg = _mm512_set1_ps(X[(size_t)r * groups + g]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                __m512 a = _mm512_fmadd_ps(sc[v], S[r][v], _mm512_load_ps(accm[r][v]));
                _mm512_store_ps(accm[r][v], _mm512_fmadd_ps(zr[v], xg, a));
            }
        }
    }
#ifdef INT4_DOT_AMX
    if (amx) _tile_release();
#endif
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 2
        for (int h = 0; h < nv / 2; h++)
            store_half(C + (size_t)r * ldc + blk * 64 + (half0 + h) * 32, _mm512_load_ps(accm[r][2 * h]),
                       _mm512_load_ps(accm[r][2 * h + 1]));
}

#ifdef INT4_DOT_AMX

/* From this many rows a block's weights are decoded once (dot_rows_amx) rather than once per 16-row tile. Measured
 * on the AMX dev VM (the default model's four linears x 30 layers, 2 threads, alternating runs; RESULTS.md, session
 * 36): 32 rows +8-20 % (the panel's trip through L2 costs more than a second decode in L1), 48 rows -3 %, 64 -6 %,
 * 96 -10 %, 130 -8 %. */
#define PANEL_MIN_ROWS 48

/* Per-thread scratch of dot_rows_amx: a block's decoded B tiles (kept across calls; grown, never freed). */
static __thread uint16_t *amx_panel;
static __thread size_t amx_panel_words;

static uint16_t *panel_words(size_t n) {
    if (n > amx_panel_words) {
        free(amx_panel);
        amx_panel = (uint16_t *)aligned_alloc(64, n * sizeof(uint16_t));
        amx_panel_words = amx_panel ? n : 0;
    }
    return amx_panel;
}

/* Rows [0, M) of A (M >= PANEL_MIN_ROWS) against block `blk`'s 64 columns, G % 32 == 0: dot_tile's AMX arithmetic
 * for every row, but the block's weights decoded once into B tiles (K / 32 steps of 4 KB, from L2 after) for all of
 * the rows' 16-row tiles instead of once per tile (prefill and large batches decoded them M / 16 times). The last
 * tile starts
 * at M - 16 (overlapping the one before: those rows are computed twice, the same bits). Every row's arithmetic is
 * dot_tile's (per group: C tiles from zero over its 32-k steps, then the two FMAs), so a row gets the same bits
 * whatever M. Returns 0, or -1 when scratch memory is short (nothing written). */
static int dot_rows_amx(const uint16_t *A, int lda, const float *X, const uint8_t *B, const uint16_t *SZ, int N,
                        int K, int G, int blk, uint16_t *C, int ldc, const int M) {
    const uint8_t *Bp = B + (size_t)blk * K * 32;
    const int groups = K / G;
    uint16_t *panel = panel_words((size_t)K / 32 * 4 * 16 * 32);
    if (!panel) return -1;
    const __m512i lut = nibble_lut();
    for (int k0 = 0; k0 < K; k0 += 32) decode_b_tiles(Bp, k0, panel + (size_t)(k0 / 32) * 4 * 16 * 32, lut);
    /* a tile's C sums of one group (as dot_tile's sbuf) and its rows' running sums */
    float sbuf[4][TILE_ROWS][16] __attribute__((aligned(64)));
    float accm[TILE_ROWS][4][16] __attribute__((aligned(64)));
    amx_config(TILE_ROWS);
    const int tiles = (M + TILE_ROWS - 1) / TILE_ROWS;
    for (int t = 0; t < tiles; t++) {
        const int m0 = t == tiles - 1 ? M - TILE_ROWS : t * TILE_ROWS;
        for (int r = 0; r < TILE_ROWS; r++)
            for (int v = 0; v < 4; v++) _mm512_store_ps(accm[r][v], _mm512_setzero_ps());
        for (int g = 0; g < groups; g++) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
            for (int k0 = g * G; k0 < (g + 1) * G; k0 += 32) {
                const uint16_t *bt = panel + (size_t)(k0 / 32) * 4 * 16 * 32;
                _tile_loadd(0, A + (size_t)m0 * lda + k0, lda * 2);
                _tile_loadd(1, bt, 64);
                _tile_loadd(2, bt + 16 * 32, 64);
                _tile_loadd(3, bt + 2 * 16 * 32, 64);
                _tile_dpbf16ps(4, 0, 1);
                _tile_dpbf16ps(5, 0, 2);
                _tile_dpbf16ps(6, 0, 3);
                _tile_loadd(1, bt + 3 * 16 * 32, 64);
                _tile_dpbf16ps(7, 0, 1);
            }
            _tile_stored(4, sbuf[0], 64);
            _tile_stored(5, sbuf[1], 64);
            _tile_stored(6, sbuf[2], 64);
            _tile_stored(7, sbuf[3], 64);
            const uint16_t *sz = SZ + ((size_t)g * N + blk * 64) * 2;
            __m512 sc[4], zr[4];
            for (int v = 0; v < 4; v++) scale_zero(sz, v >> 1, v, &sc[v], &zr[v]);
            for (int r = 0; r < TILE_ROWS; r++) {
                const __m512 xg = _mm512_set1_ps(X[(size_t)(m0 + r) * groups + g]);
                for (int v = 0; v < 4; v++) {
                    __m512 a = _mm512_fmadd_ps(sc[v], _mm512_load_ps(sbuf[v][r]), _mm512_load_ps(accm[r][v]));
                    _mm512_store_ps(accm[r][v], _mm512_fmadd_ps(zr[v], xg, a));
                }
            }
        }
        for (int r = 0; r < TILE_ROWS; r++)
            for (int h = 0; h < 2; h++)
                store_half(C + (size_t)(m0 + r) * ldc + blk * 64 + h * 32, _mm512_load_ps(accm[r][2 * h]),
                           _mm512_load_ps(accm[r][2 * h + 1]));
    }
    _tile_release();
    return 0;
}
#endif

#define TILE_CASE(R) case R: if (part == 0) dot_tile(A, K, X, B, SZ, N, K, G, blk, C, N, R, 0); \
                             else if (part == 1) dot_tile(A, K, X, B, SZ, N, K, G, blk, C, N, R, 1); \
                             else dot_tile(A, K, X, B, SZ, N, K, G, blk, C, N, R, 2); break;

/* `rows` (<= TILE_ROWS) rows of A against block `blk`'s columns of `part` (0: all, 1 / 2: a nibble half). */
static void run_tile(const uint16_t *A, const float *X, const uint8_t *B, const uint16_t *SZ, int N, int K, int G,
                     int blk, int part, uint16_t *C, int rows) {
    switch (rows) {
        TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8)
#ifdef INT4_DOT_AMX
        TILE_CASE(9) TILE_CASE(10) TILE_CASE(11) TILE_CASE(12) TILE_CASE(13) TILE_CASE(14) TILE_CASE(15)
        TILE_CASE(16)
#endif
        default: break;
    }
}

/* All M rows against block `blk`'s columns of `part`, TILE_ROWS rows at a time (after the first pass the block's
 * weights come from L1/L2). */
static void run_part(const uint16_t *A, const float *X, const uint8_t *B, const uint16_t *SZ, uint16_t *C, int M,
                     int N, int K, int G, int blk, int part) {
#ifdef INT4_DOT_AMX
    if (part == 0 && G % 32 == 0 && M >= PANEL_MIN_ROWS &&
        dot_rows_amx(A, K, X, B, SZ, N, K, G, blk, C, N, M) == 0)
        return; /* else (no scratch) the 16-row tiles below */
#endif
    for (int m = 0; m < M; m += TILE_ROWS) {
        const int rows = M - m < TILE_ROWS ? M - m : TILE_ROWS;
        run_tile(A + (size_t)m * K, X + (size_t)m * (K / G), B, SZ, N, K, G, blk, part, C + (size_t)m * N, rows);
    }
}

#define GRID_MAX_GROUP 256 /* groups up to this size are rounded to their grid (the header) */

/* b of the header: the most bits with G * 8 * (2^b - 1) < 2^24 (at most 16). */
static int grid_bits(int G) {
    int b = 0;
    while (b < 16 && (double)G * 8.0 * (double)((1u << (b + 1)) - 1) < 16777216.0) b++;
    return b;
}

/* 2^i for -126 <= i <= 127. */
static inline float pow2f(int i) {
    const uint32_t u = (uint32_t)(i + 127) << 23;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One group of G k's of a row onto its grid (the header), a -> o (o may be a); returns the rounded group's sum. */
static float grid_group(const uint16_t *a, uint16_t *o, int G, int b) {
    uint16_t mx = 0; /* the largest |a|: bf16 magnitudes order as unsigned integers, inf and NaN above all */
    for (int k = 0; k < G; k++) {
        const uint16_t v = a[k] & 0x7fff;
        mx = v > mx ? v : mx;
    }
    const int e = (mx >> 7) - 127; /* |a| < 2^(e+1); for a subnormal maximum, below the zero threshold anyway */
    if (mx >= 0x7f80) {            /* inf or NaN: as it is, summed in k order */
        float s = 0.0f;
        for (int k = 0; k < G; k++) {
            o[k] = a[k];
            s += bf16_to_f32(a[k]);
        }
        return s;
    }
    if (e < -100) {
        memset(o, 0, (size_t)G * 2);
        return 0.0f;
    }
    const int sh = e + 1 - b; /* the step is 2^sh, -115 <= sh <= 127: both powers are normal floats */
    const float step = pow2f(sh), inv = pow2f(-sh);
    if (G % 16 == 0) {
        const __m512 vs = _mm512_set1_ps(step), vi = _mm512_set1_ps(inv);
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < G; k += 16) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)(a + k));
            const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            const __m512 r = _mm512_mul_ps(
                _mm512_roundscale_ps(_mm512_mul_ps(v, vi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vs);
            /* r is a bf16 value (the header): its high half is exact */
            const __m512i hi = _mm512_srli_epi32(_mm512_castps_si512(r), 16);
            _mm256_storeu_si256((__m256i *)(o + k), _mm512_cvtepi32_epi16(hi));
            sum = _mm512_add_ps(sum, r);
        }
        return _mm512_reduce_add_ps(sum); /* exact in any order */
    }
    float s = 0.0f;
    for (int k = 0; k < G; k++) {
        const __m128 t = _mm_set_ss(bf16_to_f32(a[k]) * inv);
        const float r = _mm_cvtss_f32(_mm_round_ss(t, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)) * step;
        uint32_t u;
        memcpy(&u, &r, 4);
        o[k] = (uint16_t)(u >> 16);
        s += r;
    }
    return s;
}

/* GRID_MAX_GROUP, for the callers that decide whether the builds agree at a group size. */
int pagoda_int4_grid_max_group(void) { return GRID_MAX_GROUP; }

/* The rows as the dots read them and their group sums: Aq[m] = A[m] on its groups' grids (the header; Aq may be A),
 * X[m][g] = the sum of Aq[m]'s group g in fp32 (for groups above GRID_MAX_GROUP: A unchanged, summed in k order).
 * Exported for callers that run the blocks themselves (pagoda_int4_dot_block). */
void pagoda_int4_prepare_rows(const uint16_t *A, int M, int K, int G, uint16_t *Aq, float *X) {
    const int groups = K / G, b = grid_bits(G);
    for (int m = 0; m < M; m++)
        for (int g = 0; g < groups; g++) {
            const uint16_t *a = A + (size_t)m * K + (size_t)g * G;
            uint16_t *o = Aq + (size_t)m * K + (size_t)g * G;
            if (G <= GRID_MAX_GROUP) {
                X[(size_t)m * groups + g] = grid_group(a, o, G, b);
                continue;
            }
            float s = 0.0f;
            for (int k = 0; k < G; k++) {
                o[k] = a[k];
                s += bf16_to_f32(a[k]);
            }
            X[(size_t)m * groups + g] = s;
        }
}

/* Columns [64 blk, 64 blk + 64) of C for all M rows, A and X from pagoda_int4_prepare_rows: the tiles
 * pagoda_int4_dot_mm runs for them (a whole block up to FULL_BLOCK_ROWS rows, else its two halves one after the
 * other), so a caller that splits the N / 64 blocks over its own threads gets pagoda_int4_dot_mm's bits. Shapes as
 * that function checks them. */
void pagoda_int4_dot_block(const uint16_t *A, const float *X, const uint8_t *B, const uint16_t *SZ, uint16_t *C,
                           int M, int N, int K, int G, int blk) {
    const int full = M <= FULL_BLOCK_ROWS;
    for (int part = full ? 0 : 1; part <= (full ? 0 : 2); part++) run_part(A, X, B, SZ, C, M, N, K, G, blk, part);
}

/* C = A @ dequant(B).T by the arithmetic above on `threads` OpenMP threads; returns 0, or -1 when the shapes are
 * outside this kernel (N % 64, K % G, odd G) or memory is short. */
int pagoda_int4_dot_mm(const uint16_t *A, const uint8_t *B, const uint16_t *SZ, uint16_t *C,
                       int M, int N, int K, int G, int threads) {
    if (M <= 0 || N <= 0 || N % 64 || G <= 0 || G % 2 || K <= 0 || K % G) return -1;
    float *X = (float *)malloc((size_t)M * (K / G) * sizeof(float) + (size_t)M * K * 2);
    if (!X) return -1;
    uint16_t *Aq = (uint16_t *)(X + (size_t)M * (K / G));
    pagoda_int4_prepare_rows(A, M, K, G, Aq, X);
    A = Aq;
    const int nthreads = threads > 0 ? threads : 1;
    /* One parallel region a call. Up to FULL_BLOCK_ROWS rows a task is a 64-column block, else a 32-column half
     * that runs its rows TILE_ROWS at a time (its weights then come from L1/L2 after the first pass). */
    const int full = M <= FULL_BLOCK_ROWS;
    const int ntasks = full ? N / 64 : N / 32;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int t = 0; t < ntasks; t++) {
        run_part(A, X, B, SZ, C, M, N, K, G, full ? t : t >> 1, full ? 0 : 1 + (t & 1));
    }
    free(X);
    return 0;
}

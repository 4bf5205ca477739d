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
typedef void (*int4_prep_fn)(const uint16_t *a, int m, int k, int g, uint16_t *aq, float *x);
typedef void (*int4_block_fn)(const uint16_t *a, const float *x, const uint8_t *b, const uint16_t *sz, uint16_t *c,
                              int m, int n, int k, int g, int blk);
typedef int64_t (*attn_scratch_fn)(int64_t H, int64_t hkv, int64_t D, int64_t max_pos);
typedef int64_t (*attn_runs_fn)(const int32_t *row_req, int64_t T, int64_t *run_start);
typedef void (*attn_item_fn)(const void *q, int64_t q_st, int64_t q_sh, const void *k_cache, const void *v_cache,
                             int64_t hkv, int64_t bs, const int32_t *block_tables, int64_t bt_stride,
                             const int32_t *row_req, const int32_t *row_pos, const int64_t *run_start, int64_t item,
                             int64_t H, int64_t D, int64_t max_pos, float scale, int64_t window, int is_bf16,
                             void *scratch, float *partials, void *out);
typedef int64_t (*attn_chunks_fn)(int64_t max_pos);
typedef int64_t (*attn_partials_fn)(int64_t T, int64_t H, int64_t D, int64_t max_pos);
typedef void (*attn_combine_fn)(const float *partials, int64_t p_lo, int64_t p_hi, int64_t D, int64_t nch,
                                int is_bf16, void *out);

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
    int4_prep_fn mm_prep;
    int4_block_fn mm_block;
    int4_block_fn mm_block1; /* one-row matmuls (cpu_int4_dot.one_row_library: where AMX serves several rows) */
    attn_scratch_fn attn_scratch;
    attn_runs_fn attn_runs;
    attn_item_fn attn_item;
    attn_chunks_fn attn_chunks;
    attn_partials_fn attn_partials;
    attn_combine_fn attn_combine;
    const pg_layer *layers;
    const uint16_t *cos, *sin; /* bf16 [rope_rows][D / 2] */
    int64_t num_layers, hidden, heads, kv_heads, head_dim, inter, block_size, rope_rows;
} pg_stack;

/* ---- The team: this file's own worker threads (see cpu_decoder_stack.py, "Threads").
 *
 * A parallel phase (a matmul's column blocks, the attention's items) is published as (job, n items); the calling
 * thread and the workers claim items from one atomic word, gen << 40 | n << 20 | next, by compare-and-swap, so a
 * claim succeeds only for an unclaimed item of the current job: a worker that arrives late (still waking up, or
 * descheduled) finds nothing left and the caller has run the items itself. The caller waits for the items claimed
 * by others to finish (a count of finished items), then publishes the next job. Which thread runs an item changes no
 * bit: items write disjoint outputs by the same arithmetic.
 *
 * Workers spin between the phases of a call (a few µs of single-thread work: norms, rotary, residual adds) and sleep
 * on a futex between calls (the engine's Python runs then): one wake-up per step, not one per kernel as OpenMP's
 * passive wait policy costs. A spinning worker yields every few thousand polls, so a busy machine is not held. */
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_WORKERS 63
#define FIELD_BITS 20 /* n and next: at most 2^20 - 1 items a job */
#define FIELD_MASK ((UINT64_C(1) << FIELD_BITS) - 1)

typedef void (*item_fn)(void *ctx, int64_t item, int thread);

static struct {
    _Atomic uint64_t word;       /* gen << 40 | n << 20 | next */
    _Atomic(item_fn) fn;         /* the current job (valid for a claim that succeeded) */
    _Atomic(void *) ctx;
    _Atomic int64_t finished;    /* items of the current job finished by workers */
    _Atomic uint32_t wake;       /* futex word, bumped when a call begins */
    _Atomic int active;          /* a call is running: workers spin */
    _Atomic int allowed;         /* workers 1..allowed-1 take items */
    int started;                 /* workers created (ids 1..started) */
    pthread_mutex_t lock;        /* serializes calls (one team) and worker creation */
} team = {.lock = PTHREAD_MUTEX_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs items of job generation `gen` until none is left; returns how many this thread ran. */
static int64_t run_items(uint64_t gen, int thread) {
    int64_t ran = 0;
    uint64_t v = atomic_load_explicit(&team.word, memory_order_acquire);
    for (;;) {
        if (v >> 40 != gen) return ran;
        uint64_t n = (v >> FIELD_BITS) & FIELD_MASK, next = v & FIELD_MASK;
        if (next >= n) return ran;
        /* Guided: a 1/threads share of what is left (fewer claims on the shared line, the tail in small pieces). */
        const uint64_t threads = (uint64_t)atomic_load_explicit(&team.allowed, memory_order_relaxed);
        const uint64_t take = (n - next + threads - 1) / threads;
        if (!atomic_compare_exchange_weak_explicit(&team.word, &v, v + take, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* v reloaded */
        /* The items are ours and the job is not finished: its fields stay as published until we finish them. */
        item_fn fn = atomic_load_explicit(&team.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&team.ctx, memory_order_relaxed);
        for (uint64_t i = next; i < next + take; i++) fn(ctx, (int64_t)i, thread);
        ran += (int64_t)take;
        v = atomic_load_explicit(&team.word, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    for (;;) {
        uint32_t seen = atomic_load_explicit(&team.wake, memory_order_acquire);
        if (!atomic_load_explicit(&team.active, memory_order_acquire) ||
            id >= atomic_load_explicit(&team.allowed, memory_order_relaxed)) {
            syscall(SYS_futex, &team.wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            continue;
        }
        unsigned polls = 0;
        while (atomic_load_explicit(&team.active, memory_order_relaxed) &&
               id < atomic_load_explicit(&team.allowed, memory_order_relaxed)) {
            uint64_t v = atomic_load_explicit(&team.word, memory_order_acquire);
            int64_t ran = run_items(v >> 40, id);
            if (ran) {
                atomic_fetch_add_explicit(&team.finished, ran, memory_order_release);
                polls = 0;
            } else if (++polls % 4096 == 0) {
                sched_yield();
            } else {
                cpu_relax();
            }
        }
    }
    return NULL;
}

static void after_fork_child(void) { /* the threads did not survive a fork: create them again when needed */
    team.started = 0;
    atomic_store(&team.active, 0);
    pthread_mutex_init(&team.lock, NULL);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

/* A call begins on `threads` threads (the caller and threads - 1 workers); returns the count it got. */
static int team_begin(int threads) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    while (team.started < threads - 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, (void *)(intptr_t)(team.started + 1)) != 0) break;
        pthread_detach(t);
        team.started++;
    }
    if (threads > team.started + 1) threads = team.started + 1;
    atomic_store_explicit(&team.allowed, threads, memory_order_relaxed);
    if (threads > 1) {
        atomic_store_explicit(&team.active, 1, memory_order_release);
        atomic_fetch_add_explicit(&team.wake, 1, memory_order_release);
        syscall(SYS_futex, &team.wake, FUTEX_WAKE_PRIVATE, MAX_WORKERS, NULL, NULL, 0);
    }
    return threads;
}

static void team_end(void) { atomic_store_explicit(&team.active, 0, memory_order_release); }

/* Runs fn(ctx, i, thread) for i in [0, n) on the team (thread 0: the caller); returns when all have finished. */
static void team_run(int threads, item_fn fn, void *ctx, int64_t n) {
    if (threads <= 1 || n <= 1) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    static uint64_t gen = 0;
    gen = (gen + 1) & ((UINT64_C(1) << 24) - 1);
    atomic_store_explicit(&team.finished, 0, memory_order_relaxed);
    atomic_store_explicit(&team.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&team.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&team.word, gen << 40 | (uint64_t)n << FIELD_BITS, memory_order_release);
    int64_t mine = run_items(gen, 0);
    while (atomic_load_explicit(&team.finished, memory_order_acquire) < n - mine) cpu_relax();
}

/* Runs fn(ctx, i, thread) for i in [0, n) on the team, the caller and threads - 1 workers (one call's worth: the
 * team wakes, runs the items, sleeps again): for native work outside the decoder stack with the same item contract
 * (disjoint outputs, the bits independent of the thread), e.g. the LM head (pagoda/layers/cpu_head_dot.c). An item
 * must not call back into the team (its lock is not recursive). Returns 0, or -1 (nothing run) for n outside
 * [0, 2^20). */
int pagoda_team_run(item_fn fn, void *ctx, int64_t n, int threads) {
    if (n < 0 || n > (int64_t)FIELD_MASK) return -1;
    pthread_mutex_lock(&team.lock);
    threads = team_begin(threads > 0 ? threads : 1);
    team_run(threads, fn, ctx, n);
    team_end();
    pthread_mutex_unlock(&team.lock);
    return 0;
}

/* ---- The parallel phases. */

typedef struct { /* one 4-bit matmul: C = A @ W.T */
    const pg_stack *s;
    const uint16_t *a;
    const float *x; /* group sums of a */
    const pg_int4 *w;
    uint16_t *c;
    int m;
} mm_job;

static void mm_item(void *ctx, int64_t blk, int thread) {
    (void)thread;
    const mm_job *j = ctx;
    (j->m == 1 ? j->s->mm_block1 : j->s->mm_block)(j->a, j->x, j->w->codes, j->w->scales_zeros, j->c, j->m,
                                                   (int)j->w->n, (int)j->w->k, (int)j->w->group, (int)blk);
}

/* The matmul as cpu_int4_dot's pagoda_int4_dot_mm computes it (the rows on their groups' grids and the group sums,
 * then its column blocks); a: this step's scratch, rounded in place (no later phase reads it); x: scratch of
 * m * k / group floats. Returns -1 for shapes that function refuses. */
static int mm(const pg_stack *s, int threads, uint16_t *a, const pg_int4 *w, uint16_t *c, int64_t m, float *x) {
    if (w->n % 64 || w->group <= 0 || w->group % 2 || w->k % w->group) return -1;
    s->mm_prep(a, (int)m, (int)w->k, (int)w->group, a, x);
    mm_job j = {s, a, x, w, c, (int)m};
    team_run(threads, mm_item, &j, w->n / 64);
    return 0;
}

typedef struct { /* one layer's attention */
    const pg_stack *s;
    const pg_layer *L;
    const uint16_t *q;
    uint16_t *o;
    const int32_t *block_tables, *row_req, *row_pos;
    const int64_t *run_start;
    int64_t bt_stride, max_pos, chunks;
    char *scratch; /* one part of scratch_bytes per thread */
    int64_t scratch_bytes;
    float *partials; /* the position chunks' partials (chunks > 1) */
} attn_job;

static void attn_item(void *ctx, int64_t item, int thread) {
    const attn_job *j = ctx;
    const pg_stack *s = j->s;
    s->attn_item(j->q, s->heads * s->head_dim, s->head_dim, j->L->k_cache, j->L->v_cache, s->kv_heads, s->block_size,
                 j->block_tables, j->bt_stride, j->row_req, j->row_pos, j->run_start, item, s->heads, s->head_dim,
                 j->max_pos, (float)j->L->scale, j->L->window, 1, j->scratch + thread * j->scratch_bytes, j->partials,
                 j->o);
}

/* Item t: row t's heads from the chunks' partials. */
static void combine_item(void *ctx, int64_t t, int thread) {
    (void)thread;
    const attn_job *j = ctx;
    const pg_stack *s = j->s;
    s->attn_combine(j->partials, t * s->heads, (t + 1) * s->heads, s->head_dim, j->chunks, 1, j->o);
}

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The per-row phases of a step of several rows worth a team call (rotary + the KV write, SiLU * up: ~4 and ~10 us a
 * layer at 5 rows), one item a row: each kernel called for one row with that row's pointers, which is the arithmetic
 * of the whole-step call (both treat rows independently), so the bits do not change. The norms and the residual add
 * (~2 us a layer at 5 rows) stay on the caller: on the team they measured slower (RESULTS.md, session 35). */
enum { ROW_ROPE_KV, ROW_SILU };

typedef struct {
    const pg_stack *s;
    const pg_layer *L;
    int phase;
    uint16_t *qkv, *q, *k, *gu, *act;
    const uint16_t *cs, *sn;
    const int64_t *slots;
    _Atomic int failed; /* a kernel returned nonzero (items set it; read after the phase) */
} row_job;

static void row_item(void *ctx, int64_t t, int thread) {
    (void)thread;
    row_job *j = ctx;
    const pg_stack *s = j->s;
    const pg_layer *L = j->L;
    const int64_t H = s->heads, Hk = s->kv_heads, D = s->head_dim, I = s->inter, bs = s->block_size;
    const int64_t qkv_n = (H + 2 * Hk) * D, half = D / 2;
    int rc = 0;
    if (j->phase == ROW_ROPE_KV) {
        const uint16_t *row = j->qkv + t * qkv_n;
        rc = s->rope(row, qkv_n, H, row + H * D, qkv_n, Hk, j->cs + t * half, j->sn + t * half, j->q + t * H * D,
                     j->k + t * Hk * D, 1, D);
        if (j->slots[t] >= 0) { /* write_kv: this token's heads to its slot */
            const int64_t blk = j->slots[t] / bs, off = j->slots[t] % bs;
            for (int64_t h = 0; h < Hk; h++) {
                const int64_t at = ((blk * Hk + h) * bs + off) * D;
                memcpy(L->k_cache + at, j->k + (t * Hk + h) * D, (size_t)D * 2);
                memcpy(L->v_cache + at, row + (H + Hk + h) * D, (size_t)D * 2);
            }
        }
    } else { /* ROW_SILU */
        rc = s->silu_mul(j->gu + t * 2 * I, 2 * I, j->act + t * I, I, 1, I);
    }
    if (rc != 0) atomic_store_explicit(&j->failed, 1, memory_order_relaxed);
}

/* Phase `phase` of every row of the step: one team item a row for several rows on several threads, else row by row
 * here (the same calls, so the same bits). */
static void each_row(row_job *j, int phase, int threads, int64_t T) {
    j->phase = phase;
    if (T > 1 && threads > 1)
        team_run(threads, row_item, j, T);
    else
        for (int64_t t = 0; t < T; t++) row_item(j, t, 0);
}

/* Phase clocks for benchmarks/spec_cpu_profile.py --phases: built with -DSTACK_PHASE_CLOCKS, each phase of each
 * layer adds its wall nanoseconds to pagoda_stack_phase_ns[phase] (zeroed by the caller); the default build has none
 * of it. */
#ifdef STACK_PHASE_CLOCKS
#include <time.h>
#define PHASES 10 /* norm1, qkv, rope + kv write, attention, o, norm2, gate_up, silu * up, down, residual */
int64_t pagoda_stack_phase_ns[PHASES];
static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#define PHASE_START int64_t phase_t0 = now_ns(), phase_t1;
#define PHASE(i) (phase_t1 = now_ns(), pagoda_stack_phase_ns[i] += phase_t1 - phase_t0, phase_t0 = phase_t1)
#else
#define PHASE_START
#define PHASE(i) ((void)0)
#endif

/* Runs every layer on h (float32 [T][hidden], in place). positions, slots: int64 [T] (slot < 0: no cache write);
 * block_tables int32 [B][bt_stride]; row_req, row_pos: each row's request and position (the attention kernel's
 * inputs); threads: how many threads run the parallel phases (the caller and threads - 1 of this file's workers).
 * Returns 0; -1 when scratch memory is short or a shape is outside the 4-bit kernel, -2 for a position outside the
 * rotary table (h is then untouched). */
int pagoda_decoder_stack(const pg_stack *s, float *h, int64_t T, const int64_t *positions, const int64_t *slots,
                         const int32_t *block_tables, int64_t bt_stride, const int32_t *row_req,
                         const int32_t *row_pos, int64_t max_pos, int threads) {
    const int64_t d = s->hidden, H = s->heads, Hk = s->kv_heads, D = s->head_dim, I = s->inter;
    const int64_t half = D / 2, qkv_n = (H + 2 * Hk) * D;
    for (int64_t t = 0; t < T; t++)
        if (positions[t] < 0 || positions[t] >= s->rope_rows) return -2;
    pthread_mutex_lock(&team.lock);
    threads = team_begin(threads > 0 ? threads : 1);
    /* bf16 scratch: x [T][d], qkv [T][qkv_n], q [T][H][D], k [T][Hk][D], cos / sin [T][half], o [T][H][D],
     * a [T][d], gu [T][2I], act [T][I]; float32 h2 [T][d], group sums [T][max k / 2]; the attention's runs
     * [T + 1], its position chunks' partials and its per-thread scratch. */
    const int64_t n16 = T * (d + qkv_n + H * D + Hk * D + 2 * half + H * D + d + 2 * I + I);
    const int64_t kmax = d > I ? (d > H * D ? d : H * D) : (I > H * D ? I : H * D),
                  attn_bytes = s->attn_scratch(H, Hk, D, max_pos), chunks = s->attn_chunks(max_pos);
    const size_t f32_at = up64((size_t)n16 * 2), sums_at = f32_at + up64((size_t)T * d * 4),
                 runs_at = sums_at + up64((size_t)T * (kmax / 2 + 1) * 4),
                 partials_at = runs_at + up64((size_t)(T + 1) * 8),
                 attn_at = partials_at + up64((size_t)s->attn_partials(T, H, D, max_pos)),
                 total = attn_at + (size_t)threads * (size_t)attn_bytes;
    char *buf = aligned_alloc(64, up64(total));
    if (buf == NULL) {
        team_end();
        pthread_mutex_unlock(&team.lock);
        return -1;
    }
    uint16_t *x = (uint16_t *)buf, *qkv = x + T * d, *q = qkv + T * qkv_n, *k = q + T * H * D, *cs = k + T * Hk * D,
             *sn = cs + T * half, *o = sn + T * half, *a = o + T * H * D, *gu = a + T * d, *act = gu + T * 2 * I;
    float *h2 = (float *)(buf + f32_at), *sums = (float *)(buf + sums_at);
    int64_t *run_start = (int64_t *)(buf + runs_at);
    const int64_t items = s->attn_runs(row_req, T, run_start) * Hk * chunks;
    for (int64_t t = 0; t < T; t++) { /* the rotary table's rows of this step's positions (cos_sin's gather) */
        memcpy(cs + t * half, s->cos + positions[t] * half, (size_t)half * 2);
        memcpy(sn + t * half, s->sin + positions[t] * half, (size_t)half * 2);
    }
    int rc = 0;
    for (int64_t l = 0; l < s->num_layers && rc == 0; l++) {
        const pg_layer *L = &s->layers[l];
        row_job rj = {s, L, 0, qkv, q, k, gu, act, cs, sn, slots, 0}; /* rotary + KV write, SiLU * up: each_row */
        PHASE_START
        rc |= s->norm(h, d, NULL, 0, NULL, L->norm1, x, d, T, d, (float)L->eps1);
        PHASE(0);
        rc |= mm(s, threads, x, &L->qkv, qkv, T, sums);
        PHASE(1);
        each_row(&rj, ROW_ROPE_KV, threads, T);
        PHASE(2);
        attn_job aj = {s, L, q, o, block_tables, row_req, row_pos, run_start, bt_stride, max_pos, chunks,
                       buf + attn_at, attn_bytes, (float *)(buf + partials_at)};
        team_run(threads, attn_item, &aj, items);
        if (chunks > 1) team_run(threads, combine_item, &aj, T);
        PHASE(3);
        rc |= mm(s, threads, o, &L->o, a, T, sums);
        PHASE(4);
        rc |= s->norm(h, d, a, d, h2, L->norm2, x, d, T, d, (float)L->eps2);
        PHASE(5);
        rc |= mm(s, threads, x, &L->gate_up, gu, T, sums);
        PHASE(6);
        each_row(&rj, ROW_SILU, threads, T);
        PHASE(7);
        rc |= mm(s, threads, act, &L->down, a, T, sums);
        PHASE(8);
        for (int64_t i = 0; i < T * d; i++) h[i] = h2[i] + bf16_to_f32(a[i]);
        PHASE(9);
        rc |= atomic_load_explicit(&rj.failed, memory_order_relaxed);
    }
    team_end();
    pthread_mutex_unlock(&team.lock);
    free(buf);
    return rc;
}

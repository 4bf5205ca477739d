/* This machine's streaming read bandwidth, for the CPU floor (benchmarks/cpu_floor_ratio.py): a buffer much larger
 * than the last-level cache summed with AVX-512 (or the compiler's vectors) loads by `threads` OpenMP threads, best
 * of `reps` passes, in GB/s. The pass sums ints, so nothing waits on a floating-point chain. Each rep runs the sum
 * twice, once relying on the hardware prefetchers and once with a software prefetch PREFETCH_BYTES ahead, and the
 * best of both counts: on the dev VM the hardware prefetchers stream at times at half the rate the software
 * prefetch reaches (session 38), and a floor from the slower pass would sit below what the kernels read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFETCH_BYTES 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double pagoda_read_bandwidth(int64_t bytes, int threads, int reps) {
    const int64_t n = bytes / (int64_t)sizeof(int64_t) / 8 * 8;
    int64_t *buf = aligned_alloc(64, (size_t)n * sizeof(int64_t));
    if (buf == NULL) return -1.0;
    for (int64_t i = 0; i < n; i++) buf[i] = i;
    double best = 0.0;
    volatile int64_t sink = 0;
    for (int r = 0; r < reps; r++) {
        for (int pf = 0; pf < 2; pf++) {
            int64_t total = 0;
            const double t0 = now();
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
            for (int64_t i = 0; i < n; i += 8) {
                if (pf) __builtin_prefetch((const char *)(buf + i) + PREFETCH_BYTES, 0, 3);
                total += buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3] + buf[i + 4] + buf[i + 5] + buf[i + 6] +
                         buf[i + 7];
            }
            const double dt = now() - t0;
            sink += total;
            const double gbs = (double)n * sizeof(int64_t) / dt / 1e9;
            if (gbs > best) best = gbs;
        }
    }
    free(buf);
    return best;
}

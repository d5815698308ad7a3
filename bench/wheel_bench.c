/* wheel_bench.c - native/wheel.c on its own, without Python: add + cancel and
 * add + expire throughput, and bytes per pending timer.
 *
 * Build and run from the repository root (the flags are setup.py's):
 *
 *   mkdir -p build && gcc -std=gnu11 -O2 -Wall -Wextra -Inative -o build/wheel_bench bench/wheel_bench.c native/wheel.c && build/wheel_bench
 *
 *   build/wheel_bench [n] [repeats] [horizon_ticks]     defaults: 10000000 3 600000
 *
 * Workload: n timers with seeded deadlines uniform over 1..horizon ticks
 * (600,000 ticks: ten minutes at the 1 ms tick, so levels 0, 1 and 2 of the
 * wheel are all used).  Deadlines, handles and the cancel order are prepared
 * before the clock starts; each repeat uses a fresh wheel in fresh memory, so
 * a fill pays for the node array's growth (realloc + first-touch page faults),
 * as a real fill would.  Figures are the median over the repeats, timed in
 * the thread's CPU time (user + system, so page faults count; time lost to
 * other processes on a shared machine does not); the ratio of wall time to
 * CPU time over all the timed runs is printed with them.
 *
 *   add + cancel   add n (all pending at once), then cancel all n: in random
 *                  order, and in the order they were added.  ops/s counts an
 *                  add and a cancel as one op each; pairs/s counts the pair.
 *   churn          a population of min(n, 1,000,000) pending timers; each
 *                  step cancels a random one and adds a new one (a lease
 *                  acked, the next one taken).  ops/s as above.
 *   add + expire   add n, then expire(t) for every tick t = 1..horizon (a
 *                  1 ms tick loop), and, separately, one expire(horizon)
 *                  that collects all n at once.
 *   memory         n pending timers: heap bytes allocated (glibc mallinfo2:
 *                  arena + mmapped blocks) and resident set growth
 *                  (/proc/self/statm), divided by n.
 *   exactness      one more add + tick-by-tick expire run, untimed, checks
 *                  that every timer expired at exactly its own tick.
 */
#include "wheel.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define SEED 20261130u
#define EXPIRE_BATCH 1024
#define CHURN_MAX 1000000u
#define MAX_REPEATS 15

/* CPU time of this thread: page faults count (system time), time spent
 * preempted by other processes on a shared machine does not. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = SEED;

static uint64_t rng(void)                      /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "wheel_bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static pq_wheel_t *new_wheel(void)
{
    pq_wheel_t *w;
    if (pq_wheel_new(0, &w) != 0) {
        fprintf(stderr, "wheel_bench: pq_wheel_new failed\n");
        exit(1);
    }
    return w;
}

static void add_all(pq_wheel_t *w, const uint64_t *deadlines, uint64_t *handles, size_t n)
{
    uint32_t index;
    for (size_t i = 0; i < n; i++)
        if (pq_wheel_add(w, deadlines[i], &handles[i], &index) != 0) {
            fprintf(stderr, "wheel_bench: pq_wheel_add failed at %zu\n", i);
            exit(1);
        }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static size_t heap_bytes(void)
{
#ifdef __GLIBC__
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#else
    return 0;
#endif
}

static size_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Add n, cancel n in `order` (NULL: the order of the adds); seconds of each half. */
static void add_cancel(const uint64_t *deadlines, uint64_t *handles, const uint32_t *order, size_t n,
                       double *t_add, double *t_cancel)
{
    pq_wheel_t *w = new_wheel();
    uint32_t index;
    size_t cancelled = 0;
    double t0 = now_s();
    add_all(w, deadlines, handles, n);
    double t1 = now_s();
    for (size_t i = 0; i < n; i++)
        cancelled += (size_t)pq_wheel_cancel(w, handles[order ? order[i] : i], &index);
    double t2 = now_s();
    if (cancelled != n || pq_wheel_count(w) != 0) {
        fprintf(stderr, "wheel_bench: cancelled %zu of %zu, %zu left\n", cancelled, n, pq_wheel_count(w));
        exit(1);
    }
    pq_wheel_free(w);
    *t_add = t1 - t0;
    *t_cancel = t2 - t1;
}

/* `steps` cancel-one-add-one steps over a population of `pop` pending timers. */
static double churn(const uint64_t *deadlines, uint64_t *handles, size_t pop, size_t steps,
                    const uint32_t *picks)
{
    pq_wheel_t *w = new_wheel();
    uint32_t index;
    add_all(w, deadlines, handles, pop);
    size_t cancelled = 0;
    double t0 = now_s();
    for (size_t i = 0; i < steps; i++) {
        uint32_t j = picks[i];
        cancelled += (size_t)pq_wheel_cancel(w, handles[j], &index);
        pq_wheel_add(w, deadlines[i], &handles[j], &index);
    }
    double t1 = now_s();
    if (cancelled != steps || pq_wheel_count(w) != pop) {
        fprintf(stderr, "wheel_bench: churn cancelled %zu of %zu\n", cancelled, steps);
        exit(1);
    }
    pq_wheel_free(w);
    return t1 - t0;
}

/* Add n, then expire tick by tick (step 1) or all at once (step 0). */
static void add_expire(const uint64_t *deadlines, uint64_t *handles, size_t n, uint64_t horizon,
                       int tick_by_tick, uint32_t *out, double *t_add, double *t_expire)
{
    pq_wheel_t *w = new_wheel();
    size_t got = 0;
    double t0 = now_s();
    add_all(w, deadlines, handles, n);
    double t1 = now_s();
    for (uint64_t t = tick_by_tick ? 1 : horizon; t <= horizon; t++) {
        size_t k;
        do {
            k = pq_wheel_expire(w, t, out, EXPIRE_BATCH);
            got += k;
        } while (k == EXPIRE_BATCH);
    }
    double t2 = now_s();
    if (got != n || pq_wheel_count(w) != 0) {
        fprintf(stderr, "wheel_bench: expired %zu of %zu\n", got, n);
        exit(1);
    }
    pq_wheel_free(w);
    *t_add = t1 - t0;
    *t_expire = t2 - t1;
}

/* Untimed: every timer expires at exactly its own tick (none early, none late). */
static size_t exactness(const uint64_t *deadlines, size_t n, uint64_t horizon, uint32_t *out)
{
    pq_wheel_t *w = new_wheel();
    uint64_t *deadline_of = xmalloc(n * sizeof *deadline_of);  /* by node index: at most n live */
    uint64_t handle;
    uint32_t index;
    size_t wrong = 0, got = 0;
    for (size_t i = 0; i < n; i++) {
        pq_wheel_add(w, deadlines[i], &handle, &index);
        deadline_of[index] = deadlines[i];
    }
    for (uint64_t t = 1; t <= horizon; t++) {
        size_t k;
        do {
            k = pq_wheel_expire(w, t, out, EXPIRE_BATCH);
            for (size_t j = 0; j < k; j++)
                wrong += deadline_of[out[j]] != t;
            got += k;
        } while (k == EXPIRE_BATCH);
    }
    free(deadline_of);
    pq_wheel_free(w);
    return wrong + (n - got);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000;
    int repeats = argc > 2 ? atoi(argv[2]) : 3;
    uint64_t horizon = argc > 3 ? strtoull(argv[3], NULL, 10) : 600000;
    if (n < 1 || n > 1000000000 || repeats < 1 || repeats > MAX_REPEATS || horizon < 1) {
        fprintf(stderr, "usage: wheel_bench [n (1..1e9)] [repeats (1..%d)] [horizon_ticks]\n", MAX_REPEATS);
        return 2;
    }
    size_t pop = n < CHURN_MAX ? n : CHURN_MAX;
#ifdef __GLIBC__
    /* A fixed threshold turns off glibc's adaptive one, so that every wheel's
     * node array is a fresh mapping: each repeat pays the same page faults,
     * and the resident set growth below is the wheel's own. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif

    uint64_t *deadlines = xmalloc(n * sizeof *deadlines);
    uint64_t *handles = xmalloc(n * sizeof *handles);
    uint32_t *order = xmalloc(n * sizeof *order);
    uint32_t *picks = xmalloc(n * sizeof *picks);
    uint32_t *out = xmalloc(EXPIRE_BATCH * sizeof *out);
    for (size_t i = 0; i < n; i++) {
        deadlines[i] = 1 + rng() % horizon;
        order[i] = (uint32_t)i;
        picks[i] = (uint32_t)(rng() % pop);
    }
    for (size_t i = n - 1; i > 0; i--) {          /* Fisher-Yates: the random cancel order */
        size_t j = rng() % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    memset(handles, 0, n * sizeof *handles);       /* touched before any measurement */

    double a_rand[MAX_REPEATS], c_rand[MAX_REPEATS], a_seq[MAX_REPEATS], c_seq[MAX_REPEATS];
    double ch[MAX_REPEATS], ea[MAX_REPEATS], ee[MAX_REPEATS], ba[MAX_REPEATS], be[MAX_REPEATS];
    double wall0 = wall_s(), cpu0 = now_s();
    for (int r = 0; r < repeats; r++) {
        add_cancel(deadlines, handles, order, n, &a_rand[r], &c_rand[r]);
        add_cancel(deadlines, handles, NULL, n, &a_seq[r], &c_seq[r]);
        ch[r] = churn(deadlines, handles, pop, n, picks);
        add_expire(deadlines, handles, n, horizon, 1, out, &ea[r], &ee[r]);
        add_expire(deadlines, handles, n, horizon, 0, out, &ba[r], &be[r]);
    }
    double wall_over_cpu = (wall_s() - wall0) / (now_s() - cpu0);

    /* memory: n pending in a fresh wheel */
    size_t heap0 = heap_bytes(), rss0 = rss_bytes();
    pq_wheel_t *w = new_wheel();
    add_all(w, deadlines, handles, n);
    size_t heap1 = heap_bytes(), rss1 = rss_bytes();
    pq_wheel_free(w);

    size_t wrong = exactness(deadlines, n, horizon, out);

    double tar = median(a_rand, repeats), tcr = median(c_rand, repeats);
    double tas = median(a_seq, repeats), tcs = median(c_seq, repeats);
    double tch = median(ch, repeats), tea = median(ea, repeats), tee = median(ee, repeats);
    double tba = median(ba, repeats), tbe = median(be, repeats);
    double dn = (double)n;

    printf("native/wheel.c: n = %zu timers, deadlines uniform over 1..%llu ticks, median of %d, "
           "CPU time (wall / CPU over the runs: %.2f)\n\n", n, (unsigned long long)horizon, repeats, wall_over_cpu);
    printf("| workload | n | first half ops/s | second half ops/s | ops/s (both) | pairs/s |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    printf("| add n, cancel n in random order | %zu | %.0f (add) | %.0f (cancel) | %.0f | %.0f |\n",
           n, dn / tar, dn / tcr, 2 * dn / (tar + tcr), dn / (tar + tcr));
    printf("| add n, cancel n in add order | %zu | %.0f (add) | %.0f (cancel) | %.0f | %.0f |\n",
           n, dn / tas, dn / tcs, 2 * dn / (tas + tcs), dn / (tas + tcs));
    printf("| churn: cancel a random one + add one, %zu pending | %zu steps | | | %.0f | %.0f |\n",
           pop, n, 2 * dn / tch, dn / tch);
    printf("| add n, expire tick by tick (%llu expire calls) | %zu | %.0f (add) | %.0f (expire) | %.0f | %.0f |\n",
           (unsigned long long)horizon, n, dn / tea, dn / tee, 2 * dn / (tea + tee), dn / (tea + tee));
    printf("| add n, expire all in one call | %zu | %.0f (add) | %.0f (expire) | %.0f | %.0f |\n",
           n, dn / tba, dn / tbe, 2 * dn / (tba + tbe), dn / (tba + tbe));
    printf("\n| memory, %zu pending | bytes | bytes per timer |\n|---|---:|---:|\n", n);
#ifdef __GLIBC__
    printf("| heap allocated (mallinfo2) | %zu | %.1f |\n", heap1 - heap0, (double)(heap1 - heap0) / dn);
#endif
    printf("| resident set growth (statm) | %zu | %.1f |\n", rss1 - rss0, (double)(rss1 - rss0) / dn);
    printf("\nexactness: %zu of %zu timers expired at a tick other than their own%s\n",
           wrong, n, wrong ? "  <-- WRONG" : "");

    free(deadlines);
    free(handles);
    free(order);
    free(picks);
    free(out);
    return wrong ? 1 : 0;
}

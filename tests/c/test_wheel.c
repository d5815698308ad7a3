/* test_wheel.c - the timing wheel: add, cancel and expire; exact expiry tick
 * by tick across levels 0-2; deadlines past the top level's horizon with big
 * jumps; stale, cancelled and never-issued handles; next_deadline as a lower
 * bound; a million timers; expiry in small batches and in deadline order.
 *
 * The wheel hands out node indexes; the tests keep each timer's deadline in an
 * array indexed by them (as the binding keeps payloads) and check every index
 * that comes back against it.  Random deadlines come from a seeded xorshift,
 * so a failure replays.
 */
#include "pq_test.h"

#include "wheel.h"

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Per-index bookkeeping for one wheel. */
typedef struct book {
    uint64_t *deadline;
    uint64_t *handle;
    unsigned char *pending;
    size_t cap;
} book_t;

static int book_init(book_t *b, size_t cap)
{
    b->deadline = calloc(cap, sizeof *b->deadline);
    b->handle = calloc(cap, sizeof *b->handle);
    b->pending = calloc(cap, 1);
    b->cap = cap;
    return b->deadline && b->handle && b->pending ? 0 : -1;
}

static void book_free(book_t *b)
{
    free(b->deadline);
    free(b->handle);
    free(b->pending);
}

/* Add a timer and record it; 0 or -1 (a check has failed). */
static int add(pq_wheel_t *w, book_t *b, uint64_t deadline)
{
    uint64_t h;
    uint32_t i;
    int rc = pq_wheel_add(w, deadline, &h, &i);
    if (rc != 0) {
        PQT_FAIL("pq_wheel_add(%llu) = %d", (unsigned long long)deadline, rc);
        return -1;
    }
    if (i >= b->cap || b->pending[i]) {
        PQT_FAIL("pq_wheel_add gave index %u, out of range or still pending", i);
        return -1;
    }
    b->deadline[i] = deadline;
    b->handle[i] = h;
    b->pending[i] = 1;
    return 0;
}

/* ---- basics ---- */

static void test_add_cancel_expire(void)
{
    pq_wheel_t *w = NULL;
    CHECK_OK(pq_wheel_new(1000, &w));
    REQUIRE(w);
    CHECK_EQ(pq_wheel_count(w), 0);
    CHECK(pq_wheel_next_deadline(w) == UINT64_MAX);

    uint64_t ha, hb, hc;
    uint32_t ia, ib, ic, idx = 12345;
    CHECK_OK(pq_wheel_add(w, 1010, &ha, &ia));
    CHECK_OK(pq_wheel_add(w, 1020, &hb, &ib));
    CHECK_OK(pq_wheel_add(w, 1030, &hc, &ic));
    CHECK(ia != ib && ib != ic && ia != ic);
    CHECK_EQ(pq_wheel_count(w), 3);

    CHECK_EQ(pq_wheel_cancel(w, hb, &idx), 1);
    CHECK_EQ(idx, ib);
    CHECK_EQ(pq_wheel_count(w), 2);

    uint32_t out[8];
    CHECK_EQ(pq_wheel_expire(w, 1009, out, 8), 0);
    CHECK_EQ(pq_wheel_expire(w, 1010, out, 8), 1);
    CHECK_EQ(out[0], ia);
    CHECK_EQ(pq_wheel_expire(w, 1025, out, 8), 0);   /* b was cancelled */
    CHECK_EQ(pq_wheel_expire(w, 1030, out, 8), 1);
    CHECK_EQ(out[0], ic);
    CHECK_EQ(pq_wheel_count(w), 0);
    CHECK(pq_wheel_next_deadline(w) == UINT64_MAX);

    /* A deadline at or before the current tick expires at the next call. */
    uint64_t hd, he;
    uint32_t id, ie;
    CHECK_OK(pq_wheel_add(w, 1030, &hd, &id));
    CHECK_OK(pq_wheel_add(w, 5, &he, &ie));
    CHECK_EQ(pq_wheel_next_deadline(w), 1030);
    CHECK_EQ(pq_wheel_expire(w, 1030, out, 8), 2);
    CHECK_EQ(pq_wheel_count(w), 0);
    pq_wheel_free(w);
}

/* Every timer comes out at exactly its deadline when the wheel advances one
 * tick at a time; deadlines up to 2^21 ticks ahead use levels 0, 1 and 2, and
 * an unaligned start makes buckets wrap. */
static void test_tick_by_tick_exact_levels_0_to_2(void)
{
    enum { N = 3000 };
    const uint64_t start = 1000003, span = 1ull << 21;
    pq_wheel_t *w = NULL;
    book_t b;
    REQUIRE(book_init(&b, 4 * N) == 0);
    CHECK_OK(pq_wheel_new(start, &w));
    REQUIRE(w);
    rng_seed(42);
    uint64_t last = start;
    for (int k = 0; k < N; k++) {
        uint64_t d;
        switch (k % 3) {   /* a third per level */
        case 0: d = start + 1 + rng() % 255; break;
        case 1: d = start + 256 + rng() % (65536 - 256); break;
        default: d = start + 65536 + rng() % (span - 65536); break;
        }
        if (add(w, &b, d) != 0)
            break;
        if (d > last)
            last = d;
    }
    CHECK_EQ(pq_wheel_count(w), N);

    uint32_t out[64];
    size_t got = 0;
    int bad = 0;
    for (uint64_t now = start + 1; now <= last; now++) {
        size_t n;
        do {
            n = pq_wheel_expire(w, now, out, 64);
            for (size_t i = 0; i < n; i++) {
                uint32_t x = out[i];
                if (x >= b.cap || !b.pending[x] || b.deadline[x] != now) {
                    if (bad++ < 10)
                        PQT_FAIL("tick %llu: index %u (deadline %llu, pending %d)",
                                 (unsigned long long)now, x,
                                 x < b.cap ? (unsigned long long)b.deadline[x] : 0ull,
                                 x < b.cap ? b.pending[x] : -1);
                    continue;
                }
                b.pending[x] = 0;
                got++;
            }
        } while (n == 64);
    }
    CHECK_EQ(got, N);
    CHECK_EQ(bad, 0);
    CHECK_EQ(pq_wheel_count(w), 0);
    pq_wheel_free(w);
    book_free(&b);
}

/* Deadlines beyond the 2^32-tick horizon (parked and placed again), reached in
 * jumps of up to 2^27 ticks: nothing early, nothing late, everything once. */
static void test_far_deadlines_big_jumps(void)
{
    enum { N = 2000 };
    const uint64_t start = 77777;
    pq_wheel_t *w = NULL;
    book_t b;
    REQUIRE(book_init(&b, 4 * N) == 0);
    CHECK_OK(pq_wheel_new(start, &w));
    REQUIRE(w);
    rng_seed(7);
    uint64_t last = start;
    for (int k = 0; k < N; k++) {
        uint64_t d = k % 4 == 0 ? start + 1 + rng() % (1ull << 32)          /* below the horizon */
                                : start + (1ull << 32) + rng() % (1ull << 33); /* beyond it */
        if (add(w, &b, d) != 0)
            break;
        if (d > last)
            last = d;
    }
    uint32_t out[256];
    size_t got = 0;
    int early = 0, late = 0, unknown = 0;
    uint64_t now = start;
    while (now < last + 1) {
        now += 1 + rng() % (1ull << 27);
        size_t n;
        do {
            n = pq_wheel_expire(w, now, out, 256);
            for (size_t i = 0; i < n; i++) {
                uint32_t x = out[i];
                if (x >= b.cap || !b.pending[x]) {
                    unknown++;
                    continue;
                }
                if (b.deadline[x] > now && early++ < 5)
                    PQT_FAIL("deadline %llu expired early, at %llu",
                             (unsigned long long)b.deadline[x], (unsigned long long)now);
                b.pending[x] = 0;
                got++;
            }
        } while (n == 256);
        /* Everything due by now has been handed out. */
        for (size_t x = 0; x < b.cap; x++)
            if (b.pending[x] && b.deadline[x] <= now && late++ < 5)
                PQT_FAIL("deadline %llu still pending at %llu", (unsigned long long)b.deadline[x],
                         (unsigned long long)now);
    }
    CHECK_EQ(got, N);
    CHECK_EQ(early, 0);
    CHECK_EQ(late, 0);
    CHECK_EQ(unknown, 0);
    CHECK_EQ(pq_wheel_count(w), 0);
    pq_wheel_free(w);
    book_free(&b);
}

/* ---- handles ---- */

static void test_cancel_stale_handles_returns_0(void)
{
    pq_wheel_t *w = NULL;
    CHECK_OK(pq_wheel_new(0, &w));
    REQUIRE(w);
    uint64_t h1, h2, keep;
    uint32_t i1, i2, ik, idx = 999, out[4];
    CHECK_OK(pq_wheel_add(w, 10, &h1, &i1));
    CHECK_OK(pq_wheel_add(w, 20, &h2, &i2));
    CHECK_OK(pq_wheel_add(w, 1000, &keep, &ik));

    CHECK_EQ(pq_wheel_expire(w, 10, out, 4), 1);       /* h1 expired */
    CHECK_EQ(pq_wheel_cancel(w, h1, &idx), 0);
    CHECK_EQ(pq_wheel_cancel(w, h2, &idx), 1);         /* h2 cancelled ... */
    CHECK_EQ(pq_wheel_cancel(w, h2, &idx), 0);         /* ... once */

    /* Never issued: an index past every node; a generation never handed out;
     * generation 0; all ones. */
    CHECK_EQ(pq_wheel_cancel(w, ((uint64_t)1 << 32) | 4000000, &idx), 0);
    CHECK_EQ(pq_wheel_cancel(w, keep + ((uint64_t)1000 << 32), &idx), 0);
    CHECK_EQ(pq_wheel_cancel(w, (uint64_t)ik, &idx), 0);
    CHECK_EQ(pq_wheel_cancel(w, UINT64_MAX, &idx), 0);
    /* A freed node's handle with its current (free) generation. */
    CHECK_EQ(pq_wheel_cancel(w, h1 + ((uint64_t)1 << 32), &idx), 0);

    CHECK_EQ(pq_wheel_count(w), 1);
    CHECK_EQ(pq_wheel_expire(w, 1000, out, 4), 1);
    CHECK_EQ(out[0], ik);
    pq_wheel_free(w);
}

/* A due-but-uncollected timer can be cancelled; an old handle to a reused
 * node never cancels the new timer there. */
static void test_handle_reuse_does_not_cancel_new_timer(void)
{
    pq_wheel_t *w = NULL;
    CHECK_OK(pq_wheel_new(0, &w));
    REQUIRE(w);
    uint64_t ha, hb, hc;
    uint32_t ia, ib, ic, idx, out[4];
    CHECK_OK(pq_wheel_add(w, 50, &ha, &ia));
    CHECK_EQ(pq_wheel_cancel(w, ha, &idx), 1);
    CHECK_OK(pq_wheel_add(w, 60, &hb, &ib));
    CHECK_EQ(ib, ia);                 /* the node is reused ... */
    CHECK(hb != ha);                  /* ... under another handle */
    CHECK_EQ(pq_wheel_cancel(w, ha, &idx), 0);
    CHECK_EQ(pq_wheel_count(w), 1);
    CHECK_EQ(pq_wheel_expire(w, 60, out, 4), 1);
    CHECK_EQ(out[0], ib);

    /* Reuse after expiry, and a timer due at once (on the due list). */
    CHECK_OK(pq_wheel_add(w, 10, &hc, &ic));
    CHECK_EQ(ic, ib);
    CHECK_EQ(pq_wheel_cancel(w, hb, &idx), 0);
    CHECK_EQ(pq_wheel_count(w), 1);
    CHECK_EQ(pq_wheel_cancel(w, hc, &idx), 1);
    CHECK_EQ(idx, ic);
    CHECK_EQ(pq_wheel_expire(w, 100, out, 4), 0);
    CHECK_EQ(pq_wheel_count(w), 0);
    pq_wheel_free(w);
}

/* ---- next_deadline ---- */

/* No timer expires before next_deadline(), and it is never below the current
 * tick; checked after every step of a random walk of adds, cancels and
 * expiries over all four levels. */
static void test_next_deadline_is_lower_bound(void)
{
    enum { N = 4000 };
    pq_wheel_t *w = NULL;
    book_t b;
    REQUIRE(book_init(&b, 4 * N) == 0);
    CHECK_OK(pq_wheel_new(500, &w));
    REQUIRE(w);
    rng_seed(99);
    uint64_t now = 500;
    uint32_t out[4 * N];
    int bad = 0;
    for (int step = 0; step < N && !bad; step++) {
        uint64_t r = rng() % 10;
        if (r < 5) {
            unsigned shift = (unsigned)(rng() % 34);
            if (add(w, &b, now + 1 + rng() % (1ull << shift)) != 0)
                break;
        } else if (r < 7) {
            uint32_t x = (uint32_t)(rng() % b.cap), idx;
            if (b.pending[x]) {
                CHECK_EQ(pq_wheel_cancel(w, b.handle[x], &idx), 1);
                b.pending[x] = 0;
            }
        }
        uint64_t nd = pq_wheel_next_deadline(w);
        uint64_t min = UINT64_MAX;
        for (size_t x = 0; x < b.cap; x++)
            if (b.pending[x] && b.deadline[x] < min)
                min = b.deadline[x];
        if (nd > min || nd < now) {
            PQT_FAIL("step %d: next_deadline %llu, earliest pending %llu, now %llu", step,
                     (unsigned long long)nd, (unsigned long long)min, (unsigned long long)now);
            bad++;
        }
        if (r >= 7 && min != UINT64_MAX) {
            /* Jump to just before the bound (nothing may come out), then to it
             * or a bit past the earliest deadline. */
            if (nd > now) {
                size_t n = pq_wheel_expire(w, nd - 1, out, 4 * N);
                if (n) {
                    PQT_FAIL("step %d: %zu expired at %llu, before next_deadline %llu", step, n,
                             (unsigned long long)(nd - 1), (unsigned long long)nd);
                    bad++;
                }
                now = nd - 1;
            }
            uint64_t to = min + rng() % 300;
            size_t n = pq_wheel_expire(w, to, out, 4 * N);
            for (size_t i = 0; i < n; i++) {
                if (!b.pending[out[i]] || b.deadline[out[i]] > to) {
                    PQT_FAIL("step %d: bad expiry of index %u", step, out[i]);
                    bad++;
                }
                b.pending[out[i]] = 0;
            }
            now = to;
            if (n == 0) {
                PQT_FAIL("step %d: nothing expired at %llu though %llu was due", step,
                         (unsigned long long)to, (unsigned long long)min);
                bad++;
            }
        }
    }
    CHECK_EQ(bad, 0);
    pq_wheel_free(w);
    book_free(&b);
}

/* ---- volume and batching ---- */

static void test_million_timers_round_trip(void)
{
    enum { N = 1000000 };
    pq_wheel_t *w = NULL;
    CHECK_OK(pq_wheel_new(0, &w));
    REQUIRE(w);
    uint64_t *h = malloc(N * sizeof *h);
    uint32_t *out = malloc(N * sizeof *out);
    unsigned char *seen = calloc(N, 1);
    REQUIRE(h && out && seen);
    rng_seed(1);
    for (uint32_t k = 0; k < N; k++) {
        uint32_t idx;
        int rc = pq_wheel_add(w, 1 + rng() % 100000, &h[k], &idx);
        if (rc != 0 || idx != k) {   /* a fresh wheel hands out indexes in order */
            PQT_FAIL("add %u: rc %d, index %u", k, rc, idx);
            break;
        }
    }
    CHECK_EQ(pq_wheel_count(w), N);
    size_t cancelled = 0;
    for (uint32_t k = 0; k < N; k += 2) {
        uint32_t idx;
        cancelled += (size_t)pq_wheel_cancel(w, h[k], &idx);
    }
    CHECK_EQ(cancelled, N / 2);
    CHECK_EQ(pq_wheel_count(w), N - N / 2);
    size_t got = 0, n;
    uint64_t now = 0;
    int bad = 0;
    while (now < 100000) {
        now += 1000;
        while ((n = pq_wheel_expire(w, now, out, N)) > 0) {
            for (size_t i = 0; i < n; i++) {
                if (out[i] >= N || out[i] % 2 == 0 || seen[out[i]])
                    bad++;
                else
                    seen[out[i]] = 1;
            }
            got += n;
        }
    }
    CHECK_EQ(got, N - N / 2);
    CHECK_EQ(bad, 0);
    CHECK_EQ(pq_wheel_count(w), 0);
    CHECK(pq_wheel_next_deadline(w) == UINT64_MAX);
    free(h);
    free(out);
    free(seen);
    pq_wheel_free(w);
}

static void test_expire_small_max_returns_rest_next_call(void)
{
    pq_wheel_t *w = NULL;
    CHECK_OK(pq_wheel_new(0, &w));
    REQUIRE(w);
    unsigned char seen[16] = {0};
    for (int k = 0; k < 10; k++) {
        uint64_t h;
        uint32_t i;
        CHECK_OK(pq_wheel_add(w, 5 + (uint64_t)k % 3, &h, &i));
    }
    uint32_t out[3];
    size_t total = 0, n;
    int calls = 0;
    while ((n = pq_wheel_expire(w, 100, out, 3)) > 0) {
        calls++;
        CHECK(n <= 3);
        for (size_t i = 0; i < n; i++) {
            CHECK(out[i] < 10);
            if (out[i] < 10) {
                CHECK(!seen[out[i]]);
                seen[out[i]] = 1;
            }
        }
        total += n;
        if (calls > 10)
            break;
    }
    CHECK_EQ(total, 10);
    CHECK_EQ(calls, 4);   /* 3 + 3 + 3 + 1 */
    CHECK_EQ(pq_wheel_count(w), 0);
    /* A timer added meanwhile does not hide or reorder the rest. */
    uint64_t h;
    uint32_t i;
    CHECK_OK(pq_wheel_add(w, 101, &h, &i));
    CHECK_EQ(pq_wheel_expire(w, 101, out, 3), 1);
    pq_wheel_free(w);
}

/* wheel.h: expired timers come out "earliest bucket first", also when one
 * call covers several buckets and `max` splits the batch. */
static void test_expire_earliest_bucket_first(void)
{
    pq_wheel_t *w = NULL;
    book_t b;
    REQUIRE(book_init(&b, 64) == 0);
    CHECK_OK(pq_wheel_new(0, &w));
    REQUIRE(w);
    const uint64_t dl[] = {5, 10, 300, 7, 70000, 2};
    for (size_t k = 0; k < sizeof dl / sizeof dl[0]; k++)
        add(w, &b, dl[k]);

    uint32_t out[1];
    uint64_t prev = 0;
    int unordered = 0;
    for (size_t k = 0; k < sizeof dl / sizeof dl[0]; k++) {
        if (pq_wheel_expire(w, 100000, out, 1) != 1) {
            PQT_FAIL("expire %zu returned nothing", k);
            break;
        }
        uint64_t d = b.deadline[out[0]];
        if (d < prev) {
            PQT_FAIL("deadline %llu handed out after %llu", (unsigned long long)d,
                     (unsigned long long)prev);
            unordered++;
        }
        prev = d;
    }
    CHECK_EQ(unordered, 0);
    pq_wheel_free(w);
    book_free(&b);
}

PQT_MAIN(PQT_CASE(test_add_cancel_expire),
         PQT_CASE(test_tick_by_tick_exact_levels_0_to_2),
         PQT_CASE(test_far_deadlines_big_jumps),
         PQT_CASE(test_cancel_stale_handles_returns_0),
         PQT_CASE(test_handle_reuse_does_not_cancel_new_timer),
         PQT_CASE(test_next_deadline_is_lower_bound),
         PQT_CASE(test_million_timers_round_trip),
         PQT_CASE(test_expire_small_max_returns_rest_next_call),
         PQT_CASE(test_expire_earliest_bucket_first))

/* test_dedup.c - the dedup table: begin/insert, a duplicate found, expired
 * slots reused, get/put, a full probe chain, reopening, and a table file
 * whose header was never written (a crash right after it was allocated).
 *
 * Keys are built so that their probe chains are known: the first 8 bytes
 * (k1) pick the home slot, k1 % capacity, and the last 8 tell keys apart.
 */
#include "pq_test.h"

#include "dedup.h"

#define SEC 1000000000LL
static const int64_t T0 = 1900000000LL * SEC;

static void key(uint8_t k[16], uint64_t k1, uint64_t k2)
{
    memcpy(k, &k1, 8);
    memcpy(k + 8, &k2, 8);
}

static pq_dedup_t *open_table(uint32_t capacity)
{
    pq_dedup_t *d = NULL;
    int rc = pq_dedup_open(pqt_path("dedup"), capacity, &d);
    if (rc != 0)
        PQT_FAIL("pq_dedup_open: %d (%s)", rc, pq_error_message());
    return d;
}

/* begin + insert of a new key; 0 or -1 (a check failed). */
static int send(pq_dedup_t *d, const uint8_t k[16], int64_t now, uint32_t part, uint64_t off,
                int64_t expires)
{
    uint32_t p, slot;
    uint64_t o;
    int rc = pq_dedup_begin(d, k, now, &p, &o, &slot);
    if (rc != 0) {
        PQT_FAIL("pq_dedup_begin = %d (%s)", rc, pq_error_message());
        return -1;
    }
    pq_dedup_insert(d, slot, k, part, off, 0, expires);
    return 0;
}

static void test_begin_insert_duplicate(void)
{
    pq_dedup_t *d = open_table(64);
    REQUIRE(d);
    uint8_t a[16], b[16], z[16];
    key(a, 5, 1);
    key(b, 5, 2);   /* same home slot as a */
    key(z, 0, 0);   /* the all-zero key is a key like any other */
    uint32_t p = 99, slot;
    uint64_t o = 99;

    CHECK_EQ(pq_dedup_begin(d, a, T0, &p, &o, &slot), 0);   /* new: lock held */
    pq_dedup_insert(d, slot, a, 3, 1000, 0, T0 + 60 * SEC);
    CHECK_EQ(pq_dedup_begin(d, a, T0 + SEC, &p, &o, &slot), 1);   /* duplicate: no lock */
    CHECK_EQ(p, 3);
    CHECK_EQ(o, 1000);
    CHECK_EQ(pq_dedup_begin(d, b, T0, &p, &o, &slot), 0);
    pq_dedup_unlock(d);                                             /* the append failed */
    CHECK_EQ(pq_dedup_begin(d, b, T0, &p, &o, &slot), 0);          /* still new */
    pq_dedup_insert(d, slot, b, 4, 2000, 0, T0 + 60 * SEC);
    CHECK_EQ(send(d, z, T0, 5, 3000, T0 + 60 * SEC), 0);

    CHECK_EQ(pq_dedup_begin(d, a, T0, &p, &o, &slot), 1);
    CHECK_EQ(o, 1000);
    CHECK_EQ(pq_dedup_begin(d, b, T0, &p, &o, &slot), 1);
    CHECK_EQ(o, 2000);
    CHECK_EQ(pq_dedup_begin(d, z, T0, &p, &o, &slot), 1);
    CHECK_EQ(o, 3000);
    CHECK_EQ(pq_dedup_count(d, T0), 3);
    pq_dedup_close(d);
}

/* An expired entry no longer dedups, and its slot is reused; keys further
 * along the chain stay findable past it. */
static void test_expiry_and_reuse(void)
{
    pq_dedup_t *d = open_table(16);
    REQUIRE(d);
    uint8_t a[16], b[16], c[16];
    key(a, 7, 1);
    key(b, 7, 2);
    key(c, 7, 3);
    REQUIRE(send(d, a, T0, 0, 1, T0 + 10 * SEC) == 0);   /* slot 7 */
    REQUIRE(send(d, b, T0, 0, 2, T0 + 100 * SEC) == 0);  /* slot 8 */
    uint32_t p, slot;
    uint64_t o;
    CHECK_EQ(pq_dedup_begin(d, a, T0 + 10 * SEC - 1, &p, &o, &slot), 1);
    CHECK_EQ(pq_dedup_count(d, T0 + 10 * SEC), 1);
    /* a expired: new again, and b behind its slot still found. */
    CHECK_EQ(pq_dedup_begin(d, b, T0 + 10 * SEC, &p, &o, &slot), 1);
    CHECK_EQ(o, 2);
    CHECK_EQ(pq_dedup_begin(d, c, T0 + 10 * SEC, &p, &o, &slot), 0);
    CHECK_EQ(slot, 7);                                        /* the expired slot */
    pq_dedup_insert(d, slot, c, 0, 3, 0, T0 + 100 * SEC);
    CHECK_EQ(pq_dedup_begin(d, a, T0 + 10 * SEC, &p, &o, &slot), 0);
    CHECK_EQ(slot, 9);                                        /* past b, the chain's end */
    pq_dedup_unlock(d);
    CHECK_EQ(pq_dedup_begin(d, c, T0 + 11 * SEC, &p, &o, &slot), 1);
    CHECK_EQ(o, 3);
    CHECK_EQ(pq_dedup_count(d, T0 + 11 * SEC), 2);
    pq_dedup_close(d);
}

static void test_get_put(void)
{
    pq_dedup_t *d = open_table(32);
    REQUIRE(d);
    uint8_t a[16];
    key(a, 12345, 678);
    uint32_t p = 0;
    uint64_t o = 0, aux = 0;
    CHECK_EQ(pq_dedup_get(d, a, T0, &p, &o, &aux), 0);
    CHECK_OK(pq_dedup_put(d, a, T0, 1, 2, 3, INT64_MAX));
    CHECK_EQ(pq_dedup_get(d, a, T0, &p, &o, &aux), 1);
    CHECK_EQ(p, 1);
    CHECK_EQ(o, 2);
    CHECK_EQ(aux, 3);
    CHECK_OK(pq_dedup_put(d, a, T0, 4, 5, UINT64_MAX, INT64_MAX));   /* replaces */
    CHECK_EQ(pq_dedup_get(d, a, T0, &p, &o, &aux), 1);
    CHECK_EQ(p, 4);
    CHECK_EQ(o, 5);
    CHECK(aux == UINT64_MAX);
    CHECK_EQ(pq_dedup_count(d, T0), 1);   /* replaced in place, not added */
    /* The lock is free after each call: a begin does not block. */
    uint32_t slot;
    CHECK_EQ(pq_dedup_begin(d, a, T0, &p, &o, &slot), 1);
    pq_dedup_close(d);
}

/* PQ_DEDUP_PROBES live entries in a row: the next key of that chain gets
 * -PQ_EFULL (no lock held); keys elsewhere still work; an expiry frees it. */
static void test_full_probe_chain(void)
{
    const uint32_t cap = 1024;
    pq_dedup_t *d = open_table(cap);
    REQUIRE(d);
    uint8_t k[16];
    for (uint64_t i = 0; i < PQ_DEDUP_PROBES; i++) {
        key(k, 100, i + 1);
        int64_t exp = i == 200 ? T0 + SEC : T0 + 100 * SEC;
        if (send(d, k, T0, 0, i, exp) != 0)
            break;
    }
    uint32_t p, slot;
    uint64_t o;
    key(k, 100, 9999);
    CHECK_RC(pq_dedup_begin(d, k, T0, &p, &o, &slot), -PQ_EFULL);
    CHECK_CONTAINS(pq_error_message(), "dedup");
    CHECK_RC(pq_dedup_put(d, k, T0, 0, 0, 0, T0 + SEC), -PQ_EFULL);
    key(k, 100 + PQ_DEDUP_PROBES, 1);   /* just past it */
    CHECK_EQ(pq_dedup_begin(d, k, T0, &p, &o, &slot), 0);
    pq_dedup_unlock(d);
    /* Every key of the run is still found. */
    int missing = 0;
    for (uint64_t i = 0; i < PQ_DEDUP_PROBES; i++) {
        key(k, 100, i + 1);
        missing += pq_dedup_begin(d, k, T0, &p, &o, &slot) != 1 || o != i;
    }
    CHECK_EQ(missing, 0);
    /* Entry 200 expires: its slot takes the next key. */
    key(k, 100, 9999);
    CHECK_EQ(pq_dedup_begin(d, k, T0 + SEC, &p, &o, &slot), 0);
    CHECK_EQ(slot, 300);
    pq_dedup_unlock(d);

    /* A small table: capacity bounds the chain. */
    pq_dedup_t *s = NULL;
    CHECK_OK(pq_dedup_open(pqt_path("small"), 16, &s));
    REQUIRE(s);
    for (uint64_t i = 0; i < 16; i++) {
        key(k, i * 7919, i + 1);
        if (send(s, k, T0, 0, i, T0 + SEC) != 0)
            break;
    }
    key(k, 3, 12345);
    CHECK_RC(pq_dedup_begin(s, k, T0, &p, &o, &slot), -PQ_EFULL);
    pq_dedup_close(s);
    pq_dedup_close(d);
}

static void test_reopen_keeps_entries(void)
{
    pq_dedup_t *d = open_table(128);
    REQUIRE(d);
    uint8_t k[16];
    for (uint64_t i = 0; i < 50; i++) {
        key(k, i * 31, i);
        if (send(d, k, T0, (uint32_t)i, i * 10, T0 + 100 * SEC) != 0)
            break;
    }
    CHECK_OK(pq_dedup_sync(d));
    /* A second handle sees them while the first is open; then a sole opener. */
    pq_dedup_t *e = NULL;
    CHECK_OK(pq_dedup_open(pqt_path("dedup"), 128, &e));
    REQUIRE(e);
    CHECK_EQ(pq_dedup_count(e, T0), 50);
    pq_dedup_close(e);
    pq_dedup_close(d);
    d = open_table(128);
    REQUIRE(d);
    int bad = 0;
    for (uint64_t i = 0; i < 50; i++) {
        uint32_t p, slot;
        uint64_t o;
        key(k, i * 31, i);
        bad += pq_dedup_begin(d, k, T0, &p, &o, &slot) != 1 || p != i || o != i * 10;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(pq_dedup_count(d, T0), 50);
    pq_dedup_close(d);

    /* Bad capacities are refused. */
    pq_dedup_t *x = NULL;
    CHECK_RC(pq_dedup_open(pqt_path("x"), 15, &x), -PQ_ECONFIG);
    CHECK_RC(pq_dedup_open(pqt_path("x"), PQ_DEDUP_MAX_CAPACITY + 1, &x), -PQ_ECONFIG);
    CHECK(x == NULL);
}

/* A crash between allocating a new table file and writing its header leaves
 * a file of the right size that is all zeros: the next opener must treat it
 * as a new, empty table, not refuse it forever. */
static void test_zeroed_file_opens_as_empty_table(void)
{
    const uint32_t cap = 16;
    FILE *f = fopen(pqt_path("dedup"), "w");
    REQUIRE(f);
    for (size_t i = 0; i < 128 + (size_t)cap * 48; i++)
        fputc(0, f);
    fclose(f);
    pq_dedup_t *d = open_table(cap);
    REQUIRE(d);
    uint8_t k[16];
    key(k, 1, 1);
    CHECK_EQ(send(d, k, T0, 0, 0, T0 + SEC), 0);
    pq_dedup_close(d);
}

PQT_MAIN(PQT_CASE(test_begin_insert_duplicate),
         PQT_CASE(test_expiry_and_reuse),
         PQT_CASE(test_get_put),
         PQT_CASE(test_full_probe_chain),
         PQT_CASE(test_reopen_keeps_entries),
         PQT_CASE(test_zeroed_file_opens_as_empty_table))

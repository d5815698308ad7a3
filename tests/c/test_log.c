/* test_log.c - a partition log: appends, reads and bounds across segment
 * rolls, reopening, crash recovery, retention, time lookup, wait/wake between
 * threads and processes, sync, and appenders killed while holding the lock.
 *
 * Segments are the minimum size (64 KiB) so that a few hundred records roll.
 * A record's value starts with an 8-byte tag (its expected offset, or a writer
 * and sequence number) followed by bytes derived from the tag, so every read
 * checks that it got the right bytes and not merely some bytes.
 */
#include "pq_test.h"

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>

#include "log.h"
#include "wake.h"

#define S ((uint64_t)PQ_SEGMENT_MIN_BYTES)
#define VMAX 300

static pq_log_config_t config(void)
{
    pq_log_config_t c;
    memset(&c, 0, sizeof c);
    c.segment_bytes = S;
    c.max_message_bytes = 4096;
    return c;
}

static const char *part(void) { return pqt_path("p"); }

/* ---- record helpers ---- */

static uint32_t vlen_for(uint64_t tag) { return 8 + (uint32_t)(tag * 7919 % VMAX); }

static void make_value(unsigned char *buf, uint64_t tag, uint32_t len)
{
    memcpy(buf, &tag, 8);
    pqt_fill(buf + 8, len - 8, tag);
}

/* 1 if r holds the value written for `tag` (and the key for it, if any). */
static int value_ok(const pq_record_t *r, uint64_t tag)
{
    unsigned char buf[8 + VMAX];
    uint32_t len = vlen_for(tag);
    if (r->value_len != len)
        return 0;
    make_value(buf, tag, len);
    if (memcmp(r->value, buf, len) != 0)
        return 0;
    if (tag % 4 == 0)
        return r->key_len == PQ_NO_KEY && r->key == NULL;
    return r->key_len == 5 && memcmp(r->key, "key-", 4) == 0 && ((const char *)r->key)[4] == '0' + (char)(tag % 10);
}

typedef struct batch {
    pq_record_t recs[64];
    unsigned char vals[64][8 + VMAX];
    char keys[64][8];
} batch_t;

static void fill_batch(batch_t *b, size_t n, uint64_t first_tag)
{
    memset(b->recs, 0, n * sizeof b->recs[0]);
    for (size_t i = 0; i < n; i++) {
        uint64_t tag = first_tag + i;
        pq_record_t *r = &b->recs[i];
        r->value_len = vlen_for(tag);
        make_value(b->vals[i], tag, r->value_len);
        r->value = b->vals[i];
        if (tag % 4 == 0) {
            r->key = NULL;
            r->key_len = PQ_NO_KEY;
        } else {
            snprintf(b->keys[i], sizeof b->keys[i], "key-%d", (int)(tag % 10));
            r->key = b->keys[i];
            r->key_len = 5;
        }
    }
}

/* Append n records, tagged with their expected offsets, in batches of 1..max_batch.
 * Returns the number of problems (also reported as check failures). */
static int append_n(pq_log_t *log, uint64_t n, size_t max_batch)
{
    static batch_t b;
    uint64_t start, end;
    int bad = 0;
    pq_log_bounds(log, &start, &end);
    for (uint64_t done = 0, k = 0; done < n; k++) {
        size_t m = 1 + (size_t)(k * 7 % max_batch);
        if (m > n - done)
            m = (size_t)(n - done);
        fill_batch(&b, m, end);
        uint64_t first = UINT64_MAX;
        int rc = pq_log_append(log, b.recs, m, &first);
        if (rc != 0) {
            PQT_FAIL("append of %zu at %llu: %d (%s)", m, (unsigned long long)end, rc, pq_error_message());
            return bad + 1;
        }
        if (first != end) {
            PQT_FAIL("append returned first offset %llu, expected %llu", (unsigned long long)first,
                     (unsigned long long)end);
            bad++;
        }
        for (size_t i = 0; i < m; i++)
            if (b.recs[i].offset != end + i || (i && b.recs[i].timestamp < b.recs[i - 1].timestamp)) {
                PQT_FAIL("record %zu of a batch: offset %llu", i, (unsigned long long)b.recs[i].offset);
                bad++;
            }
        end += m;
        done += m;
    }
    return bad;
}

/* Read [from, to) in calls of at most `max`; check offsets, values, that a
 * call never crosses a segment, and that timestamps never decrease. */
static void verify_range(pq_log_t *log, uint64_t from, uint64_t to, size_t max)
{
    static pq_record_t recs[256];
    int64_t last_ts = INT64_MIN;
    uint64_t off = from;
    int bad = 0;
    while (off < to) {
        pq_segment_t *seg = NULL;
        size_t want = to - off < max ? (size_t)(to - off) : max;
        int n = pq_log_read_many(log, off, recs, want, &seg);
        if (n <= 0) {
            PQT_FAIL("read_many(%llu) = %d (%s)", (unsigned long long)off, n, pq_error_message());
            return;
        }
        if ((size_t)n > want)
            bad++;
        for (int i = 0; i < n; i++) {
            const unsigned char *v = recs[i].value;
            bad += recs[i].offset != off + (uint64_t)i;
            bad += !value_ok(&recs[i], off + (uint64_t)i);
            bad += v < seg->map || v + recs[i].value_len > seg->map + seg->size;   /* one segment */
            bad += off + (uint64_t)i < seg->base;
            bad += recs[i].timestamp < last_ts;
            last_ts = recs[i].timestamp;
        }
        pq_segment_decref(seg);
        off += (uint64_t)n;
    }
    if (bad)
        PQT_FAIL("verify_range(%llu, %llu): %d bad records", (unsigned long long)from,
                 (unsigned long long)to, bad);
}

static pq_log_t *open_log(const pq_log_config_t *c)
{
    pq_log_t *log = NULL;
    int rc = pq_log_open(part(), c, 1, &log);
    if (rc != 0) {
        PQT_FAIL("pq_log_open(%s) = %d (%s)", part(), rc, pq_error_message());
        return NULL;
    }
    return log;
}

static uint64_t end_of(pq_log_t *log)
{
    uint64_t s, e;
    pq_log_bounds(log, &s, &e);
    return e;
}

static uint64_t start_of(pq_log_t *log)
{
    uint64_t s, e;
    pq_log_bounds(log, &s, &e);
    return s;
}

/* Segment bases on disk, ascending; returns the count. */
static size_t segment_files(uint64_t *bases, size_t cap)
{
    DIR *d = opendir(part());
    size_t n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l == 24 && strcmp(e->d_name + 20, ".seg") == 0 && n < cap)
            bases[n++] = strtoull(e->d_name, NULL, 10);
    }
    if (d)
        closedir(d);
    for (size_t i = 1; i < n; i++)   /* insertion sort: a handful of files */
        for (size_t j = i; j > 0 && bases[j - 1] > bases[j]; j--) {
            uint64_t t = bases[j];
            bases[j] = bases[j - 1];
            bases[j - 1] = t;
        }
    return n;
}

static const char *segment_file(uint64_t base)
{
    char name[64];
    pq_segment_name(base, name, sizeof name);
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", part(), name);
    return path;
}

/* Where record `offset` lives: its segment base and frame position. */
static int locate(pq_log_t *log, uint64_t offset, uint64_t *base, uint32_t *pos, uint32_t *len)
{
    pq_record_t r;
    pq_segment_t *seg = NULL;
    int n = pq_log_read_many(log, offset, &r, 1, &seg);
    if (n != 1)
        return -1;
    *base = seg->base;
    *pos = r.position;
    *len = r.frame_len;
    pq_segment_decref(seg);
    return 0;
}

static void garble_file(const char *path, uint64_t at, size_t n)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        PQT_FAIL("open %s: %s", path, strerror(errno));
        return;
    }
    unsigned char buf[64];
    if (n > sizeof buf)
        n = sizeof buf;
    if (pread(fd, buf, n, (off_t)at) != (ssize_t)n)
        PQT_FAIL("pread %s", path);
    for (size_t i = 0; i < n; i++)
        buf[i] ^= 0x5A;
    if (pwrite(fd, buf, n, (off_t)at) != (ssize_t)n)
        PQT_FAIL("pwrite %s", path);
    close(fd);
}

/* ---- open ---- */

static void test_open_rejects_bad_config(void)
{
    pq_log_t *log = NULL;
    pq_log_config_t c = config();
    c.segment_bytes = S - 8;
    CHECK_RC(pq_log_open(part(), &c, 1, &log), -PQ_ECONFIG);
    CHECK_CONTAINS(pq_error_message(), "segment_bytes");
    c.segment_bytes = S + 4;   /* not a multiple of 8 */
    CHECK_RC(pq_log_open(part(), &c, 1, &log), -PQ_ECONFIG);
    c.segment_bytes = (uint64_t)PQ_SEGMENT_MAX_BYTES + 8;
    CHECK_RC(pq_log_open(part(), &c, 1, &log), -PQ_ECONFIG);
    c = config();
    c.max_message_bytes = S;   /* cannot fit one segment */
    CHECK_RC(pq_log_open(part(), &c, 1, &log), -PQ_ECONFIG);
    CHECK_CONTAINS(pq_error_message(), "max_message_bytes");
    CHECK(log == NULL);
}

static void test_open_without_create(void)
{
    pq_log_t *log = NULL;
    pq_log_config_t c = config();
    CHECK(pq_log_open(part(), &c, 0, &log) < 0);   /* no directory */
    CHECK(log == NULL);
    REQUIRE(mkdir(part(), 0700) == 0);
    CHECK_RC(pq_log_open(part(), &c, 0, &log), -PQ_ECORRUPT);   /* no segment */
    CHECK_CONTAINS(pq_error_message(), part());
    log = open_log(&c);
    REQUIRE(log);
    pq_log_recovery_t info;
    pq_log_recovery_info(log, &info);
    CHECK_EQ(info.sole_opener, 1);
    CHECK_EQ(end_of(log), 0);
    CHECK_EQ(start_of(log), 0);
    pq_log_close(log);
    log = NULL;
    CHECK_OK(pq_log_open(part(), &c, 0, &log));   /* now it exists */
    pq_log_close(log);
}

/* ---- append / read ---- */

static void test_append_read_bounds_across_rolls(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(append_n(log, 3000, 50), 0);
    CHECK_EQ(end_of(log), 3000);
    CHECK_EQ(start_of(log), 0);
    uint64_t nseg, bytes;
    pq_log_disk_usage(log, &nseg, &bytes);
    CHECK(nseg >= 5);
    CHECK_EQ(bytes, nseg * S);
    uint64_t bases[64];
    CHECK_EQ(segment_files(bases, 64), nseg);
    CHECK_EQ(bases[0], 0);

    verify_range(log, 0, 3000, 100);
    verify_range(log, 0, 3000, 1);
    verify_range(log, 1234, 3000, 256);

    /* A read stops at the segment that holds its first offset. */
    pq_record_t recs[256];
    for (size_t i = 1; i < nseg; i++) {
        pq_segment_t *seg = NULL;
        int n = pq_log_read_many(log, bases[i] - 2, recs, 256, &seg);
        CHECK_EQ(n, 2);
        if (n > 0)
            pq_segment_decref(seg);
    }
    /* Bounds of read_many. */
    pq_segment_t *seg = NULL;
    CHECK_RC(pq_log_read_many(log, 3000, recs, 10, &seg), 0);
    CHECK_RC(pq_log_read_many(log, 3001, recs, 10, &seg), -PQ_ERANGE);
    CHECK_CONTAINS(pq_error_message(), "3001");
    CHECK_RC(pq_log_read_many(log, UINT64_MAX, recs, 10, &seg), -PQ_ERANGE);
    CHECK_RC(pq_log_read_many(log, 5, recs, 0, &seg), 0);
    CHECK_EQ(pq_log_read_many(log, 2999, recs, 10, &seg), 1);
    pq_segment_decref(seg);
    pq_log_close(log);
}

static void test_big_records_roll_one_per_segment(void)
{
    pq_log_config_t c = config();
    c.max_message_bytes = 40000;   /* more than half a segment */
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    static unsigned char big[40000];
    pq_record_t r[3];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 3; i++) {
        pqt_fill(big, sizeof big, 1);
        r[i].key = NULL;
        r[i].key_len = PQ_NO_KEY;
        r[i].value = big;
        r[i].value_len = sizeof big;
    }
    uint64_t first;
    CHECK_OK(pq_log_append(log, r, 3, &first));   /* one call, three segments */
    CHECK_EQ(first, 0);
    CHECK_OK(pq_log_append(log, r, 1, &first));
    CHECK_EQ(first, 3);
    uint64_t bases[8];
    CHECK_EQ(segment_files(bases, 8), 4);
    for (uint64_t o = 0; o < 4; o++) {
        pq_record_t got;
        pq_segment_t *seg = NULL;
        CHECK_EQ(pq_log_read_many(log, o, &got, 8, &seg), 1);
        if (seg) {
            CHECK_EQ(seg->base, o);
            CHECK(got.value_len == sizeof big && memcmp(got.value, big, sizeof big) == 0);
            pq_segment_decref(seg);
        }
    }
    pq_log_close(log);
}

static void test_batch_append_is_all_or_nothing(void)
{
    pq_log_config_t c = config();
    c.max_message_bytes = 1000;
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(append_n(log, 10, 3), 0);
    static unsigned char v[1001];
    pq_record_t r[5];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 5; i++) {
        r[i].key = "k";
        r[i].key_len = 1;
        r[i].value = v;
        r[i].value_len = 10;
    }
    r[2].headers = v;
    r[2].headers_len = 500;
    r[2].value_len = 500;   /* 1 + 500 + 500 = 1001 > 1000 */
    uint64_t first = 12345;
    CHECK_RC(pq_log_append(log, r, 5, &first), -PQ_ETOOLARGE);
    CHECK_CONTAINS(pq_error_message(), "1000");
    CHECK_CONTAINS(pq_error_message(), "1001");
    CHECK_EQ(end_of(log), 10);
    r[2].value_len = 499;   /* exactly the limit */
    CHECK_OK(pq_log_append(log, r, 5, &first));
    CHECK_EQ(first, 10);
    CHECK_EQ(end_of(log), 15);
    CHECK_OK(pq_log_append(log, r, 0, &first));   /* nothing to do */
    CHECK_EQ(end_of(log), 15);
    verify_range(log, 0, 10, 64);
    pq_log_close(log);
}

static void test_reopen_continues_offsets(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    pq_log_recovery_t info;
    pq_log_recovery_info(log, &info);
    CHECK_EQ(info.sole_opener, 1);
    CHECK_EQ(append_n(log, 1000, 20), 0);
    pq_record_t last;
    pq_segment_t *seg = NULL;
    REQUIRE(pq_log_read_many(log, 999, &last, 1, &seg) == 1);
    int64_t last_ts = last.timestamp;
    pq_segment_decref(seg);
    pq_log_close(log);

    for (int round = 0; round < 3; round++) {
        log = open_log(&c);
        REQUIRE(log);
        pq_log_recovery_info(log, &info);
        CHECK_EQ(info.sole_opener, 1);
        CHECK_EQ(info.trusted, 1);        /* same boot, clean close: O(1) */
        CHECK_EQ(info.scanned_bytes, 0);
        CHECK_EQ(start_of(log), 0);
        CHECK_EQ(end_of(log), 1000 + 100 * (uint64_t)round);
        CHECK_EQ(append_n(log, 100, 7), 0);
        verify_range(log, 0, end_of(log), 64);
        seg = NULL;
        REQUIRE(pq_log_read_many(log, 1000 + 100 * (uint64_t)round, &last, 1, &seg) == 1);
        CHECK(last.timestamp >= last_ts);
        pq_segment_decref(seg);
        pq_log_close(log);
    }
}

/* ---- recovery ---- */

static void torn_tail_case(int drop_state, int frames)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 700, 30) == 0);   /* several segments */
    uint64_t base[4];
    uint32_t pos[4], len[4];
    for (int k = 0; k < frames; k++)
        REQUIRE(locate(log, 699 - (uint64_t)k, &base[k], &pos[k], &len[k]) == 0);
    pq_log_close(log);

    /* The last `frames` records were being written when the process died. */
    for (int k = 0; k < frames; k++)
        garble_file(segment_file(base[k]), pos[k] + len[k] / 2, 8);
    if (drop_state)
        REQUIRE(unlink(pqt_path("p/state")) == 0);

    log = open_log(&c);
    REQUIRE(log);
    pq_log_recovery_t info;
    pq_log_recovery_info(log, &info);
    CHECK_EQ(info.sole_opener, 1);
    CHECK_EQ(info.trusted, 0);
    CHECK(info.scanned_bytes > 0);
    if (!drop_state)
        CHECK(info.truncated_bytes > 0);
    CHECK_EQ(end_of(log), 700 - (uint64_t)frames);
    verify_range(log, 0, 700 - (uint64_t)frames, 100);
    pq_record_t r;
    pq_segment_t *seg = NULL;
    CHECK_RC(pq_log_read_many(log, 700 - (uint64_t)frames, &r, 1, &seg), 0);
    CHECK_EQ(append_n(log, 50, 5), 0);   /* the torn frames are overwritten */
    CHECK_EQ(end_of(log), 750 - (uint64_t)frames);
    verify_range(log, 0, 750 - (uint64_t)frames, 100);
    pq_log_close(log);

    log = open_log(&c);
    REQUIRE(log);
    pq_log_recovery_info(log, &info);
    CHECK_EQ(info.trusted, 1);
    CHECK_EQ(end_of(log), 750 - (uint64_t)frames);
    verify_range(log, 0, 750 - (uint64_t)frames, 100);
    pq_log_close(log);
}

static void test_recovery_truncates_torn_tail(void) { torn_tail_case(0, 1); }
static void test_recovery_truncates_two_torn_frames(void) { torn_tail_case(0, 2); }
static void test_recovery_truncates_torn_tail_without_state(void) { torn_tail_case(1, 1); }

static void test_recovery_rebuilds_lost_or_damaged_state(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 500, 25) == 0);
    pq_log_close(log);

    for (int round = 0; round < 3; round++) {
        const char *st = pqt_path("p/state");
        if (round == 0) {
            REQUIRE(unlink(st) == 0);                /* lost */
        } else if (round == 1) {
            REQUIRE(truncate(st, 100) == 0);         /* cut short */
        } else {
            unsigned char junk[4096];                /* overwritten */
            pqt_fill(junk, sizeof junk, 99);
            int fd = open(st, O_WRONLY);
            REQUIRE(fd >= 0);
            CHECK_EQ(pwrite(fd, junk, sizeof junk, 0), (long)sizeof junk);
            close(fd);
        }
        log = open_log(&c);
        REQUIRE(log);
        pq_log_recovery_t info;
        pq_log_recovery_info(log, &info);
        CHECK_EQ(info.trusted, 0);
        CHECK(info.scanned_bytes > 0 && info.scanned_bytes < S);   /* the tail segment only */
        CHECK_EQ(start_of(log), 0);
        CHECK_EQ(end_of(log), 500 + 10 * (uint64_t)round);
        verify_range(log, 0, end_of(log), 100);
        CHECK_EQ(append_n(log, 10, 3), 0);
        pq_log_close(log);
    }
}

static void interrupted_roll_case(int drop_state, int empty_file)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 300, 10) == 0);
    uint64_t end = end_of(log);
    pq_log_close(log);

    /* A roll that died between creating the next segment and writing its header. */
    const char *path = segment_file(end);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    if (!empty_file)
        CHECK(ftruncate(fd, (off_t)S) == 0);
    close(fd);
    if (drop_state)
        REQUIRE(unlink(pqt_path("p/state")) == 0);

    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), end);
    verify_range(log, 0, end, 100);
    CHECK_EQ(append_n(log, 300, 10), 0);
    verify_range(log, 0, end + 300, 100);
    pq_log_close(log);
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), end + 300);
    pq_log_close(log);
}

static void test_interrupted_roll_is_removed(void) { interrupted_roll_case(0, 0); }
static void test_interrupted_roll_is_removed_without_state(void) { interrupted_roll_case(1, 0); }
static void test_interrupted_roll_empty_file(void) { interrupted_roll_case(0, 1); }

static void test_corrupt_sealed_segment_fails_reads_only(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 800, 40) == 0);
    uint64_t base;
    uint32_t pos, len;
    REQUIRE(locate(log, 100, &base, &pos, &len) == 0);
    REQUIRE(base == 0);
    pq_log_close(log);
    garble_file(segment_file(0), pos + 30, 4);

    log = open_log(&c);   /* sealed segments are not scanned on open */
    REQUIRE(log);
    CHECK_EQ(end_of(log), 800);
    pq_record_t recs[256];
    pq_segment_t *seg = NULL;
    pq_error_clear();
    CHECK_RC(pq_log_read_many(log, 100, recs, 10, &seg), -PQ_ECORRUPT);
    CHECK(seg == NULL);
    CHECK_CONTAINS(pq_error_message(), segment_file(0));
    char want[32];
    snprintf(want, sizeof want, "byte %u", pos);
    CHECK_CONTAINS(pq_error_message(), want);
    /* A read running into the bad record returns the intact ones before it
     * (log.h); the next read reports the damage.  Around it, all is readable. */
    seg = NULL;
    CHECK_RC(pq_log_read_many(log, 95, recs, 10, &seg), 5);
    if (seg) {
        CHECK_EQ(recs[4].offset, 99);
        CHECK(value_ok(&recs[4], 99));
        pq_segment_decref(seg);
        seg = NULL;
    }
    CHECK_RC(pq_log_read_many(log, 100, recs, 10, &seg), -PQ_ECORRUPT);
    CHECK(seg == NULL);
    verify_range(log, 0, 100, 100);
    verify_range(log, 101, 800, 100);
    /* Nothing was deleted or cut, and appends go on. */
    CHECK_EQ(start_of(log), 0);
    CHECK_EQ(append_n(log, 20, 5), 0);
    CHECK_EQ(end_of(log), 820);
    pq_log_close(log);
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), 820);
    CHECK_RC(pq_log_read_many(log, 100, recs, 1, &seg), -PQ_ECORRUPT);
    pq_log_close(log);
}

static void test_reopen_with_other_segment_size_is_config_error(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 400, 10) == 0);
    pq_log_config_t c2 = c;
    c2.segment_bytes = 2 * S;
    pq_log_t *other = NULL;
    /* While open (another handle validates against the live state)... */
    CHECK_RC(pq_log_open(part(), &c2, 1, &other), -PQ_ECONFIG);
    CHECK(other == NULL);
    pq_log_close(log);
    /* ...and as the sole opener (log.h: -PQ_ECONFIG if the stored segment size differs). */
    other = NULL;
    CHECK_RC(pq_log_open(part(), &c2, 1, &other), -PQ_ECONFIG);
    CHECK(other == NULL);
    if (other)
        pq_log_close(other);
    /* The partition is untouched by the refused opens. */
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), 400);
    verify_range(log, 0, 400, 100);
    pq_log_close(log);
}

/* ---- retention ---- */

static void test_retention_by_bytes(void)
{
    pq_log_config_t c = config();
    c.retention_bytes = 2 * S;
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 3000, 40) == 0);
    uint64_t nseg, bytes, bases[64];
    pq_log_disk_usage(log, &nseg, &bytes);
    CHECK_EQ(nseg, 2);                 /* more than one segment over the limit is dropped */
    size_t nfiles = segment_files(bases, 64);
    CHECK_EQ(nfiles, 2);
    uint64_t start = start_of(log);
    CHECK(start > 0);
    CHECK_EQ(start, bases[0]);
    CHECK_EQ(end_of(log), 3000);
    verify_range(log, start, 3000, 100);
    pq_record_t r;
    pq_segment_t *seg = NULL;
    CHECK_RC(pq_log_read_many(log, start - 1, &r, 1, &seg), -PQ_ERANGE);
    CHECK_RC(pq_log_read_many(log, 0, &r, 1, &seg), -PQ_ERANGE);
    CHECK_RC(pq_log_enforce_retention(log, pq_now_ns()), 0);   /* nothing more to drop */
    uint64_t off;
    CHECK_OK(pq_log_offset_for_time(log, 0, &off));
    CHECK_EQ(off, start);
    pq_log_close(log);

    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(start_of(log), start);
    CHECK_EQ(end_of(log), 3000);
    pq_log_close(log);
}

static void test_retention_by_age(void)
{
    pq_log_config_t c = config();
    c.retention_ns = 500 * 1000000ll;
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    uint64_t bases[64], nseg, bytes;
    for (int k = 0; segment_files(bases, 64) < 3; k++) {   /* two sealed segments */
        REQUIRE(k < 100);
        REQUIRE(append_n(log, 50, 10) == 0);
    }
    uint64_t old_end = end_of(log);
    CHECK_RC(pq_log_enforce_retention(log, pq_now_ns()), 0);   /* all young */
    pqt_sleep_ms(700);
    /* New records; the first roll drops the segments whose last record is old. */
    for (int k = 0; segment_files(bases, 64) < 3 || bases[0] == 0; k++) {
        REQUIRE(k < 100);
        REQUIRE(append_n(log, 50, 10) == 0);
    }
    CHECK(start_of(log) > 0);
    CHECK(start_of(log) <= old_end);
    CHECK_EQ(start_of(log), bases[0]);
    verify_range(log, start_of(log), end_of(log), 100);

    /* Much later, everything but the tail segment goes. */
    int64_t later = pq_now_ns() + 10 * 1000000000ll;
    size_t before = segment_files(bases, 64);
    CHECK_RC(pq_log_enforce_retention(log, later), (int)before - 1);
    pq_log_disk_usage(log, &nseg, &bytes);
    CHECK_EQ(nseg, 1);
    CHECK_EQ(segment_files(bases, 64), 1);
    CHECK_EQ(start_of(log), bases[0]);
    verify_range(log, start_of(log), end_of(log), 100);
    CHECK_EQ(append_n(log, 10, 3), 0);
    pq_log_close(log);
}

/* ---- time ---- */

static void test_offset_for_time(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    uint64_t off = 99;
    CHECK_OK(pq_log_offset_for_time(log, 0, &off));   /* empty log: the end */
    CHECK_EQ(off, 0);

    enum { N = 1200 };
    static int64_t ts[N];
    static batch_t b;
    uint64_t n = 0;
    while (n < N) {
        size_t m = N - n < 60 ? N - n : 60;
        fill_batch(&b, m, n);
        uint64_t first;
        REQUIRE(pq_log_append(log, b.recs, m, &first) == 0);
        for (size_t i = 0; i < m; i++)
            ts[n + i] = b.recs[i].timestamp;
        n += m;
        pqt_sleep_ms(2);   /* distinct times between batches */
    }
    uint64_t nseg, bytes;
    pq_log_disk_usage(log, &nseg, &bytes);
    CHECK(nseg >= 3);
    int bad = 0;
    for (uint64_t i = 0; i < N; i += 7) {
        int64_t probes[3] = {ts[i], ts[i] + 1, ts[i] - 1};
        for (int k = 0; k < 3; k++) {
            uint64_t want = 0;
            while (want < N && ts[want] < probes[k])
                want++;
            if (pq_log_offset_for_time(log, probes[k], &off) != 0 || off != want)
                bad++;
        }
    }
    CHECK_EQ(bad, 0);
    CHECK_OK(pq_log_offset_for_time(log, INT64_MIN, &off));
    CHECK_EQ(off, 0);
    CHECK_OK(pq_log_offset_for_time(log, ts[N - 1] + 1, &off));
    CHECK_EQ(off, N);
    CHECK_OK(pq_log_offset_for_time(log, INT64_MAX, &off));
    CHECK_EQ(off, N);
    pq_log_close(log);
}

/* ---- wait / wake ---- */

struct waiter {
    pq_log_t *log;
    uint64_t offset;
    int64_t timeout_ns;
    int rc;
    int64_t elapsed_ms;
};

static void *wait_thread(void *arg)
{
    struct waiter *w = arg;
    int64_t t0 = pqt_mono_ms();
    w->rc = pq_log_wait(w->log, w->offset, w->timeout_ns);
    w->elapsed_ms = pqt_mono_ms() - t0;
    return NULL;
}

static void test_wait_wake_between_threads(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 5, 2) == 0);

    /* Already there: no sleep. */
    int64_t t0 = pqt_mono_ms();
    CHECK_RC(pq_log_wait(log, 4, 5000000000ll), 1);
    CHECK_RC(pq_log_wait(log, 0, 0), 1);
    CHECK(pqt_mono_ms() - t0 < 1000);

    /* Nothing comes: a timeout, not an error. */
    t0 = pqt_mono_ms();
    CHECK_RC(pq_log_wait(log, 5, 150 * 1000000ll), 0);
    int64_t el = pqt_mono_ms() - t0;
    CHECK(el >= 140 && el < 5000);
    CHECK_RC(pq_log_wait(log, 5, 0), 0);

    /* An append wakes a sleeper long before its timeout (bounded or not). */
    int64_t timeouts[2] = {10 * 1000000000ll, -1};
    for (int k = 0; k < 2; k++) {
        struct waiter w = {log, end_of(log), timeouts[k], -99, 0};
        pthread_t th;
        REQUIRE(pthread_create(&th, NULL, wait_thread, &w) == 0);
        pqt_sleep_ms(100);
        CHECK_EQ(append_n(log, 1, 1), 0);
        pthread_join(th, NULL);
        CHECK_EQ(w.rc, 1);
        CHECK(w.elapsed_ms < 5000);   /* woken, not timed out */
    }

    /* wake_all interrupts a wait without a record: 0, early. */
    struct waiter w = {log, end_of(log) + 10, 10 * 1000000000ll, -99, 0};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, wait_thread, &w) == 0);
    pqt_sleep_ms(100);
    pq_log_wake_all(log);
    pthread_join(th, NULL);
    CHECK_EQ(w.rc, 0);
    CHECK(w.elapsed_ms < 5000);

    /* Several sleepers, one append. */
    struct waiter ws[4];
    pthread_t ths[4];
    for (int i = 0; i < 4; i++) {
        ws[i] = (struct waiter){log, end_of(log), 10 * 1000000000ll, -99, 0};
        REQUIRE(pthread_create(&ths[i], NULL, wait_thread, &ws[i]) == 0);
    }
    pqt_sleep_ms(100);
    CHECK_EQ(append_n(log, 1, 1), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(ths[i], NULL);
        CHECK_EQ(ws[i].rc, 1);
        CHECK(ws[i].elapsed_ms < 5000);
    }
    pq_log_close(log);
}

/* Read one byte from fd within timeout_ms; 1 if read. */
static int read_byte(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    char ch;
    if (poll(&p, 1, timeout_ms) != 1)
        return 0;
    return read(fd, &ch, 1) == 1;
}

static int wait_child(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_wait_wake_between_processes(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 3, 1) == 0);

    /* The child waits, the parent appends. */
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    uint64_t target = end_of(log);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        pq_log_t *mine = NULL;
        if (pq_log_open(part(), &c, 0, &mine) != 0)
            _exit(3);
        pq_log_recovery_t info;
        pq_log_recovery_info(mine, &info);
        if (info.sole_opener)
            _exit(4);
        int64_t t0 = pqt_mono_ms();
        if (write(ready[1], "R", 1) != 1)
            _exit(5);
        int rc = pq_log_wait(mine, target, 10 * 1000000000ll);
        int64_t el = pqt_mono_ms() - t0;
        if (rc != 1)
            _exit(1);
        if (el >= 5000)
            _exit(2);   /* woke by timeout, not by the append */
        pq_record_t r;
        pq_segment_t *seg = NULL;
        if (pq_log_read_many(mine, target, &r, 1, &seg) != 1 || !value_ok(&r, target))
            _exit(6);
        _exit(0);
    }
    CHECK(read_byte(ready[0], 10000));
    pqt_sleep_ms(150);
    CHECK_EQ(append_n(log, 1, 1), 0);
    CHECK_EQ(wait_child(pid), 0);

    /* The parent waits, the child appends. */
    int go[2];
    REQUIRE(pipe(go) == 0);
    target = end_of(log);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        pq_log_t *mine = NULL;
        if (pq_log_open(part(), &c, 0, &mine) != 0)
            _exit(3);
        if (!read_byte(go[0], 10000))
            _exit(4);
        pqt_sleep_ms(150);
        pqt_failures = 0;
        if (append_n(mine, 1, 1) != 0)
            _exit(1);
        _exit(0);
    }
    CHECK_EQ(write(go[1], "G", 1), 1);
    int64_t t0 = pqt_mono_ms();
    CHECK_RC(pq_log_wait(log, target, 10 * 1000000000ll), 1);
    CHECK(pqt_mono_ms() - t0 < 5000);
    CHECK_EQ(wait_child(pid), 0);
    verify_range(log, 0, end_of(log), 10);
    close(ready[0]); close(ready[1]); close(go[0]); close(go[1]);
    pq_log_close(log);
}

/* ---- durability ---- */

struct syncer {
    pq_log_t *log;
    int id;
    int bad;
};

static void *sync_thread(void *arg)
{
    struct syncer *s = arg;
    unsigned char v[64];
    for (int i = 0; i < 100; i++) {
        pq_record_t r;
        memset(&r, 0, sizeof r);
        r.key = NULL;
        r.key_len = PQ_NO_KEY;
        r.value = v;
        r.value_len = 8 + (uint32_t)(i % 50);
        memset(v, s->id, sizeof v);
        uint64_t first;
        if (pq_log_append(s->log, &r, 1, &first) != 0) {
            s->bad++;
            continue;
        }
        if (pq_log_sync(s->log, first + 1) != 0 || pq_log_synced(s->log) < first + 1)
            s->bad++;
    }
    return NULL;
}

static void test_sync(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    CHECK_OK(pq_log_sync(log, 0));
    CHECK_OK(pq_log_sync(log, 100));   /* clamped to the end */
    REQUIRE(append_n(log, 1000, 30) == 0);   /* several segments */
    CHECK(pq_log_synced(log) <= 1000);
    CHECK_OK(pq_log_sync(log, 1000));
    CHECK_EQ(pq_log_synced(log), 1000);
    CHECK_OK(pq_log_sync(log, 500));   /* already covered */
    CHECK_OK(pq_log_sync(log, UINT64_MAX));
    CHECK_EQ(pq_log_synced(log), 1000);

    /* Concurrent appenders syncing: every sync returns covered. */
    struct syncer s[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        s[i] = (struct syncer){log, i + 1, 0};
        REQUIRE(pthread_create(&th[i], NULL, sync_thread, &s[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(s[i].bad, 0);
    }
    CHECK_EQ(end_of(log), 1400);
    CHECK_EQ(pq_log_synced(log), 1400);
    pq_log_close(log);
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), 1400);
    pq_log_close(log);
}

/* ---- concurrent appenders ---- */

/* Values tagged (writer << 32 | seq); used by threads and processes. */
static void tagged_record(pq_record_t *r, unsigned char *buf, uint64_t tag)
{
    memset(r, 0, sizeof *r);
    r->key = NULL;
    r->key_len = PQ_NO_KEY;
    r->value_len = vlen_for(tag);
    make_value(buf, tag, r->value_len);
    r->value = buf;
}

static int append_tagged(pq_log_t *log, int writer, int count, int batch)
{
    pq_record_t recs[8];
    static _Thread_local unsigned char bufs[8][8 + VMAX];
    int bad = 0;
    for (int seq = 0; seq < count;) {
        int m = 1 + seq % batch;
        if (m > count - seq)
            m = count - seq;
        for (int i = 0; i < m; i++)
            tagged_record(&recs[i], bufs[i], ((uint64_t)writer << 32) | (uint64_t)(seq + i));
        uint64_t first;
        if (pq_log_append(log, recs, (size_t)m, &first) != 0)
            bad++;
        seq += m;
    }
    return bad;
}

/* Every (writer, seq) exactly once, each writer's in order, offsets dense. */
static void verify_tagged(pq_log_t *log, int writers, int count)
{
    uint64_t end = end_of(log);
    CHECK_EQ(end, (uint64_t)writers * (uint64_t)count);
    int *next = calloc((size_t)writers, sizeof *next);
    static pq_record_t recs[128];
    int bad = 0;
    for (uint64_t off = 0; off < end;) {
        pq_segment_t *seg = NULL;
        int n = pq_log_read_many(log, off, recs, 128, &seg);
        if (n <= 0) {
            PQT_FAIL("read_many(%llu) = %d (%s)", (unsigned long long)off, n, pq_error_message());
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag;
            memcpy(&tag, recs[i].value, 8);
            int w = (int)(tag >> 32), seq = (int)(tag & 0xffffffffu);
            unsigned char buf[8 + VMAX];
            make_value(buf, tag, vlen_for(tag));
            if (w < 0 || w >= writers || seq != next[w] || recs[i].value_len != vlen_for(tag) ||
                memcmp(buf, recs[i].value, recs[i].value_len) != 0 || recs[i].offset != off + (uint64_t)i) {
                bad++;
                continue;
            }
            next[w]++;
        }
        pq_segment_decref(seg);
        off += (uint64_t)n;
    }
    for (int w = 0; w < writers; w++)
        CHECK_EQ(next[w], count);
    CHECK_EQ(bad, 0);
    free(next);
}

struct appender {
    pq_log_t *log;
    int writer;
    int bad;
};

static void *append_thread(void *arg)
{
    struct appender *a = arg;
    a->bad = append_tagged(a->log, a->writer, 600, 5);
    return NULL;
}

static void test_concurrent_appends_threads(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    struct appender a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct appender){log, i, 0};
        REQUIRE(pthread_create(&th[i], NULL, append_thread, &a[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(a[i].bad, 0);
    }
    verify_tagged(log, 4, 600);
    pq_log_close(log);
}

static void test_concurrent_appends_processes(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            pq_log_t *mine = NULL;
            if (pq_log_open(part(), &c, 0, &mine) != 0)
                _exit(3);
            _exit(append_tagged(mine, i + 1, 500, 4) ? 1 : 0);
        }
    }
    CHECK_EQ(append_tagged(log, 0, 500, 3), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(wait_child(pids[i]), 0);
    verify_tagged(log, 4, 500);
    pq_log_close(log);
    log = open_log(&c);
    REQUIRE(log);
    verify_tagged(log, 4, 500);
    pq_log_close(log);
}

/* ---- a process killed while holding the append lock ---- */

static int hold_fd = -1;

/* The child's append faults while copying the value (the page after it is
 * inaccessible): the append lock is held.  Tell the parent, then wait for
 * SIGKILL. */
static void hold_handler(int sig)
{
    (void)sig;
    if (write(hold_fd, "H", 1) != 1)
        _exit(7);
    for (;;)
        pause();
}

/* Fork a process that dies holding the append lock: it opens the partition,
 * appends `good` records of 100 bytes, then one of bad_len bytes whose value
 * runs into an inaccessible page bad_at bytes after it starts, and faults
 * mid-copy.  Returns its pid once it holds the lock (REQUIRE), with *fd the
 * read end of its pipe (to close); the caller SIGKILLs it. */
static pid_t fork_lock_holder(const pq_log_config_t *c, int good, size_t bad_at, uint32_t bad_len, int *fd)
{
    int ch[2];
    REQUIRE(pipe(ch) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        pq_log_t *mine = NULL;
        if (pq_log_open(part(), c, 0, &mine) != 0)
            _exit(3);
        long page = sysconf(_SC_PAGESIZE);
        unsigned char *m = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED || mprotect(m + page, (size_t)page, PROT_NONE) != 0)
            _exit(4);
        memset(m, 0x77, (size_t)page);
        hold_fd = ch[1];
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = hold_handler;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        pq_record_t r[8];
        if (good > 7)
            _exit(6);
        memset(r, 0, sizeof r);
        for (int i = 0; i <= good; i++) {
            r[i].key_len = PQ_NO_KEY;
            r[i].value = m;
            r[i].value_len = 100;
        }
        r[good].value = m + page - bad_at;
        r[good].value_len = bad_len;
        uint64_t first;
        pq_log_append(mine, r, (size_t)good + 1, &first);
        _exit(5);   /* not reached */
    }
    close(ch[1]);
    *fd = ch[0];
    return pid;
}

static void test_killed_while_holding_append_lock(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 250, 10) == 0);   /* a roll behind us, a partly full tail */
    uint64_t end = end_of(log);

    for (int round = 0; round < 2; round++) {
        /* Two good records, then one whose value runs into the bad page:
         * the fault comes after the first frames are written. */
        int fd;
        pid_t pid = fork_lock_holder(&c, 2, 200, 1000, &fd);
        int held = read_byte(fd, 10000);
        CHECK(held);
        kill(pid, SIGKILL);
        int st = wait_child(pid);
        CHECK_EQ(st, 128 + SIGKILL);
        close(fd);
        if (!held)
            break;

        /* Nothing of the dead append is visible; the next appender repairs. */
        CHECK_EQ(end_of(log), end);
        pq_log_recovery_t before, after;
        pq_log_recovery_info(log, &before);
        CHECK_EQ(append_n(log, 5, 2), 0);
        pq_log_recovery_info(log, &after);
        CHECK_EQ(after.lock_repaired, before.lock_repaired + 1);
        end += 5;
        CHECK_EQ(end_of(log), end);
        verify_range(log, 0, end, 100);
    }
    pq_log_close(log);

    /* And the partition reopens to the same records, trusted or scanned. */
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), end);
    verify_range(log, 0, end, 100);
    pq_log_close(log);
}

static void test_appenders_killed_at_random_points(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    int repaired = 0;
    for (int round = 0; round < 10; round++) {
        pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            pq_log_t *mine = NULL;
            if (pq_log_open(part(), &c, 0, &mine) != 0)
                _exit(3);
            static pq_record_t r[64];
            static unsigned char v[1000];
            for (int i = 0; i < 64; i++) {
                r[i].key = NULL;
                r[i].key_len = PQ_NO_KEY;
                r[i].value = v;
                r[i].value_len = 200 + (uint32_t)(i * 13 % 700);
            }
            for (uint64_t k = 0;; k++) {
                uint64_t first;
                memset(v, (int)(k & 0xff), sizeof v);
                pq_log_append(mine, r, 64, &first);
            }
        }
        pqt_sleep_ms(3 + round * 4);
        kill(pid, SIGKILL);
        CHECK_EQ(wait_child(pid), 128 + SIGKILL);

        uint64_t end = end_of(log);
        pq_log_recovery_t before, after;
        pq_log_recovery_info(log, &before);
        pq_record_t r;
        unsigned char buf[8 + VMAX];
        tagged_record(&r, buf, end);
        uint64_t first = UINT64_MAX;
        CHECK_OK(pq_log_append(log, &r, 1, &first));
        CHECK_EQ(first, end);   /* dense: nothing lost, nothing skipped */
        pq_log_recovery_info(log, &after);
        repaired += after.lock_repaired - before.lock_repaired;

        /* Every record below the end reads back whole. */
        static pq_record_t recs[256];
        for (uint64_t off = 0; off < end + 1;) {
            pq_segment_t *seg = NULL;
            int n = pq_log_read_many(log, off, recs, 256, &seg);
            if (n <= 0) {
                PQT_FAIL("round %d: read_many(%llu) = %d (%s)", round, (unsigned long long)off, n,
                         pq_error_message());
                break;
            }
            for (int i = 0; i < n; i++)
                if (recs[i].offset != off + (uint64_t)i)
                    PQT_FAIL("offset %llu read as %llu", (unsigned long long)(off + (uint64_t)i),
                             (unsigned long long)recs[i].offset);
            pq_segment_decref(seg);
            off += (uint64_t)n;
        }
        pq_record_t got;
        pq_segment_t *seg = NULL;
        if (pq_log_read_many(log, end, &got, 1, &seg) == 1) {
            CHECK(got.value_len == r.value_len && memcmp(got.value, buf, r.value_len) == 0);
            pq_segment_decref(seg);
        }
    }
    printf("  note: %d of 10 kills landed while the append lock was held\n", repaired);
    uint64_t end = end_of(log);
    pq_log_close(log);
    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), end);
    pq_log_close(log);
}

/* A writer killed in the middle of a roll: it held the append lock, had
 * created the next segment file (named by an offset past the published end)
 * and had published nothing in it.  That file is garbage like every byte past
 * the end; the appenders after it must keep offsets dense and readable. */
static void killed_mid_roll_case(int zero_length)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 250, 10) == 0);
    uint64_t end = end_of(log);

    int fd;
    pid_t pid = fork_lock_holder(&c, 0, 64, 500, &fd);
    REQUIRE(read_byte(fd, 10000));
    close(fd);
    /* What the dying writer had got to: the next segment's file. */
    uint64_t stale = end + 3;
    if (zero_length) {
        int fd = open(segment_file(stale), O_CREAT | O_WRONLY, 0600);
        REQUIRE(fd >= 0);
        close(fd);
    } else {
        pq_segment_t *seg = NULL;
        REQUIRE(pq_segment_create(part(), stale, S, pq_now_ns(), &seg) == 0);
        pq_segment_decref(seg);
    }
    kill(pid, SIGKILL);
    CHECK_EQ(wait_child(pid), 128 + SIGKILL);

    CHECK_EQ(end_of(log), end);
    CHECK_EQ(append_n(log, 600, 10), 0);   /* past the stale base, across rolls */
    CHECK_EQ(end_of(log), end + 600);
    verify_range(log, 0, end + 600, 100);
    pq_log_close(log);

    log = open_log(&c);
    REQUIRE(log);
    CHECK_EQ(end_of(log), end + 600);
    verify_range(log, 0, end + 600, 100);
    CHECK_EQ(append_n(log, 10, 3), 0);
    pq_log_close(log);
}

static void test_killed_mid_roll_empty_file(void) { killed_mid_roll_case(1); }
static void test_killed_mid_roll_created_segment(void) { killed_mid_roll_case(0); }

/* The same with two records per segment, so that every roll point is known,
 * and a second handle that listed the directory while the dead writer's
 * segment was there.  Segments: [0: 0 1] [2: 2 _]; the dead writer (small
 * records) had filled segment 2 and created segment 5.  The repairer appends
 * 3 (segment 2), 4 (roll: segment 4) and 5 (segment 4): offset 5 now lives
 * below the stale segment's base. */
static void test_killed_mid_roll_other_reader(void)
{
    pq_log_config_t c = config();
    c.max_message_bytes = 40000;
    static unsigned char big[30000];
    pq_record_t r[3];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 3; i++) {
        r[i].key_len = PQ_NO_KEY;
        r[i].value = big;
        r[i].value_len = sizeof big;
    }
    pq_log_t *a = open_log(&c);
    REQUIRE(a);
    uint64_t first;
    pqt_fill(big, sizeof big, 1);
    REQUIRE(pq_log_append(a, r, 3, &first) == 0);
    pq_log_t *b = NULL;
    REQUIRE(pq_log_open(part(), &c, 0, &b) == 0);

    int fd;
    pid_t pid = fork_lock_holder(&c, 0, 64, 500, &fd);
    REQUIRE(read_byte(fd, 10000));
    close(fd);
    pq_segment_t *stale = NULL;
    REQUIRE(pq_segment_create(part(), 5, S, pq_now_ns(), &stale) == 0);
    pq_segment_decref(stale);
    uint64_t nseg, bytes;
    pq_log_disk_usage(b, &nseg, &bytes);   /* b lists the directory now */
    CHECK_EQ(nseg, 3);
    kill(pid, SIGKILL);
    CHECK_EQ(wait_child(pid), 128 + SIGKILL);

    pqt_fill(big, sizeof big, 2);
    CHECK_OK(pq_log_append(a, r, 3, &first));
    CHECK_EQ(first, 3);
    CHECK_EQ(end_of(a), 6);
    CHECK_EQ(end_of(b), 6);
    pq_log_t *handles[2] = {a, b};
    for (int h = 0; h < 2; h++)
        for (uint64_t off = 0; off < 6; off++) {
            pq_record_t got;
            pq_segment_t *seg = NULL;
            pq_error_clear();
            int n = pq_log_read_many(handles[h], off, &got, 1, &seg);
            if (n != 1) {
                PQT_FAIL("handle %c: read_many(%llu) = %d (%s)", 'a' + h, (unsigned long long)off, n,
                         pq_error_message());
                continue;
            }
            pqt_fill(big, sizeof big, off < 3 ? 1 : 2);
            CHECK(got.value_len == sizeof big && memcmp(got.value, big, sizeof big) == 0);
            pq_segment_decref(seg);
        }
    pq_log_close(a);
    pq_log_close(b);
    a = open_log(&c);
    REQUIRE(a);
    CHECK_EQ(end_of(a), 6);
    pq_record_t got;
    pq_segment_t *seg = NULL;
    CHECK_EQ(pq_log_read_many(a, 5, &got, 1, &seg), 1);
    if (seg)
        pq_segment_decref(seg);
    pq_log_close(a);
}

/* ---- more segments than a handle keeps mapped ---- */

static void test_read_more_segments_than_stay_mapped(void)
{
    pq_log_config_t c = config();
    pq_log_t *log = open_log(&c);
    REQUIRE(log);
    REQUIRE(append_n(log, 5000, 50) == 0);
    uint64_t nseg, bytes;
    pq_log_disk_usage(log, &nseg, &bytes);
    CHECK(nseg > 16);
    pq_log_close(log);

    /* A fresh handle maps segments as reads reach them, and unmaps the least
     * recently used past its bound. */
    log = open_log(&c);
    REQUIRE(log);
    verify_range(log, 0, 5000, 100);
    for (uint64_t k = 0; k < 200; k++) {   /* jump around */
        uint64_t off = (k * 2654435761u) % 5000;
        verify_range(log, off, off + 1, 1);
    }
    uint64_t t;
    CHECK_OK(pq_log_offset_for_time(log, 0, &t));
    CHECK_EQ(t, 0);
    pq_log_close(log);
}

/* ---- several handles ---- */

static void test_two_handles_in_one_process(void)
{
    pq_log_config_t c = config();
    c.retention_bytes = 2 * S;
    pq_log_t *a = open_log(&c);
    REQUIRE(a);
    pq_log_t *b = NULL;
    CHECK_OK(pq_log_open(part(), &c, 1, &b));
    REQUIRE(b);
    pq_log_recovery_t info;
    pq_log_recovery_info(b, &info);
    CHECK_EQ(info.sole_opener, 0);

    CHECK_EQ(append_n(a, 100, 10), 0);
    CHECK_EQ(end_of(b), 100);
    verify_range(b, 0, 100, 64);

    /* b holds records of segment 0 while a's retention deletes the file. */
    pq_record_t held[16];
    pq_segment_t *seg = NULL;
    REQUIRE(pq_log_read_many(b, 0, held, 16, &seg) == 16);
    for (int k = 0; start_of(a) == 0; k++) {
        REQUIRE(k < 100);
        REQUIRE(append_n(a, 100, 10) == 0);
    }
    uint64_t bases[16];
    segment_files(bases, 16);
    CHECK(bases[0] > 0);
    for (int i = 0; i < 16; i++)
        CHECK(value_ok(&held[i], (uint64_t)i));   /* still mapped for b */
    pq_segment_decref(seg);
    pq_record_t r;
    CHECK_RC(pq_log_read_many(b, 0, &r, 1, &seg), -PQ_ERANGE);
    verify_range(b, start_of(b), end_of(b), 100);
    CHECK_EQ(append_n(b, 100, 10), 0);
    verify_range(a, start_of(a), end_of(a), 100);
    pq_log_close(a);
    pq_log_close(b);
}

PQT_MAIN(PQT_CASE(test_open_rejects_bad_config),
         PQT_CASE(test_open_without_create),
         PQT_CASE(test_append_read_bounds_across_rolls),
         PQT_CASE(test_big_records_roll_one_per_segment),
         PQT_CASE(test_batch_append_is_all_or_nothing),
         PQT_CASE(test_reopen_continues_offsets),
         PQT_CASE(test_recovery_truncates_torn_tail),
         PQT_CASE(test_recovery_truncates_two_torn_frames),
         PQT_CASE(test_recovery_truncates_torn_tail_without_state),
         PQT_CASE(test_recovery_rebuilds_lost_or_damaged_state),
         PQT_CASE(test_interrupted_roll_is_removed),
         PQT_CASE(test_interrupted_roll_is_removed_without_state),
         PQT_CASE(test_interrupted_roll_empty_file),
         PQT_CASE(test_corrupt_sealed_segment_fails_reads_only),
         PQT_CASE(test_reopen_with_other_segment_size_is_config_error),
         PQT_CASE(test_retention_by_bytes),
         PQT_CASE(test_retention_by_age),
         PQT_CASE(test_offset_for_time),
         PQT_CASE(test_wait_wake_between_threads),
         PQT_CASE(test_wait_wake_between_processes),
         PQT_CASE(test_sync),
         PQT_CASE(test_concurrent_appends_threads),
         PQT_CASE(test_concurrent_appends_processes),
         PQT_CASE(test_killed_while_holding_append_lock),
         PQT_CASE(test_killed_mid_roll_empty_file),
         PQT_CASE(test_killed_mid_roll_created_segment),
         PQT_CASE(test_killed_mid_roll_other_reader),
         PQT_CASE(test_appenders_killed_at_random_points),
         PQT_CASE(test_read_more_segments_than_stay_mapped),
         PQT_CASE(test_two_handles_in_one_process))

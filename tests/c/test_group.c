/* test_group.c - consumer-group state: opening with config checks and probe;
 * membership; stream-mode claim/commit/release and fencing; queue-mode
 * lease/ack/nack/extend with lease ids, the committed offset and the window,
 * lease expiry, delays, ordered (per-key) leasing; reaping a member whose
 * process is gone; a process killed while holding a partition lock.
 *
 * Lease and delay times are passed explicitly (a fixed wall-clock base T0 plus
 * seconds), so nothing here sleeps or depends on the clock.
 */
#include "pq_test.h"

#include <poll.h>
#include <sys/mman.h>

#include "group.h"
#include "log.h"
#include "wake.h"

#define SEC 1000000000LL
static const int64_t T0 = 1900000000LL * SEC;   /* a wall-clock time in 2030 */

static pq_group_config_t qcfg(uint32_t partitions, uint32_t window)
{
    pq_group_config_t c = {PQ_GROUP_QUEUE, partitions, window};
    return c;
}

static const char *gpath(void) { return pqt_path("group"); }

static pq_group_t *open_group(pq_group_config_t c)
{
    pq_group_t *g = NULL;
    int rc = pq_group_open(gpath(), &c, &g);
    if (rc != 0)
        PQT_FAIL("pq_group_open: %d (%s)", rc, pq_error_message());
    return g;
}

static pq_log_t *open_log(void)
{
    pq_log_config_t c;
    memset(&c, 0, sizeof c);
    c.segment_bytes = PQ_SEGMENT_MIN_BYTES;
    c.max_message_bytes = 4096;
    pq_log_t *log = NULL;
    int rc = pq_log_open(pqt_path("p0"), &c, 1, &log);
    if (rc != 0)
        PQT_FAIL("pq_log_open: %d (%s)", rc, pq_error_message());
    return log;
}

/* Append one record; key NULL for none; deliver_at 0 for at once. */
static int append(pq_log_t *log, const char *key, int64_t deliver_at)
{
    pq_record_t r;
    memset(&r, 0, sizeof r);
    r.key = key;
    r.key_len = key ? (uint32_t)strlen(key) : PQ_NO_KEY;
    r.value = "v";
    r.value_len = 1;
    r.deliver_at = deliver_at;
    uint64_t first;
    int rc = pq_log_append(log, &r, 1, &first);
    if (rc != 0)
        PQT_FAIL("pq_log_append: %d (%s)", rc, pq_error_message());
    return rc;
}

static int append_n(pq_log_t *log, int n)
{
    for (int i = 0; i < n; i++)
        if (append(log, NULL, 0) != 0)
            return -1;
    return 0;
}

static pq_partition_info_t info(pq_group_t *g, uint32_t p)
{
    pq_partition_info_t pi;
    memset(&pi, 0xAB, sizeof pi);
    int rc = pq_group_partition_info(g, p, &pi);
    if (rc != 0)
        PQT_FAIL("pq_group_partition_info(%u): %d (%s)", p, rc, pq_error_message());
    return pi;
}

/* The counters agree with the window's span. */
static void check_counts(pq_group_t *g, uint32_t p)
{
    pq_partition_info_t pi = info(g, p);
    if (pi.committed == PQ_OFFSET_UNSET)
        return;
    CHECK_EQ((uint64_t)pi.ready + pi.leased + pi.delayed + pi.done, pi.next - pi.committed);
}

static int lease(pq_group_t *g, pq_log_t *log, int64_t now, int ordered, pq_lease_t *out,
                 size_t max, int64_t *due)
{
    int64_t d;
    return pq_group_lease(g, 0, log, 0, now, 10 * SEC, ordered, out, max, due ? due : &d);
}

/* ---- open ---- */

static void test_open_config_checks_and_probe(void)
{
    pq_group_t *g = open_group(qcfg(3, 8));
    REQUIRE(g);
    pq_group_config_t c = {0, 0, 0};
    CHECK_OK(pq_group_probe(gpath(), &c));
    CHECK_EQ(c.mode, PQ_GROUP_QUEUE);
    CHECK_EQ(c.partitions, 3);
    CHECK_EQ(c.window, 8);
    long long size = pqt_file_size(gpath());
    uint64_t committed;
    CHECK_OK(pq_group_init_offset(g, 1, 42, &committed));

    /* Mismatches while open (a second opener) and after close (a sole opener). */
    for (int round = 0; round < 2; round++) {
        pq_group_t *h = NULL;
        pq_group_config_t bad[3] = {{PQ_GROUP_STREAM, 3, 0}, {PQ_GROUP_QUEUE, 4, 8},
                                    {PQ_GROUP_QUEUE, 3, 16}};
        for (int i = 0; i < 3; i++) {
            CHECK_RC(pq_group_open(gpath(), &bad[i], &h), -PQ_ECONFIG);
            CHECK(h == NULL);
        }
        CHECK_EQ(pqt_file_size(gpath()), size);   /* never resized or wiped */
        if (round == 0) {
            pq_group_close(g);
            g = NULL;
        }
    }
    g = open_group(qcfg(3, 8));
    REQUIRE(g);
    CHECK_EQ(info(g, 1).committed, 42);
    CHECK_EQ(info(g, 0).committed, PQ_OFFSET_UNSET);
    CHECK_RC(pq_group_partition_info(g, 3, &(pq_partition_info_t){0}), -PQ_ERANGE);
    pq_group_close(g);

    /* Configurations refused before touching any file. */
    pq_group_t *h = NULL;
    pq_group_config_t invalid[4] = {{7, 1, 8}, {PQ_GROUP_QUEUE, 0, 8}, {PQ_GROUP_QUEUE, 1, 0},
                                    {PQ_GROUP_QUEUE, 1, PQ_GROUP_MAX_WINDOW + 1}};
    for (int i = 0; i < 4; i++)
        CHECK_RC(pq_group_open(pqt_path("other"), &invalid[i], &h), -PQ_ECONFIG);
    CHECK_EQ(pqt_file_size(pqt_path("other")), -1);

    /* Probe: a missing file, a file that is not a group. */
    CHECK_RC(pq_group_probe(pqt_path("missing"), &c), -ENOENT);
    FILE *f = fopen(pqt_path("junk"), "w");
    REQUIRE(f);
    for (int i = 0; i < 10000; i++)
        fputc('x', f);
    fclose(f);
    CHECK_RC(pq_group_probe(pqt_path("junk"), &c), -PQ_ECORRUPT);

    /* A stream group stores window 0. */
    pq_group_config_t s = {PQ_GROUP_STREAM, 2, 0};
    CHECK_OK(pq_group_open(pqt_path("stream"), &s, &h));
    pq_group_close(h);
    CHECK_OK(pq_group_probe(pqt_path("stream"), &c));
    CHECK_EQ(c.mode, PQ_GROUP_STREAM);
    CHECK_EQ(c.partitions, 2);
}

/* ---- membership ---- */

static void test_join_leave_members_generation(void)
{
    pq_group_t *g = open_group(qcfg(1, 4));
    REQUIRE(g);
    uint64_t gen0 = pq_group_generation(g);
    uint32_t slot[3];
    uint64_t id[3];
    for (int i = 0; i < 3; i++)
        CHECK_OK(pq_group_join(g, getpid(), 1000 + i, &slot[i], &id[i]));
    CHECK(id[0] < id[1] && id[1] < id[2]);
    CHECK(slot[0] != slot[1] && slot[1] != slot[2]);
    CHECK_EQ(pq_group_generation(g), gen0 + 3);

    pq_member_info_t m[PQ_GROUP_MAX_MEMBERS];
    CHECK_EQ(pq_group_members(g, m, PQ_GROUP_MAX_MEMBERS), 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(m[i].member_id, id[i]);
        CHECK_EQ(m[i].pid, getpid());
        CHECK_EQ(m[i].slot, slot[i]);
        CHECK_EQ(m[i].heartbeat_ns, 1000 + i);
    }

    CHECK_OK(pq_group_leave(g, id[1]));
    CHECK_EQ(pq_group_generation(g), gen0 + 4);
    CHECK_EQ(pq_group_members(g, m, PQ_GROUP_MAX_MEMBERS), 2);
    CHECK_EQ(m[0].member_id, id[0]);
    CHECK_EQ(m[1].member_id, id[2]);
    CHECK_OK(pq_group_leave(g, id[1]));          /* unknown now: 0, no change */
    CHECK_OK(pq_group_leave(g, 999999));
    CHECK_EQ(pq_group_generation(g), gen0 + 4);

    CHECK_OK(pq_group_heartbeat(g, slot[0], id[0], 5000));
    CHECK_RC(pq_group_heartbeat(g, slot[1], id[1], 5000), -PQ_EFENCED);
    CHECK_RC(pq_group_heartbeat(g, PQ_GROUP_MAX_MEMBERS, id[0], 5000), -PQ_ERANGE);

    /* Reap by heartbeat age: id[2] last beat at 1002, id[0] at 5000. */
    CHECK_EQ(pq_group_reap(g, 5000 + 100, 1000), 1);
    CHECK_EQ(pq_group_members(g, m, PQ_GROUP_MAX_MEMBERS), 1);
    CHECK_EQ(m[0].member_id, id[0]);
    CHECK_EQ(pq_group_reap(g, 5000 + 100, 0), 0);   /* no session limit: we are alive */

    /* The table holds PQ_GROUP_MAX_MEMBERS. */
    int joined = 1;
    uint32_t s;
    uint64_t x;
    while (joined < PQ_GROUP_MAX_MEMBERS && pq_group_join(g, getpid(), 0, &s, &x) == 0)
        joined++;
    CHECK_EQ(joined, PQ_GROUP_MAX_MEMBERS);
    CHECK_RC(pq_group_join(g, getpid(), 0, &s, &x), -PQ_EFULL);
    CHECK_EQ(pq_group_members(g, m, 5), 5);
    pq_group_close(g);

    /* A sole opener forgets every member. */
    g = open_group(qcfg(1, 4));
    REQUIRE(g);
    CHECK_EQ(pq_group_members(g, m, PQ_GROUP_MAX_MEMBERS), 0);
    pq_group_close(g);
}

/* ---- stream mode ---- */

static void test_stream_claim_commit_release_fenced(void)
{
    pq_group_config_t c = {PQ_GROUP_STREAM, 2, 0};
    pq_group_t *g = open_group(c);
    REQUIRE(g);
    uint32_t sa, sb;
    uint64_t a, b, committed = 0;
    CHECK_OK(pq_group_join(g, getpid(), 0, &sa, &a));
    CHECK_OK(pq_group_join(g, getpid(), 0, &sb, &b));

    CHECK_EQ(pq_group_claim(g, 0, a, &committed), 1);
    CHECK_EQ(committed, PQ_OFFSET_UNSET);
    CHECK_EQ(pq_group_claim(g, 0, a, &committed), 1);   /* already ours */
    CHECK_EQ(pq_group_claim(g, 0, b, &committed), 0);
    CHECK_EQ(info(g, 0).owner, a);

    CHECK_RC(pq_group_commit(g, 0, b, 5, 0), -PQ_EFENCED);
    CHECK_RC(pq_group_seek(g, 0, b, 5), -PQ_EFENCED);
    CHECK_OK(pq_group_commit(g, 0, a, 10, 0));
    CHECK_EQ(info(g, 0).committed, 10);
    CHECK_OK(pq_group_commit(g, 0, a, PQ_OFFSET_UNSET, 0));   /* keep */
    CHECK_EQ(info(g, 0).committed, 10);
    CHECK_OK(pq_group_seek(g, 0, a, 3));
    CHECK_EQ(info(g, 0).committed, 3);
    CHECK_OK(pq_group_commit(g, 0, a, 12, 1));                /* commit and release */
    CHECK_EQ(info(g, 0).owner, 0);
    CHECK_RC(pq_group_commit(g, 0, a, 13, 0), -PQ_EFENCED);
    CHECK_EQ(pq_group_claim(g, 0, b, &committed), 1);
    CHECK_EQ(committed, 12);

    /* init_offset only sets an untouched partition. */
    CHECK_OK(pq_group_init_offset(g, 1, 7, &committed));
    CHECK_EQ(committed, 7);
    CHECK_OK(pq_group_init_offset(g, 1, 9, &committed));
    CHECK_EQ(committed, 7);

    /* Leaving frees owned partitions, keeps committed offsets. */
    CHECK_EQ(pq_group_claim(g, 1, a, &committed), 1);
    CHECK_OK(pq_group_leave(g, a));
    CHECK_EQ(info(g, 1).owner, 0);
    CHECK_EQ(info(g, 1).committed, 7);
    CHECK_RC(pq_group_commit(g, 1, a, 8, 0), -PQ_EFENCED);
    CHECK_EQ(pq_group_claim(g, 1, b, &committed), 1);

    /* Queue-mode calls are refused on a stream group. */
    pq_log_t *log = open_log();
    REQUIRE(log);
    pq_lease_t l[1];
    CHECK_RC(lease(g, log, T0, 0, l, 1, NULL), -PQ_ECONFIG);
    CHECK_RC(pq_group_ack(g, 0, 0, 1), -PQ_ELEASE);
    pq_log_close(log);
    pq_group_close(g);
}

/* ---- queue mode ---- */

static void test_queue_lease_ack_nack_extend(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 5) == 0);

    pq_lease_t l[8];
    CHECK_EQ(lease(g, log, T0, 0, l, 3, NULL), 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(l[i].offset, (uint64_t)i);
        CHECK_EQ(l[i].deliveries, 1);
        CHECK(l[i].lease_id != 0);
    }
    CHECK(l[0].lease_id != l[1].lease_id && l[1].lease_id != l[2].lease_id);
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.committed, 0);
    CHECK_EQ(pi.leased, 3);
    check_counts(g, 0);

    /* ack: the right id once; a wrong id, another entry's id, a repeat: ELEASE. */
    CHECK_RC(pq_group_ack(g, 0, 1, l[0].lease_id), -PQ_ELEASE);
    CHECK_RC(pq_group_ack(g, 0, 1, l[1].lease_id + 1000), -PQ_ELEASE);
    CHECK_OK(pq_group_ack(g, 0, 0, l[0].lease_id));
    CHECK_RC(pq_group_ack(g, 0, 0, l[0].lease_id), -PQ_ELEASE);
    CHECK_RC(pq_group_ack(g, 0, 100, 1), -PQ_ELEASE);          /* never in the window */
    CHECK_EQ(info(g, 0).committed, 1);

    /* Out of order: committed waits for the lowest unfinished offset. */
    CHECK_OK(pq_group_ack(g, 0, 2, l[2].lease_id));
    pi = info(g, 0);
    CHECK_EQ(pi.committed, 1);
    CHECK_EQ(pi.done, 1);
    check_counts(g, 0);

    /* nack: the delivery is over (its id is stale), the message comes back. */
    pq_lease_t old1 = l[1];
    CHECK_OK(pq_group_nack(g, 0, 1, old1.lease_id, T0, 0));
    CHECK_RC(pq_group_nack(g, 0, 1, old1.lease_id, T0, 0), -PQ_ELEASE);
    CHECK_RC(pq_group_ack(g, 0, 1, old1.lease_id), -PQ_ELEASE);
    CHECK_RC(pq_group_extend(g, 0, 1, old1.lease_id, T0, SEC), -PQ_ELEASE);
    CHECK_EQ(lease(g, log, T0, 0, l, 1, NULL), 1);
    CHECK_EQ(l[0].offset, 1);
    CHECK_EQ(l[0].deliveries, 2);
    CHECK(l[0].lease_id != old1.lease_id);

    /* release: back at once, not counted; its id is stale afterwards. */
    pq_lease_t given = l[0];
    CHECK_OK(pq_group_release(g, 0, 1, given.lease_id));
    CHECK_RC(pq_group_release(g, 0, 1, given.lease_id), -PQ_ELEASE);
    CHECK_RC(pq_group_ack(g, 0, 1, given.lease_id), -PQ_ELEASE);
    check_counts(g, 0);
    CHECK_EQ(lease(g, log, T0, 0, l, 1, NULL), 1);
    CHECK_EQ(l[0].offset, 1);
    CHECK_EQ(l[0].deliveries, 2);

    /* extend moves the deadline: still ours at T0 + 15 s, gone at T0 + 31 s. */
    CHECK_OK(pq_group_extend(g, 0, 1, l[0].lease_id, T0, 30 * SEC));
    pq_lease_t m[8];
    int n = lease(g, log, T0 + 15 * SEC, 0, m, 8, NULL);
    CHECK_EQ(n, 2);                      /* 3 and 4, not 1 */
    for (int i = 0; i < n; i++)
        CHECK(m[i].offset == 3 || m[i].offset == 4);
    CHECK_OK(pq_group_ack(g, 0, 1, l[0].lease_id));
    CHECK_EQ(info(g, 0).committed, 3);
    for (int i = 0; i < n; i++)
        CHECK_OK(pq_group_ack(g, 0, m[i].offset, m[i].lease_id));
    pi = info(g, 0);
    CHECK_EQ(pi.committed, 5);
    CHECK_EQ(pi.next, 5);
    CHECK_EQ(pi.ready + pi.leased + pi.delayed + pi.done, 0);
    CHECK_EQ(lease(g, log, T0 + 40 * SEC, 0, l, 8, NULL), 0);

    /* A partition number out of range. */
    int64_t due;
    CHECK_RC(pq_group_lease(g, 1, log, 0, T0, SEC, 0, l, 1, &due), -PQ_ERANGE);
    pq_log_close(log);
    pq_group_close(g);
}

/* Lease ids start at 1: an id of 0 (never issued) must not finish a message
 * that sits in the window undelivered, or one whose delivery was nacked. */
static void test_never_issued_lease_id_is_refused(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 4) == 0);
    pq_lease_t l[4];
    CHECK_EQ(lease(g, log, T0, 0, l, 1, NULL), 1);   /* 1..3 enter the window, undelivered */
    CHECK_EQ(info(g, 0).next, 4);
    CHECK_RC(pq_group_ack(g, 0, 1, 0), -PQ_ELEASE);
    CHECK_RC(pq_group_extend(g, 0, 2, 0, T0, SEC), -PQ_ELEASE);
    CHECK_RC(pq_group_nack(g, 0, 3, 0, T0, 0), -PQ_ELEASE);
    CHECK_OK(pq_group_nack(g, 0, 0, l[0].lease_id, T0, 5 * SEC));
    CHECK_RC(pq_group_ack(g, 0, 0, 0), -PQ_ELEASE);
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.done, 0);
    CHECK_EQ(pi.ready, 3);
    CHECK_EQ(pi.delayed, 1);
    pq_log_close(log);
    pq_group_close(g);
}

static void test_window_full_stops_leasing(void)
{
    pq_group_t *g = open_group(qcfg(1, 4));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 10) == 0);
    pq_lease_t l[16], m[16];
    CHECK_EQ(lease(g, log, T0, 0, l, 16, NULL), 4);
    CHECK_EQ(l[3].offset, 3);
    CHECK_EQ(lease(g, log, T0, 0, m, 16, NULL), 0);
    CHECK_OK(pq_group_ack(g, 0, 1, l[1].lease_id));     /* not the head: still full */
    CHECK_EQ(lease(g, log, T0, 0, m, 16, NULL), 0);
    CHECK_OK(pq_group_ack(g, 0, 0, l[0].lease_id));     /* head: committed 0 -> 2 */
    CHECK_EQ(info(g, 0).committed, 2);
    CHECK_EQ(lease(g, log, T0, 0, m, 16, NULL), 2);
    CHECK_EQ(m[0].offset, 4);
    CHECK_EQ(m[1].offset, 5);
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.next - pi.committed, 4);
    check_counts(g, 0);

    /* Wrapping the window: every slot reused several times. */
    uint64_t acked = 0;
    pq_lease_t cur[16];
    int have = 0;
    cur[have++] = l[2];
    cur[have++] = l[3];
    cur[have++] = m[0];
    cur[have++] = m[1];
    REQUIRE(append_n(log, 30) == 0);
    for (int round = 0; round < 100 && have > 0; round++) {
        pq_lease_t h = cur[0];
        memmove(cur, cur + 1, (size_t)(--have) * sizeof cur[0]);
        CHECK_OK(pq_group_ack(g, 0, h.offset, h.lease_id));
        acked++;
        int n = lease(g, log, T0, 0, cur + have, (size_t)(16 - have), NULL);
        CHECK(n >= 0);
        if (n > 0)
            have += n;
        CHECK(info(g, 0).next - info(g, 0).committed <= 4);
    }
    CHECK_EQ(acked, 38);
    CHECK_EQ(info(g, 0).committed, 40);
    pq_log_close(log);
    pq_group_close(g);
}

static void test_lease_expiry_redelivers(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 3) == 0);
    pq_lease_t l[8], m[8];
    int64_t due = 0;
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0, 10 * SEC, 0, l, 8, &due), 3);
    CHECK_EQ(due, T0 + 10 * SEC);
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 10 * SEC - 1, 10 * SEC, 0, m, 8, &due), 0);
    CHECK_EQ(due, T0 + 10 * SEC);
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 10 * SEC, 10 * SEC, 0, m, 8, &due), 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(m[i].offset, (uint64_t)i);       /* in offset order */
        CHECK_EQ(m[i].deliveries, 2);
        CHECK(m[i].lease_id != l[i].lease_id);
        CHECK_RC(pq_group_ack(g, 0, m[i].offset, l[i].lease_id), -PQ_ELEASE);
        CHECK_RC(pq_group_extend(g, 0, m[i].offset, l[i].lease_id, T0, SEC), -PQ_ELEASE);
    }
    CHECK_EQ(due, T0 + 20 * SEC);
    /* Third delivery. */
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 20 * SEC, 10 * SEC, 0, l, 8, &due), 3);
    CHECK_EQ(l[0].deliveries, 3);
    for (int i = 0; i < 3; i++)
        CHECK_OK(pq_group_ack(g, 0, l[i].offset, l[i].lease_id));
    CHECK_EQ(info(g, 0).committed, 3);
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 30 * SEC, 10 * SEC, 0, l, 8, &due), 0);
    CHECK_EQ(due, INT64_MAX);
    pq_log_close(log);
    pq_group_close(g);
}

static void test_delayed_nack_and_deliver_at(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append(log, NULL, 0) == 0);
    REQUIRE(append(log, NULL, T0 + 20 * SEC) == 0);   /* a record delivered later */
    REQUIRE(append(log, NULL, 0) == 0);

    pq_lease_t l[8];
    int64_t due = 0;
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0, 100 * SEC, 0, l, 8, &due), 2);
    CHECK_EQ(l[0].offset, 0);
    CHECK_EQ(l[1].offset, 2);
    CHECK_EQ(due, T0 + 20 * SEC);
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.delayed, 1);
    CHECK_EQ(pi.leased, 2);

    /* nack 0 with a 5 s delay. */
    CHECK_OK(pq_group_nack(g, 0, 0, l[0].lease_id, T0, 5 * SEC));
    CHECK_EQ(info(g, 0).delayed, 2);
    pq_lease_t m[8];
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 5 * SEC - 1, 100 * SEC, 0, m, 8, &due), 0);
    CHECK_EQ(due, T0 + 5 * SEC);
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 5 * SEC, 100 * SEC, 0, m, 8, &due), 1);
    CHECK_EQ(m[0].offset, 0);
    CHECK_EQ(m[0].deliveries, 2);
    CHECK_EQ(due, T0 + 20 * SEC);

    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 20 * SEC - 1, 100 * SEC, 0, m + 1, 7, &due), 0);
    CHECK_EQ(pq_group_lease(g, 0, log, 0, T0 + 20 * SEC, 100 * SEC, 0, m + 1, 7, &due), 1);
    CHECK_EQ(m[1].offset, 1);
    CHECK_EQ(m[1].deliveries, 1);
    CHECK_OK(pq_group_ack(g, 0, 0, m[0].lease_id));
    CHECK_OK(pq_group_ack(g, 0, 1, m[1].lease_id));
    CHECK_OK(pq_group_ack(g, 0, 2, l[1].lease_id));
    CHECK_EQ(info(g, 0).committed, 3);
    check_counts(g, 0);
    pq_log_close(log);
    pq_group_close(g);
}

/* Ordered: at most one unfinished message per key is out at a time; messages
 * without a key are never blocked. */
static void test_ordered_one_per_key(void)
{
    pq_group_t *g = open_group(qcfg(1, 16));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    const char *keys[] = {"a", "a", "b", "a", NULL, "b", NULL};
    for (int i = 0; i < 7; i++)
        REQUIRE(append(log, keys[i], 0) == 0);

    pq_lease_t l[16];
    int n = lease(g, log, T0, 1, l, 16, NULL);
    CHECK_EQ(n, 4);
    uint64_t want[] = {0, 2, 4, 6};
    pq_lease_t by_off[7];
    memset(by_off, 0, sizeof by_off);
    for (int i = 0; i < n && i < 4; i++) {
        CHECK_EQ(l[i].offset, want[i]);
        if (l[i].offset < 7)
            by_off[l[i].offset] = l[i];
    }
    CHECK_EQ(lease(g, log, T0, 1, l, 16, NULL), 0);   /* all blocked */

    CHECK_OK(pq_group_ack(g, 0, 0, by_off[0].lease_id));
    CHECK_EQ(lease(g, log, T0, 1, l, 16, NULL), 1);
    CHECK_EQ(l[0].offset, 1);
    by_off[1] = l[0];

    /* A nacked message keeps its key blocked (it is unfinished). */
    CHECK_OK(pq_group_nack(g, 0, 2, by_off[2].lease_id, T0, 5 * SEC));
    CHECK_EQ(lease(g, log, T0, 1, l, 16, NULL), 0);
    CHECK_EQ(lease(g, log, T0 + 5 * SEC, 1, l, 16, NULL), 1);
    CHECK_EQ(l[0].offset, 2);
    by_off[2] = l[0];
    CHECK_OK(pq_group_ack(g, 0, 2, by_off[2].lease_id));
    CHECK_EQ(lease(g, log, T0 + 5 * SEC, 1, l, 16, NULL), 1);
    CHECK_EQ(l[0].offset, 5);
    CHECK_OK(pq_group_ack(g, 0, 1, by_off[1].lease_id));
    CHECK_EQ(lease(g, log, T0 + 5 * SEC, 1, l, 16, NULL), 1);
    CHECK_EQ(l[0].offset, 3);

    pq_log_close(log);
    pq_group_close(g);
}

/* ---- processes ---- */

static int read_byte(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    char c;
    return poll(&p, 1, timeout_ms) == 1 && read(fd, &c, 1) == 1;
}

static int wait_child(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A member whose process exited: reap removes it and returns its leases, with
 * their delivery counts, to the queue. */
static void test_reap_dead_member_returns_leases(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 5) == 0);
    uint32_t my_slot;
    uint64_t me;
    CHECK_OK(pq_group_join(g, getpid(), pq_monotonic_ns(), &my_slot, &me));
    uint64_t gen = pq_group_generation(g);

    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        uint32_t slot;
        uint64_t id;
        pq_lease_t l[3];
        int64_t due;
        if (pq_group_join(g, getpid(), pq_monotonic_ns(), &slot, &id) != 0)
            _exit(2);
        if (pq_group_lease(g, 0, log, slot, T0, 100 * SEC, 0, l, 3, &due) != 3)
            _exit(3);
        _exit(0);   /* without leaving */
    }
    CHECK_EQ(wait_child(pid), 0);
    CHECK_EQ(pq_group_generation(g), gen + 1);
    pq_member_info_t m[4];
    CHECK_EQ(pq_group_members(g, m, 4), 2);
    CHECK_EQ(info(g, 0).leased, 3);

    CHECK_EQ(pq_group_reap(g, pq_monotonic_ns(), 0), 1);
    CHECK_EQ(pq_group_generation(g), gen + 2);
    CHECK_EQ(pq_group_members(g, m, 4), 1);
    CHECK_EQ(m[0].member_id, me);
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.leased, 0);
    CHECK_EQ(pi.ready, 5);   /* its 3, and 2 read into the window unleased */
    check_counts(g, 0);

    pq_lease_t l[8];
    int64_t due;
    CHECK_EQ(pq_group_lease(g, 0, log, my_slot, T0 + SEC, 100 * SEC, 0, l, 8, &due), 5);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(l[i].deliveries, i < 3 ? 2 : 1);
    CHECK_EQ(pq_group_reap(g, pq_monotonic_ns(), 0), 0);
    pq_log_close(log);
    pq_group_close(g);
}

static int hold_fd = -1;

static void hold_handler(int sig)
{
    (void)sig;
    char c = 1;
    if (write(hold_fd, &c, 1) < 0) {
        /* nothing to do */
    }
    for (;;)
        pause();
}

/* A process killed inside pq_group_lease, holding the partition lock with the
 * first grant half done (its output buffer runs into a PROT_NONE page): the
 * next locker recovers the lock (EOWNERDEAD), the counters are recomputed and
 * the group goes on, the dead process's lease expiring like any other. */
static void test_killed_while_holding_partition_lock(void)
{
    pq_group_t *g = open_group(qcfg(1, 8));
    pq_log_t *log = open_log();
    REQUIRE(g && log);
    REQUIRE(append_n(log, 6) == 0);
    pq_lease_t first[1];
    CHECK_EQ(lease(g, log, T0, 0, first, 1, NULL), 1);   /* offset 0, leased before */

    int ch[2];
    REQUIRE(pipe(ch) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        long page = sysconf(_SC_PAGESIZE);
        unsigned char *m = mmap(NULL, (size_t)(2 * page), PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED || mprotect(m + page, (size_t)page, PROT_NONE) != 0)
            _exit(4);
        hold_fd = ch[1];
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = hold_handler;
        sigaction(SIGSEGV, &sa, NULL);
        sigaction(SIGBUS, &sa, NULL);
        int64_t due;
        pq_group_lease(g, 0, log, 9, T0, 10 * SEC, 0, (pq_lease_t *)(m + page), 4, &due);
        _exit(5);   /* not reached */
    }
    close(ch[1]);
    int held = read_byte(ch[0], 10000);
    CHECK(held);
    kill(pid, SIGKILL);
    CHECK_EQ(wait_child(pid), 128 + SIGKILL);
    close(ch[0]);
    REQUIRE(held);

    /* Usable: info, lease, ack. */
    pq_partition_info_t pi = info(g, 0);
    CHECK_EQ(pi.committed, 0);
    check_counts(g, 0);
    CHECK_EQ(pi.leased, 2);   /* ours, and the one the dead process was granted */
    pq_lease_t l[8];
    int n = lease(g, log, T0, 0, l, 8, NULL);
    CHECK_EQ(n, 4);
    for (int i = 0; i < n; i++)
        CHECK_OK(pq_group_ack(g, 0, l[i].offset, l[i].lease_id));
    CHECK_OK(pq_group_ack(g, 0, 0, first[0].lease_id));
    /* The dead process's lease (offset 1) expires and is redelivered. */
    n = lease(g, log, T0 + 10 * SEC, 0, l, 8, NULL);
    CHECK_EQ(n, 1);
    CHECK_EQ(l[0].offset, 1);
    CHECK_EQ(l[0].deliveries, 2);
    CHECK_OK(pq_group_ack(g, 0, 1, l[0].lease_id));
    CHECK_EQ(info(g, 0).committed, 6);
    check_counts(g, 0);

    /* Several more kills, at random points of a lease/ack loop. */
    REQUIRE(append_n(log, 200) == 0);
    for (int round = 0; round < 5; round++) {
        pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            pq_lease_t x[4];
            int64_t due;
            for (;;) {
                int k = pq_group_lease(g, 0, log, 9, T0, SEC, 0, x, 4, &due);
                for (int i = 0; i < k; i++)
                    pq_group_nack(g, 0, x[i].offset, x[i].lease_id, T0, 0);
            }
        }
        pqt_sleep_ms(20 + round * 7);
        kill(pid, SIGKILL);
        CHECK_EQ(wait_child(pid), 128 + SIGKILL);
        check_counts(g, 0);
    }
    /* Everything is deliverable once leases of the dead have expired. */
    uint64_t total = 0;
    for (int k = 0; k < 1000 && total < 200; k++) {
        n = lease(g, log, T0 + 100 * SEC, 0, l, 8, NULL);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++)
            CHECK_OK(pq_group_ack(g, 0, l[i].offset, l[i].lease_id));
        total += (uint64_t)n;
    }
    CHECK_EQ(total, 200);
    CHECK_EQ(info(g, 0).committed, 206);
    pq_log_close(log);
    pq_group_close(g);
}

PQT_MAIN(PQT_CASE(test_open_config_checks_and_probe),
         PQT_CASE(test_join_leave_members_generation),
         PQT_CASE(test_stream_claim_commit_release_fenced),
         PQT_CASE(test_queue_lease_ack_nack_extend),
         PQT_CASE(test_never_issued_lease_id_is_refused),
         PQT_CASE(test_window_full_stops_leasing),
         PQT_CASE(test_lease_expiry_redelivers),
         PQT_CASE(test_delayed_nack_and_deliver_at),
         PQT_CASE(test_ordered_one_per_key),
         PQT_CASE(test_reap_dead_member_returns_leases),
         PQT_CASE(test_killed_while_holding_partition_lock))

/* test_segment.c - one segment file: header, frames, index, recovery scan.
 *
 * Byte positions used here are those of docs/FORMAT.md ("Segment header",
 * "Record frame").  Some tests use a "guarded" segment: a pq_segment_t over an
 * anonymous mapping with an inaccessible page on each side, so that a read
 * even one byte outside the segment crashes (and fails the test) instead of
 * passing unnoticed, which AddressSanitizer cannot promise for mmap'd memory.
 */
#include "pq_test.h"

#include <sys/mman.h>

#include "crc32c.h"
#include "segment.h"

#define S ((uint64_t)PQ_SEGMENT_MIN_BYTES)

/* docs/FORMAT.md, segment header and record frame. */
#define H_VERSION 8
#define H_HDRSIZE 12
#define H_BASE    16
#define H_SIZE    24
#define H_CREATED 32
#define H_CRC     60
#define F_LEN     0
#define F_CRC     4
#define F_OFFSET  8
#define F_KEYLEN  32
#define F_HDRLEN  36
#define F_VALLEN  40

static uint32_t ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* ---- helpers ---- */

typedef struct guarded {
    pq_segment_t seg;
    unsigned char *region;
    size_t len;
} guarded_t;

static char guarded_name[] = "(guarded test segment)";

static int guarded_init(guarded_t *g, uint64_t base, uint64_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    g->len = size + 2 * page;
    g->region = mmap(NULL, g->len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->region == MAP_FAILED)
        return -1;
    if (mprotect(g->region + page, size, PROT_READ | PROT_WRITE) != 0)
        return -1;
    memset(&g->seg, 0, sizeof g->seg);
    g->seg.base = base;
    g->seg.size = size;
    g->seg.map = g->region + page;
    g->seg.fd = -1;
    g->seg.refs = 1;
    g->seg.path = guarded_name;
    return 0;
}

static void guarded_free(guarded_t *g)
{
    munmap(g->region, g->len);
}

static pq_record_t make_rec(uint64_t offset, const char *key, const char *hdrs, const void *val,
                            uint32_t vlen)
{
    pq_record_t r;
    memset(&r, 0, sizeof r);
    r.offset = offset;
    r.timestamp = 1700000000000000000ll + (int64_t)offset;
    r.key = key;
    r.key_len = key ? (uint32_t)strlen(key) : PQ_NO_KEY;
    r.headers = hdrs;
    r.headers_len = hdrs ? (uint32_t)strlen(hdrs) : 0;
    r.value = val;
    r.value_len = vlen;
    return r;
}

/* Write `r` at *pos if it fits (as the caller of pq_segment_write must check). */
static int put(pq_segment_t *seg, uint64_t *pos, const pq_record_t *r)
{
    uint64_t fs = pq_frame_size(r->key_len, r->headers_len, r->value_len);
    if (*pos + fs > pq_segment_data_limit(seg, r->offset - seg->base))
        return -1;
    uint32_t n = pq_segment_write(seg, *pos, r);
    if (n != fs)
        return -2;
    *pos += n;
    return 0;
}

/* n frames of assorted shapes starting at base; positions into pos[]. */
static int put_assorted(pq_segment_t *seg, int n, uint64_t *pos, uint64_t *end)
{
    uint64_t p = PQ_SEGMENT_HEADER_SIZE;
    char val[300];
    for (int i = 0; i < n; i++) {
        pqt_fill(val, sizeof val, (uint64_t)i);
        pq_record_t r = make_rec(seg->base + (uint64_t)i, i % 3 ? "key" : NULL, i % 2 ? "h=1" : NULL,
                                 val, (uint32_t)(i * 37 % 300));
        pos[i] = p;
        if (put(seg, &p, &r) != 0)
            return -1;
    }
    *end = p;
    return 0;
}

static int file_pwrite(const char *path, const void *buf, size_t len, off_t off)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = pwrite(fd, buf, len, off);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

static int file_pread(const char *path, void *buf, size_t len, off_t off)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = pread(fd, buf, len, off);
    close(fd);
    return n == (ssize_t)len ? 0 : -1;
}

static const char *seg_path(uint64_t base)
{
    char name[64];
    pq_segment_name(base, name, sizeof name);
    return pqt_path(name);
}

/* ---- naming and sizes ---- */

static void test_names_and_frame_sizes(void)
{
    char b[64];
    pq_segment_name(0, b, sizeof b);
    CHECK(strcmp(b, "00000000000000000000.seg") == 0);
    pq_segment_name(12345, b, sizeof b);
    CHECK(strcmp(b, "00000000000000012345.seg") == 0);
    pq_segment_name(UINT64_MAX, b, sizeof b);
    CHECK(strcmp(b, "18446744073709551615.seg") == 0);

    CHECK_EQ(pq_frame_size(PQ_NO_KEY, 0, 0), 48);
    CHECK_EQ(pq_frame_size(0, 0, 0), 48);
    CHECK_EQ(pq_frame_size(PQ_NO_KEY, 0, 1), 56);
    CHECK_EQ(pq_frame_size(3, 2, 1), 56);
    CHECK_EQ(pq_frame_size(3, 2, 3), 56);
    CHECK_EQ(pq_frame_size(3, 2, 4), 64);
    CHECK_EQ(pq_frame_size(PQ_NO_KEY, 0, 72), 120);
    /* Past 4 GiB: refused with 0, never wrapped. */
    CHECK_EQ(pq_frame_size(PQ_NO_KEY, 0, UINT32_MAX), 0);
    CHECK_EQ(pq_frame_size(UINT32_MAX - 1, UINT32_MAX, UINT32_MAX), 0);
    CHECK_EQ(pq_frame_size(PQ_NO_KEY, 0, UINT32_MAX - 48 - 7), 0xFFFFFFF8u);
}

/* ---- create / open ---- */

static void test_create_writes_the_documented_header(void)
{
    pq_segment_t *seg = NULL;
    CHECK_OK(pq_segment_create(pqt_dir, 1000, S, 123456789, &seg));
    REQUIRE(seg);
    CHECK_EQ(seg->base, 1000);
    CHECK_EQ(seg->size, S);
    CHECK_EQ(pqt_file_size(seg_path(1000)), (long long)S);
    struct stat st;
    CHECK(stat(seg_path(1000), &st) == 0 && (st.st_mode & 0777) == 0600);
    pq_segment_decref(seg);

    unsigned char h[64];
    REQUIRE(file_pread(seg_path(1000), h, 64, 0) == 0);
    CHECK(memcmp(h, "PYQSEGMT", 8) == 0);
    CHECK_EQ(ld32(h + H_VERSION), PQ_FORMAT_VERSION);
    CHECK_EQ(ld32(h + H_HDRSIZE), 64);
    CHECK_EQ(ld64(h + H_BASE), 1000);
    CHECK_EQ(ld64(h + H_SIZE), S);
    CHECK_EQ(ld64(h + H_CREATED), 123456789);
    for (int i = 40; i < 60; i++)
        CHECK_EQ(h[i], 0);
    CHECK_EQ(ld32(h + H_CRC), pq_crc32c(0, h, 60));
}

static void test_create_open_round_trip(void)
{
    pq_segment_t *seg = NULL;
    uint64_t pos[20], end;
    CHECK_OK(pq_segment_create(pqt_dir, 500, S, 1, &seg));
    REQUIRE(seg);
    REQUIRE(put_assorted(seg, 20, pos, &end) == 0);
    pq_segment_decref(seg);

    seg = NULL;
    CHECK_OK(pq_segment_open(pqt_dir, 500, S, &seg));
    REQUIRE(seg);
    CHECK_EQ(seg->base, 500);
    char val[300];
    for (int i = 0; i < 20; i++) {
        pq_record_t r;
        CHECK_OK(pq_segment_read(seg, 500 + (uint64_t)i, &r));
        CHECK_EQ(r.offset, 500 + i);
        CHECK_EQ(r.position, pos[i]);
        CHECK_EQ(r.value_len, (uint32_t)(i * 37 % 300));
        pqt_fill(val, sizeof val, (uint64_t)i);
        CHECK(memcmp(r.value, val, r.value_len) == 0);
        CHECK_EQ(r.key_len, i % 3 ? 3u : PQ_NO_KEY);
    }
    pq_segment_decref(seg);
}

static void test_create_replaces_a_leftover_file(void)
{
    /* A crashed roll can leave a file of the same name with stale bytes. */
    const char *path = seg_path(42);
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    unsigned char junk[4096];
    memset(junk, 0xEE, sizeof junk);
    for (int i = 0; i < 40; i++)   /* 160 KiB, larger than the segment */
        CHECK_EQ(write(fd, junk, sizeof junk), (long)sizeof junk);
    close(fd);

    pq_segment_t *seg = NULL;
    CHECK_OK(pq_segment_create(pqt_dir, 42, S, 1, &seg));
    REQUIRE(seg);
    CHECK_EQ(pqt_file_size(path), (long long)S);
    size_t nonzero = 0;
    for (uint64_t i = PQ_SEGMENT_HEADER_SIZE; i < S; i++)
        nonzero += seg->map[i] != 0;
    CHECK_EQ(nonzero, 0);
    uint64_t end, next;
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 42, &end, &next), 0);
    pq_segment_decref(seg);
    seg = NULL;
    CHECK_OK(pq_segment_open(pqt_dir, 42, S, &seg));
    pq_segment_decref(seg);
}

static void test_create_failure_leaves_nothing(void)
{
    pq_segment_t *seg = NULL;
    const char *missing = pqt_path("no/such/dir");
    int rc = pq_segment_create(missing, 0, S, 1, &seg);
    CHECK_EQ(rc, -ENOENT);
    CHECK(seg == NULL);
    CHECK_CONTAINS(pq_error_message(), missing);
}

/* Create segment `base`, close it, apply `edit` to its header (then fix the
 * header CRC if asked), and return what pq_segment_open says. */
static int open_after_header_edit(uint64_t base, size_t at, const void *bytes, size_t len, int fix_crc)
{
    pq_segment_t *seg = NULL;
    if (pq_segment_create(pqt_dir, base, S, 1, &seg) != 0)
        return 99999;
    pq_segment_decref(seg);
    unsigned char h[64];
    file_pread(seg_path(base), h, 64, 0);
    memcpy(h + at, bytes, len);
    if (fix_crc)
        st32(h + H_CRC, pq_crc32c(0, h, 60));
    file_pwrite(seg_path(base), h, 64, 0);
    seg = NULL;
    pq_error_clear();
    int rc = pq_segment_open(pqt_dir, base, S, &seg);
    if (rc == 0)
        pq_segment_decref(seg);
    else if (seg != NULL)
        return 99998;   /* a failed open must not hand out a segment */
    return rc;
}

static void test_open_rejects_bad_magic(void)
{
    CHECK_RC(open_after_header_edit(7, 0, "PYQSEGMX", 8, 0), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(7));
    /* Even with a matching CRC, a wrong magic is not a segment. */
    CHECK_RC(open_after_header_edit(8, 0, "NOTASEGM", 8, 1), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(8));
}

static void test_open_rejects_bad_header_crc(void)
{
    uint64_t t = 99;
    CHECK_RC(open_after_header_edit(9, H_CREATED, &t, 8, 0), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(9));
    unsigned char z = 0xFF;   /* the reserved bytes are covered too */
    CHECK_RC(open_after_header_edit(10, 50, &z, 1, 0), -PQ_ECORRUPT);
}

static void test_open_rejects_other_version(void)
{
    uint32_t v = PQ_FORMAT_VERSION + 1;
    CHECK_RC(open_after_header_edit(11, H_VERSION, &v, 4, 1), -PQ_EFORMAT);
    CHECK_CONTAINS(pq_error_message(), seg_path(11));
    v = 0;
    CHECK_RC(open_after_header_edit(12, H_VERSION, &v, 4, 1), -PQ_EFORMAT);
    uint32_t hs = 128;
    CHECK_RC(open_after_header_edit(13, H_HDRSIZE, &hs, 4, 1), -PQ_EFORMAT);
    /* A version change without the CRC fixed is damage, not a newer format. */
    v = PQ_FORMAT_VERSION + 1;
    CHECK_RC(open_after_header_edit(14, H_VERSION, &v, 4, 0), -PQ_ECORRUPT);
}

static void test_open_rejects_header_of_another_segment(void)
{
    uint64_t b = 16;   /* header says base 16, the file is named 15 */
    CHECK_RC(open_after_header_edit(15, H_BASE, &b, 8, 1), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(15));
    uint64_t sz = 2 * S;
    CHECK_RC(open_after_header_edit(17, H_SIZE, &sz, 8, 1), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(17));
}

static void test_open_rejects_wrong_file_size(void)
{
    pq_segment_t *seg = NULL;
    CHECK_OK(pq_segment_create(pqt_dir, 20, S, 1, &seg));
    pq_segment_decref(seg);
    const char *path = seg_path(20);

    REQUIRE(truncate(path, (off_t)(S / 2)) == 0);   /* mapping it whole would SIGBUS */
    seg = NULL;
    CHECK_RC(pq_segment_open(pqt_dir, 20, S, &seg), -PQ_ECORRUPT);
    CHECK(seg == NULL);
    CHECK_CONTAINS(pq_error_message(), path);
    CHECK_CONTAINS(pq_error_message(), "32768");

    REQUIRE(truncate(path, (off_t)(2 * S)) == 0);
    CHECK_RC(pq_segment_open(pqt_dir, 20, S, &seg), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), path);

    REQUIRE(truncate(path, 0) == 0);
    CHECK_RC(pq_segment_open(pqt_dir, 20, S, &seg), -PQ_ECORRUPT);

    /* A good file opened with the wrong expected size. */
    CHECK_OK(pq_segment_create(pqt_dir, 21, S, 1, &seg));
    pq_segment_decref(seg);
    seg = NULL;
    CHECK_RC(pq_segment_open(pqt_dir, 21, 2 * S, &seg), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), seg_path(21));
}

static void test_open_missing_file(void)
{
    pq_segment_t *seg = NULL;
    CHECK_RC(pq_segment_open(pqt_dir, 77, S, &seg), -ENOENT);
    CHECK(seg == NULL);
    CHECK_CONTAINS(pq_error_message(), seg_path(77));
}

/* ---- frames ---- */

static void test_frames_with_and_without_key_and_headers(void)
{
    pq_segment_t *seg = NULL;
    CHECK_OK(pq_segment_create(pqt_dir, 0, S, 1, &seg));
    REQUIRE(seg);
    static char big[3000];
    pqt_fill(big, sizeof big, 5);
    struct {
        const char *key;     /* NULL: no key */
        const char *hdrs;    /* NULL: none */
        const void *val;
        uint32_t vlen;
    } cases[] = {
        {"k1", "\x01\x00\x01\x00\x00\x00" "ab", "value-one", 9},
        {NULL, NULL, "v", 1},
        {"", NULL, "", 0},               /* empty key: distinct from no key */
        {NULL, "\x01\x00\x00\x00\x00\x00x", "", 0},
        {"a-longer-key-of-31-bytes-......", NULL, big, sizeof big},
        {NULL, NULL, NULL, 0},
    };
    size_t n = sizeof cases / sizeof cases[0];
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE, at[8];
    for (size_t i = 0; i < n; i++) {
        pq_record_t r = make_rec(i, cases[i].key, cases[i].hdrs, cases[i].val, cases[i].vlen);
        r.deliver_at = (int64_t)i * 1000;
        r.attributes = 0;
        r.timestamp = i == 1 ? -5 : (int64_t)(1000 + i);
        at[i] = pos;
        REQUIRE(put(seg, &pos, &r) == 0);
        CHECK_EQ(pos % PQ_FRAME_ALIGN, 0);
    }
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            pq_record_t r;
            memset(&r, 0xCC, sizeof r);
            CHECK_OK(pq_segment_read(seg, i, &r));
            CHECK_EQ(r.offset, i);
            CHECK_EQ(r.timestamp, i == 1 ? -5 : (int64_t)(1000 + i));
            CHECK_EQ(r.deliver_at, (int64_t)i * 1000);
            CHECK_EQ(r.attributes, 0);
            CHECK_EQ(r.position, at[i]);
            uint32_t klen = cases[i].key ? (uint32_t)strlen(cases[i].key) : 0;
            uint32_t hlen = cases[i].hdrs ? (uint32_t)strlen(cases[i].hdrs) : 0;
            CHECK_EQ(r.frame_len, 48 + klen + hlen + cases[i].vlen);
            if (cases[i].key) {
                CHECK_EQ(r.key_len, klen);
                CHECK(r.key != NULL);
                CHECK(memcmp(r.key, cases[i].key, klen) == 0);
                CHECK((const unsigned char *)r.key == seg->map + at[i] + 48);
            } else {
                CHECK_EQ(r.key_len, PQ_NO_KEY);
                CHECK(r.key == NULL);
            }
            CHECK_EQ(r.headers_len, hlen);
            CHECK(hlen == 0 || memcmp(r.headers, cases[i].hdrs, hlen) == 0);
            CHECK_EQ(r.value_len, cases[i].vlen);
            CHECK(cases[i].vlen == 0 || memcmp(r.value, cases[i].val, cases[i].vlen) == 0);
            CHECK((const unsigned char *)r.value + r.value_len == seg->map + at[i] + r.frame_len);
            CHECK_EQ(pq_segment_index_get(seg, i), at[i]);
            /* parse directly, at the position, with the tightest limit */
            pq_record_t p;
            CHECK_OK(pq_segment_parse(seg, at[i], i, at[i] + r.frame_len, &p));
            CHECK_RC(pq_segment_parse(seg, at[i], i, at[i] + r.frame_len - 1, &p), -PQ_ECORRUPT);
        }
        /* The same through a fresh open of the file. */
        pq_segment_decref(seg);
        seg = NULL;
        CHECK_OK(pq_segment_open(pqt_dir, 0, S, &seg));
        REQUIRE(seg);
    }
    pq_segment_decref(seg);
}

static void test_padding_is_zeroed(void)
{
    guarded_t g;
    REQUIRE(guarded_init(&g, 0, S) == 0);
    memset(g.seg.map, 0xAB, S);
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    for (uint32_t v = 0; v < 9; v++) {
        pq_record_t r = make_rec(v, NULL, NULL, "123456789", v);
        uint64_t at = pos;
        REQUIRE(put(&g.seg, &pos, &r) == 0);
        for (uint64_t b = at + 48 + v; b < pos; b++)
            CHECK_EQ(g.seg.map[b], 0);
        CHECK_EQ(g.seg.map[pos], 0xAB);   /* nothing written past the padded frame */
    }
    guarded_free(&g);
}

static void refresh_crc(pq_segment_t *seg, uint64_t pos)
{
    uint32_t len = ld32(seg->map + pos + F_LEN);
    st32(seg->map + pos + F_CRC, pq_crc32c(0, seg->map + pos + F_OFFSET, len - F_OFFSET));
}

static void test_parse_rejects_malformed_frames(void)
{
    guarded_t g;
    REQUIRE(guarded_init(&g, 100, S) == 0);
    pq_segment_t *seg = &g.seg;
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    pq_record_t r = make_rec(100, "kk", NULL, "value", 5), out;
    REQUIRE(put(seg, &pos, &r) == 0);
    unsigned char *f = seg->map + 64;
    unsigned char saved[64];
    memcpy(saved, f, sizeof saved);

    CHECK_OK(pq_segment_parse(seg, 64, 100, S, &out));
    /* Position checks. */
    CHECK_RC(pq_segment_parse(seg, 56, 100, S, &out), -PQ_ECORRUPT);    /* inside the header */
    CHECK_RC(pq_segment_parse(seg, 0, 100, S, &out), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_parse(seg, 68, 100, S, &out), -PQ_ECORRUPT);    /* unaligned */
    CHECK_RC(pq_segment_parse(seg, S - 40, 100, S, &out), -PQ_ECORRUPT); /* header past the limit */
    CHECK_RC(pq_segment_parse(seg, S, 100, S, &out), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S + 8, &out), -PQ_ECORRUPT); /* limit past the file */
    CHECK_RC(pq_segment_parse(seg, 64, 100, 100, &out), -PQ_ECORRUPT);   /* frame past the limit */
    CHECK_RC(pq_segment_parse(seg, (uint64_t)1 << 40, 100, S, &out), -PQ_ECORRUPT);
    /* A position so large that pos + 48 wraps around must not be dereferenced. */
    CHECK_RC(pq_segment_parse(seg, UINT64_MAX - 7, 100, S, &out), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_parse(seg, UINT64_MAX - 47, 100, S, &out), -PQ_ECORRUPT);

    /* Length checks, each with a CRC made valid again so that only the length
     * logic can refuse the frame. */
    st32(f + F_LEN, 40);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), "byte 64");
    memcpy(f, saved, sizeof saved);
    st32(f + F_LEN, (uint32_t)S);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);
    st32(f + F_LEN, 0xFFFFFFFFu);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);
    st32(f + F_VALLEN, 6);                       /* fields disagree with length */
    refresh_crc(seg, 64);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);
    st32(f + F_KEYLEN, PQ_NO_KEY);               /* "no key" but key bytes counted in length */
    refresh_crc(seg, 64);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);
    st32(f + F_KEYLEN, 0xFFFFFFFEu);
    refresh_crc(seg, 64);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);
    /* Field lengths whose 32-bit sum wraps to the right total. */
    st32(f + F_KEYLEN, 2);
    st32(f + F_HDRLEN, 0x80000000u);
    st32(f + F_VALLEN, 0x80000000u + 5);
    refresh_crc(seg, 64);
    CHECK_RC(pq_segment_parse(seg, 64, 100, S, &out), -PQ_ECORRUPT);
    memcpy(f, saved, sizeof saved);

    /* The frame is whole but for another offset. */
    CHECK_RC(pq_segment_parse(seg, 64, 101, S, &out), -PQ_ECORRUPT);
    CHECK_CONTAINS(pq_error_message(), "100");
    CHECK_CONTAINS(pq_error_message(), "101");
    CHECK_OK(pq_segment_parse(seg, 64, 100, S, &out));
    guarded_free(&g);
}

static void test_crc_mismatch_names_file_and_position(void)
{
    pq_segment_t *seg = NULL;
    uint64_t pos[8], end;
    CHECK_OK(pq_segment_create(pqt_dir, 3000, S, 1, &seg));
    REQUIRE(seg);
    REQUIRE(put_assorted(seg, 8, pos, &end) == 0);
    pq_segment_decref(seg);

    /* Flip one value byte of record 3000+5 on disk. */
    unsigned char b;
    uint64_t at = pos[5] + 48 + 3 + 3 + 10;   /* past key "key" and headers "h=1" */
    REQUIRE(file_pread(seg_path(3000), &b, 1, (off_t)at) == 0);
    b ^= 0x01;
    REQUIRE(file_pwrite(seg_path(3000), &b, 1, (off_t)at) == 0);

    seg = NULL;
    CHECK_OK(pq_segment_open(pqt_dir, 3000, S, &seg));
    REQUIRE(seg);
    pq_record_t r;
    for (int i = 0; i < 8; i++) {
        pq_error_clear();
        int rc = pq_segment_read(seg, 3000 + (uint64_t)i, &r);
        if (i != 5) {
            CHECK_OK(rc);
            continue;
        }
        CHECK_RC(rc, -PQ_ECORRUPT);
        char want[64];
        snprintf(want, sizeof want, "byte %llu", (unsigned long long)pos[5]);
        CHECK_CONTAINS(pq_error_message(), want);
        CHECK_CONTAINS(pq_error_message(), seg_path(3000));
        CHECK_CONTAINS(pq_error_message(), "CRC");
    }
    /* A flipped bit in the offset field is caught by the CRC as well. */
    seg->map[pos[2] + F_OFFSET] ^= 0x40;
    CHECK_RC(pq_segment_read(seg, 3002, &r), -PQ_ECORRUPT);
    pq_segment_decref(seg);
}

/* ---- recovery scan ---- */

static void test_scan_stops_at_torn_frame_and_rebuilds_index(void)
{
    pq_segment_t *seg = NULL;
    uint64_t pos[10], end, end_pos, next;
    CHECK_OK(pq_segment_create(pqt_dir, 70, S, 1, &seg));
    REQUIRE(seg);
    REQUIRE(put_assorted(seg, 10, pos, &end) == 0);

    /* The index is derived: lose it, garble record 77 (a torn write). */
    memset(seg->map + S - 4 * 10, 0, 4 * 10);
    seg->map[pos[7] + 20] ^= 0xFF;
    unsigned char after[S / 4];
    size_t tail_len = end - pos[7];
    REQUIRE(tail_len <= sizeof after);
    memcpy(after, seg->map + pos[7], tail_len);

    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 70, &end_pos, &next), 7);
    CHECK_EQ(end_pos, pos[7]);
    CHECK_EQ(next, 77);
    CHECK_EQ(pq_error_message()[0], '\0');   /* the frame that ended the scan is no error */
    for (int i = 0; i < 7; i++) {
        CHECK_EQ(pq_segment_index_get(seg, (uint64_t)i), pos[i]);
        pq_record_t r;
        CHECK_OK(pq_segment_read(seg, 70 + (uint64_t)i, &r));
    }
    CHECK_EQ(pq_segment_index_get(seg, 7), 0);
    CHECK(memcmp(after, seg->map + pos[7], tail_len) == 0);   /* nothing past it touched */

    /* A frame cut short: its second half never reached the file. */
    memset(seg->map + S - 4 * 10, 0, 4 * 10);
    seg->map[pos[7] + 20] ^= 0xFF;   /* repair 77 */
    memset(seg->map + pos[9] + 24, 0, end - pos[9] - 24);
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 70, &end_pos, &next), 9);
    CHECK_EQ(end_pos, pos[9]);
    CHECK_EQ(next, 79);

    /* A length field pointing past the data region. */
    st32(seg->map + pos[4] + F_LEN, (uint32_t)(S - pos[4]));
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 70, &end_pos, &next), 4);
    CHECK_EQ(end_pos, pos[4]);
    pq_segment_decref(seg);
}

static void test_scan_from_mid_segment_and_offset_gaps(void)
{
    guarded_t g;
    REQUIRE(guarded_init(&g, 200, S) == 0);
    pq_segment_t *seg = &g.seg;
    uint64_t end_pos, next, pos[10], end;

    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 200, &end_pos, &next), 0);
    CHECK_EQ(end_pos, PQ_SEGMENT_HEADER_SIZE);
    CHECK_EQ(next, 200);

    REQUIRE(put_assorted(seg, 10, pos, &end) == 0);
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 200, &end_pos, &next), 10);
    CHECK_EQ(end_pos, end);
    CHECK_EQ(next, 210);
    CHECK_EQ(pq_segment_scan(seg, pos[3], 203, &end_pos, &next), 7);
    CHECK_EQ(next, 210);
    /* The expected offset sequence is part of validity. */
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 201, &end_pos, &next), 0);
    CHECK_EQ(end_pos, PQ_SEGMENT_HEADER_SIZE);
    CHECK_EQ(next, 201);

    /* Record 206 rewritten (valid CRC) as offset 300: the scan ends at 206. */
    pq_record_t r;
    CHECK_OK(pq_segment_read(seg, 206, &r));
    unsigned char *f = seg->map + pos[6];
    uint64_t bogus = 300;
    memcpy(f + F_OFFSET, &bogus, 8);
    refresh_crc(seg, pos[6]);
    CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 200, &end_pos, &next), 6);
    CHECK_EQ(next, 206);
    CHECK_RC(pq_segment_read(seg, 206, &r), -PQ_ECORRUPT);
    guarded_free(&g);
}

/* ---- a full segment ---- */

/* Fill a segment with frames of value length vlen; return the count. */
static uint64_t fill(pq_segment_t *seg, uint32_t vlen, uint64_t *end)
{
    char val[256] = {0};
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE, n = 0;
    for (;;) {
        pq_record_t r = make_rec(seg->base + n, NULL, NULL, val, vlen);
        uint64_t fs = pq_frame_size(r.key_len, r.headers_len, r.value_len);
        if (pos + fs > pq_segment_data_limit(seg, n))
            break;
        pq_segment_write(seg, pos, &r);
        pos += fs;
        n++;
    }
    *end = pos;
    return n;
}

static void test_full_segment_by_data_limit(void)
{
    struct {
        uint32_t vlen;          /* frame size 48 + vlen, padded */
        uint64_t expect;        /* floor((S - 64) / (frame + 4)) */
    } cases[] = {
        {72, (S - 64) / (120 + 4)},   /* 528: frames and index meet exactly */
        {8, (S - 64) / (56 + 4)},     /* 1091 */
        {200, (S - 64) / (248 + 4)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        guarded_t g;
        REQUIRE(guarded_init(&g, 10, S) == 0);
        pq_segment_t *seg = &g.seg;
        CHECK_EQ(pq_segment_data_limit(seg, 0), S - 4);
        uint64_t end, end_pos, next;
        uint64_t n = fill(seg, cases[c].vlen, &end);
        CHECK_EQ(n, cases[c].expect);
        CHECK(end <= S - 4 * n);                       /* data below the index */
        uint64_t fs = pq_frame_size(PQ_NO_KEY, 0, cases[c].vlen);
        CHECK(end + fs > pq_segment_data_limit(seg, n)); /* and the next would not fit */
        if (c == 0)
            CHECK_EQ(end, S - 4 * n);
        int bad = 0;
        for (uint64_t i = 0; i < n; i++) {
            pq_record_t r;
            bad += pq_segment_read(seg, 10 + i, &r) != 0 || r.value_len != cases[c].vlen;
        }
        CHECK_EQ(bad, 0);
        /* Recovery over a full segment: the index region is not taken for frames. */
        memset(seg->map + S - 4 * n, 0, 4 * n);
        CHECK_EQ(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, 10, &end_pos, &next), n);
        CHECK_EQ(end_pos, end);
        CHECK_EQ(next, 10 + n);
        guarded_free(&g);
    }
}

static void test_read_beyond_capacity_is_refused(void)
{
    /* pq_segment_read's own bound on the offset ("cannot hold offset") must
     * hold for any offset, including those whose index position computed in
     * 64 bits wraps around; a damaged state file can ask for them. */
    guarded_t g;
    REQUIRE(guarded_init(&g, 1000, S) == 0);
    pq_segment_t *seg = &g.seg;
    uint64_t pos[3], end;
    REQUIRE(put_assorted(seg, 3, pos, &end) == 0);
    pq_record_t r;
    CHECK_OK(pq_segment_read(seg, 1002, &r));
    CHECK_RC(pq_segment_read(seg, 1003, &r), -PQ_ECORRUPT);   /* index entry 0: outside data */
    uint64_t cap = (S - PQ_SEGMENT_HEADER_SIZE) / PQ_INDEX_ENTRY_SIZE;
    CHECK_RC(pq_segment_read(seg, 1000 + cap - 1, &r), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_read(seg, 1000 + cap, &r), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_read(seg, 1000 + ((uint64_t)1 << 40), &r), -PQ_ECORRUPT);
    /* 4 * (i + 1) == 2^64 == 0 */
    CHECK_RC(pq_segment_read(seg, 1000 + ((uint64_t)1 << 62) - 1, &r), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_read(seg, 1000 + ((uint64_t)1 << 63) - 1, &r), -PQ_ECORRUPT);
    CHECK_RC(pq_segment_read(seg, 999, &r), -PQ_ECORRUPT);   /* below the base */
    /* 4 * (i + 1) == 4: would read index entry 0 for a wildly wrong offset */
    CHECK_RC(pq_segment_read(seg, 1000 + ((uint64_t)1 << 62), &r), -PQ_ECORRUPT);
    guarded_free(&g);
}

/* ---- references and sync ---- */

static void test_references_and_sync(void)
{
    pq_segment_t *seg = NULL;
    CHECK_OK(pq_segment_create(pqt_dir, 5, S, 1, &seg));
    REQUIRE(seg);
    pq_segment_incref(seg);
    pq_segment_incref(seg);
    pq_segment_decref(seg);
    pq_segment_decref(seg);
    CHECK(memcmp(seg->map, "PYQSEGMT", 8) == 0);   /* one reference left: still mapped */
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    pq_record_t r = make_rec(5, "k", NULL, "v", 1);
    REQUIRE(put(seg, &pos, &r) == 0);
    CHECK_OK(pq_segment_sync(seg));
    pq_segment_decref(seg);
    pq_segment_decref(NULL);   /* tolerated */
}

PQT_MAIN(PQT_CASE(test_names_and_frame_sizes),
         PQT_CASE(test_create_writes_the_documented_header),
         PQT_CASE(test_create_open_round_trip),
         PQT_CASE(test_create_replaces_a_leftover_file),
         PQT_CASE(test_create_failure_leaves_nothing),
         PQT_CASE(test_open_rejects_bad_magic),
         PQT_CASE(test_open_rejects_bad_header_crc),
         PQT_CASE(test_open_rejects_other_version),
         PQT_CASE(test_open_rejects_header_of_another_segment),
         PQT_CASE(test_open_rejects_wrong_file_size),
         PQT_CASE(test_open_missing_file),
         PQT_CASE(test_frames_with_and_without_key_and_headers),
         PQT_CASE(test_padding_is_zeroed),
         PQT_CASE(test_parse_rejects_malformed_frames),
         PQT_CASE(test_crc_mismatch_names_file_and_position),
         PQT_CASE(test_scan_stops_at_torn_frame_and_rebuilds_index),
         PQT_CASE(test_scan_from_mid_segment_and_offset_gaps),
         PQT_CASE(test_full_segment_by_data_limit),
         PQT_CASE(test_read_beyond_capacity_is_refused),
         PQT_CASE(test_references_and_sync))

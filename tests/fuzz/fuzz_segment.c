/* fuzz_segment.c - libFuzzer harness: segment validation and partition recovery
 * on arbitrary bytes (input format: fuzz_segment.h).
 *
 * Each input becomes a segment image, checked three ways:
 *   A. in memory, through a pq_segment_t over a mapping with an inaccessible
 *      page on each side, so that reading one byte outside the segment
 *      crashes (AddressSanitizer does not watch mmap'd memory): scan, read
 *      every scanned record, scan again, one probed read and one parse;
 *   B. as a file, through pq_segment_open (header, size, version checks),
 *      then scan and reads;
 *   C. as the tail segment of a partition directory (after an optional good
 *      sealed segment, with an optional state file claiming anything),
 *      through pq_log_open: bounds, every readable record, offset_for_time,
 *      appends (up to a roll, if asked), sync, retention, close, and a
 *      second open.
 * Nothing may crash, leak or read out of bounds, and a few invariants must
 * hold (a record the scan accepted reads back; a partition recovered by scan
 * ends where the scan ended; an append lands at the end and reads back).  A
 * broken invariant aborts with the native error message.
 *
 * Each input works in one directory under $TMPDIR (or /tmp), emptied after
 * every input and removed at exit.
 */
#define _GNU_SOURCE
#include "fuzz_segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "pq_error.h"
#include "segment.h"

#define S ((uint64_t)PQ_SEGMENT_MIN_BYTES)
#define CAPACITY ((S - PQ_SEGMENT_HEADER_SIZE) / PQ_INDEX_ENTRY_SIZE)

#define FUZZ_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "fuzz_segment: invariant broken at %s:%d: %s\n  native error: %s\n", \
                    __FILE__, __LINE__, #cond, pq_error_message());                   \
            abort();                                                                  \
        }                                                                             \
    } while (0)

static char workdir[4096], partdir[4200], filedir[4200];
static char boot_id[40];
static unsigned char img[S];
static unsigned char *guard_region, *guard_map;
static size_t guard_len;
static char guard_name[] = "(fuzz: guarded memory segment)";

static void st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static void empty_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[4400];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static void remove_workdir(void)
{
    empty_dir(partdir);
    empty_dir(filedir);
    rmdir(partdir);
    rmdir(filedir);
    rmdir(workdir);
}

static void init_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    const char *tmp = getenv("TMPDIR");
    snprintf(workdir, sizeof workdir, "%s/pq-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(workdir)) {
        perror("fuzz_segment: mkdtemp");
        abort();
    }
    snprintf(partdir, sizeof partdir, "%s/p", workdir);
    snprintf(filedir, sizeof filedir, "%s/f", workdir);
    if (mkdir(partdir, 0700) != 0 || mkdir(filedir, 0700) != 0) {
        perror("fuzz_segment: mkdir");
        abort();
    }
    atexit(remove_workdir);

    /* The identity log.c stamps into a state it trusts (FORMAT.md: boot id). */
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, boot_id, 39);
        (void)n;
        close(fd);
    }

    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    guard_len = S + 2 * page;
    guard_region = mmap(NULL, guard_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_region == MAP_FAILED || mprotect(guard_region + page, S, PROT_READ | PROT_WRITE) != 0) {
        perror("fuzz_segment: mmap");
        abort();
    }
    guard_map = guard_region + page;
}

static void put_header(unsigned char *h, uint64_t base)
{
    memset(h, 0, PQ_SEGMENT_HEADER_SIZE);
    memcpy(h, "PYQSEGMT", 8);
    st32(h + 8, PQ_FORMAT_VERSION);
    st32(h + 12, PQ_SEGMENT_HEADER_SIZE);
    st64(h + 16, base);
    st64(h + 24, S);
    st64(h + 32, 1);
    st32(h + 60, pq_crc32c(0, h, 60));
}

/* Give every frame the body lays out (by its length fields) a correct CRC, so
 * that the fuzzer reaches the checks behind the CRC. */
static void fix_frames(unsigned char *m)
{
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    for (int k = 0; k < 8192 && pos + PQ_FRAME_HEADER_SIZE <= S; k++) {
        uint32_t len = ld32(m + pos);
        if (len < PQ_FRAME_HEADER_SIZE || pos + len > S)
            break;
        st32(m + pos + 4, pq_crc32c(0, m + pos + 8, len - 8));
        pos += ((uint64_t)len + PQ_FRAME_ALIGN - 1) & ~(uint64_t)(PQ_FRAME_ALIGN - 1);
    }
}

static int within(const pq_segment_t *seg, const void *p, uint64_t len)
{
    const unsigned char *c = p;
    return c >= seg->map && c <= seg->map + seg->size && len <= (uint64_t)(seg->map + seg->size - c);
}

static void check_record(const pq_segment_t *seg, const pq_record_t *r, uint64_t offset)
{
    FUZZ_CHECK(r->offset == offset);
    FUZZ_CHECK(r->key_len == PQ_NO_KEY ? r->key == NULL : within(seg, r->key, r->key_len));
    FUZZ_CHECK(within(seg, r->headers, r->headers_len));
    FUZZ_CHECK(within(seg, r->value, r->value_len));
    FUZZ_CHECK(r->position >= PQ_SEGMENT_HEADER_SIZE && r->position < seg->size);
    FUZZ_CHECK(within(seg, seg->map + r->position, r->frame_len));
}

/* A: the image in guarded memory.  Returns the number of frames scanned. */
static uint64_t check_memory(uint64_t base, uint64_t probe)
{
    memcpy(guard_map, img, S);
    pq_segment_t seg;
    memset(&seg, 0, sizeof seg);
    seg.base = base;
    seg.size = S;
    seg.map = guard_map;
    seg.fd = -1;
    seg.refs = 1;
    seg.path = guard_name;

    uint64_t end_pos, next, end2, next2;
    uint64_t n = pq_segment_scan(&seg, PQ_SEGMENT_HEADER_SIZE, base, &end_pos, &next);
    FUZZ_CHECK(next == base + n);
    FUZZ_CHECK(end_pos >= PQ_SEGMENT_HEADER_SIZE && end_pos <= S);
    FUZZ_CHECK(n <= CAPACITY);
    pq_record_t r;
    for (uint64_t i = 0; i < n + 2; i++) {
        int rc = pq_segment_read(&seg, base + i, &r);
        if (i < n)
            FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(rc == 0 || rc == -PQ_ECORRUPT);
        if (rc == 0)
            check_record(&seg, &r, base + i);
    }
    /* The scan is idempotent: its index entries do not disturb the frames. */
    FUZZ_CHECK(pq_segment_scan(&seg, PQ_SEGMENT_HEADER_SIZE, base, &end2, &next2) == n);
    FUZZ_CHECK(end2 == end_pos && next2 == next);

    /* Any offset this segment could hold (and a few past), any 32-bit position. */
    uint64_t off = base + probe % (CAPACITY + 8);
    int rc = pq_segment_read(&seg, off, &r);
    FUZZ_CHECK(rc == 0 || rc == -PQ_ECORRUPT);
    if (rc == 0)
        check_record(&seg, &r, off);
    uint64_t pos = probe >> 32, limit = S - (probe & 0xfff);
    rc = pq_segment_parse(&seg, pos, off, limit, &r);
    FUZZ_CHECK(rc == 0 || rc == -PQ_ECORRUPT);
    if (rc == 0) {
        check_record(&seg, &r, off);
        FUZZ_CHECK(pos + r.frame_len <= limit);
    }
    pq_error_clear();
    return n;
}

static int write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    close(fd);
    return 0;
}

static void write_segment_file(const char *dir, uint64_t base)
{
    char name[64], path[4400];
    pq_segment_name(base, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (write_file(path, img, S) != 0) {
        perror("fuzz_segment: write segment");
        abort();
    }
}

/* B: the image as a file, through pq_segment_open. */
static void check_file(uint64_t base, int header_good, uint64_t scanned)
{
    write_segment_file(filedir, base);
    pq_segment_t *seg = NULL;
    int rc = pq_segment_open(filedir, base, S, &seg);
    FUZZ_CHECK(rc == 0 || rc == -PQ_ECORRUPT || rc == -PQ_EFORMAT);
    if (header_good)
        FUZZ_CHECK(rc == 0);
    if (rc == 0) {
        FUZZ_CHECK(seg != NULL && seg->base == base && seg->size == S);
        uint64_t end_pos, next;
        FUZZ_CHECK(pq_segment_scan(seg, PQ_SEGMENT_HEADER_SIZE, base, &end_pos, &next) == scanned);
        for (uint64_t i = 0; i < scanned; i++) {
            pq_record_t r;
            FUZZ_CHECK(pq_segment_read(seg, base + i, &r) == 0);
            check_record(seg, &r, base + i);
        }
        FUZZ_CHECK(pq_segment_sync(seg) == 0);
        pq_segment_decref(seg);
    } else {
        FUZZ_CHECK(seg == NULL);
    }
    pq_error_clear();
    empty_dir(filedir);
}

/* Every record of [start, end) that reads, checked; errors skip one offset.
 * Returns the number of records that failed to read. */
static uint64_t read_all(pq_log_t *log)
{
    static pq_record_t recs[64];
    uint64_t start, end, failed = 0;
    pq_log_bounds(log, &start, &end);
    FUZZ_CHECK(start <= end);
    uint64_t off = start;
    for (int calls = 0; off < end && calls < 4000; calls++) {
        pq_segment_t *seg = NULL;
        int n = pq_log_read_many(log, off, recs, 64, &seg);
        if (n < 0) {
            FUZZ_CHECK(n == -PQ_ECORRUPT || n == -PQ_ERANGE || n == -ENOENT);
            FUZZ_CHECK(seg == NULL);
            failed++;
            off++;
            continue;
        }
        FUZZ_CHECK(n > 0);   /* off < end: something is there */
        for (int i = 0; i < n; i++)
            check_record(seg, &recs[i], off + (uint64_t)i);
        pq_segment_decref(seg);
        off += (uint64_t)n;
    }
    pq_error_clear();
    return failed;
}

/* C: the image as the tail of a partition directory. */
static void check_log(uint8_t flags, const uint8_t *state, uint64_t base, int header_good,
                      uint64_t scanned, uint64_t probe, const uint8_t *value, size_t value_len)
{
    if (flags & PQF_SEALED) {
        pq_segment_t *seg = NULL;
        if (pq_segment_create(partdir, 0, S, 1, &seg) != 0) {
            fprintf(stderr, "fuzz_segment: cannot create a segment: %s\n", pq_error_message());
            abort();
        }
        uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
        for (uint64_t i = 0; i < PQF_SEALED_RECORDS; i++) {
            pq_record_t r;
            memset(&r, 0, sizeof r);
            r.offset = i;
            r.timestamp = 1000 + (int64_t)i;
            r.key = "k";
            r.key_len = 1;
            r.value = "sealed";
            r.value_len = 6;
            pos += pq_segment_write(seg, pos, &r);
        }
        pq_segment_decref(seg);
    }
    write_segment_file(partdir, base);
    if (state) {
        /* FORMAT.md, "Partition state": identity of this boot, then the fields. */
        static unsigned char st[4096];
        memset(st, 0, sizeof st);
        memcpy(st, "PYQSTATE", 8);
        st32(st + 8, 1);
        st32(st + 12, sizeof st);
        st64(st + 16, S);
        memcpy(st + 24, boot_id, 40);
        memcpy(st + PQF_STATE_AT, state, PQF_STATE_LEN);
        char path[4400];
        snprintf(path, sizeof path, "%s/state", partdir);
        if (write_file(path, st, sizeof st) != 0)
            abort();
    }

    pq_log_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.segment_bytes = S;
    cfg.max_message_bytes = 4096;
    if (flags & PQF_RETENTION) {
        cfg.retention_bytes = S;
        cfg.retention_ns = 1;
    }
    /* A partition recovered by a scan of good segments must open, and end
     * where the scan of its tail ended. */
    int scan_only = header_good && !state;

    pq_log_t *log = NULL;
    int rc = pq_log_open(partdir, &cfg, 0, &log);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && log == NULL);
        FUZZ_CHECK(!scan_only);
        pq_error_clear();
        return;
    }
    uint64_t start, end;
    pq_log_bounds(log, &start, &end);
    if (scan_only) {
        FUZZ_CHECK(end == base + scanned);
        FUZZ_CHECK(start == ((flags & PQF_SEALED) ? 0 : base));
    }
    uint64_t failed = read_all(log);
    if (scan_only)
        FUZZ_CHECK(failed == 0);

    uint64_t t;
    rc = pq_log_offset_for_time(log, (int64_t)probe, &t);
    FUZZ_CHECK(rc <= 0);
    if (rc == 0)
        FUZZ_CHECK(t >= start && t <= end);

    pq_record_t recs[2];
    memset(recs, 0, sizeof recs);
    for (int i = 0; i < 2; i++) {
        recs[i].key = i ? NULL : "key";
        recs[i].key_len = i ? PQ_NO_KEY : 3;
        recs[i].value = value;
        recs[i].value_len = (uint32_t)(value_len > 512 ? 512 : value_len);
    }
    uint64_t first = 0;
    rc = pq_log_append(log, recs, 2, &first);
    FUZZ_CHECK(rc <= 0);
    if (scan_only)
        FUZZ_CHECK(rc == 0);
    uint64_t after = end;
    if (rc == 0) {
        FUZZ_CHECK(first == end);   /* dense */
        for (int i = 0; i < 2; i++) {
            pq_record_t got;
            pq_segment_t *seg = NULL;
            FUZZ_CHECK(pq_log_read_many(log, first + (uint64_t)i, &got, 1, &seg) == 1);
            check_record(seg, &got, first + (uint64_t)i);
            FUZZ_CHECK(got.value_len == recs[i].value_len);
            FUZZ_CHECK(got.value_len == 0 || memcmp(got.value, value, got.value_len) == 0);
            pq_segment_decref(seg);
        }
        after = end + 2;
        uint64_t s2, e2;
        pq_log_bounds(log, &s2, &e2);
        FUZZ_CHECK(e2 == after);
    }
    if ((flags & PQF_ROLL) && rc == 0) {
        /* Fill the tail until a new segment appears: roll, and retention on a roll. */
        static unsigned char big[4000];
        memset(big, (int)(probe & 0xff), sizeof big);
        pq_record_t b;
        memset(&b, 0, sizeof b);
        b.key_len = PQ_NO_KEY;
        b.value = big;
        b.value_len = sizeof big;
        uint64_t segs0, segs, bytes0;
        pq_log_disk_usage(log, &segs0, &bytes0);
        for (int k = 0; k < 40; k++) {
            rc = pq_log_append(log, &b, 1, &first);
            FUZZ_CHECK(rc <= 0);
            if (scan_only)
                FUZZ_CHECK(rc == 0);
            if (rc != 0)
                break;
            FUZZ_CHECK(first == after);
            after++;
            pq_log_disk_usage(log, &segs, &bytes0);
            if (segs != segs0)
                break;
        }
        read_all(log);
    }
    pq_error_clear();
    FUZZ_CHECK(pq_log_sync(log, UINT64_MAX) <= 0);
    FUZZ_CHECK(pq_log_wait(log, end, 0) >= 0);
    if (flags & PQF_RETENTION)
        (void)pq_log_enforce_retention(log, (int64_t)(probe >> 1));
    uint64_t nseg, bytes;
    pq_log_disk_usage(log, &nseg, &bytes);
    pq_log_close(log);
    pq_error_clear();

    /* Reopen: what the first handle left must open, at the same end. */
    log = NULL;
    rc = pq_log_open(partdir, &cfg, 0, &log);
    if (after != end)
        FUZZ_CHECK(rc == 0);
    if (rc == 0) {
        uint64_t s2, e2;
        pq_log_bounds(log, &s2, &e2);
        if (after != end)
            FUZZ_CHECK(e2 == after);
        read_all(log);
        pq_log_close(log);
    }
    pq_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PQF_PREFIX)
        return 0;
    init_once();
    uint8_t flags = data[0];
    size_t idx_len = 4 * (size_t)data[1];
    uint64_t probe;
    memcpy(&probe, data + 2, 8);
    const uint8_t *p = data + PQF_PREFIX;
    size_t left = size - PQF_PREFIX;
    const uint8_t *state = NULL;
    if (flags & PQF_STATE) {
        if (left < PQF_STATE_LEN)
            return 0;
        state = p;
        p += PQF_STATE_LEN;
        left -= PQF_STATE_LEN;
    }
    if (idx_len > left)
        idx_len = left & ~(size_t)3;
    size_t body_len = left - idx_len;
    const uint8_t *idx = p + body_len;
    uint64_t base = (flags & PQF_SEALED) ? PQF_SEALED_RECORDS : 0;

    int hdr = flags & PQF_HDR_MASK;
    int header_good = hdr == PQF_HDR_VALID || hdr == PQF_HDR_VALID2;
    size_t at = header_good ? PQ_SEGMENT_HEADER_SIZE : 0;
    memset(img, 0, S);
    if (body_len > S - at)
        body_len = S - at;
    memcpy(img + at, p, body_len);
    memcpy(img + S - idx_len, idx, idx_len);
    if (header_good)
        put_header(img, base);
    else if (hdr == PQF_HDR_FIXCRC)
        st32(img + 60, pq_crc32c(0, img, 60));
    if (flags & PQF_FIX_FRAMES)
        fix_frames(img);

    pq_error_clear();
    uint64_t scanned = check_memory(base, probe);
    check_file(base, header_good, scanned);
    check_log(flags, state, base, header_good, scanned, probe, p, body_len);
    empty_dir(partdir);
    return 0;
}

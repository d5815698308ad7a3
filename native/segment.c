/* segment.c - one preallocated, mmap'd segment file (see segment.h, docs/FORMAT.md).
 *
 * Records grow forward from the header; their 4-byte index entries grow
 * backward from the end of the file, so one preallocation and one mapping hold
 * both, and a segment is full when the two would meet.  The index is derived
 * data: recovery rebuilds it from the frames, never the other way round.
 */
#define _GNU_SOURCE
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "pq_error.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the on-disk format is little-endian and this code stores it natively"
#endif

static const char SEGMENT_MAGIC[8] = {'P', 'Y', 'Q', 'S', 'E', 'G', 'M', 'T'};

/* Header field positions (docs/FORMAT.md, "Segment header"). */
#define H_MAGIC     0
#define H_VERSION   8
#define H_HDRSIZE   12
#define H_BASE      16
#define H_SIZE      24
#define H_CREATED   32
#define H_CRC       60

/* Frame field positions (docs/FORMAT.md, "Record frame"). */
#define F_LEN       0
#define F_CRC       4
#define F_OFFSET    8
#define F_TIME      16
#define F_DELIVER   24
#define F_KEYLEN    32
#define F_HDRLEN    36
#define F_VALLEN    40
#define F_ATTR      44

static inline uint32_t ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

uint64_t pq_frame_size(uint32_t key_len, uint32_t headers_len, uint32_t value_len)
{
    uint64_t k = key_len == PQ_NO_KEY ? 0 : key_len;
    uint64_t n = PQ_FRAME_HEADER_SIZE + k + headers_len + value_len;
    n = (n + PQ_FRAME_ALIGN - 1) & ~(uint64_t)(PQ_FRAME_ALIGN - 1);
    return n > UINT32_MAX ? 0 : n;
}

void pq_segment_name(uint64_t base, char *buf, size_t len)
{
    snprintf(buf, len, "%020llu%s", (unsigned long long)base, PQ_SEGMENT_SUFFIX);
}

static char *segment_path(const char *dir, uint64_t base)
{
    char name[40];
    pq_segment_name(base, name, sizeof name);
    size_t n = strlen(dir) + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int map_segment(pq_segment_t *seg)
{
    void *m = mmap(NULL, seg->size, PROT_READ | PROT_WRITE, MAP_SHARED, seg->fd, 0);
    if (m == MAP_FAILED)
        return pq_error_set(-errno, "cannot map segment %s (%llu bytes): %s", seg->path,
                            (unsigned long long)seg->size, strerror(errno));
    seg->map = m;
    return 0;
}

static void free_segment(pq_segment_t *seg)
{
    if (seg->map)
        munmap(seg->map, seg->size);
    if (seg->fd >= 0)
        close(seg->fd);
    free(seg->path);
    free(seg);
}

static pq_segment_t *new_segment(const char *dir, uint64_t base, uint64_t size)
{
    pq_segment_t *seg = calloc(1, sizeof *seg);
    if (!seg)
        return NULL;
    seg->fd = -1;
    seg->base = base;
    seg->size = size;
    seg->refs = 1;
    seg->path = segment_path(dir, base);
    if (!seg->path) {
        free(seg);
        return NULL;
    }
    return seg;
}

int pq_segment_create(const char *dir, uint64_t base, uint64_t size, int64_t now_ns,
                      pq_segment_t **out)
{
    int rc;
    pq_segment_t *seg = new_segment(dir, base, size);
    if (!seg)
        return pq_error_set(-ENOMEM, "out of memory creating segment %llu", (unsigned long long)base);

    seg->fd = open(seg->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (seg->fd < 0) {
        rc = pq_error_set(-errno, "cannot create segment %s: %s", seg->path, strerror(errno));
        free_segment(seg);
        return rc;
    }
    /* A leftover of a crashed roll may hold stale bytes; start from zeros so a
     * recovery scan can never mistake them for frames of this segment. */
    if (ftruncate(seg->fd, 0) != 0) {
        rc = pq_error_set(-errno, "cannot reset segment %s: %s", seg->path, strerror(errno));
        goto fail;
    }
    int err = posix_fallocate(seg->fd, 0, (off_t)size);
    if (err != 0) {
        rc = pq_error_set(-err, "cannot preallocate segment %s (%llu bytes): %s", seg->path,
                          (unsigned long long)size, strerror(err));
        goto fail;
    }
    if ((rc = map_segment(seg)) != 0)
        goto fail;

    unsigned char *h = seg->map;
    memcpy(h + H_MAGIC, SEGMENT_MAGIC, 8);
    st32(h + H_VERSION, PQ_FORMAT_VERSION);
    st32(h + H_HDRSIZE, PQ_SEGMENT_HEADER_SIZE);
    st64(h + H_BASE, base);
    st64(h + H_SIZE, size);
    st64(h + H_CREATED, (uint64_t)now_ns);
    st32(h + H_CRC, pq_crc32c(0, h, H_CRC));
    *out = seg;
    return 0;

fail:
    unlink(seg->path);
    free_segment(seg);
    return rc;
}

int pq_segment_open(const char *dir, uint64_t base, uint64_t size, pq_segment_t **out)
{
    int rc;
    struct stat st;
    pq_segment_t *seg = new_segment(dir, base, size);
    if (!seg)
        return pq_error_set(-ENOMEM, "out of memory opening segment %llu", (unsigned long long)base);

    seg->fd = open(seg->path, O_RDWR | O_CLOEXEC);
    if (seg->fd < 0) {
        rc = pq_error_set(-errno, "cannot open segment %s: %s", seg->path, strerror(errno));
        goto fail;
    }
    if (fstat(seg->fd, &st) != 0) {
        rc = pq_error_set(-errno, "cannot stat segment %s: %s", seg->path, strerror(errno));
        goto fail;
    }
    /* A shorter file would SIGBUS on access past its end: refuse it here. */
    if ((uint64_t)st.st_size != size) {
        rc = pq_error_set(-PQ_ECORRUPT, "segment %s is %lld bytes, expected %llu (truncated or resized)",
                          seg->path, (long long)st.st_size, (unsigned long long)size);
        goto fail;
    }
    if ((rc = map_segment(seg)) != 0)
        goto fail;

    const unsigned char *h = seg->map;
    if (memcmp(h + H_MAGIC, SEGMENT_MAGIC, 8) != 0 || ld32(h + H_CRC) != pq_crc32c(0, h, H_CRC)) {
        rc = pq_error_set(-PQ_ECORRUPT, "segment %s: bad header at byte 0 (magic or CRC)", seg->path);
        goto fail;
    }
    if (ld32(h + H_VERSION) != PQ_FORMAT_VERSION || ld32(h + H_HDRSIZE) != PQ_SEGMENT_HEADER_SIZE) {
        rc = pq_error_set(-PQ_EFORMAT, "segment %s: format version %u, this build reads %u",
                          seg->path, ld32(h + H_VERSION), PQ_FORMAT_VERSION);
        goto fail;
    }
    if (ld64(h + H_BASE) != base || ld64(h + H_SIZE) != size) {
        rc = pq_error_set(-PQ_ECORRUPT, "segment %s: header says base %llu size %llu, expected %llu and %llu",
                          seg->path, (unsigned long long)ld64(h + H_BASE),
                          (unsigned long long)ld64(h + H_SIZE), (unsigned long long)base,
                          (unsigned long long)size);
        goto fail;
    }
    *out = seg;
    return 0;

fail:
    free_segment(seg);
    return rc;
}

void pq_segment_incref(pq_segment_t *seg)
{
    __atomic_add_fetch(&seg->refs, 1, __ATOMIC_RELAXED);
}

void pq_segment_decref(pq_segment_t *seg)
{
    if (seg && __atomic_sub_fetch(&seg->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free_segment(seg);
}

uint32_t pq_segment_write(pq_segment_t *seg, uint64_t pos, const pq_record_t *rec)
{
    unsigned char *f = seg->map + pos;
    uint32_t klen = rec->key_len == PQ_NO_KEY ? 0 : rec->key_len;
    uint32_t len = PQ_FRAME_HEADER_SIZE + klen + rec->headers_len + rec->value_len;
    uint32_t padded = (uint32_t)pq_frame_size(rec->key_len, rec->headers_len, rec->value_len);

    st32(f + F_LEN, len);
    st64(f + F_OFFSET, rec->offset);
    st64(f + F_TIME, (uint64_t)rec->timestamp);
    st64(f + F_DELIVER, (uint64_t)rec->deliver_at);
    st32(f + F_KEYLEN, rec->key_len);
    st32(f + F_HDRLEN, rec->headers_len);
    st32(f + F_VALLEN, rec->value_len);
    st32(f + F_ATTR, rec->attributes);
    unsigned char *p = f + PQ_FRAME_HEADER_SIZE;
    if (klen) { memcpy(p, rec->key, klen); p += klen; }
    if (rec->headers_len) { memcpy(p, rec->headers, rec->headers_len); p += rec->headers_len; }
    if (rec->value_len) { memcpy(p, rec->value, rec->value_len); p += rec->value_len; }
    if (padded > len)
        memset(p, 0, padded - len);
    st32(f + F_CRC, pq_crc32c(0, f + F_OFFSET, len - F_OFFSET));
    pq_segment_index_set(seg, rec->offset - seg->base, (uint32_t)pos);
    return padded;
}

int pq_segment_parse(const pq_segment_t *seg, uint64_t pos, uint64_t offset, uint64_t limit,
                     pq_record_t *rec)
{
    /* Written so that nothing wraps: pos may be any 64-bit value. */
    if (pos < PQ_SEGMENT_HEADER_SIZE || (pos & (PQ_FRAME_ALIGN - 1)) || limit > seg->size ||
        pos > limit || limit - pos < PQ_FRAME_HEADER_SIZE)
        return pq_error_set(-PQ_ECORRUPT, "segment %s: offset %llu has an index entry pointing to byte %llu, outside the data region",
                            seg->path, (unsigned long long)offset, (unsigned long long)pos);
    const unsigned char *f = seg->map + pos;
    uint32_t len = ld32(f + F_LEN);
    uint32_t klen = ld32(f + F_KEYLEN), hlen = ld32(f + F_HDRLEN), vlen = ld32(f + F_VALLEN);
    uint64_t body = (uint64_t)(klen == PQ_NO_KEY ? 0 : klen) + hlen + vlen;
    if (len < PQ_FRAME_HEADER_SIZE || pos + len > limit || body != len - PQ_FRAME_HEADER_SIZE)
        return pq_error_set(-PQ_ECORRUPT, "segment %s: bad frame length %u at byte %llu (offset %llu)",
                            seg->path, len, (unsigned long long)pos, (unsigned long long)offset);
    if (ld32(f + F_CRC) != pq_crc32c(0, f + F_OFFSET, len - F_OFFSET))
        return pq_error_set(-PQ_ECORRUPT, "segment %s: CRC mismatch in the frame at byte %llu (offset %llu)",
                            seg->path, (unsigned long long)pos, (unsigned long long)offset);
    if (ld64(f + F_OFFSET) != offset)
        return pq_error_set(-PQ_ECORRUPT, "segment %s: frame at byte %llu holds offset %llu, expected %llu",
                            seg->path, (unsigned long long)pos,
                            (unsigned long long)ld64(f + F_OFFSET), (unsigned long long)offset);

    const unsigned char *p = f + PQ_FRAME_HEADER_SIZE;
    rec->offset = offset;
    rec->timestamp = (int64_t)ld64(f + F_TIME);
    rec->deliver_at = (int64_t)ld64(f + F_DELIVER);
    rec->key_len = klen;
    rec->key = klen == PQ_NO_KEY ? NULL : p;
    p += klen == PQ_NO_KEY ? 0 : klen;
    rec->headers_len = hlen;
    rec->headers = p;
    p += hlen;
    rec->value_len = vlen;
    rec->value = p;
    rec->attributes = ld32(f + F_ATTR);
    rec->position = (uint32_t)pos;
    rec->frame_len = len;
    return 0;
}

int pq_segment_read(const pq_segment_t *seg, uint64_t offset, pq_record_t *rec)
{
    uint64_t i = offset - seg->base;
    /* At most (size - header) / 4 records fit.  Compared as a count: the
     * product 4 * (i + 1) wraps for i >= 2^62 - 1 (and for offset < base). */
    if (offset < seg->base || i >= (seg->size - PQ_SEGMENT_HEADER_SIZE) / PQ_INDEX_ENTRY_SIZE)
        return pq_error_set(-PQ_ECORRUPT, "segment %s cannot hold offset %llu",
                            seg->path, (unsigned long long)offset);
    /* i+1 index entries exist, so data ends below the limit for i records. */
    uint64_t limit = seg->size - PQ_INDEX_ENTRY_SIZE * (i + 1);
    return pq_segment_parse(seg, pq_segment_index_get(seg, i), offset, limit, rec);
}

uint64_t pq_segment_scan(pq_segment_t *seg, uint64_t pos, uint64_t offset,
                         uint64_t *end_pos, uint64_t *next_offset)
{
    uint64_t n = 0;
    int64_t last_ts = INT64_MIN;
    pq_record_t rec;
    for (;;) {
        uint64_t i = offset - seg->base;
        if (offset < seg->base || i >= (seg->size - PQ_SEGMENT_HEADER_SIZE) / PQ_INDEX_ENTRY_SIZE)
            break;
        uint64_t limit = pq_segment_data_limit(seg, i);
        if (pos >= limit || pq_segment_parse(seg, pos, offset, limit, &rec) != 0)
            break;
        /* Timestamps never decrease within a partition (FORMAT.md): an older
         * frame here is a leftover from before an earlier cut, not a record. */
        if (rec.timestamp < last_ts)
            break;
        last_ts = rec.timestamp;
        pq_segment_index_set(seg, i, (uint32_t)pos);
        pos += pq_frame_size(rec.key_len, rec.headers_len, rec.value_len);
        offset++;
        n++;
    }
    pq_error_clear();   /* the failing frame that ended the scan is not an error */
    *end_pos = pos;
    *next_offset = offset;
    return n;
}

int pq_segment_sync(pq_segment_t *seg)
{
    if (fdatasync(seg->fd) != 0)
        return pq_error_set(-errno, "cannot sync segment %s: %s", seg->path, strerror(errno));
    return 0;
}

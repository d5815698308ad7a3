/* segment.h - one preallocated, mmap'd segment file of a partition log.
 *
 * The byte layout (header, record frames, the backward-growing offset index)
 * is described in docs/FORMAT.md and nowhere else; the constants below are the
 * ones that document names.
 *
 * A segment is shared by every process that maps it.  It carries no lock of
 * its own: writers hold the partition's append lock (log.c), and readers only
 * look at offsets below the partition's published end, whose frames and index
 * entries were written before that end was published.
 */
#ifndef PQ_SEGMENT_H
#define PQ_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#define PQ_FORMAT_VERSION        1
#define PQ_SEGMENT_HEADER_SIZE   64
#define PQ_FRAME_HEADER_SIZE     48
#define PQ_FRAME_ALIGN           8
#define PQ_INDEX_ENTRY_SIZE      4
#define PQ_NO_KEY                0xFFFFFFFFu
#define PQ_SEGMENT_MIN_BYTES     (64u * 1024)
#define PQ_SEGMENT_MAX_BYTES     (1u << 30)     /* positions are 32-bit */
#define PQ_SEGMENT_SUFFIX        ".seg"

typedef struct pq_segment {
    uint64_t base;          /* offset of the first record */
    uint64_t size;          /* file size, == the topic's segment_bytes */
    unsigned char *map;     /* MAP_SHARED, read-write, whole file */
    int fd;
    int refs;               /* atomic; the segment is unmapped at zero */
    char *path;             /* for error messages */
} pq_segment_t;

/* One record as the caller hands it in, or as a read finds it.  On a read the
 * pointers point into the mapping and stay valid while the segment is held. */
typedef struct pq_record {
    uint64_t offset;
    int64_t timestamp;      /* ns since the epoch */
    int64_t deliver_at;     /* ns since the epoch; 0 = deliver at once */
    const void *key;        /* NULL with key_len == PQ_NO_KEY for "no key" */
    uint32_t key_len;
    uint32_t headers_len;
    const void *headers;    /* opaque to the native core, see FORMAT.md */
    const void *value;
    uint32_t value_len;
    uint32_t attributes;
    uint32_t position;      /* frame position in the segment (reads only) */
    uint32_t frame_len;     /* unpadded frame length (reads only) */
} pq_record_t;

/* Frame size on disk, padding included, for the given field lengths
 * (key_len PQ_NO_KEY counts as 0).  Returns 0 if it would exceed 4 GiB. */
uint64_t pq_frame_size(uint32_t key_len, uint32_t headers_len, uint32_t value_len);

/* The file name of the segment with `base`: 20 zero-padded digits + suffix. */
void pq_segment_name(uint64_t base, char *buf, size_t len);

/* Create (or re-create, if a file of that name is left from a crash) the
 * segment `base` in directory `dir`: preallocate `size` bytes with
 * posix_fallocate, so that a full disk fails here with -ENOSPC/-EFBIG and never
 * later as SIGBUS, map it and write the header.  The new segment holds one
 * reference.  On failure nothing is left mapped and the file is removed. */
int pq_segment_create(const char *dir, uint64_t base, uint64_t size,
                      int64_t now_ns, pq_segment_t **out);

/* Open and map an existing segment file, checking its size and header
 * (-PQ_ECORRUPT or -PQ_EFORMAT naming the file).  One reference. */
int pq_segment_open(const char *dir, uint64_t base, uint64_t size, pq_segment_t **out);

void pq_segment_incref(pq_segment_t *seg);
/* Drop a reference; the last one unmaps and closes. */
void pq_segment_decref(pq_segment_t *seg);

/* First byte past the data region when the segment holds `count` records and
 * one more index entry is to be added. */
static inline uint64_t pq_segment_data_limit(const pq_segment_t *seg, uint64_t count)
{
    return seg->size - PQ_INDEX_ENTRY_SIZE * (count + 1);
}

/* Index entry i (record base+i): its frame position. */
static inline uint32_t pq_segment_index_get(const pq_segment_t *seg, uint64_t i)
{
    uint32_t v;
    __builtin_memcpy(&v, seg->map + seg->size - PQ_INDEX_ENTRY_SIZE * (i + 1), 4);
    return v;
}

static inline void pq_segment_index_set(pq_segment_t *seg, uint64_t i, uint32_t pos)
{
    __builtin_memcpy(seg->map + seg->size - PQ_INDEX_ENTRY_SIZE * (i + 1), &pos, 4);
}

/* Write `rec` as a frame at `pos` (8-aligned) with rec->offset and the CRC,
 * zero its padding, and set its index entry.  The caller has checked that
 * pos + pq_frame_size() <= pq_segment_data_limit(seg, rec->offset - seg->base).
 * Returns the padded frame size.  Never fails. */
uint32_t pq_segment_write(pq_segment_t *seg, uint64_t pos, const pq_record_t *rec);

/* Parse and validate the frame at `pos` that must hold `offset`, with the frame
 * ending at or before `limit`: length bounds, CRC, offset.  Fills `rec`.
 * Returns 0, or -PQ_ECORRUPT with a message naming the file and position. */
int pq_segment_parse(const pq_segment_t *seg, uint64_t pos, uint64_t offset,
                     uint64_t limit, pq_record_t *rec);

/* Read record `offset` (which the caller knows is in this segment and below
 * the published end) through the index.  -PQ_ECORRUPT if the index entry or
 * the frame is bad. */
int pq_segment_read(const pq_segment_t *seg, uint64_t offset, pq_record_t *rec);

/* Recovery scan: starting at `pos` with `offset` expected there, validate
 * frames one after another, writing their index entries, until a frame fails
 * to validate or the segment ends.  Sets *end_pos and *next_offset to the first
 * byte and offset after the last good frame.  Returns the number of good
 * frames.  Bytes after the last good frame are not touched. */
uint64_t pq_segment_scan(pq_segment_t *seg, uint64_t pos, uint64_t offset,
                         uint64_t *end_pos, uint64_t *next_offset);

/* Flush the segment's dirty pages to disk (fdatasync).  0 or -errno. */
int pq_segment_sync(pq_segment_t *seg);

#endif

/* seeds.c - the seed corpus of fuzz_segment, made by the core itself.
 *
 * Segment images are written with pq_segment_write (the code path appends
 * use), then framed in the harness's input format (fuzz_segment.h) in the
 * ways that reach each part of recovery: a good header or raw header bytes, a
 * newer format version, a torn frame, an offset gap, a preceding sealed
 * segment, a state file that agrees with the segment or overstates it.
 */
#include "fuzz_segment.h"

#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "segment.h"

#define S ((uint64_t)PQ_SEGMENT_MIN_BYTES)
#define NREC 20

size_t pq_fuzz_encode(uint8_t *out, size_t cap, uint8_t flags, uint8_t n_index, uint64_t probe,
                      const uint8_t *state64, const uint8_t *body, size_t body_len)
{
    size_t n = PQF_PREFIX + (state64 ? PQF_STATE_LEN : 0) + body_len;
    if (n > cap)
        return 0;
    out[0] = (uint8_t)(flags | (state64 ? PQF_STATE : 0));
    out[1] = n_index;
    memcpy(out + 2, &probe, 8);
    size_t at = PQF_PREFIX;
    if (state64) {
        memcpy(out + at, state64, PQF_STATE_LEN);
        at += PQF_STATE_LEN;
    }
    if (body_len)
        memcpy(out + at, body, body_len);
    return n;
}

typedef struct image {
    unsigned char *map;   /* S bytes */
    uint64_t base;
    uint64_t end;         /* first byte after the last frame */
    uint64_t pos[NREC];
    int64_t last_ts;
} image_t;

/* NREC records of assorted shapes: no key, empty key, key; headers in the
 * FORMAT.md encoding; empty and longer values; a delayed record. */
static void build(image_t *im, uint64_t base)
{
    pq_segment_t seg;
    memset(&seg, 0, sizeof seg);
    seg.base = base;
    seg.size = S;
    seg.map = im->map;
    seg.fd = -1;
    memset(im->map, 0, S);
    /* Header as pq_segment_create writes it (FORMAT.md, "Segment header"). */
    uint32_t v32;
    uint64_t v64;
    memcpy(im->map, "PYQSEGMT", 8);
    v32 = PQ_FORMAT_VERSION; memcpy(im->map + 8, &v32, 4);
    v32 = PQ_SEGMENT_HEADER_SIZE; memcpy(im->map + 12, &v32, 4);
    memcpy(im->map + 16, &base, 8);
    v64 = S; memcpy(im->map + 24, &v64, 8);
    v64 = 1; memcpy(im->map + 32, &v64, 8);
    v32 = pq_crc32c(0, im->map, 60); memcpy(im->map + 60, &v32, 4);

    static const unsigned char headers[] = {2, 0, 3, 0, 0, 0, 'i', 'd', 'x', 'y', 'z'};
    char value[128];
    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    for (int i = 0; i < NREC; i++) {
        pq_record_t r;
        memset(&r, 0, sizeof r);
        r.offset = base + (uint64_t)i;
        r.timestamp = 1700000000000000000ll + (int64_t)i * 1000;
        r.deliver_at = i == 7 ? r.timestamp + 5000000000ll : 0;
        if (i % 3 == 0) {
            r.key = NULL;
            r.key_len = PQ_NO_KEY;
        } else if (i % 3 == 1) {
            r.key = "";
            r.key_len = 0;
        } else {
            r.key = "user-42";
            r.key_len = 7;
        }
        if (i % 4 == 1) {
            r.headers = headers;
            r.headers_len = sizeof headers;
        }
        for (size_t k = 0; k < sizeof value; k++)
            value[k] = (char)('a' + (i + (int)k) % 26);
        r.value = value;
        r.value_len = (uint32_t)((i * 29) % 120);
        im->pos[i] = pos;
        pos += pq_segment_write(&seg, pos, &r);
        im->last_ts = r.timestamp;
    }
    im->end = pos;
}

/* FORMAT.md, "Partition state", bytes 192..255. */
static void state_fields(uint8_t *st, uint64_t next, uint64_t tail_base, uint64_t tail_pos,
                         uint64_t log_start, int64_t last_ts)
{
    memset(st, 0, PQF_STATE_LEN);
    memcpy(st + 0, &next, 8);
    memcpy(st + 8, &tail_base, 8);
    memcpy(st + 16, &tail_pos, 8);
    memcpy(st + 24, &log_start, 8);
    memcpy(st + 32, &last_ts, 8);
    memcpy(st + 40, &tail_base, 8);   /* synced offset: the tail's start */
    memcpy(st + 48, &tail_base, 8);   /* synced base */
}

int pq_fuzz_make_seeds(pq_fuzz_sink_t sink, void *ctx)
{
    image_t im, sealed;
    im.map = calloc(1, S);
    sealed.map = calloc(1, S);
    uint8_t *out = malloc(2 * S);
    uint8_t *body = malloc(S);
    uint8_t st[PQF_STATE_LEN];
    int count = 0;
    size_t n;
    if (!im.map || !sealed.map || !out || !body)
        goto done;
    build(&im, 0);
    build(&sealed, PQF_SEALED_RECORDS);
    if (im.end <= PQ_SEGMENT_HEADER_SIZE || im.end > S / 2 || sealed.end <= PQ_SEGMENT_HEADER_SIZE ||
        sealed.end > S / 2)
        goto done;   /* cannot happen: NREC small records */
    const uint8_t *frames = im.map + PQ_SEGMENT_HEADER_SIZE;
    size_t flen = im.end - PQ_SEGMENT_HEADER_SIZE;

#define EMIT(name, flags, nidx, probe, state, b, blen)                                  \
    do {                                                                               \
        n = pq_fuzz_encode(out, 2 * S, (flags), (nidx), (probe), (state), (b), (blen)); \
        if (n) {                                                                       \
            sink((name), out, n, ctx);                                                 \
            count++;                                                                   \
        }                                                                              \
    } while (0)

    EMIT("valid", PQF_HDR_VALID, 0, 5, NULL, frames, flen);
    /* The frames followed by their real index entries. */
    memcpy(body, frames, flen);
    memcpy(body + flen, im.map + S - 4 * NREC, 4 * NREC);
    EMIT("valid-with-index", PQF_HDR_VALID, NREC, (uint64_t)3 << 32 | 17, NULL, body, flen + 4 * NREC);
    EMIT("raw-header", PQF_HDR_RAW, 0, 0, NULL, im.map, im.end);
    EMIT("empty", PQF_HDR_VALID, 0, 0, NULL, NULL, 0);

    memcpy(body, im.map, im.end);
    body[0] ^= 0x20;   /* magic */
    EMIT("bad-magic", PQF_HDR_RAW, 0, 0, NULL, body, im.end);
    memcpy(body, im.map, im.end);
    body[8] = PQ_FORMAT_VERSION + 1;
    EMIT("newer-version", PQF_HDR_FIXCRC, 0, 0, NULL, body, im.end);

    memcpy(body, frames, flen);
    body[im.pos[15] - PQ_SEGMENT_HEADER_SIZE + 50] ^= 0x01;
    EMIT("torn-frame-15", PQF_HDR_VALID, 0, 0, NULL, body, flen);
    memcpy(body, frames, flen);
    memset(body + (im.pos[NREC - 1] - PQ_SEGMENT_HEADER_SIZE) + 16, 0, im.end - im.pos[NREC - 1] - 16);
    EMIT("half-written-last", PQF_HDR_VALID, 0, 0, NULL, body, flen);
    memcpy(body, frames, flen);
    body[im.pos[5] - PQ_SEGMENT_HEADER_SIZE + 8] = 99;   /* offset field; CRC fixed by the harness */
    EMIT("offset-gap", PQF_HDR_VALID | PQF_FIX_FRAMES, 0, 0, NULL, body, flen);

    const uint8_t *sframes = sealed.map + PQ_SEGMENT_HEADER_SIZE;
    size_t sflen = sealed.end - PQ_SEGMENT_HEADER_SIZE;
    EMIT("after-sealed", PQF_HDR_VALID | PQF_SEALED, 0, 0, NULL, sframes, sflen);
    EMIT("after-sealed-retention", PQF_HDR_VALID | PQF_SEALED | PQF_RETENTION, 0, UINT64_MAX >> 1,
         NULL, sframes, sflen);
    EMIT("roll", PQF_HDR_VALID | PQF_ROLL, 0, 7, NULL, frames, flen);
    EMIT("roll-retention-after-sealed", PQF_HDR_VALID | PQF_SEALED | PQF_RETENTION | PQF_ROLL, 0,
         UINT64_MAX >> 1, NULL, sframes, sflen);

    state_fields(st, NREC, 0, im.end, 0, im.last_ts);
    EMIT("state-agrees", PQF_HDR_VALID, 0, 0, st, frames, flen);
    state_fields(st, NREC + 5, 0, im.end, 0, im.last_ts);
    EMIT("state-overstates", PQF_HDR_VALID, 0, 0, st, frames, flen);
    state_fields(st, 10, 0, im.pos[10], 0, im.last_ts);
    EMIT("state-behind", PQF_HDR_VALID, 0, 0, st, frames, flen);
    state_fields(st, PQF_SEALED_RECORDS + NREC, PQF_SEALED_RECORDS, sealed.end, 0, sealed.last_ts);
    EMIT("state-agrees-sealed", PQF_HDR_VALID | PQF_SEALED, 0, 0, st, sframes, sflen);
    state_fields(st, PQF_SEALED_RECORDS, PQF_SEALED_RECORDS, PQ_SEGMENT_HEADER_SIZE, 0, 0);
    EMIT("state-empty-tail-sealed", PQF_HDR_VALID | PQF_SEALED, 0, 0, st, NULL, 0);
    state_fields(st, NREC, 0, im.end, 0, im.last_ts);
    EMIT("state-agrees-roll", PQF_HDR_VALID | PQF_ROLL, 0, 0, st, frames, flen);
#undef EMIT
done:
    free(im.map);
    free(sealed.map);
    free(out);
    free(body);
    return count;
}

/* fuzz_segment.h - the input format of the fuzz_segment harness.
 *
 * An input describes a partition directory holding one segment file of
 * PQ_SEGMENT_MIN_BYTES whose bytes the fuzzer controls, optionally preceded by
 * a good sealed segment and accompanied by a state file:
 *
 *   offset  size  field
 *   0       1     flags (PQF_*)
 *   1       1     n: the last 4*n body bytes are copied to the end of the
 *                 segment (the offset index); the rest is the body proper
 *   2       8     probe (little-endian): an offset delta for one extra
 *                 pq_segment_read and a position for one pq_segment_parse
 *   10      64    only with PQF_STATE: bytes 192..255 of the state file
 *                 (next offset, tail base and position, log start, last
 *                 timestamp, synced offset and base, wake words: FORMAT.md)
 *   ...           body: the segment from byte 0 (header modes RAW and
 *                 FIXCRC) or from byte 64 (header mode VALID)
 */
#ifndef PQ_FUZZ_SEGMENT_H
#define PQ_FUZZ_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#define PQF_HDR_MASK     0x03
#define PQF_HDR_RAW      0x00   /* the body's first 64 bytes are the header, as they come */
#define PQF_HDR_VALID    0x01   /* the harness writes a good header; the body follows it */
#define PQF_HDR_FIXCRC   0x02   /* the body's header fields, with a correct header CRC */
#define PQF_HDR_VALID2   0x03   /* same as VALID */
#define PQF_FIX_FRAMES   0x04   /* rewrite the CRC of each frame the length fields lay out */
#define PQF_STATE        0x08   /* write a state file: this boot's identity + 64 input bytes */
#define PQF_SEALED       0x10   /* a good segment of PQF_SEALED_RECORDS records comes first */
#define PQF_RETENTION    0x20   /* open with retention (1 segment of bytes, 1 ns of age) */
#define PQF_ROLL         0x40   /* append until the log rolls to a new segment */

#define PQF_SEALED_RECORDS 3
#define PQF_PREFIX         10
#define PQF_STATE_AT       192
#define PQF_STATE_LEN      64

/* Encode an input; returns its length, or 0 if `cap` is too small. */
size_t pq_fuzz_encode(uint8_t *out, size_t cap, uint8_t flags, uint8_t n_index, uint64_t probe,
                      const uint8_t *state64, const uint8_t *body, size_t body_len);

/* Call `sink` once per seed input (a real segment made by the core, in
 * several framings).  Returns the number of seeds. */
typedef void (*pq_fuzz_sink_t)(const char *name, const uint8_t *data, size_t len, void *ctx);
int pq_fuzz_make_seeds(pq_fuzz_sink_t sink, void *ctx);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif

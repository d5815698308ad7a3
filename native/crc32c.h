/* crc32c.h - CRC-32C (Castagnoli), the checksum of every record frame.
 *
 * pq_crc32c() uses the SSE4.2 crc32 instruction when the CPU has it and a
 * portable slicing-by-8 table otherwise; the choice is made once, at first use.
 * Both paths are exported so that tests can check each against known vectors.
 */
#ifndef PQ_CRC32C_H
#define PQ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extend `crc` (0 to start) over `len` bytes.  Never fails. */
uint32_t pq_crc32c(uint32_t crc, const void *data, size_t len);

/* The portable path, whatever the CPU. */
uint32_t pq_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* The hardware path; returns the portable result where the CPU lacks it. */
uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len);

/* 1 if pq_crc32c() uses the CPU instruction. */
int pq_crc32c_hw_available(void);

#endif

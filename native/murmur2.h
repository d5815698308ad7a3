/* murmur2.h - the key hash that picks a partition.
 *
 * The same 32-bit MurmurHash2 (seed 0x9747b28c) that Kafka's default
 * partitioner uses, so pq_murmur2_partition() maps a key to the partition
 * number Kafka's producer would choose for a topic of the same size.
 */
#ifndef PQ_MURMUR2_H
#define PQ_MURMUR2_H

#include <stddef.h>
#include <stdint.h>

/* Kafka's Utils.murmur2(): the signed 32-bit result, returned as int32_t. */
int32_t pq_murmur2(const void *key, size_t len);

/* (murmur2(key) & 0x7fffffff) % partitions, as Kafka's
 * BuiltInPartitioner.partitionForKey().  partitions must be > 0. */
uint32_t pq_murmur2_partition(const void *key, size_t len, uint32_t partitions);

#endif

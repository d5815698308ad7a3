/* murmur2.c - Kafka-compatible MurmurHash2 (see murmur2.h). */
#include "murmur2.h"

#include <string.h>

int32_t pq_murmur2(const void *key, size_t len)
{
    const unsigned char *data = key;
    const uint32_t seed = 0x9747b28cu, m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = seed ^ (uint32_t)len;
    size_t n4 = len / 4;

    for (size_t i = 0; i < n4; i++) {
        uint32_t k;
        memcpy(&k, data + 4 * i, 4);   /* Kafka reads little-endian */
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = data + 4 * n4;
    switch (len & 3) {
    case 3: h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1: h ^= tail[0];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

uint32_t pq_murmur2_partition(const void *key, size_t len, uint32_t partitions)
{
    return ((uint32_t)pq_murmur2(key, len) & 0x7fffffffu) % partitions;
}

/* test_murmur2.c - the key hash agrees with Kafka's Utils.murmur2() and its
 * partitioner, so a key lands on the partition a Kafka producer would pick. */
#include "pq_test.h"

#include "murmur2.h"

struct kv {
    const char *key;
    size_t len;
    int32_t hash;
};

#define KV(s, h) {s, sizeof(s) - 1, h}

/* Kafka's UtilsTest.testMurmur2 (clients/src/test/.../utils/UtilsTest.java);
 * {'a','b','c'} is written as "abc". */
static const struct kv kafka[] = {
    KV("21", -973932308),
    KV("foobar", -790332482),
    KV("a-little-bit-long-string", -985981536),
    KV("a-little-bit-longer-string", -1486304829),
    KV("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    KV("abc", 479470107),
};

/* Every length mod 4 and bytes >= 0x80 (Java masks each byte with 0xff, so
 * they are unsigned): values of a transcription of Kafka's Java code. */
static const struct kv more[] = {
    KV("", 275646681),
    KV("x", 2121525046),
    KV("kafka", -798503068),
    KV("12345", -1188365604),
    KV("giberish123456789", -1890243828),
    KV("\x80\xff\xfe", 810766165),
    KV("\x80\x81\x82\x83\x84\x85\x86", -47880214),
};

static void check_table(const struct kv *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t got = pq_murmur2(t[i].key, t[i].len);
        if (got != t[i].hash)
            PQT_FAIL("murmur2(\"%s\") = %d, Kafka gives %d", t[i].key, got, t[i].hash);
    }
}

static void test_kafka_utils_test_vectors(void)
{
    check_table(kafka, sizeof kafka / sizeof kafka[0]);
}

static void test_every_tail_length_and_high_bytes(void)
{
    check_table(more, sizeof more / sizeof more[0]);
}

static void test_key_at_any_address(void)
{
    _Alignas(16) char buf[80];
    for (size_t i = 0; i < sizeof kafka / sizeof kafka[0]; i++)
        for (size_t shift = 0; shift < 8; shift++) {
            memcpy(buf + shift, kafka[i].key, kafka[i].len);
            CHECK_EQ(pq_murmur2(buf + shift, kafka[i].len), kafka[i].hash);
        }
}

static void test_partition_is_positive_hash_mod_n(void)
{
    static const uint32_t ns[] = {1, 2, 3, 7, 8, 12, 16, 50, 1000, 4096, 0x7fffffffu, 0xffffffffu};
    for (size_t i = 0; i < sizeof kafka / sizeof kafka[0]; i++)
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            uint32_t want = ((uint32_t)kafka[i].hash & 0x7fffffffu) % ns[j];
            uint32_t got = pq_murmur2_partition(kafka[i].key, kafka[i].len, ns[j]);
            if (got != want)
                PQT_FAIL("partition(\"%s\", %u) = %u, expected %u", kafka[i].key, ns[j], got, want);
        }
    /* Spelled out: a negative hash is masked, not negated (abs() would give 308). */
    CHECK_EQ(pq_murmur2_partition("21", 2, 1000), 340);
    CHECK_EQ(pq_murmur2_partition("foobar", 6, 50), 16);
    CHECK_EQ(pq_murmur2_partition("foobar", 6, 12), 6);
    CHECK_EQ(pq_murmur2_partition("a-little-bit-longer-string", 26, 12), 11);
    CHECK_EQ(pq_murmur2_partition("", 0, 12), 9);
}

static void test_partition_spreads_keys(void)
{
    /* Not a statistical test: every partition of 8 gets some of 4000 keys. */
    unsigned counts[8] = {0};
    char key[32];
    for (int i = 0; i < 4000; i++) {
        int n = snprintf(key, sizeof key, "user-%d", i);
        uint32_t p = pq_murmur2_partition(key, (size_t)n, 8);
        REQUIRE(p < 8);
        counts[p]++;
    }
    for (int p = 0; p < 8; p++)
        CHECK(counts[p] > 300);
}

PQT_MAIN(PQT_CASE(test_kafka_utils_test_vectors),
         PQT_CASE(test_every_tail_length_and_high_bytes),
         PQT_CASE(test_key_at_any_address),
         PQT_CASE(test_partition_is_positive_hash_mod_n),
         PQT_CASE(test_partition_spreads_keys))

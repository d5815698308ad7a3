/* test_crc32c.c - CRC-32C: published vectors for both paths, any alignment,
 * any split, against a bit-at-a-time reference written from the definition. */
#include "pq_test.h"

#include "crc32c.h"

/* The definition: reflected polynomial 0x82F63B78, init and final xor ~0. */
static uint32_t ref_crc32c(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static const struct {
    const char *name;
    crc_fn fn;
} impls[] = {
    {"pq_crc32c_sw", pq_crc32c_sw},
    {"pq_crc32c_hw", pq_crc32c_hw},
    {"pq_crc32c", pq_crc32c},
    {"reference", ref_crc32c},
};
#define NIMPLS (sizeof impls / sizeof impls[0])

/* RFC 3720 (iSCSI) B.4: a SCSI Read (10) command PDU. */
static const unsigned char iscsi_read_pdu[48] = {
    0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
    0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

struct vector {
    const char *name;
    unsigned char data[64];
    size_t len;
    uint32_t crc;
};

static size_t make_vectors(struct vector *v)
{
    size_t n = 0;
    v[n] = (struct vector){"\"123456789\"", "123456789", 9, 0xE3069283u}; n++;
    v[n] = (struct vector){"empty", "", 0, 0x00000000u}; n++;
    v[n] = (struct vector){"\"a\"", "a", 1, 0xC1D04330u}; n++;
    v[n] = (struct vector){"32 zeros (RFC 3720 B.4)", {0}, 32, 0x8A9136AAu}; n++;
    v[n] = (struct vector){"32 x 0xFF (RFC 3720 B.4)", {0}, 32, 0x62A8AB43u};
    memset(v[n].data, 0xFF, 32); n++;
    v[n] = (struct vector){"32 ascending 0..31 (RFC 3720 B.4)", {0}, 32, 0x46DD794Eu};
    for (int i = 0; i < 32; i++) v[n].data[i] = (unsigned char)i;
    n++;
    v[n] = (struct vector){"32 descending 31..0 (RFC 3720 B.4)", {0}, 32, 0x113FDB5Cu};
    for (int i = 0; i < 32; i++) v[n].data[i] = (unsigned char)(31 - i);
    n++;
    v[n] = (struct vector){"iSCSI SCSI Read (10) PDU (RFC 3720 B.4)", {0}, 48, 0xD9963A56u};
    memcpy(v[n].data, iscsi_read_pdu, 48); n++;
    return n;
}

static void test_known_vectors_every_path(void)
{
    struct vector v[16];
    size_t nv = make_vectors(v);
    for (size_t i = 0; i < NIMPLS; i++)
        for (size_t j = 0; j < nv; j++) {
            uint32_t got = impls[i].fn(0, v[j].data, v[j].len);
            if (got != v[j].crc)
                PQT_FAIL("%s(%s) = 0x%08X, expected 0x%08X", impls[i].name, v[j].name, got, v[j].crc);
        }
    const char *fox = "The quick brown fox jumps over the lazy dog";
    for (size_t i = 0; i < NIMPLS; i++)
        CHECK_EQ(impls[i].fn(0, fox, strlen(fox)), 0x22620404u);
}

static void test_vectors_at_every_misalignment(void)
{
    struct vector v[16];
    size_t nv = make_vectors(v);
    _Alignas(64) unsigned char buf[64 + 16];
    for (size_t j = 0; j < nv; j++)
        for (size_t shift = 0; shift < 16; shift++) {
            memset(buf, 0xA5, sizeof buf);
            memcpy(buf + shift, v[j].data, v[j].len);
            for (size_t i = 0; i < NIMPLS; i++) {
                uint32_t got = impls[i].fn(0, buf + shift, v[j].len);
                if (got != v[j].crc)
                    PQT_FAIL("%s(%s) at address offset %zu = 0x%08X, expected 0x%08X",
                             impls[i].name, v[j].name, shift, got, v[j].crc);
            }
        }
}

static void test_every_start_and_length_matches_reference(void)
{
    static _Alignas(64) unsigned char buf[4096 + 64];
    pqt_fill(buf, sizeof buf, 7);
    static const size_t lens[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 23, 24, 31, 32, 33,
                                  63, 64, 65, 100, 255, 256, 257, 1000, 1023, 4000};
    for (size_t start = 0; start < 16; start++)
        for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
            uint32_t want = ref_crc32c(0, buf + start, lens[k]);
            for (size_t i = 0; i < NIMPLS; i++) {
                uint32_t got = impls[i].fn(0, buf + start, lens[k]);
                if (got != want)
                    PQT_FAIL("%s start %zu len %zu: 0x%08X, reference 0x%08X",
                             impls[i].name, start, lens[k], got, want);
            }
        }
}

static void test_split_computation_equals_one_shot(void)
{
    unsigned char buf[1031];
    pqt_fill(buf, sizeof buf, 11);
    for (size_t i = 0; i < NIMPLS; i++) {
        uint32_t whole = impls[i].fn(0, buf, sizeof buf);
        CHECK_EQ(whole, ref_crc32c(0, buf, sizeof buf));
        int bad = 0;
        for (size_t cut = 0; cut <= sizeof buf; cut++) {
            uint32_t c = impls[i].fn(0, buf, cut);
            c = impls[i].fn(c, buf + cut, sizeof buf - cut);
            bad += c != whole;
        }
        for (size_t a = 0; a < 40; a++)          /* three pieces, odd cuts */
            for (size_t b = a; b < sizeof buf; b += 97) {
                uint32_t c = impls[i].fn(0, buf, a);
                c = impls[i].fn(c, buf + a, b - a);
                c = impls[i].fn(c, buf + b, sizeof buf - b);
                bad += c != whole;
            }
        if (bad)
            PQT_FAIL("%s: %d split computations differ from the one-shot CRC", impls[i].name, bad);
        /* Zero bytes extend nothing. */
        CHECK_EQ(impls[i].fn(whole, buf, 0), whole);
        CHECK_EQ(impls[i].fn(0x12345678u, NULL, 0), 0x12345678u);
    }
    /* The two fast paths may be mixed within one computation. */
    uint32_t c = pq_crc32c_sw(0, buf, 333);
    c = pq_crc32c_hw(c, buf + 333, sizeof buf - 333);
    CHECK_EQ(c, ref_crc32c(0, buf, sizeof buf));
}

static void test_large_buffer_paths_agree(void)
{
    size_t n = (1u << 20) + 7;
    unsigned char *buf = malloc(n + 8);
    REQUIRE(buf);
    pqt_fill(buf, n + 8, 3);
    for (size_t shift = 0; shift < 3; shift++) {
        uint32_t want = ref_crc32c(0, buf + shift, n);
        CHECK_EQ(pq_crc32c_sw(0, buf + shift, n), want);
        CHECK_EQ(pq_crc32c_hw(0, buf + shift, n), want);
        CHECK_EQ(pq_crc32c(0, buf + shift, n), want);
    }
    free(buf);
}

static void test_hardware_detection(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    int expect = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    int expect = 0;
#endif
    CHECK_EQ(pq_crc32c_hw_available(), expect);
    CHECK_EQ(pq_crc32c_hw_available(), expect);   /* cached answer */
    if (!expect)
        printf("  note: no CRC32C instruction here; pq_crc32c_hw ran the portable path\n");
}

PQT_MAIN(PQT_CASE(test_known_vectors_every_path),
         PQT_CASE(test_vectors_at_every_misalignment),
         PQT_CASE(test_every_start_and_length_matches_reference),
         PQT_CASE(test_split_computation_equals_one_shot),
         PQT_CASE(test_large_buffer_paths_agree),
         PQT_CASE(test_hardware_detection))

/* replay.c - run the fuzz_segment harness without libFuzzer.
 *
 *   fuzz_segment_replay              the generated seeds, each as made and
 *                                    with PQ_FUZZ_MUTATIONS (default 60)
 *                                    deterministic mutations
 *   fuzz_segment_replay PATH...      these inputs (files, or directories of
 *                                    files), e.g. a crash found by libFuzzer
 *
 * A broken invariant or a crash aborts, so reaching the summary line means
 * every input passed.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_segment.h"

static unsigned long runs;
static unsigned long mutations = 60;

static void run(const uint8_t *data, size_t len)
{
    LLVMFuzzerTestOneInput(data, len);
    runs++;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Deterministic byte-level mutations, a poor fuzzer's: flips, interesting
 * values, truncation, flag changes. */
static void mutate_and_run(const uint8_t *data, size_t len)
{
    uint8_t *buf = malloc(len + 8);
    if (!buf)
        abort();
    for (unsigned long m = 0; m < mutations; m++) {
        size_t n = len;
        memcpy(buf, data, len);
        int edits = 1 + (int)(next_rand() % 4);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = next_rand() % n;
            switch (next_rand() % 6) {
            case 0: buf[at] ^= (uint8_t)(1u << (next_rand() % 8)); break;
            case 1: buf[at] = 0; break;
            case 2: buf[at] = 0xFF; break;
            case 3: buf[at] = (uint8_t)next_rand(); break;
            case 4: n = at + 1; break;                                /* truncate */
            case 5: buf[0] = (uint8_t)(buf[0] ^ (1u << (next_rand() % 6))); break;  /* flags */
            }
        }
        run(buf, n);
    }
    free(buf);
}

static void seed_sink(const char *name, const uint8_t *data, size_t len, void *ctx)
{
    (void)ctx;
    unsigned long before = runs;
    run(data, len);
    mutate_and_run(data, len);
    printf("ok   seed %-26s %zu bytes, %lu inputs\n", name, len, runs - before);
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 65536;
            uint8_t *nb = realloc(buf, cap);
            if (!nb)
                abort();
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        if (r == 0)
            break;
        len += r;
    }
    fclose(f);
    run(buf, len);
    free(buf);
    return 0;
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "cannot stat %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    int rc = 0;
    char sub[4096];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        rc |= run_path(sub);
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    const char *m = getenv("PQ_FUZZ_MUTATIONS");
    if (m)
        mutations = strtoul(m, NULL, 10);
    int failed = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            failed += run_path(argv[i]) != 0;
    } else if (pq_fuzz_make_seeds(seed_sink, NULL) == 0) {
        fprintf(stderr, "no seeds were made\n");
        failed = 1;
    }
    printf("%lu passed, %d failed\n", runs, failed);
    return failed != 0;
}

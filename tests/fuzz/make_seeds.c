/* make_seeds.c - write the fuzz_segment seed corpus into a directory:
 *   fuzz_segment_seeds DIR */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_segment.h"

static const char *outdir;
static int failures;

static void write_seed(const char *name, const uint8_t *data, size_t len, void *ctx)
{
    (void)ctx;
    char path[4096];
    snprintf(path, sizeof path, "%s/seed-%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        failures++;
    }
    if (f)
        fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot create %s: %s\n", outdir, strerror(errno));
        return 1;
    }
    int n = pq_fuzz_make_seeds(write_seed, NULL);
    printf("%d seeds written to %s\n", n, outdir);
    return failures || n == 0;
}

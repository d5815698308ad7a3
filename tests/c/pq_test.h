/* pq_test.h - the checks and the runner shared by the C unit tests (tests/c).
 *
 * No framework: a test is a `static void f(void)` that makes CHECKs.  The
 * runner gives each test a fresh directory (pqt_dir) and runs it in a child
 * process, so that a crash, a sanitizer report, a leak or a hang (alarm) fails
 * that test alone and the others still run.  PQ_TEST_NOFORK=1 runs the tests
 * in-process instead (for a debugger); a test name as argv[1] runs only the
 * tests whose name contains it.
 *
 * Output: one line per test, then "N passed, M failed" as the last line; the
 * exit status is 0 only if nothing failed.
 *
 * Each test file includes this header first (it defines _GNU_SOURCE).
 */
#ifndef PQ_TEST_H
#define PQ_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pq_error.h"

/* Failed checks in the running test; the per-test working directory. */
static int pqt_failures;
static char pqt_dir[1024];

#define PQT_FAIL(...)                                                   \
    do {                                                                \
        pqt_failures++;                                                 \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);               \
        fprintf(stderr, __VA_ARGS__);                                   \
        fputc('\n', stderr);                                            \
    } while (0)

#define CHECK(cond)                                                     \
    do {                                                                \
        if (!(cond))                                                    \
            PQT_FAIL("CHECK(%s) failed", #cond);                        \
    } while (0)

/* Integer equality, both sides printed (as signed and as hex). */
#define CHECK_EQ(a, b)                                                  \
    do {                                                                \
        long long pqt_a_ = (long long)(a), pqt_b_ = (long long)(b);     \
        if (pqt_a_ != pqt_b_)                                           \
            PQT_FAIL("CHECK_EQ(%s, %s): %lld (0x%llx) != %lld (0x%llx)", \
                     #a, #b, pqt_a_, (unsigned long long)pqt_a_,        \
                     pqt_b_, (unsigned long long)pqt_b_);               \
    } while (0)

/* A native call's return code, with the native error message on mismatch. */
#define CHECK_RC(expr, want)                                            \
    do {                                                                \
        long long pqt_rc_ = (long long)(expr), pqt_w_ = (long long)(want); \
        if (pqt_rc_ != pqt_w_)                                          \
            PQT_FAIL("%s returned %lld, expected %lld (message: \"%s\")", \
                     #expr, pqt_rc_, pqt_w_, pq_error_message());       \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, 0)

#define CHECK_CONTAINS(hay, needle)                                     \
    do {                                                                \
        const char *pqt_h_ = (hay), *pqt_n_ = (needle);                 \
        if (!pqt_h_ || !strstr(pqt_h_, pqt_n_))                         \
            PQT_FAIL("\"%s\" does not contain \"%s\"", pqt_h_ ? pqt_h_ : "(null)", pqt_n_); \
    } while (0)

/* Stop the test here if an earlier check failed (later steps depend on it). */
#define REQUIRE(cond)                                                   \
    do {                                                                \
        if (!(cond)) {                                                  \
            PQT_FAIL("REQUIRE(%s) failed; test stopped", #cond);        \
            return;                                                     \
        }                                                               \
    } while (0)

typedef struct pqt_case {
    const char *name;
    void (*fn)(void);
} pqt_case_t;

#define PQT_CASE(f) {#f, f}

/* ---- helpers ---- */

static inline int64_t pqt_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void pqt_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* "<pqt_dir>/<name>" into a static rotating buffer (valid for 8 more calls). */
static inline const char *pqt_path(const char *name)
{
    static char bufs[8][2048];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", pqt_dir, name);
    return b;
}

/* A deterministic byte stream (xorshift), for test data. */
static inline void pqt_fill(void *buf, size_t len, uint64_t seed)
{
    unsigned char *p = buf;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}

static inline long long pqt_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int pqt_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static inline void pqt_rm_rf(const char *dir)
{
    nftw(dir, pqt_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline int pqt_make_dir(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(pqt_dir, sizeof pqt_dir, "%s/pqtest.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(pqt_dir) ? 0 : -1;
}

/* ---- the runner ---- */

static int pqt_run_one(const pqt_case_t *c, int nofork)
{
    int64_t t0 = pqt_mono_ms();
    if (pqt_make_dir() != 0) {
        printf("FAIL %s: mkdtemp: %s\n", c->name, strerror(errno));
        return 0;
    }
    int ok;
    char why[128] = "";
    if (nofork) {
        pqt_failures = 0;
        pq_error_clear();
        c->fn();
        ok = pqt_failures == 0;
    } else {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            printf("FAIL %s: fork: %s\n", c->name, strerror(errno));
            pqt_rm_rf(pqt_dir);
            return 0;
        }
        if (pid == 0) {
            const char *t = getenv("PQ_TEST_TIMEOUT");
            alarm(t ? (unsigned)atoi(t) : 60);   /* a hang fails the test, not the suite */
            pqt_failures = 0;
            pq_error_clear();
            c->fn();
            fflush(stdout);
            fflush(stderr);
            exit(pqt_failures ? 1 : 0);   /* exit(), not _exit(): leak checks run at exit */
        }
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (WIFEXITED(status)) {
            ok = WEXITSTATUS(status) == 0;
            if (!ok)
                snprintf(why, sizeof why, " (exit status %d)", WEXITSTATUS(status));
        } else {
            ok = 0;
            snprintf(why, sizeof why, " (killed by signal %d: %s%s)", WTERMSIG(status),
                     strsignal(WTERMSIG(status)), WTERMSIG(status) == SIGALRM ? ", timed out" : "");
        }
    }
    pqt_rm_rf(pqt_dir);
    printf("%s %s%s [%lld ms]\n", ok ? "ok  " : "FAIL", c->name, why,
           (long long)(pqt_mono_ms() - t0));
    fflush(stdout);
    return ok;
}

static inline int pqt_main(const pqt_case_t *cases, size_t n, int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : NULL;
    const char *nf = getenv("PQ_TEST_NOFORK");
    int nofork = nf && *nf && strcmp(nf, "0") != 0;
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < n; i++) {
        if (only && !strstr(cases[i].name, only))
            continue;
        if (pqt_run_one(&cases[i], nofork))
            passed++;
        else
            failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#define PQT_MAIN(...)                                                   \
    int main(int argc, char **argv)                                     \
    {                                                                   \
        static const pqt_case_t cases[] = {__VA_ARGS__};                \
        return pqt_main(cases, sizeof cases / sizeof cases[0], argc, argv); \
    }

#endif

/* test_wake.c - futex wait/wake on a word shared by threads and by processes. */
#include "pq_test.h"

#include <pthread.h>
#include <sys/mman.h>

#include "wake.h"

struct sleeper {
    uint32_t *word;
    uint32_t expected;
    int64_t timeout_ns;
    int rc;
    int64_t elapsed_ms;
};

static void *sleep_thread(void *arg)
{
    struct sleeper *s = arg;
    int64_t t0 = pqt_mono_ms();
    /* The protocol of wake.h: re-check the word after every return. */
    do {
        s->rc = pq_wake_wait(s->word, s->expected, s->timeout_ns);
    } while (s->rc == 0 && __atomic_load_n(s->word, __ATOMIC_SEQ_CST) == s->expected &&
             pqt_mono_ms() - t0 < 10000);
    s->elapsed_ms = pqt_mono_ms() - t0;
    return NULL;
}

static void test_wait_returns_at_once_if_word_differs(void)
{
    uint32_t w = 5;
    int64_t t0 = pqt_mono_ms();
    CHECK_RC(pq_wake_wait(&w, 4, 5000000000ll), 0);
    CHECK_RC(pq_wake_wait(&w, 6, -1), 0);
    CHECK(pqt_mono_ms() - t0 < 1000);
}

static void test_wait_times_out(void)
{
    uint32_t w = 1;
    int64_t t0 = pqt_mono_ms();
    CHECK_RC(pq_wake_wait(&w, 1, 120 * 1000000ll), -ETIMEDOUT);
    int64_t el = pqt_mono_ms() - t0;
    CHECK(el >= 110 && el < 5000);
    CHECK_RC(pq_wake_wait(&w, 1, 0), -ETIMEDOUT);
    CHECK_RC(pq_wake_wait(&w, 1, 1500000000ll / 1000), -ETIMEDOUT);   /* 1.5 ms: ns split into s + ns */
}

static void test_wake_all_threads(void)
{
    uint32_t w = 0;
    CHECK_EQ(pq_wake_all(&w), 0);   /* nobody sleeps */
    struct sleeper s[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        s[i] = (struct sleeper){&w, 0, i == 0 ? -1 : 10 * 1000000000ll, -99, 0};
        REQUIRE(pthread_create(&th[i], NULL, sleep_thread, &s[i]) == 0);
    }
    pqt_sleep_ms(100);
    __atomic_store_n(&w, 1, __ATOMIC_SEQ_CST);
    CHECK(pq_wake_all(&w) >= 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(s[i].rc, 0);
        CHECK(s[i].elapsed_ms < 5000);
    }
}

static void test_wake_across_processes(void)
{
    /* A MAP_SHARED file mapping, as a partition's state file is. */
    const char *path = pqt_path("word");
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, 4096) == 0);
    uint32_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(w != MAP_FAILED);
    *w = 0;
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        /* A separate mapping of the same file in the child. */
        uint32_t *mine = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (mine == MAP_FAILED)
            _exit(3);
        struct sleeper s = {mine, 0, 10 * 1000000000ll, -99, 0};
        sleep_thread(&s);
        _exit(s.rc == 0 && s.elapsed_ms < 5000 ? 0 : 1);
    }
    pqt_sleep_ms(150);
    __atomic_store_n(w, 1, __ATOMIC_SEQ_CST);
    pq_wake_all(w);
    int status;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    munmap(w, 4096);
    close(fd);
}

static void test_clocks(void)
{
    int64_t now = pq_now_ns();
    time_t t = time(NULL);
    CHECK(now / 1000000000 >= t - 2 && now / 1000000000 <= t + 2);
    int64_t a = pq_monotonic_ns();
    pqt_sleep_ms(20);
    int64_t b = pq_monotonic_ns();
    CHECK(b - a >= 15 * 1000000ll);
    CHECK(b - a < 5000 * 1000000ll);
}

PQT_MAIN(PQT_CASE(test_wait_returns_at_once_if_word_differs),
         PQT_CASE(test_wait_times_out),
         PQT_CASE(test_wake_all_threads),
         PQT_CASE(test_wake_across_processes),
         PQT_CASE(test_clocks))

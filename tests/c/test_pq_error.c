/* test_pq_error.c - codes and the per-thread error message. */
#include "pq_test.h"

#include <pthread.h>

static void test_codes_sit_above_errno(void)
{
    int codes[] = {PQ_ECORRUPT, PQ_ETOOLARGE, PQ_ERANGE, PQ_ECONFIG, PQ_EFORMAT, PQ_ECLOSED};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(codes[i] > 4095);   /* above every errno value */
        for (size_t j = 0; j < i; j++)
            CHECK(codes[i] != codes[j]);
    }
}

static void test_set_returns_code_and_keeps_message(void)
{
    pq_error_clear();
    CHECK(strcmp(pq_error_message(), "") == 0);
    CHECK_EQ(pq_error_set(-PQ_ECORRUPT, "segment %s: byte %d", "x.seg", 42), -PQ_ECORRUPT);
    CHECK(strcmp(pq_error_message(), "segment x.seg: byte 42") == 0);
    CHECK_EQ(pq_error_set(-ENOENT, "%s", "second"), -ENOENT);
    CHECK(strcmp(pq_error_message(), "second") == 0);
    pq_error_clear();
    CHECK(strcmp(pq_error_message(), "") == 0);
}

static void test_long_message_is_truncated(void)
{
    char big[2 * PQ_ERRMSG_MAX];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    pq_error_set(-1, "%s", big);
    CHECK_EQ(strlen(pq_error_message()), PQ_ERRMSG_MAX - 1);
}

static void *other_thread(void *arg)
{
    int *ok = arg;
    *ok = strcmp(pq_error_message(), "") == 0;   /* not the main thread's */
    pq_error_set(-1, "from the other thread");
    *ok = *ok && strcmp(pq_error_message(), "from the other thread") == 0;
    return NULL;
}

static void test_message_is_per_thread(void)
{
    pq_error_set(-1, "main thread");
    int ok = 0;
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, other_thread, &ok) == 0);
    pthread_join(th, NULL);
    CHECK(ok);
    CHECK(strcmp(pq_error_message(), "main thread") == 0);
}

PQT_MAIN(PQT_CASE(test_codes_sit_above_errno),
         PQT_CASE(test_set_returns_code_and_keeps_message),
         PQT_CASE(test_long_message_is_truncated),
         PQT_CASE(test_message_is_per_thread))

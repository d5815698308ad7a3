/* shmfile.c - small shared mapped files with a sole-opener flock (see shmfile.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "shmfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pq_error.h"

int pq_shmfile_open(const char *path, size_t size, int flags, pq_shmfile_t *out)
{
    int rc;
    memset(out, 0, sizeof *out);
    out->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (out->fd < 0)
        return pq_error_set(-errno, "cannot open %s: %s", path, strerror(errno));
    out->sole = flock(out->fd, LOCK_EX | LOCK_NB) == 0;
    if (!out->sole) {
        while (flock(out->fd, LOCK_SH) != 0) {
            if (errno != EINTR) {
                rc = pq_error_set(-errno, "cannot lock %s: %s", path, strerror(errno));
                goto fail;
            }
        }
    }
    struct stat st;
    if (fstat(out->fd, &st) != 0) {
        rc = pq_error_set(-errno, "cannot stat %s: %s", path, strerror(errno));
        goto fail;
    }
    if ((size_t)st.st_size != size) {
        if (!out->sole || (st.st_size != 0 && (flags & PQ_SHMFILE_KEEP))) {
            rc = pq_error_set(-PQ_ECORRUPT, "%s is %lld bytes, expected %zu", path,
                              (long long)st.st_size, size);
            goto fail;
        }
        /* Reserve the blocks now: a full disk must fail here, not as SIGBUS. */
        int e = ftruncate(out->fd, 0) != 0 ? errno : posix_fallocate(out->fd, 0, (off_t)size);
        if (e) {
            rc = pq_error_set(-e, "cannot allocate %s (%zu bytes): %s", path, size, strerror(e));
            goto fail;
        }
        out->created = 1;
    }
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, out->fd, 0);
    if (m == MAP_FAILED) {
        rc = pq_error_set(-errno, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    out->map = m;
    out->size = size;
    return 0;
fail:
    close(out->fd);
    out->fd = -1;
    return rc;
}

void pq_shmfile_share(pq_shmfile_t *f)
{
    if (f->sole) {
        flock(f->fd, LOCK_SH);
        f->sole = 0;
    }
}

int pq_shmfile_sync(pq_shmfile_t *f)
{
    if (msync(f->map, f->size, MS_SYNC) != 0)
        return pq_error_set(-errno, "cannot sync a shared file: %s", strerror(errno));
    return 0;
}

void pq_shmfile_close(pq_shmfile_t *f)
{
    if (f->map)
        munmap(f->map, f->size);
    if (f->fd >= 0)
        close(f->fd);   /* releases the flock */
    f->map = NULL;
    f->fd = -1;
}

#define RELOCK_NS 50000000L    /* 50 ms */

int pq_shared_mutex_lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    if (rc != EBUSY)
        return rc;
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);      /* a clock step only moves one retry */
        t.tv_nsec += RELOCK_NS;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        rc = pthread_mutex_timedlock(m, &t);
        if (rc != ETIMEDOUT)
            return rc;
    }
}

int pq_shared_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

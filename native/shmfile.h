/* shmfile.h - a small file mapped shared by every process that opens it.
 *
 * Opening takes an flock on the file: exclusive and non-blocking first; the
 * caller that gets it is the only process with the file open (`*sole` = 1) and
 * may reset what a dead process could have left behind (process-shared
 * mutexes after a reboot, member tables) before pq_shmfile_share() downgrades
 * to a shared lock.  Everyone else blocks for the shared lock, so nobody uses
 * the file while its sole opener repairs it.  The lock goes with the fd.
 */
#ifndef PQ_SHMFILE_H
#define PQ_SHMFILE_H

#include <stddef.h>

typedef struct pq_shmfile {
    int fd;
    void *map;
    size_t size;
    int sole;       /* 1 until pq_shmfile_share() if this opener was alone */
    int created;    /* 1 if the file was empty (or of another size) and was reset to zeros */
} pq_shmfile_t;

/* Open or create `path` (0600) of exactly `size` bytes, preallocated, and map
 * it.  An empty file (a creation cut short) is grown to `size` zero bytes.  A
 * non-empty file of another size is reset to `size` zero bytes by a sole
 * opener if it holds derived data (flags 0), and refused with -PQ_ECORRUPT if
 * it is authoritative (PQ_SHMFILE_KEEP: group and dedup files, whose contents
 * exist nowhere else) or others have it open.  0 or a negative code. */
#define PQ_SHMFILE_KEEP 1
int pq_shmfile_open(const char *path, size_t size, int flags, pq_shmfile_t *out);

/* Downgrade a sole opener's exclusive lock to shared. */
void pq_shmfile_share(pq_shmfile_t *f);

/* Flush the mapping to disk.  0 or -errno. */
int pq_shmfile_sync(pq_shmfile_t *f);

void pq_shmfile_close(pq_shmfile_t *f);

/* Initialise a robust, process-shared mutex.  0 or -errno. */
#include <pthread.h>
int pq_shared_mutex_init(pthread_mutex_t *m);

/* Lock a robust, process-shared mutex: pthread_mutex_lock's results
 * (EOWNERDEAD included), but a waiter never sleeps more than a short while
 * without looking at the lock again, so a wake-up lost to a process killed
 * at the wrong moment costs a delay, never a hang. */
int pq_shared_mutex_lock(pthread_mutex_t *m);

#endif

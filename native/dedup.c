/* dedup.c - the shared table of recent message ids (see dedup.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "dedup.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "pq_error.h"
#include "shmfile.h"

#define HEADER_BYTES 128
static const char DEDUP_MAGIC[8] = {'P', 'Y', 'Q', 'D', 'E', 'D', 'U', 'P'};

/* The pending send (dedup.h, crash rule) uses bytes that were reserved and
 * zero: tables written before it read as "nothing pending". */
typedef struct dhdr {
    char magic[8];
    uint32_t version;
    uint32_t capacity;
    uint32_t pend_token;        /* 16: the record's attributes; 0 = nothing pending */
    uint32_t pend_slot;         /* 20 */
    uint64_t pend_k1, pend_k2;  /* 24 */
    uint64_t pend_from;         /* 40: the partition's end before the append */
    int64_t pend_expires;       /* 48 */
    uint32_t pend_partition;    /* 56 */
    uint32_t token_seq;         /* 60: last token handed out */
    union { pthread_mutex_t m; char pad[64]; } lock;   /* at 64 */
} dhdr_t;

typedef struct dentry {
    uint64_t k1, k2;          /* the key; both 0 = never used */
    int64_t expires_ns;
    uint64_t offset;
    uint64_t aux;
    uint32_t partition;
    uint32_t reserved;
} dentry_t;

_Static_assert(sizeof(dhdr_t) == HEADER_BYTES, "dedup header is 128 bytes");
_Static_assert(sizeof(dentry_t) == 48, "dedup entry is 48 bytes");

struct pq_dedup {
    pq_shmfile_t file;
    dhdr_t *h;
    dentry_t *entries;
    uint32_t capacity;
    char *path;
    pq_log_t **logs;            /* the topic's partitions, for settle(); not owned */
    uint32_t nlogs;
};

int pq_dedup_open(const char *path, uint32_t capacity, pq_dedup_t **out)
{
    if (capacity < 16 || capacity > PQ_DEDUP_MAX_CAPACITY)
        return pq_error_set(-PQ_ECONFIG, "dedup capacity %u is outside 16..%u", capacity,
                            PQ_DEDUP_MAX_CAPACITY);
    pq_dedup_t *d = calloc(1, sizeof *d);
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return pq_error_set(-ENOMEM, "out of memory opening %s", path);
    }
    /* An existing table's header decides: a different capacity must never
     * resize (and so wipe) it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        dhdr_t h;
        ssize_t n = pread(fd, &h, sizeof h, 0);
        close(fd);
        if (n == (ssize_t)sizeof h && memcmp(h.magic, DEDUP_MAGIC, 8) == 0 && h.capacity != capacity) {
            free(d->path);
            free(d);
            return pq_error_set(-PQ_ECONFIG, "dedup table %s holds %u entries; opened for %u", path,
                                h.capacity, capacity);
        }
    }
    size_t size = HEADER_BYTES + (size_t)capacity * sizeof(dentry_t);
    int rc = pq_shmfile_open(path, size, PQ_SHMFILE_KEEP, &d->file);
    if (rc) {
        free(d->path);
        free(d);
        return rc;
    }
    d->h = d->file.map;
    d->entries = (dentry_t *)((char *)d->file.map + HEADER_BYTES);
    d->capacity = capacity;
    static const char zero[8];
    if (d->file.sole) {
        /* Created now, or created by an opener that died before writing the
         * header (the file is allocated first): an empty table either way. */
        if (d->file.created || memcmp(d->h->magic, zero, 8) == 0) {
            memcpy(d->h->magic, DEDUP_MAGIC, 8);
            d->h->version = 1;
            d->h->capacity = capacity;
        }
        if (memcmp(d->h->magic, DEDUP_MAGIC, 8) != 0 || d->h->capacity != capacity) {
            rc = pq_error_set(-PQ_ECORRUPT, "dedup table %s: bad header at byte 0", path);
        } else {
            rc = pq_shared_mutex_init(&d->h->lock.m);
        }
    } else if (memcmp(d->h->magic, DEDUP_MAGIC, 8) != 0 || d->h->capacity != capacity) {
        rc = pq_error_set(-PQ_ECORRUPT, "dedup table %s: bad header at byte 0", path);
    }
    pq_shmfile_share(&d->file);
    if (rc) {
        pq_dedup_close(d);
        return rc;
    }
    *out = d;
    return 0;
}

void pq_dedup_close(pq_dedup_t *d)
{
    if (!d)
        return;
    pq_shmfile_close(&d->file);
    free(d->logs);
    free(d->path);
    free(d);
}

void pq_dedup_attach_logs(pq_dedup_t *d, pq_log_t *const *logs, uint32_t n)
{
    pq_log_t **copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, logs, n * sizeof *copy);
    free(d->logs);
    d->logs = copy;
    d->nlogs = copy ? n : 0;
}

static void store(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], uint32_t partition,
                  uint64_t offset, uint64_t aux, int64_t expires_ns);

/* The holder of a pending send died; the lock is ours.  Costs a read of the
 * records appended to that partition since the send began (only senders
 * without a dedup id could append meanwhile). */
static void settle(pq_dedup_t *d)
{
    dhdr_t *h = d->h;
    uint32_t token = h->pend_token, p = h->pend_partition;
    uint64_t found = UINT64_MAX;
    if (p < d->nlogs && h->pend_slot < d->capacity) {
        uint64_t start, end, o;
        pq_log_bounds(d->logs[p], &start, &end);
        o = h->pend_from < start ? start : h->pend_from;
        while (o < end && found == UINT64_MAX) {
            pq_record_t recs[64];
            pq_segment_t *seg = NULL;
            int n = pq_log_read_many(d->logs[p], o, recs, 64, &seg);
            if (n <= 0)
                break;                     /* damaged: give up, as without the rule */
            for (int i = 0; i < n && found == UINT64_MAX; i++)
                if (recs[i].attributes == token)
                    found = recs[i].offset;
            o += (uint64_t)n;
            pq_segment_decref(seg);
        }
        if (found != UINT64_MAX) {
            uint8_t key[16];
            memcpy(key, &h->pend_k1, 8);
            memcpy(key + 8, &h->pend_k2, 8);
            store(d, h->pend_slot, key, p, found, 0, h->pend_expires);
        }
    }
    __atomic_store_n(&h->pend_token, 0, __ATOMIC_RELEASE);
    pq_error_clear();
}

static int lock(pq_dedup_t *d)
{
    int rc = pq_shared_mutex_lock(&d->h->lock.m);
    if (rc == EOWNERDEAD) {
        /* Entries are written whole before the pending send is cleared; one
         * left behind is settled below. */
        pthread_mutex_consistent(&d->h->lock.m);
        rc = 0;
    }
    if (rc)
        return pq_error_set(-rc, "dedup table %s: lock unusable: %s", d->path, strerror(rc));
    if (__atomic_load_n(&d->h->pend_token, __ATOMIC_ACQUIRE))
        settle(d);                         /* left by a holder that died */
    return 0;
}

static int find(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, int keep_lock,
                uint32_t *partition, uint64_t *offset, uint64_t *aux, uint32_t *slot)
{
    uint64_t k1, k2;
    memcpy(&k1, key, 8);
    memcpy(&k2, key + 8, 8);
    if (k1 == 0 && k2 == 0)
        k2 = 1;                            /* all-zero marks an unused slot */
    int rc = lock(d);
    if (rc)
        return rc;
    uint32_t candidate = UINT32_MAX;
    for (uint32_t i = 0; i < PQ_DEDUP_PROBES && i < d->capacity; i++) {
        uint32_t s = (uint32_t)((k1 + i) % d->capacity);
        dentry_t *e = &d->entries[s];
        if (e->k1 == 0 && e->k2 == 0) {    /* never used: the chain ends here */
            if (candidate == UINT32_MAX)
                candidate = s;
            break;
        }
        if (e->expires_ns <= now_ns) {
            if (candidate == UINT32_MAX)
                candidate = s;
            continue;
        }
        if (e->k1 == k1 && e->k2 == k2) {
            *partition = e->partition;
            *offset = e->offset;
            *aux = e->aux;
            *slot = s;
            if (!keep_lock)
                pthread_mutex_unlock(&d->h->lock.m);
            return 1;
        }
    }
    if (candidate == UINT32_MAX) {
        pthread_mutex_unlock(&d->h->lock.m);
        return pq_error_set(-PQ_EFULL, "table %s is full: %d entries in a row are live; give it a "
                            "larger capacity (a topic's dedup_capacity, the scheduler's capacity)",
                            d->path, PQ_DEDUP_PROBES);
    }
    *slot = candidate;
    return 0;
}

int pq_dedup_begin(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t *partition,
                   uint64_t *offset, uint32_t *slot)
{
    uint64_t aux;
    return find(d, key, now_ns, 0, partition, offset, &aux, slot);
}

static void store(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], uint32_t partition,
                  uint64_t offset, uint64_t aux, int64_t expires_ns)
{
    uint64_t k1, k2;
    memcpy(&k1, key, 8);
    memcpy(&k2, key + 8, 8);
    if (k1 == 0 && k2 == 0)
        k2 = 1;
    dentry_t *e = &d->entries[slot];
    e->expires_ns = expires_ns;
    e->offset = offset;
    e->aux = aux;
    e->partition = partition;
    e->k1 = k1;
    e->k2 = k2;
}

void pq_dedup_insert(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], uint32_t partition,
                     uint64_t offset, uint64_t aux, int64_t expires_ns)
{
    store(d, slot, key, partition, offset, aux, expires_ns);
    __atomic_store_n(&d->h->pend_token, 0, __ATOMIC_RELEASE);   /* after the entry */
    pthread_mutex_unlock(&d->h->lock.m);
}

int pq_dedup_get(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t *partition,
                 uint64_t *offset, uint64_t *aux)
{
    uint32_t slot;
    int rc = find(d, key, now_ns, 0, partition, offset, aux, &slot);
    if (rc == 0)
        pthread_mutex_unlock(&d->h->lock.m);
    return rc;
}

int pq_dedup_put(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t partition,
                 uint64_t offset, uint64_t aux, int64_t expires_ns)
{
    uint32_t slot, p;
    uint64_t o, a;
    int rc = find(d, key, now_ns, 1, &p, &o, &a, &slot);
    if (rc < 0)
        return rc;
    pq_dedup_insert(d, slot, key, partition, offset, aux, expires_ns);
    return 0;
}

void pq_dedup_unlock(pq_dedup_t *d)
{
    __atomic_store_n(&d->h->pend_token, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&d->h->lock.m);
}

uint32_t pq_dedup_pend(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], pq_log_t *log,
                       uint32_t partition, int64_t expires_ns)
{
    dhdr_t *h = d->h;
    uint64_t start, end;
    pq_log_bounds(log, &start, &end);
    memcpy(&h->pend_k1, key, 8);
    memcpy(&h->pend_k2, key + 8, 8);
    h->pend_slot = slot;
    h->pend_from = end;
    h->pend_expires = expires_ns;
    h->pend_partition = partition;
    uint32_t token = ++h->token_seq;
    if (token == 0)
        token = ++h->token_seq;            /* 0 is every other record's attributes */
    __atomic_store_n(&h->pend_token, token, __ATOMIC_RELEASE);   /* last: the rest is set */
    return token;
}

uint64_t pq_dedup_count(pq_dedup_t *d, int64_t now_ns)
{
    uint64_t n = 0;
    for (uint32_t s = 0; s < d->capacity; s++) {
        const dentry_t *e = &d->entries[s];
        if ((e->k1 || e->k2) && e->expires_ns > now_ns)
            n++;
    }
    return n;
}

int pq_dedup_sync(pq_dedup_t *d)
{
    return pq_shmfile_sync(&d->file);
}

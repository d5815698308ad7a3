/* group.c - consumer-group state in one shared mapped file (see group.h).
 *
 * Queue mode keeps, per partition, a window of in-flight entries for offsets
 * [committed, next): entry o lives at slot o % window.  An entry is READY
 * (deliverable), LEASED (delivered, until its deadline), DELAYED (not before
 * its deadline) or DONE (acked).  The committed offset advances over DONE
 * entries at the front, so the group's position is the lowest unacked offset
 * and the acked set above it costs one byte of state per message in the
 * window.  A full window (window entries unfinished) stops new leases: the
 * prefetch bound of RabbitMQ, JetStream's MaxAckPending.
 *
 * Costs: a lease or ack is O(1) plus the messages handled; expired leases are
 * found by a sweep of the window that runs only once the earliest deadline has
 * passed (min_deadline), and an ordered (per-key) lease scans the window once.
 *
 * Crash rule: entries and counters change only under the partition lock; a
 * holder that dies leaves counters the next locker recounts from the entries.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "group.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"
#include "notify.h"
#include "pq_error.h"
#include "shmfile.h"

#define GROUP_VERSION    1
#define HEADER_BYTES     8192
#define PART_BYTES       128

static const char GROUP_MAGIC[8] = {'P', 'Y', 'Q', 'G', 'R', 'O', 'U', 'P'};

enum { E_FREE = 0, E_READY = 1, E_LEASED = 2, E_DELAYED = 3, E_DONE = 4 };

typedef union {
    pthread_mutex_t m;
    char pad[64];
} gmutex_t;

typedef struct member {
    uint64_t member_id;         /* 0: free slot */
    int32_t pid;
    uint32_t reserved0;
    uint64_t start_time;        /* /proc/<pid>/stat field 22, against pid reuse */
    int64_t heartbeat_ns;       /* CLOCK_MONOTONIC */
    uint64_t reserved[4];
} member_t;

typedef struct ghdr {
    char magic[8];
    uint32_t version;
    uint32_t mode;
    uint32_t partitions;
    uint32_t window;
    uint64_t file_size;
    uint64_t generation;        /* bumped on every membership change */
    uint64_t next_member_id;
    char reserved[128 - 48];
    gmutex_t members_lock;      /* at 128 */
    member_t members[PQ_GROUP_MAX_MEMBERS];   /* at 192 */
} ghdr_t;

typedef struct gpart {
    gmutex_t lock;
    uint64_t committed;         /* PQ_OFFSET_UNSET until first use */
    uint64_t next;
    uint64_t owner;             /* stream mode */
    int64_t min_deadline;       /* earliest LEASED/DELAYED deadline, or INT64_MAX */
    uint64_t lease_seq;
    uint32_t n_ready, n_leased, n_delayed, n_done;
    uint64_t dead_letters;
} gpart_t;

typedef struct entry {
    int64_t deadline;
    uint64_t lease_id;
    uint32_t deliveries;
    uint32_t key_hash;
    uint16_t owner_slot;
    uint8_t state;
    uint8_t has_key;
    uint32_t reserved;
} entry_t;

_Static_assert(sizeof(ghdr_t) <= HEADER_BYTES, "group header must fit");
_Static_assert(sizeof(gpart_t) <= PART_BYTES, "partition header must fit");
_Static_assert(sizeof(entry_t) == 32, "entry is 32 bytes");
_Static_assert(sizeof(member_t) == 64, "member is 64 bytes");

struct pq_group {
    pq_shmfile_t file;
    ghdr_t *h;
    uint32_t partitions, window;
    char *path;
    pq_notify_t *notify;        /* not owned */
};

static size_t part_stride(uint32_t window)
{
    return PART_BYTES + (size_t)window * sizeof(entry_t);
}

static gpart_t *part_of(pq_group_t *g, uint32_t p)
{
    return (gpart_t *)((char *)g->h + HEADER_BYTES + (size_t)p * part_stride(g->window));
}

static entry_t *entry_of(pq_group_t *g, gpart_t *part, uint64_t offset)
{
    return (entry_t *)((char *)part + PART_BYTES) + offset % g->window;
}

static void wake(pq_group_t *g)
{
    pq_notify_t *n = __atomic_load_n(&g->notify, __ATOMIC_ACQUIRE);
    if (n)
        pq_notify_wake(n);
}

void pq_group_set_notify(pq_group_t *g, pq_notify_t *n)
{
    __atomic_store_n(&g->notify, n, __ATOMIC_RELEASE);
}

/* ---- partition locking and counters ---- */

static void recount(pq_group_t *g, gpart_t *part)
{
    part->n_ready = part->n_leased = part->n_delayed = part->n_done = 0;
    part->min_deadline = INT64_MAX;
    if (part->committed == PQ_OFFSET_UNSET || !g->window)
        return;
    for (uint64_t o = part->committed; o < part->next; o++) {
        entry_t *e = entry_of(g, part, o);
        switch (e->state) {
        case E_READY: part->n_ready++; break;
        case E_LEASED: part->n_leased++; break;
        case E_DELAYED: part->n_delayed++; break;
        case E_DONE: part->n_done++; break;
        default: e->state = E_READY; part->n_ready++; break;   /* never left FREE inside */
        }
        if ((e->state == E_LEASED || e->state == E_DELAYED) && e->deadline < part->min_deadline)
            part->min_deadline = e->deadline;
    }
}

static int lock_part(pq_group_t *g, uint32_t p, gpart_t **out)
{
    if (p >= g->partitions)
        return pq_error_set(-PQ_ERANGE, "group %s has partitions 0..%u; got %u", g->path,
                            g->partitions - 1, p);
    gpart_t *part = part_of(g, p);
    int rc = pq_shared_mutex_lock(&part->lock.m);
    if (rc == EOWNERDEAD) {
        recount(g, part);
        pthread_mutex_consistent(&part->lock.m);
        rc = 0;
    }
    if (rc)
        return pq_error_set(-rc, "group %s: partition %u lock unusable: %s", g->path, p, strerror(rc));
    *out = part;
    return 0;
}

static void unlock_part(gpart_t *part)
{
    pthread_mutex_unlock(&part->lock.m);
}

static int lock_members(pq_group_t *g)
{
    int rc = pq_shared_mutex_lock(&g->h->members_lock.m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&g->h->members_lock.m);   /* slots are written whole */
        rc = 0;
    }
    if (rc)
        return pq_error_set(-rc, "group %s: member lock unusable: %s", g->path, strerror(rc));
    return 0;
}

static void unlock_members(pq_group_t *g)
{
    pthread_mutex_unlock(&g->h->members_lock.m);
}

/* ---- open ---- */

static int check_header(const ghdr_t *h, const pq_group_config_t *cfg, const char *path)
{
    if (memcmp(h->magic, GROUP_MAGIC, 8) != 0)
        return pq_error_set(-PQ_ECORRUPT, "group file %s: bad magic at byte 0", path);
    if (h->version != GROUP_VERSION)
        return pq_error_set(-PQ_EFORMAT, "group file %s: version %u, this build reads %u", path,
                            h->version, GROUP_VERSION);
    if (h->mode != cfg->mode)
        return pq_error_set(-PQ_ECONFIG, "group exists in %s mode; asked for %s mode",
                            h->mode == PQ_GROUP_QUEUE ? "queue" : "stream",
                            cfg->mode == PQ_GROUP_QUEUE ? "queue" : "stream");
    if (h->partitions != cfg->partitions)
        return pq_error_set(-PQ_ECONFIG, "group file %s is for %u partitions; the topic has %u",
                            path, h->partitions, cfg->partitions);
    if (h->window != cfg->window)
        return pq_error_set(-PQ_ECONFIG, "group exists with max_in_flight=%u; asked for %u",
                            h->window, cfg->window);
    return 0;
}

static void release_member(pq_group_t *g, uint32_t slot, uint64_t member_id);

/* A queue-mode window is [committed, next) with at most `window` offsets:
 * recount, sweep and lease loop over it and trust that bound. */
static int check_window(pq_group_t *g, uint32_t p)
{
    gpart_t *part = part_of(g, p);
    uint64_t c = part->committed, n = part->next;
    if (!g->window || (c == PQ_OFFSET_UNSET && n == PQ_OFFSET_UNSET) ||
        (c != PQ_OFFSET_UNSET && n >= c && n - c <= g->window))
        return 0;
    return pq_error_set(-PQ_ECORRUPT, "group file %s: partition %u window [%llu, %llu) at byte %zu "
                        "is not within max_in_flight=%u", g->path, p, (unsigned long long)c,
                        (unsigned long long)n, (size_t)((char *)&part->committed - (char *)g->h),
                        g->window);
}

/* Sole opener: nobody else has the file open, so every member is gone. */
static int reset_after_restart(pq_group_t *g, int fresh)
{
    ghdr_t *h = g->h;
    for (uint32_t p = 0; p < g->partitions && !fresh; p++) {
        int bad = check_window(g, p);
        if (bad)
            return bad;
    }
    int rc = pq_shared_mutex_init(&h->members_lock.m);
    for (uint32_t p = 0; p < g->partitions && rc == 0; p++) {
        gpart_t *part = part_of(g, p);
        rc = pq_shared_mutex_init(&part->lock.m);
        if (fresh) {
            part->committed = part->next = PQ_OFFSET_UNSET;
            part->min_deadline = INT64_MAX;
        }
    }
    if (rc)
        return pq_error_set(rc, "group %s: cannot initialise locks", g->path);
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS; s++) {
        if (h->members[s].member_id) {
            release_member(g, s, h->members[s].member_id);
            memset(&h->members[s], 0, sizeof h->members[s]);
        }
    }
    for (uint32_t p = 0; p < g->partitions; p++) {
        gpart_t *part = part_of(g, p);
        part->owner = 0;
        recount(g, part);
    }
    h->generation++;
    return 0;
}

int pq_group_open(const char *path, const pq_group_config_t *cfg, pq_group_t **out)
{
    int rc;
    if (cfg->mode != PQ_GROUP_STREAM && cfg->mode != PQ_GROUP_QUEUE)
        return pq_error_set(-PQ_ECONFIG, "unknown group mode %u", cfg->mode);
    if (cfg->partitions == 0 || (cfg->mode == PQ_GROUP_QUEUE &&
                                 (cfg->window == 0 || cfg->window > PQ_GROUP_MAX_WINDOW)))
        return pq_error_set(-PQ_ECONFIG, "max_in_flight %u is outside 1..%u", cfg->window,
                            PQ_GROUP_MAX_WINDOW);

    /* An existing file's header decides its size: check it before mapping, so
     * a conflicting open can never resize (and wipe) a group. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ghdr_t h;
        ssize_t n = pread(fd, &h, sizeof h, 0);
        close(fd);
        if (n == (ssize_t)sizeof h && memcmp(h.magic, GROUP_MAGIC, 8) == 0 &&
            (rc = check_header(&h, cfg, path)) != 0)
            return rc;
    }
    pq_group_t *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        return pq_error_set(-ENOMEM, "out of memory opening %s", path);
    }
    g->partitions = cfg->partitions;
    g->window = cfg->mode == PQ_GROUP_QUEUE ? cfg->window : 0;
    size_t size = HEADER_BYTES + (size_t)cfg->partitions * part_stride(g->window);
    if ((rc = pq_shmfile_open(path, size, PQ_SHMFILE_KEEP, &g->file)) != 0) {
        free(g->path);
        free(g);
        return rc;
    }
    g->h = g->file.map;
    ghdr_t *h = g->h;
    int fresh = g->file.created || memcmp(h->magic, "\0\0\0\0\0\0\0\0", 8) == 0;
    if (fresh && g->file.sole) {
        memset(h, 0, HEADER_BYTES);
        memcpy(h->magic, GROUP_MAGIC, 8);
        h->version = GROUP_VERSION;
        h->mode = cfg->mode;
        h->partitions = cfg->partitions;
        h->window = g->window;
        h->file_size = size;
    }
    if ((rc = check_header(h, cfg, path)) == 0 && h->file_size != size)
        rc = pq_error_set(-PQ_ECORRUPT, "group file %s: header size %llu, expected %zu", path,
                          (unsigned long long)h->file_size, size);
    if (rc == 0 && g->file.sole)
        rc = reset_after_restart(g, fresh);
    pq_shmfile_share(&g->file);
    if (rc) {
        pq_shmfile_close(&g->file);
        free(g->path);
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int pq_group_probe(const char *path, pq_group_config_t *out)
{
    ghdr_t h;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pq_error_set(-errno, "cannot open %s: %s", path, strerror(errno));
    ssize_t n = pread(fd, &h, sizeof h, 0);
    close(fd);
    if (n != (ssize_t)sizeof h || memcmp(h.magic, GROUP_MAGIC, 8) != 0)
        return pq_error_set(-PQ_ECORRUPT, "group file %s: bad header at byte 0", path);
    if (h.version != GROUP_VERSION || (h.mode != PQ_GROUP_STREAM && h.mode != PQ_GROUP_QUEUE) ||
        h.partitions == 0 || (h.mode == PQ_GROUP_QUEUE) != (h.window != 0) ||
        h.window > PQ_GROUP_MAX_WINDOW)
        return pq_error_set(-PQ_ECORRUPT, "group file %s: version %u, mode %u, window %u at bytes "
                            "8..24 are not a group's", path, h.version, h.mode, h.window);
    out->mode = h.mode;
    out->partitions = h.partitions;
    out->window = h.window;
    return 0;
}

void pq_group_close(pq_group_t *g)
{
    if (!g)
        return;
    pq_shmfile_close(&g->file);
    free(g->path);
    free(g);
}

int pq_group_sync(pq_group_t *g)
{
    return pq_shmfile_sync(&g->file);
}

/* ---- membership ---- */

/* Field 22 of /proc/<pid>/stat (start time, against pid reuse) and field 3
 * (state: 'Z' is a zombie, dead though its pid still answers kill(pid, 0)).
 * Returns 0 if the process does not exist. */
static uint64_t process_start_time(int32_t pid, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');   /* the command name may hold spaces */
    if (!p || p[1] != ' ')
        return 0;
    if (state)
        *state = p[2];
    int field = 2;                 /* the space after ")" starts field 3 */
    for (; *p && field < 22; p++)
        if (*p == ' ')
            field++;
    return strtoull(p, NULL, 10);
}

static int member_alive(const member_t *m, int64_t now_mono, int64_t session_ns)
{
    if (kill(m->pid, 0) != 0 && errno == ESRCH)
        return 0;
    char state = '?';
    uint64_t start = process_start_time(m->pid, &state);
    if (state == 'Z' || state == 'X')
        return 0;
    if (m->start_time && start != m->start_time)
        return 0;   /* the pid was reused by another process */
    return session_ns <= 0 || now_mono - m->heartbeat_ns <= session_ns;
}

int pq_group_join(pq_group_t *g, int32_t pid, int64_t now_mono, uint32_t *slot, uint64_t *member_id)
{
    int rc = lock_members(g);
    if (rc)
        return rc;
    ghdr_t *h = g->h;
    rc = pq_error_set(-PQ_EFULL, "group %s has %d members already (the limit)", g->path,
                      PQ_GROUP_MAX_MEMBERS);
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS; s++) {
        member_t *m = &h->members[s];
        if (m->member_id)
            continue;
        m->pid = pid;
        m->start_time = process_start_time(pid, NULL);
        m->heartbeat_ns = now_mono;
        m->member_id = ++h->next_member_id;
        h->generation++;
        *slot = s;
        *member_id = m->member_id;
        pq_error_clear();
        rc = 0;
        break;
    }
    unlock_members(g);
    return rc;
}

/* Free what a departed member held.  Takes partition locks one at a time. */
static void release_member(pq_group_t *g, uint32_t slot, uint64_t member_id)
{
    for (uint32_t p = 0; p < g->partitions; p++) {
        gpart_t *part;
        if (lock_part(g, p, &part) != 0)
            continue;
        if (part->owner == member_id)
            part->owner = 0;
        if (g->window && part->committed != PQ_OFFSET_UNSET && part->n_leased) {
            for (uint64_t o = part->committed; o < part->next; o++) {
                entry_t *e = entry_of(g, part, o);
                if (e->state == E_LEASED && e->owner_slot == slot) {
                    e->state = E_READY;   /* its delivery count stays */
                    part->n_leased--;
                    part->n_ready++;
                }
            }
        }
        unlock_part(part);
    }
    pq_error_clear();
}

static int remove_member(pq_group_t *g, uint32_t s, uint64_t member_id)
{
    release_member(g, s, member_id);
    int rc = lock_members(g);
    if (rc)
        return rc;
    member_t *m = &g->h->members[s];
    if (m->member_id == member_id) {
        memset(m, 0, sizeof *m);
        g->h->generation++;
    }
    unlock_members(g);
    wake(g);
    return 0;
}

int pq_group_leave(pq_group_t *g, uint64_t member_id)
{
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS; s++)
        if (__atomic_load_n(&g->h->members[s].member_id, __ATOMIC_ACQUIRE) == member_id)
            return remove_member(g, s, member_id);
    return 0;
}

int pq_group_heartbeat(pq_group_t *g, uint32_t slot, uint64_t member_id, int64_t now_mono)
{
    if (slot >= PQ_GROUP_MAX_MEMBERS)
        return pq_error_set(-PQ_ERANGE, "bad member slot %u", slot);
    member_t *m = &g->h->members[slot];
    if (__atomic_load_n(&m->member_id, __ATOMIC_ACQUIRE) != member_id)
        return pq_error_set(-PQ_EFENCED, "member %llu of group %s was removed (declared dead)",
                            (unsigned long long)member_id, g->path);
    __atomic_store_n(&m->heartbeat_ns, now_mono, __ATOMIC_RELEASE);
    return 0;
}

int pq_group_reap(pq_group_t *g, int64_t now_mono, int64_t session_ns)
{
    uint64_t dead_id[PQ_GROUP_MAX_MEMBERS];
    uint32_t dead_slot[PQ_GROUP_MAX_MEMBERS], n = 0;
    int rc = lock_members(g);
    if (rc)
        return rc;
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS; s++) {
        member_t *m = &g->h->members[s];
        if (m->member_id && !member_alive(m, now_mono, session_ns)) {
            dead_id[n] = m->member_id;
            dead_slot[n++] = s;
        }
    }
    unlock_members(g);
    for (uint32_t i = 0; i < n; i++)
        remove_member(g, dead_slot[i], dead_id[i]);
    return (int)n;
}

uint64_t pq_group_generation(pq_group_t *g)
{
    return __atomic_load_n(&g->h->generation, __ATOMIC_ACQUIRE);
}

int pq_group_members(pq_group_t *g, pq_member_info_t *out, size_t max)
{
    int rc = lock_members(g);
    if (rc)
        return rc;
    size_t n = 0;
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS && n < max; s++) {
        member_t *m = &g->h->members[s];
        if (!m->member_id)
            continue;
        size_t i = n++;
        while (i > 0 && out[i - 1].member_id > m->member_id) {   /* insertion sort by id */
            out[i] = out[i - 1];
            i--;
        }
        out[i].member_id = m->member_id;
        out[i].pid = m->pid;
        out[i].slot = s;
        out[i].heartbeat_ns = m->heartbeat_ns;
    }
    unlock_members(g);
    return (int)n;
}

static int member_present(pq_group_t *g, uint64_t member_id)
{
    for (uint32_t s = 0; s < PQ_GROUP_MAX_MEMBERS; s++)
        if (__atomic_load_n(&g->h->members[s].member_id, __ATOMIC_ACQUIRE) == member_id)
            return 1;
    return 0;
}

/* ---- partitions ---- */

int pq_group_partition_info(pq_group_t *g, uint32_t p, pq_partition_info_t *out)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    memset(out, 0, sizeof *out);
    out->committed = part->committed;
    out->next = part->next;
    out->owner = part->owner;
    out->leased = part->n_leased;
    out->ready = part->n_ready;
    out->delayed = part->n_delayed;
    out->done = part->n_done;
    out->dead_letters = part->dead_letters;
    unlock_part(part);
    return 0;
}

int pq_group_init_offset(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t *committed)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    if (part->committed == PQ_OFFSET_UNSET) {
        part->committed = part->next = offset;
        part->min_deadline = INT64_MAX;
    }
    *committed = part->committed;
    unlock_part(part);
    return 0;
}

int pq_group_claim(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t *committed)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    int taken = 0;
    if (part->owner == 0 || part->owner == member_id || !member_present(g, part->owner)) {
        part->owner = member_id;
        *committed = part->committed;
        taken = 1;
    }
    unlock_part(part);
    return taken;
}

int pq_group_commit(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset, int release)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    if (part->owner != member_id) {
        unlock_part(part);
        return pq_error_set(-PQ_EFENCED, "partition %u of group %s is no longer owned by member %llu",
                            p, g->path, (unsigned long long)member_id);
    }
    if (offset != PQ_OFFSET_UNSET)
        part->committed = part->next = offset;
    if (release)
        part->owner = 0;
    unlock_part(part);
    wake(g);      /* a freed partition for standbys, depth for blocked producers */
    return 0;
}

int pq_group_seek(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    if (!g->window) {
        if (part->owner != member_id) {
            unlock_part(part);
            return pq_error_set(-PQ_EFENCED, "partition %u is not assigned to this consumer", p);
        }
    } else if (part->committed != PQ_OFFSET_UNSET) {
        for (uint64_t o = part->committed; o < part->next; o++)
            entry_of(g, part, o)->state = E_FREE;
    }
    part->committed = part->next = offset;
    recount(g, part);
    unlock_part(part);
    wake(g);
    return 0;
}

/* ---- queue mode ---- */

/* Expired leases and due delays become READY; recompute the earliest deadline. */
static void sweep(pq_group_t *g, gpart_t *part, int64_t now)
{
    if (now < part->min_deadline)
        return;
    int64_t min = INT64_MAX;
    for (uint64_t o = part->committed; o < part->next; o++) {
        entry_t *e = entry_of(g, part, o);
        if (e->state != E_LEASED && e->state != E_DELAYED)
            continue;
        if (e->deadline <= now) {
            if (e->state == E_LEASED) part->n_leased--;
            else part->n_delayed--;
            e->state = E_READY;
            part->n_ready++;
        } else if (e->deadline < min) {
            min = e->deadline;
        }
    }
    part->min_deadline = min;
}

static void grant(gpart_t *part, entry_t *e, uint64_t offset, uint32_t slot, int64_t deadline,
                  pq_lease_t *out)
{
    if (e->state == E_READY)
        part->n_ready--;
    e->state = E_LEASED;
    e->deliveries++;
    e->deadline = deadline;
    e->lease_id = ++part->lease_seq;
    e->owner_slot = (uint16_t)slot;
    part->n_leased++;
    if (deadline < part->min_deadline)
        part->min_deadline = deadline;
    out->offset = offset;
    out->lease_id = e->lease_id;
    out->deliveries = e->deliveries;
}

#define KEY_BITS 4096   /* per-key blocking filter: a false positive only delays */

static inline int key_blocked(const uint64_t *bits, uint32_t h)
{
    return (bits[(h % KEY_BITS) / 64] >> (h % 64)) & 1;
}

static inline void key_block(uint64_t *bits, uint32_t h)
{
    bits[(h % KEY_BITS) / 64] |= 1ull << (h % 64);
}

int pq_group_lease(pq_group_t *g, uint32_t p, pq_log_t *log, uint32_t slot, int64_t now_ns,
                   int64_t visibility_ns, int ordered, pq_lease_t *out, size_t max,
                   int64_t *next_due_ns)
{
    if (!g->window)
        return pq_error_set(-PQ_ECONFIG, "group %s is not a queue-mode group", g->path);
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    uint64_t start, end;
    pq_log_bounds(log, &start, &end);
    if (part->committed == PQ_OFFSET_UNSET)
        part->committed = part->next = start;
    if (part->committed < start) {
        /* Retention removed unfinished messages: they can no longer be delivered. */
        uint64_t upto = part->next < start ? part->next : start;
        for (uint64_t o = part->committed; o < upto; o++)
            entry_of(g, part, o)->state = E_FREE;
        part->committed = start;
        if (part->next < start)
            part->next = start;
        recount(g, part);
    }
    sweep(g, part, now_ns);

    int64_t deadline = now_ns + visibility_ns;
    uint64_t bits[KEY_BITS / 64];
    size_t got = 0;
    if (ordered)
        memset(bits, 0, sizeof bits);
    if (ordered || part->n_ready) {
        for (uint64_t o = part->committed; o < part->next && (ordered || got < max); o++) {
            entry_t *e = entry_of(g, part, o);
            if (e->state == E_DONE)
                continue;
            int blocked = ordered && e->has_key && key_blocked(bits, e->key_hash);
            if (!blocked && e->state == E_READY && got < max)
                grant(part, e, o, slot, deadline, &out[got++]);
            if (ordered && e->has_key)
                key_block(bits, e->key_hash);
        }
    }
    /* New offsets enter the window while it has room. */
    pq_record_t recs[64];
    while (got < max && part->next < end && part->next - part->committed < g->window) {
        uint64_t room = g->window - (part->next - part->committed);
        size_t want = room < 64 ? (size_t)room : 64;
        pq_segment_t *seg = NULL;
        int n = pq_log_read_many(log, part->next, recs, want, &seg);
        if (n <= 0) {
            rc = n;
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t o = part->next++;
            entry_t *e = entry_of(g, part, o);
            memset(e, 0, sizeof *e);
            e->has_key = recs[i].key != NULL;
            e->key_hash = e->has_key ? pq_crc32c(0, recs[i].key, recs[i].key_len) : 0;
            int blocked = ordered && e->has_key && key_blocked(bits, e->key_hash);
            if (recs[i].deliver_at > now_ns) {
                e->state = E_DELAYED;
                e->deadline = recs[i].deliver_at;
                part->n_delayed++;
                if (e->deadline < part->min_deadline)
                    part->min_deadline = e->deadline;
            } else {
                e->state = E_READY;
                part->n_ready++;
                if (!blocked && got < max)
                    grant(part, e, o, slot, deadline, &out[got++]);
            }
            if (ordered && e->has_key)
                key_block(bits, e->key_hash);
        }
        pq_segment_decref(seg);
    }
    *next_due_ns = part->min_deadline;
    unlock_part(part);
    return rc < 0 && got == 0 ? rc : (int)got;
}

/* Find the delivery named by (offset, lease_id); NULL with -PQ_ELEASE set. */
static entry_t *find_delivery(pq_group_t *g, gpart_t *part, uint32_t p, uint64_t offset,
                              uint64_t lease_id, int *rc)
{
    entry_t *e = NULL;
    if (g->window && part->committed != PQ_OFFSET_UNSET && offset >= part->committed &&
        offset < part->next) {
        e = entry_of(g, part, offset);
        /* lease ids start at 1: 0 marks an entry never delivered or nacked */
        if (lease_id == 0 || e->lease_id != lease_id || e->state == E_DONE)
            e = NULL;
    }
    if (!e)
        *rc = pq_error_set(-PQ_ELEASE, "the lease on offset %llu of partition %u expired and the "
                           "message was delivered again (or already acked)",
                           (unsigned long long)offset, p);
    return e;
}

static void leave_state(gpart_t *part, entry_t *e)
{
    switch (e->state) {
    case E_READY: part->n_ready--; break;
    case E_LEASED: part->n_leased--; break;
    case E_DELAYED: part->n_delayed--; break;
    case E_DONE: part->n_done--; break;
    }
}

int pq_group_ack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    entry_t *e = find_delivery(g, part, p, offset, lease_id, &rc);
    int freed = 0;
    if (e) {
        uint64_t before = part->committed;
        leave_state(part, e);
        e->state = E_DONE;
        part->n_done++;
        while (part->committed < part->next) {
            entry_t *head = entry_of(g, part, part->committed);
            if (head->state != E_DONE)
                break;
            part->committed++;
            part->n_done--;     /* outside the window now; a lease resets it on reuse */
        }
        /* Wake sleepers (members waiting for room, producers waiting on
         * max_depth) when the free room crosses an eighth of the window, not
         * on every ack: a member woken for each freed slot would lease one
         * message at a time (TCP's silly window). */
        uint64_t quantum = g->window / 8 ? g->window / 8 : 1;
        uint64_t free_before = g->window - (part->next - before);
        uint64_t free_after = g->window - (part->next - part->committed);
        freed = (free_before < quantum && free_after >= quantum) ||
                part->n_ready > 0;   /* e.g. the next message of an ordered key */
    }
    unlock_part(part);
    if (freed)
        wake(g);
    return rc;
}

/* End a delivery and put the message back: ready at once (delay_ns <= 0)
 * or delayed; `uncount` takes the delivery back off its count. */
static int requeue(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id, int64_t now_ns,
                   int64_t delay_ns, int uncount)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    entry_t *e = find_delivery(g, part, p, offset, lease_id, &rc);
    if (e) {
        leave_state(part, e);
        if (delay_ns > 0) {
            e->state = E_DELAYED;
            e->deadline = now_ns + delay_ns;
            part->n_delayed++;
            if (e->deadline < part->min_deadline)
                part->min_deadline = e->deadline;
        } else {
            e->state = E_READY;
            part->n_ready++;
        }
        e->lease_id = 0;   /* this delivery is over */
        if (uncount && e->deliveries > 0)
            e->deliveries--;
    }
    unlock_part(part);
    if (e)
        wake(g);
    return rc;
}

int pq_group_nack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id, int64_t now_ns,
                  int64_t delay_ns)
{
    return requeue(g, p, offset, lease_id, now_ns, delay_ns, 0);
}

int pq_group_release(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id)
{
    return requeue(g, p, offset, lease_id, 0, 0, 1);
}

int pq_group_extend(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id, int64_t now_ns,
                    int64_t extend_ns)
{
    gpart_t *part;
    int rc = lock_part(g, p, &part);
    if (rc)
        return rc;
    entry_t *e = find_delivery(g, part, p, offset, lease_id, &rc);
    if (e) {
        if (e->state != E_LEASED) {       /* expired, not yet delivered again: take it back */
            leave_state(part, e);
            e->state = E_LEASED;
            part->n_leased++;
        }
        e->deadline = now_ns + extend_ns;
        if (e->deadline < part->min_deadline)
            part->min_deadline = e->deadline;
    }
    unlock_part(part);
    return rc;
}

void pq_group_count_dead_letter(pq_group_t *g, uint32_t p)
{
    if (p < g->partitions)
        __atomic_add_fetch(&part_of(g, p)->dead_letters, 1, __ATOMIC_RELAXED);
}

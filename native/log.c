/* log.c - a partition log over segment files, shared by processes (see log.h).
 *
 * Design.  Appends take a process-shared, robust pthread mutex kept in the
 * mapped `state` file, copy frames into the tail segment's mapping, then
 * publish the new end with one atomic store.  Readers never lock the shared
 * mutex: they load the end (acquire) and read frames below it through the
 * index.  A writer that dies holding the mutex is noticed by the next locker
 * (EOWNERDEAD), which derives the tail again from the published end; bytes the
 * dead writer left past the end are garbage that later appends overwrite.
 *
 * Who validates the state.  Each open takes an flock on the state file:
 * exclusive, non-blocking first; whoever gets it is the only process with the
 * partition open and runs recovery, then downgrades to shared.  Everyone else
 * waits for a shared lock, so nobody reads a partition under recovery.  The
 * state of a live boot (same /proc boot_id) is trusted once its last record
 * checks out: a process crash loses nothing from the page cache, so recovery
 * costs O(1).  After a reboot (or a damaged state) recovery scans from the
 * last flush checkpoint's segment to the tail, validating every frame and
 * rebuilding index entries: its cost is the unflushed tail, not the log.
 *
 * Process-local state (the list of known segments and their mappings) is
 * guarded by a plain mutex, never held across a syscall that may block long.
 * At most MAX_MAPPED sealed segments stay mapped per handle (a writer drops
 * the oldest when it rolls, a reader when it maps another), so resident
 * memory is bounded by MAX_MAPPED + 1 segments whatever the size of the log.
 */
#define _GNU_SOURCE
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "notify.h"
#include "pq_error.h"
#include "shmfile.h"
#include "wake.h"

#define STATE_FILE     "state"
#define STATE_SIZE     4096
#define STATE_VERSION  1
#define MAX_MAPPED     4      /* sealed segments kept mapped per handle, besides the tail */

static const char STATE_MAGIC[8] = {'P', 'Y', 'Q', 'S', 'T', 'A', 'T', 'E'};

typedef union {
    pthread_mutex_t m;
    char pad[64];
} shared_mutex_t;

/* The mapped state file.  Host-specific (it embeds pthread mutexes) and
 * derived: recovery rebuilds it from the segments.  Field order is the one
 * docs/FORMAT.md lists. */
typedef struct pq_state {
    char magic[8];
    uint32_t version;
    uint32_t size;
    uint64_t segment_bytes;
    char boot_id[40];
    shared_mutex_t append_lock;   /* guards tail_base, tail_pos, last_timestamp and writes */
    shared_mutex_t flush_lock;    /* serialises flushes; never held with append_lock */
    uint64_t next_offset;         /* published end; atomic */
    uint64_t tail_base;
    uint64_t tail_pos;
    uint64_t log_start;           /* atomic */
    int64_t last_timestamp;
    uint64_t synced_offset;       /* every record below is on disk; atomic */
    uint64_t synced_base;         /* segment holding the checkpoint */
    uint32_t wake_seq;            /* futex word, bumped when waiters exist */
    uint32_t waiters;             /* atomic count of sleepers */
} pq_state_t;

_Static_assert(sizeof(pthread_mutex_t) <= 64, "pthread_mutex_t must fit its slot");
_Static_assert(sizeof(pq_state_t) <= STATE_SIZE, "state must fit one page");

typedef struct seg_slot {
    uint64_t base;
    pq_segment_t *seg;     /* NULL while not mapped */
    uint64_t last_use;
} seg_slot_t;

struct pq_log {
    char *dir;
    pq_log_config_t cfg;
    int state_fd;
    int dir_fd;
    pq_state_t *st;
    pthread_mutex_t local;        /* guards slots, nslots, use_clock, tail */
    seg_slot_t *slots;
    size_t nslots, cap;
    uint64_t use_clock;
    pq_segment_t *tail;           /* appends go here; replaced under both locks */
    pq_notify_t *notify;          /* the topic's wake-up word, not owned */
    pq_log_recovery_t info;
    uint64_t left_end;            /* the end this process left at its last unlock (append lock held) */
    uint32_t barges;              /* appends in a row nobody else got in between (append lock held) */
};

#define LOAD(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ---- segment list (process-local) ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Parse "<20 digits>.seg"; 1 if it is a segment name. */
static int parse_segment_name(const char *name, uint64_t *base)
{
    if (strlen(name) != 20 + strlen(PQ_SEGMENT_SUFFIX) || strcmp(name + 20, PQ_SEGMENT_SUFFIX) != 0)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9')
            return 0;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *base = v;
    return 1;
}

static int list_segments(const char *dir, uint64_t **bases, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return pq_error_set(-errno, "cannot list partition %s: %s", dir, strerror(errno));
    size_t cap = 16, cnt = 0;
    uint64_t *v = malloc(cap * sizeof *v);
    struct dirent *e;
    while (v && (e = readdir(d)) != NULL) {
        uint64_t b;
        if (!parse_segment_name(e->d_name, &b))
            continue;
        if (cnt == cap) {
            uint64_t *nv = realloc(v, 2 * cap * sizeof *v);
            if (!nv) { free(v); v = NULL; break; }
            v = nv;
            cap *= 2;
        }
        v[cnt++] = b;
    }
    closedir(d);
    if (!v)
        return pq_error_set(-ENOMEM, "out of memory listing %s", dir);
    qsort(v, cnt, sizeof *v, cmp_u64);
    *bases = v;
    *n = cnt;
    return 0;
}

/* Re-read the directory; keep mappings of segments still present.  Local lock held. */
static int refresh_slots(pq_log_t *log)
{
    uint64_t *bases = NULL;
    size_t n = 0;
    int rc = list_segments(log->dir, &bases, &n);
    if (rc)
        return rc;
    seg_slot_t *ns = calloc(n ? n : 1, sizeof *ns);
    if (!ns) {
        free(bases);
        return pq_error_set(-ENOMEM, "out of memory listing %s", log->dir);
    }
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        ns[i].base = bases[i];
        while (j < log->nslots && log->slots[j].base < bases[i]) {
            pq_segment_decref(log->slots[j].seg);   /* deleted by retention elsewhere */
            j++;
        }
        if (j < log->nslots && log->slots[j].base == bases[i]) {
            ns[i].seg = log->slots[j].seg;
            ns[i].last_use = log->slots[j].last_use;
            j++;
        }
    }
    for (; j < log->nslots; j++)
        pq_segment_decref(log->slots[j].seg);
    free(bases);
    free(log->slots);
    log->slots = ns;
    log->nslots = n;
    log->cap = n;
    return 0;
}

/* Index of the slot with the largest base <= offset, or -1. */
static long find_slot(const pq_log_t *log, uint64_t offset)
{
    long lo = 0, hi = (long)log->nslots - 1, ans = -1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        if (log->slots[mid].base <= offset) { ans = mid; lo = mid + 1; }
        else hi = mid - 1;
    }
    return ans;
}

/* Unmap the least recently used sealed segment if too many are mapped. */
static void evict_mappings(pq_log_t *log)
{
    size_t mapped = 0, victim = SIZE_MAX;
    for (size_t i = 0; i < log->nslots; i++) {
        pq_segment_t *s = log->slots[i].seg;
        if (!s)
            continue;
        mapped++;
        if (s != log->tail && (victim == SIZE_MAX || log->slots[i].last_use < log->slots[victim].last_use))
            victim = i;
    }
    if (mapped > MAX_MAPPED && victim != SIZE_MAX) {
        pq_segment_decref(log->slots[victim].seg);   /* readers hold their own references */
        log->slots[victim].seg = NULL;
        evict_mappings(log);                         /* at most a few more */
    }
}

/* The segment of slot i, mapped, with a new reference for the caller.  Local lock held. */
static int slot_segment(pq_log_t *log, size_t i, pq_segment_t **out)
{
    seg_slot_t *s = &log->slots[i];
    s->last_use = ++log->use_clock;   /* the most recent: never the victim below */
    if (!s->seg) {
        int rc = pq_segment_open(log->dir, s->base, log->cfg.segment_bytes, &s->seg);
        if (rc)
            return rc;
        evict_mappings(log);
    }
    pq_segment_incref(s->seg);
    *out = s->seg;
    return 0;
}

/* The segment holding `offset` (< end) and the first offset past it. */
static int acquire_segment(pq_log_t *log, uint64_t offset, uint64_t end,
                           pq_segment_t **seg, uint64_t *seg_end)
{
    int rc = 0;
    uint64_t tail_base = __atomic_load_n(&log->st->tail_base, __ATOMIC_RELAXED);
    pthread_mutex_lock(&log->local);
    long i = find_slot(log, offset);
    /* The list is stale when its last segment is not the tail: a roll since
     * it was read, or a segment above the end left by a cut roll and since
     * removed by the repairer (tail_from_end).  Either way a segment missing
     * from the list may hold `offset`. */
    if (i < 0 || log->slots[log->nslots - 1].base != tail_base) {
        if ((rc = refresh_slots(log)) != 0)
            goto out;
        i = find_slot(log, offset);
    }
    if (i < 0) {
        rc = pq_error_set(-PQ_ERANGE, "offset %llu is below the first segment of %s",
                          (unsigned long long)offset, log->dir);
        goto out;
    }
    *seg_end = (size_t)i + 1 < log->nslots ? log->slots[i + 1].base : end;
    if (*seg_end > end)
        *seg_end = end;
    rc = slot_segment(log, (size_t)i, seg);
out:
    pthread_mutex_unlock(&log->local);
    return rc;
}

/* 1 if the file's first header bytes are all zero: a segment whose creation
 * was cut short before its header was written. */
static int segment_never_written(const char *dir, uint64_t base)
{
    char name[40], path[4096];
    unsigned char buf[PQ_SEGMENT_HEADER_SIZE];
    pq_segment_name(base, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    close(fd);
    if (n < 0)
        return 0;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i])
            return 0;
    return 1;
}

static void unlink_segment(pq_log_t *log, uint64_t base)
{
    char name[40], path[4096];
    pq_segment_name(base, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", log->dir, name);
    unlink(path);
}

/* ---- the tail ---- */

/* Point log->tail at the segment whose base is tail_base.  Append lock held. */
static int ensure_tail(pq_log_t *log)
{
    uint64_t tb = log->st->tail_base;
    if (log->tail && log->tail->base == tb)
        return 0;
    pthread_mutex_lock(&log->local);
    long i = find_slot(log, tb);
    int rc = 0;
    if (i < 0 || log->slots[i].base != tb) {
        if ((rc = refresh_slots(log)) != 0)
            goto out;
        i = find_slot(log, tb);
    }
    if (i < 0 || log->slots[i].base != tb) {
        rc = pq_error_set(-PQ_ECORRUPT, "partition %s: tail segment %llu is missing",
                          log->dir, (unsigned long long)tb);
        goto out;
    }
    pq_segment_t *seg;
    if ((rc = slot_segment(log, (size_t)i, &seg)) != 0)
        goto out;
    pq_segment_decref(log->tail);
    log->tail = seg;
out:
    pthread_mutex_unlock(&log->local);
    return rc;
}

/* Derive tail_base and tail_pos from the published end `next`, which the
 * caller trusts: the tail is the last segment with base <= next, and the
 * write position follows record next-1 (or the header if the segment starts
 * at next).  A segment at `next` whose creation was cut short is removed.
 * Append lock held (or sole opener). */
static int tail_from_end(pq_log_t *log, uint64_t next)
{
    int rc;
    pthread_mutex_lock(&log->local);
    if ((rc = refresh_slots(log)) != 0) {
        pthread_mutex_unlock(&log->local);
        return rc;
    }
    /* A segment above the end is left by a roll cut short (a segment is
     * created before the end is published past its base), so it is empty;
     * left in place it would shadow the records of the next roll, which may
     * come at another offset.  No reader maps it: reads stay below the end. */
    while (log->nslots > 1 && log->slots[log->nslots - 1].base > next) {
        unlink_segment(log, log->slots[log->nslots - 1].base);
        pq_segment_decref(log->slots[log->nslots - 1].seg);
        log->nslots--;
    }
    long i = find_slot(log, next);
    pq_segment_t *seg = NULL;
    while (i >= 0) {
        rc = slot_segment(log, (size_t)i, &seg);
        if (rc == 0)
            break;
        if (log->slots[i].base != next || i == 0)
            break;
        /* An empty segment whose creation was cut short: drop it, use the previous. */
        if (!segment_never_written(log->dir, log->slots[i].base))
            break;
        unlink_segment(log, log->slots[i].base);
        i--;
    }
    if (i >= 0 && rc == 0)
        refresh_slots(log);
    pthread_mutex_unlock(&log->local);
    if (i < 0)
        return pq_error_set(-PQ_ECORRUPT, "partition %s: no segment holds offset %llu",
                            log->dir, (unsigned long long)next);
    if (rc)
        return rc;

    uint64_t pos = PQ_SEGMENT_HEADER_SIZE;
    if (next > seg->base) {
        pq_record_t r;
        rc = pq_segment_read(seg, next - 1, &r);
        if (rc) {
            pq_segment_decref(seg);
            return rc;
        }
        pos = r.position + pq_frame_size(r.key_len, r.headers_len, r.value_len);
        log->st->last_timestamp = r.timestamp > log->st->last_timestamp ? r.timestamp : log->st->last_timestamp;
    }
    log->st->tail_base = seg->base;
    log->st->tail_pos = pos;
    pq_segment_decref(log->tail);
    log->tail = seg;
    return 0;
}

static int lock_append(pq_log_t *log)
{
    int rc = pq_shared_mutex_lock(&log->st->append_lock.m);
    if (rc == EOWNERDEAD) {
        /* The owner died mid-append: whatever it wrote past the published end
         * is garbage; the tail is derived again from that end. */
        int r = tail_from_end(log, log->st->next_offset);
        pthread_mutex_consistent(&log->st->append_lock.m);
        log->info.lock_repaired++;
        if (r) {
            pthread_mutex_unlock(&log->st->append_lock.m);
            return r;
        }
        return 0;
    }
    if (rc)
        return pq_error_set(-rc, "partition %s: append lock unusable (%s); reopen the broker once no process has it open",
                            log->dir, strerror(rc));
    log->barges = log->st->next_offset == log->left_end ? log->barges + 1 : 0;   /* see unlock_append */
    return 0;
}

/* glibc's mutexes let the unlocker take the lock straight back before the
 * waiter it woke gets to run, so a process appending in a loop can starve the
 * others for as long as it loops (seen with long holds: rolls on a busy
 * machine).  A process that finds, append after append, that nobody else got
 * in since its last one while others wait gives them a moment to take the
 * lock: a few yields, until the lock word shows a new owner.  Contended
 * appenders that alternate never pay for it. */
#define FAIR_BARGES 32
#define FAIR_YIELDS 16

static void unlock_append(pq_log_t *log)
{
    pthread_mutex_t *m = &log->st->append_lock.m;
    log->left_end = log->st->next_offset;
#ifdef __GLIBC__
    unsigned int *word = (unsigned int *)&m->__data.__lock;
    int starving = log->barges >= FAIR_BARGES &&
                   (__atomic_load_n(word, __ATOMIC_RELAXED) & 0x80000000u) != 0;   /* FUTEX_WAITERS */
    if (starving)
        log->barges = 0;
    pthread_mutex_unlock(m);
    for (int i = 0; starving && i < FAIR_YIELDS && __atomic_load_n(word, __ATOMIC_RELAXED) == 0; i++)
        sched_yield();
#else
    pthread_mutex_unlock(m);
#endif
}

static void wake_waiters(pq_log_t *log)
{
    /* seq_cst store of the end (publish) pairs with the waiter's seq_cst
     * increment of `waiters` followed by its re-check of the end. */
    if (__atomic_load_n(&log->st->waiters, __ATOMIC_SEQ_CST) > 0) {
        __atomic_add_fetch(&log->st->wake_seq, 1, __ATOMIC_SEQ_CST);
        pq_wake_all(&log->st->wake_seq);
    }
    pq_notify_t *n = __atomic_load_n(&log->notify, __ATOMIC_ACQUIRE);
    if (n)
        pq_notify_wake(n);
}

void pq_log_set_notify(pq_log_t *log, pq_notify_t *notify)
{
    __atomic_store_n(&log->notify, notify, __ATOMIC_RELEASE);
}

static void publish(pq_log_t *log, uint64_t pos, uint64_t next)
{
    /* Zero the word after the last frame: frames left past the end by a dead
     * writer or a failed roll can then never be taken for records by a
     * recovery scan, which stops at the zero length. */
    if (pos + 8 <= log->tail->size - PQ_INDEX_ENTRY_SIZE * (next - log->tail->base))
        memset(log->tail->map + pos, 0, 8);
    log->st->tail_pos = pos;
    __atomic_store_n(&log->st->next_offset, next, __ATOMIC_SEQ_CST);
}

/* ---- retention ---- */

static int last_timestamp_below(pq_log_t *log, size_t slot_index, uint64_t end, int64_t *ts)
{
    pq_segment_t *seg;
    int rc = slot_segment(log, slot_index, &seg);
    if (rc)
        return rc;
    pq_record_t r;
    rc = end > seg->base ? pq_segment_read(seg, end - 1, &r) : -PQ_ERANGE;
    if (rc == 0)
        *ts = r.timestamp;
    pq_segment_decref(seg);
    return rc;
}

/* Append lock held. */
static int enforce_retention_locked(pq_log_t *log, int64_t now_ns)
{
    if (!log->cfg.retention_bytes && !log->cfg.retention_ns)
        return 0;
    int removed = 0, rc = 0;
    pthread_mutex_lock(&log->local);
    if ((rc = refresh_slots(log)) != 0)
        goto out;
    while (log->nslots > 1 && log->slots[0].base < log->st->tail_base) {
        uint64_t total = log->nslots * log->cfg.segment_bytes;
        int drop = log->cfg.retention_bytes &&
                   total - log->cfg.retention_bytes >= log->cfg.segment_bytes &&
                   total > log->cfg.retention_bytes;
        if (!drop && log->cfg.retention_ns) {
            int64_t ts;
            /* a damaged sealed segment is kept: deleting it would hide the damage */
            if (last_timestamp_below(log, 0, log->slots[1].base, &ts) == 0)
                drop = now_ns - ts > log->cfg.retention_ns;
            pq_error_clear();
        }
        if (!drop)
            break;
        STORE(&log->st->log_start, log->slots[1].base);
        unlink_segment(log, log->slots[0].base);
        pq_segment_decref(log->slots[0].seg);
        memmove(log->slots, log->slots + 1, (log->nslots - 1) * sizeof *log->slots);
        log->nslots--;
        removed++;
    }
out:
    pthread_mutex_unlock(&log->local);
    return rc ? rc : removed;
}

int pq_log_enforce_retention(pq_log_t *log, int64_t now_ns)
{
    int rc = lock_append(log);
    if (rc)
        return rc;
    rc = enforce_retention_locked(log, now_ns);
    unlock_append(log);
    return rc;
}

/* ---- recovery ---- */

static void read_boot_id(char out[40])
{
    memset(out, 0, 40);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, out, 39);
        (void)n;
        close(fd);
    }
}

/* Untrusted state: the tail is the last segment; validate it frame by frame
 * from its start, rebuilding index entries, and cut at the first bad frame.
 * Sealed segments are not scanned: a damaged one is reported when read, and
 * nothing is ever deleted because of it.  Cost: at most one segment. */
static int recover_by_scan(pq_log_t *log)
{
    int rc = 0;
    pq_state_t *st = log->st;
    pq_segment_t *tail = NULL;
    while (!tail) {
        pthread_mutex_lock(&log->local);
        size_t last = log->nslots - 1;
        uint64_t base = log->slots[last].base;
        rc = slot_segment(log, last, &tail);
        pthread_mutex_unlock(&log->local);
        if (rc == 0)
            break;
        if (last == 0 || !segment_never_written(log->dir, base))
            return rc;
        unlink_segment(log, base);
        pthread_mutex_lock(&log->local);
        rc = refresh_slots(log);
        pthread_mutex_unlock(&log->local);
        if (rc)
            return rc;
    }
    pq_error_clear();
    uint64_t next, pos;
    pq_segment_scan(tail, PQ_SEGMENT_HEADER_SIZE, tail->base, &pos, &next);
    log->info.scanned_bytes = pos - PQ_SEGMENT_HEADER_SIZE;
    if (st->tail_base == tail->base && st->tail_pos > pos)
        log->info.truncated_bytes = st->tail_pos - pos;

    st->tail_base = tail->base;
    st->tail_pos = pos;
    st->next_offset = next;
    st->last_timestamp = 0;
    if (next > tail->base) {
        pq_record_t r;
        if (pq_segment_read(tail, next - 1, &r) == 0)
            st->last_timestamp = r.timestamp;
    }
    st->synced_base = tail->base;
    st->synced_offset = tail->base;
    pq_segment_decref(log->tail);
    log->tail = tail;
    return 0;
}

static int state_looks_valid(const pq_state_t *st, const pq_log_config_t *cfg)
{
    return memcmp(st->magic, STATE_MAGIC, 8) == 0 && st->version == STATE_VERSION &&
           st->size == STATE_SIZE && st->segment_bytes == cfg->segment_bytes &&
           st->tail_base <= st->next_offset && st->log_start <= st->next_offset &&
           st->synced_base <= st->next_offset &&
           st->tail_pos >= PQ_SEGMENT_HEADER_SIZE && st->tail_pos <= cfg->segment_bytes;
}

/* The segment size recorded in the header of segment `base` (FORMAT.md,
 * "Segment header"), or 0 if the header cannot be read or fails its CRC. */
static uint64_t stored_segment_bytes(const pq_log_t *log, uint64_t base)
{
    char name[40], path[4096];
    unsigned char h[PQ_SEGMENT_HEADER_SIZE];
    uint32_t crc;
    uint64_t size;
    pq_segment_name(base, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", log->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = pread(fd, h, sizeof h, 0);
    close(fd);
    if (n != (ssize_t)sizeof h)
        return 0;
    memcpy(&crc, h + 60, 4);
    if (memcmp(h, "PYQSEGMT", 8) != 0 || crc != pq_crc32c(0, h, 60))
        return 0;
    memcpy(&size, h + 24, 8);
    return size;
}

/* Sole opener: make the state agree with the segments, then reset the locks. */
static int recover(pq_log_t *log, int create)
{
    pq_state_t *st = log->st;
    char boot[40];
    read_boot_id(boot);
    int valid = state_looks_valid(st, &log->cfg);
    int trusted = valid && memcmp(st->boot_id, boot, 40) == 0;
    int rc;

    pthread_mutex_lock(&log->local);
    rc = refresh_slots(log);
    pthread_mutex_unlock(&log->local);
    if (rc)
        return rc;
    if (log->nslots > 0) {
        /* Before anything is scanned or rewritten: the first segment is sealed
         * or the tail, never a cut roll, so its header tells the stored size. */
        uint64_t stored = stored_segment_bytes(log, log->slots[0].base);
        if (stored && stored != log->cfg.segment_bytes)
            return pq_error_set(-PQ_ECONFIG, "partition %s has segments of %llu bytes, opened with segment_bytes %llu",
                                log->dir, (unsigned long long)stored,
                                (unsigned long long)log->cfg.segment_bytes);
    }

    if (log->nslots == 0) {
        if (!create)
            return pq_error_set(-PQ_ECORRUPT, "partition %s has no segment files", log->dir);
        uint64_t base = valid ? st->next_offset : 0;
        pq_segment_t *seg;
        if ((rc = pq_segment_create(log->dir, base, log->cfg.segment_bytes, pq_now_ns(), &seg)) != 0)
            return rc;
        pq_segment_decref(seg);
        pthread_mutex_lock(&log->local);
        rc = refresh_slots(log);
        pthread_mutex_unlock(&log->local);
        if (rc)
            return rc;
        trusted = 0;   /* the scan below finds the new, empty segment */
    } else if (trusted) {
        /* Trust, but check that the state agrees with the files: the last
         * segment holds the end, and the tail derived from the end is the one
         * stored.  Any disagreement (a damaged state) means a scan. */
        uint64_t tb = st->tail_base, tp = st->tail_pos, next = st->next_offset;
        trusted = next >= log->slots[0].base && log->slots[log->nslots - 1].base <= next &&
                  tail_from_end(log, next) == 0 && st->tail_base == tb && st->tail_pos == tp;
        pq_error_clear();
    }
    if (!trusted && (rc = recover_by_scan(log)) != 0)
        return rc;
    memcpy(st->magic, STATE_MAGIC, 8);
    st->version = STATE_VERSION;
    st->size = STATE_SIZE;
    st->segment_bytes = log->cfg.segment_bytes;
    memcpy(st->boot_id, boot, 40);
    st->log_start = log->slots[0].base;
    if (st->synced_offset > st->next_offset || st->synced_base > st->tail_base) {
        st->synced_offset = st->tail_base;
        st->synced_base = st->tail_base;
    }
    st->waiters = 0;
    if ((rc = pq_shared_mutex_init(&st->append_lock.m)) != 0 ||
        (rc = pq_shared_mutex_init(&st->flush_lock.m)) != 0)
        return pq_error_set(rc, "partition %s: cannot initialise locks", log->dir);
    log->info.sole_opener = 1;
    log->info.trusted = trusted;
    return 0;
}

/* ---- open / close ---- */

static void free_log(pq_log_t *log)
{
    pq_segment_decref(log->tail);
    for (size_t i = 0; i < log->nslots; i++)
        pq_segment_decref(log->slots[i].seg);
    free(log->slots);
    if (log->st)
        munmap(log->st, STATE_SIZE);
    if (log->state_fd >= 0)
        close(log->state_fd);   /* releases the flock */
    if (log->dir_fd >= 0)
        close(log->dir_fd);
    pthread_mutex_destroy(&log->local);
    free(log->dir);
    free(log);
}

int pq_log_open(const char *dir, const pq_log_config_t *cfg, int create, pq_log_t **out)
{
    int rc;
    if (cfg->segment_bytes < PQ_SEGMENT_MIN_BYTES || cfg->segment_bytes > PQ_SEGMENT_MAX_BYTES ||
        cfg->segment_bytes % PQ_FRAME_ALIGN)
        return pq_error_set(-PQ_ECONFIG, "segment_bytes %llu is outside %u..%u (or not a multiple of 8)",
                            (unsigned long long)cfg->segment_bytes, PQ_SEGMENT_MIN_BYTES, PQ_SEGMENT_MAX_BYTES);
    if (cfg->max_message_bytes + PQ_FRAME_HEADER_SIZE + PQ_FRAME_ALIGN + PQ_INDEX_ENTRY_SIZE >
        cfg->segment_bytes - PQ_SEGMENT_HEADER_SIZE)
        return pq_error_set(-PQ_ECONFIG, "max_message_bytes %llu does not fit a segment of %llu bytes",
                            (unsigned long long)cfg->max_message_bytes, (unsigned long long)cfg->segment_bytes);

    pq_log_t *log = calloc(1, sizeof *log);
    if (!log)
        return pq_error_set(-ENOMEM, "out of memory opening %s", dir);
    log->state_fd = log->dir_fd = -1;
    log->cfg = *cfg;
    pthread_mutex_init(&log->local, NULL);
    log->dir = strdup(dir);
    if (!log->dir) {
        free_log(log);
        return pq_error_set(-ENOMEM, "out of memory opening %s", dir);
    }
    if (create && mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = pq_error_set(-errno, "cannot create partition directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    log->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dir_fd < 0) {
        rc = pq_error_set(-errno, "cannot open partition directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    log->state_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (log->state_fd < 0) {
        rc = pq_error_set(-errno, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    int sole = flock(log->state_fd, LOCK_EX | LOCK_NB) == 0;
    if (!sole) {
        while (flock(log->state_fd, LOCK_SH) != 0) {
            if (errno != EINTR) {
                rc = pq_error_set(-errno, "cannot lock %s: %s", path, strerror(errno));
                goto fail;
            }
        }
    }
    struct stat sb;
    if (fstat(log->state_fd, &sb) != 0) {
        rc = pq_error_set(-errno, "cannot stat %s: %s", path, strerror(errno));
        goto fail;
    }
    if (sb.st_size != STATE_SIZE) {
        if (!sole) {
            rc = pq_error_set(-PQ_ECORRUPT, "%s is %lld bytes, expected %d", path,
                              (long long)sb.st_size, STATE_SIZE);
            goto fail;
        }
        /* Reserve the page now: a full disk must fail here, not as SIGBUS. */
        int e = ftruncate(log->state_fd, 0) != 0 ? errno : posix_fallocate(log->state_fd, 0, STATE_SIZE);
        if (e != 0) {
            rc = pq_error_set(-e, "cannot allocate %s: %s", path, strerror(e));
            goto fail;
        }
    }
    void *m = mmap(NULL, STATE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, log->state_fd, 0);
    if (m == MAP_FAILED) {
        rc = pq_error_set(-errno, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    log->st = m;

    if (sole) {
        rc = recover(log, create);
        /* Downgrade; processes blocked in LOCK_SH now see a recovered state. */
        flock(log->state_fd, LOCK_SH);
        if (rc)
            goto fail;
    } else if (!state_looks_valid(log->st, cfg)) {
        rc = pq_error_set(-PQ_ECONFIG, "partition %s is open elsewhere with a different segment size or a damaged state",
                          dir);
        goto fail;
    }
    *out = log;
    return 0;
fail:
    free_log(log);
    return rc;
}

void pq_log_close(pq_log_t *log)
{
    if (log)
        free_log(log);
}

/* ---- append ---- */

static int roll(pq_log_t *log, uint64_t next, int64_t now_ns)
{
    pq_segment_t *seg;
    int rc = pq_segment_create(log->dir, next, log->cfg.segment_bytes, now_ns, &seg);
    if (rc)
        return rc;
    pthread_mutex_lock(&log->local);
    pq_segment_decref(log->tail);
    log->tail = seg;
    refresh_slots(log);
    long i = find_slot(log, next);
    if (i >= 0 && log->slots[i].base == next && !log->slots[i].seg) {
        pq_segment_incref(seg);
        log->slots[i].seg = seg;
        log->slots[i].last_use = ++log->use_clock;
    }
    evict_mappings(log);          /* the sealed segment need not stay mapped */
    pthread_mutex_unlock(&log->local);
    log->st->tail_base = next;
    log->st->tail_pos = PQ_SEGMENT_HEADER_SIZE;
    return 0;
}

int pq_log_append(pq_log_t *log, pq_record_t *recs, size_t n, uint64_t *first_offset)
{
    uint64_t cap = log->cfg.segment_bytes - PQ_SEGMENT_HEADER_SIZE - PQ_INDEX_ENTRY_SIZE;
    for (size_t i = 0; i < n; i++) {
        pq_record_t *r = &recs[i];
        uint64_t body = (uint64_t)(r->key_len == PQ_NO_KEY ? 0 : r->key_len) + r->headers_len + r->value_len;
        uint64_t fs = pq_frame_size(r->key_len, r->headers_len, r->value_len);
        if (body > log->cfg.max_message_bytes || fs == 0 || fs > cap)
            return pq_error_set(-PQ_ETOOLARGE, "message of %llu bytes (key + headers + value) exceeds max_message_bytes %llu",
                                (unsigned long long)body, (unsigned long long)log->cfg.max_message_bytes);
    }
    if (n == 0)
        return 0;

    int64_t now = pq_now_ns();
    int rc = lock_append(log);
    if (rc)
        return rc;
    pq_state_t *st = log->st;
    if ((rc = ensure_tail(log)) != 0)
        goto out;
    uint64_t next = st->next_offset, pos = st->tail_pos;
    int64_t ts = now > st->last_timestamp ? now : st->last_timestamp;
    int rolled = 0;
    *first_offset = next;
    for (size_t i = 0; i < n; i++) {
        pq_record_t *r = &recs[i];
        uint64_t fs = pq_frame_size(r->key_len, r->headers_len, r->value_len);
        if (pos + fs > pq_segment_data_limit(log->tail, next - log->tail->base)) {
            /* Create the next segment before publishing, so that a full disk
             * leaves nothing of this call visible unless a roll already happened. */
            if ((rc = roll(log, next, now)) != 0)
                goto out;
            __atomic_store_n(&st->next_offset, next, __ATOMIC_SEQ_CST);
            pos = PQ_SEGMENT_HEADER_SIZE;
            rolled = 1;
        }
        r->offset = next;
        r->timestamp = ts;
        pos += pq_segment_write(log->tail, pos, r);
        next++;
    }
    st->last_timestamp = ts;
    publish(log, pos, next);
    if (rolled)
        enforce_retention_locked(log, now);
out:
    unlock_append(log);
    if (rc == 0)
        wake_waiters(log);
    return rc;
}

/* ---- read ---- */

void pq_log_bounds(pq_log_t *log, uint64_t *start, uint64_t *end)
{
    *end = LOAD(&log->st->next_offset);
    *start = LOAD(&log->st->log_start);
}

int pq_log_read_many(pq_log_t *log, uint64_t offset, pq_record_t *recs, size_t max, pq_segment_t **seg)
{
    uint64_t start, end, seg_end;
    pq_log_bounds(log, &start, &end);
    if (offset < start || offset > end)
        return pq_error_set(-PQ_ERANGE, "offset %llu is outside the retained range %llu..%llu of %s",
                            (unsigned long long)offset, (unsigned long long)start,
                            (unsigned long long)end, log->dir);
    if (offset == end || max == 0)
        return 0;
    int rc = acquire_segment(log, offset, end, seg, &seg_end);
    if (rc) {
        /* deleted by retention between the bounds check and the open */
        if (rc == -ENOENT && offset < LOAD(&log->st->log_start))
            return pq_error_set(-PQ_ERANGE, "offset %llu was removed by retention from %s",
                                (unsigned long long)offset, log->dir);
        return rc;
    }
    size_t n = seg_end - offset < max ? (size_t)(seg_end - offset) : max;
    for (size_t k = 0; k < n; k++) {
        rc = pq_segment_read(*seg, offset + k, &recs[k]);
        if (rc && k > 0) {
            pq_error_clear();
            return (int)k;   /* the intact records first; the next read reports the damage */
        }
        if (rc) {
            pq_segment_decref(*seg);
            *seg = NULL;
            return rc;
        }
    }
    return (int)n;
}

static int timestamp_at(pq_segment_t *seg, uint64_t offset, int64_t *ts)
{
    pq_record_t r;
    int rc = pq_segment_read(seg, offset, &r);
    if (rc == 0)
        *ts = r.timestamp;
    return rc;
}

int pq_log_offset_for_time(pq_log_t *log, int64_t ts_ns, uint64_t *out)
{
    uint64_t start, end;
    pq_log_bounds(log, &start, &end);
    *out = end;
    if (start == end)
        return 0;
    /* Timestamps never decrease within a partition, so both searches are binary. */
    uint64_t lo = start, hi = end;   /* answer in [lo, hi] */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        pq_segment_t *seg;
        uint64_t seg_end;
        int rc = acquire_segment(log, mid, end, &seg, &seg_end);
        if (rc)
            return rc;
        int64_t ts;
        rc = timestamp_at(seg, mid, &ts);
        pq_segment_decref(seg);
        if (rc)
            return rc;
        if (ts >= ts_ns) hi = mid;
        else lo = mid + 1;
    }
    *out = lo;
    return 0;
}

/* ---- durability ---- */

uint64_t pq_log_synced(pq_log_t *log)
{
    return LOAD(&log->st->synced_offset);
}

int pq_log_sync(pq_log_t *log, uint64_t upto)
{
    pq_state_t *st = log->st;
    uint64_t end = LOAD(&st->next_offset);
    if (upto > end)
        upto = end;
    if (LOAD(&st->synced_offset) >= upto)
        return 0;
    int rc = pq_shared_mutex_lock(&st->flush_lock.m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&st->flush_lock.m);   /* a flush needs no repair */
        rc = 0;
    }
    if (rc)
        return pq_error_set(-rc, "partition %s: flush lock unusable", log->dir);
    if (LOAD(&st->synced_offset) >= upto)   /* another caller's flush covered us */
        goto out;

    uint64_t target = LOAD(&st->next_offset);
    uint64_t from = st->synced_base;
    pq_segment_t *segs[64];
    size_t nseg = 0;
    uint64_t last_base = from;
    pthread_mutex_lock(&log->local);
    /* list the directory only when a roll happened since we last did */
    if (log->nslots == 0 || log->slots[log->nslots - 1].base < __atomic_load_n(&st->tail_base, __ATOMIC_RELAXED))
        refresh_slots(log);
    long i = find_slot(log, from);
    if (i < 0)
        i = 0;
    for (size_t k = (size_t)i; k < log->nslots && nseg < 64; k++) {
        if (log->slots[k].base > target && log->slots[k].base != from)
            break;
        if (slot_segment(log, k, &segs[nseg]) != 0)
            break;
        last_base = log->slots[k].base;
        nseg++;
    }
    pthread_mutex_unlock(&log->local);
    for (size_t k = 0; k < nseg; k++) {
        if (rc == 0)
            rc = pq_segment_sync(segs[k]);
        pq_segment_decref(segs[k]);
    }
    /* New segment files need their directory entry on disk too. */
    if (rc == 0 && last_base != from && fsync(log->dir_fd) != 0)
        rc = pq_error_set(-errno, "cannot sync directory %s: %s", log->dir, strerror(errno));
    if (rc == 0) {
        st->synced_base = last_base;
        if (nseg == 64)
            target = last_base;   /* a long backlog is flushed over several calls */
        STORE(&st->synced_offset, target);
        if (target < upto)
            rc = 1;   /* tell the loop below */
    }
out:
    pthread_mutex_unlock(&st->flush_lock.m);
    if (rc == 1)
        return pq_log_sync(log, upto);
    return rc;
}

/* ---- wait / wake ---- */

int pq_log_wait(pq_log_t *log, uint64_t offset, int64_t timeout_ns)
{
    pq_state_t *st = log->st;
    uint32_t seq = __atomic_load_n(&st->wake_seq, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&st->next_offset, __ATOMIC_SEQ_CST) > offset)
        return 1;
    __atomic_add_fetch(&st->waiters, 1, __ATOMIC_SEQ_CST);
    int rc = 0;
    if (__atomic_load_n(&st->next_offset, __ATOMIC_SEQ_CST) <= offset) {
        rc = pq_wake_wait(&st->wake_seq, seq, timeout_ns);
        if (rc == -ETIMEDOUT || rc == -EINTR)
            rc = 0;
    }
    __atomic_sub_fetch(&st->waiters, 1, __ATOMIC_SEQ_CST);
    if (rc < 0)
        return pq_error_set(rc, "partition %s: wait failed: %s", log->dir, strerror(-rc));
    return __atomic_load_n(&st->next_offset, __ATOMIC_SEQ_CST) > offset;
}

void pq_log_wake_all(pq_log_t *log)
{
    __atomic_add_fetch(&log->st->wake_seq, 1, __ATOMIC_SEQ_CST);
    pq_wake_all(&log->st->wake_seq);
}

/* ---- information ---- */

void pq_log_recovery_info(pq_log_t *log, pq_log_recovery_t *out)
{
    *out = log->info;
}

void pq_log_disk_usage(pq_log_t *log, uint64_t *segments, uint64_t *bytes)
{
    pthread_mutex_lock(&log->local);
    refresh_slots(log);
    *segments = log->nslots;
    *bytes = log->nslots * log->cfg.segment_bytes;
    pthread_mutex_unlock(&log->local);
}

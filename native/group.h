/* group.h - consumer-group state shared by the processes of a group.
 *
 * One mapped file per (topic, group) holds the member table and, per
 * partition, the committed offset and either the owner (stream mode: one
 * member reads a partition at a time) or a bounded in-flight window of leases
 * (queue mode: members compete for messages, each delivery is a lease with a
 * deadline).  Layout and rules: docs/FORMAT.md, "Consumer group".
 *
 * Locking: the member table has one robust process-shared mutex, each
 * partition another; no call holds two at once.  A member that dies holding a
 * partition lock leaves counters the next locker recomputes (EOWNERDEAD).
 *
 * Time: lease and delay deadlines are wall-clock ns (they survive restarts);
 * heartbeats are CLOCK_MONOTONIC ns (members live within one boot).
 */
#ifndef PQ_GROUP_H
#define PQ_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"

#define PQ_GROUP_STREAM        1
#define PQ_GROUP_QUEUE         2
#define PQ_GROUP_MAX_MEMBERS   64
#define PQ_GROUP_MAX_WINDOW    65536
#define PQ_OFFSET_UNSET        UINT64_MAX

typedef struct pq_group pq_group_t;

typedef struct pq_group_config {
    uint32_t mode;            /* PQ_GROUP_STREAM or PQ_GROUP_QUEUE */
    uint32_t partitions;
    uint32_t window;          /* queue mode: in-flight entries per partition (1..PQ_GROUP_MAX_WINDOW) */
} pq_group_config_t;

typedef struct pq_member_info {
    uint64_t member_id;
    int32_t pid;
    uint32_t slot;
    int64_t heartbeat_ns;
} pq_member_info_t;

typedef struct pq_partition_info {
    uint64_t committed;       /* PQ_OFFSET_UNSET before the group first touches it */
    uint64_t next;            /* queue mode: first offset never leased */
    uint64_t owner;           /* stream mode: member id, 0 = free */
    uint32_t leased, ready, delayed, done;
    uint64_t dead_letters;    /* counter kept by the policy layer */
} pq_partition_info_t;

typedef struct pq_lease {
    uint64_t offset;
    uint64_t lease_id;        /* names this delivery: ack/nack/extend must present it */
    uint32_t deliveries;      /* 1 on the first delivery */
} pq_lease_t;

/* Open or create the group file at `path`.  -PQ_ECONFIG if the stored mode,
 * partition count or window differ.  The sole opener forgets the members of
 * dead processes and returns their leases to the queue (delivery counts kept). */
int pq_group_open(const char *path, const pq_group_config_t *cfg, pq_group_t **out);
void pq_group_close(pq_group_t *g);

/* Read the mode, partition count and window stored in the group file at
 * `path` without opening it for use (for stats).  -PQ_ECORRUPT if unreadable. */
int pq_group_probe(const char *path, pq_group_config_t *out);

/* ---- membership ---- */

/* Add a member for process `pid`; -PQ_EFULL past PQ_GROUP_MAX_MEMBERS. */
int pq_group_join(pq_group_t *g, int32_t pid, int64_t now_mono, uint32_t *slot, uint64_t *member_id);

/* Remove a member: stream partitions it owns are freed (its committed offsets
 * stay), queue leases it holds return to the queue.  Unknown members: 0. */
int pq_group_leave(pq_group_t *g, uint64_t member_id);

/* Refresh the heartbeat; -PQ_EFENCED if the member was removed meanwhile. */
int pq_group_heartbeat(pq_group_t *g, uint32_t slot, uint64_t member_id, int64_t now_mono);

/* Remove members whose process is gone (or whose pid now belongs to another
 * process) or whose heartbeat is older than session_ns.  Returns how many. */
int pq_group_reap(pq_group_t *g, int64_t now_mono, int64_t session_ns);

/* Bumped whenever membership changes. */
uint64_t pq_group_generation(pq_group_t *g);

/* Live members sorted by member id; returns the count (<= max). */
int pq_group_members(pq_group_t *g, pq_member_info_t *out, size_t max);

/* ---- partitions ---- */

int pq_group_partition_info(pq_group_t *g, uint32_t p, pq_partition_info_t *out);

/* Set the committed offset of a partition the group has not touched yet
 * (start="earliest"/"latest"); no effect otherwise.  Returns the committed offset
 * through *committed. */
int pq_group_init_offset(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t *committed);

/* Stream mode: take partition p for member_id if it is free or held by a
 * member no longer in the table.  Returns 1 and *committed if taken (or
 * already ours), 0 if another live member holds it. */
int pq_group_claim(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t *committed);

/* Stream mode: store `offset` as committed (PQ_OFFSET_UNSET: keep) and, if
 * `release`, free the partition.  -PQ_EFENCED if member_id does not own it. */
int pq_group_commit(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset, int release);

/* Stream or queue mode: move the group's position on p to `offset` (seek).
 * Queue mode forgets the in-flight window.  Stream mode requires ownership. */
int pq_group_seek(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset);

/* Queue mode: lease up to `max` deliverable messages of partition p from
 * `log`, each until now_ns + visibility_ns.  Expired leases and due delays
 * come back first, in offset order; then new offsets while the window has
 * room (a record whose deliver-at time is in the future waits in the window).
 * With `ordered`, a message is deliverable only if no earlier message with the
 * same key is unfinished.  *next_due_ns receives the earliest time something
 * becomes deliverable by time alone (INT64_MAX if never).  Returns the count. */
int pq_group_lease(pq_group_t *g, uint32_t p, pq_log_t *log, uint32_t slot, int64_t now_ns,
                   int64_t visibility_ns, int ordered, pq_lease_t *out, size_t max,
                   int64_t *next_due_ns);

/* Queue mode: finish a delivery.  -PQ_ELEASE if the message was leased again
 * since (or is already finished). */
int pq_group_ack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id);

/* Queue mode: return a delivery to the queue, deliverable after delay_ns. */
int pq_group_nack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id,
                  int64_t now_ns, int64_t delay_ns);

/* Queue mode: give back a delivery that was never handed to a handler (a
 * consumer stopping): ready again at once, and it does not count as a
 * delivery. */
int pq_group_release(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id);

/* Queue mode: set the lease deadline to now_ns + extend_ns. */
int pq_group_extend(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id,
                    int64_t now_ns, int64_t extend_ns);

/* Count a dead-lettered message of partition p (for stats). */
void pq_group_count_dead_letter(pq_group_t *g, uint32_t p);

/* Wake sleepers of `notify` (the topic's word) when the group frees work:
 * nacks, acks that open a full window, departures.  NULL detaches. */
struct pq_notify;
void pq_group_set_notify(pq_group_t *g, struct pq_notify *notify);

/* Flush the group file to disk. */
int pq_group_sync(pq_group_t *g);

#endif

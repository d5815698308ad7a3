/* wheel.c - a hierarchical timing wheel (see wheel.h).
 *
 * The idea (Varghese & Lauck; Kafka's TimingWheel, the Linux timer wheel):
 * level L has 256 buckets, each spanning 256^L ticks.  A timer goes to the
 * lowest level whose range holds its distance from the current tick; when
 * the current tick crosses a boundary of level L (its low 8*L bits become 0)
 * the bucket of level L that starts there is emptied and its timers are
 * placed again, now at a lower level.  Adding and cancelling are O(1); each
 * timer is moved at most once per level.
 *
 * Buckets per level at the default 1 ms tick:
 *
 *   level | bucket width     | level range
 *   ------+------------------+------------------
 *     0   | 1 ms             | 256 ms
 *     1   | 256 ms           | 65.5 s
 *     2   | 65.5 s           | 4.66 h
 *     3   | 4.66 h           | 49.7 days
 *
 * Timers further out than the top level's range are parked in its last
 * bucket before the horizon and placed again when it is emptied, so any
 * deadline works at the cost of one more move per 49 days.
 *
 * Expiry walks only non-empty buckets: a 256-bit occupancy map per level
 * finds the next one, so advancing over idle time costs a boundary check per
 * 256 ticks, not a step per tick.
 */
#include "wheel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct node {
    uint64_t deadline;
    uint32_t next, prev;      /* bucket list links; next is the free list link when free */
    uint32_t generation;
    uint16_t level, slot;     /* where it is linked (level 0xFFFF: free or on the due list) */
} node_t;

struct pq_wheel {
    uint64_t now;                                       /* current tick */
    uint32_t heads[PQ_WHEEL_LEVELS][PQ_WHEEL_SLOTS];
    uint64_t occupied[PQ_WHEEL_LEVELS][PQ_WHEEL_SLOTS / 64];
    node_t *nodes;
    uint32_t cap, used;       /* nodes allocated; high-water mark */
    uint32_t free_head;
    size_t count;
    uint32_t due_head, due_tail;   /* expired, not yet handed out: FIFO, earliest first */
};

#define UNLINKED 0xFFFF

int pq_wheel_new(uint64_t start_tick, pq_wheel_t **out)
{
    pq_wheel_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->now = start_tick;
    memset(w->heads, 0xFF, sizeof w->heads);
    w->free_head = PQ_WHEEL_NONE;
    w->due_head = w->due_tail = PQ_WHEEL_NONE;
    *out = w;
    return 0;
}

void pq_wheel_free(pq_wheel_t *w)
{
    if (w) {
        free(w->nodes);
        free(w);
    }
}

static void link_node(pq_wheel_t *w, uint32_t i, unsigned level, unsigned slot)
{
    node_t *n = &w->nodes[i];
    n->level = (uint16_t)level;
    n->slot = (uint16_t)slot;
    n->prev = PQ_WHEEL_NONE;
    n->next = w->heads[level][slot];
    if (n->next != PQ_WHEEL_NONE)
        w->nodes[n->next].prev = i;
    w->heads[level][slot] = i;
    w->occupied[level][slot / 64] |= 1ull << (slot % 64);
}

static void unlink_node(pq_wheel_t *w, uint32_t i)
{
    node_t *n = &w->nodes[i];
    if (n->prev != PQ_WHEEL_NONE)
        w->nodes[n->prev].next = n->next;
    else
        w->heads[n->level][n->slot] = n->next;
    if (n->next != PQ_WHEEL_NONE)
        w->nodes[n->next].prev = n->prev;
    if (w->heads[n->level][n->slot] == PQ_WHEEL_NONE)
        w->occupied[n->level][n->slot / 64] &= ~(1ull << (n->slot % 64));
    n->level = UNLINKED;
}

/* Put node i in the bucket for its deadline, relative to w->now. */
static void place(pq_wheel_t *w, uint32_t i)
{
    node_t *n = &w->nodes[i];
    if (n->deadline <= w->now) {            /* due: to the tail of the due list */
        n->level = UNLINKED;
        n->next = PQ_WHEEL_NONE;
        if (w->due_tail != PQ_WHEEL_NONE)
            w->nodes[w->due_tail].next = i;
        else
            w->due_head = i;
        w->due_tail = i;
        return;
    }
    uint64_t delta = n->deadline - w->now;
    for (unsigned level = 0; level < PQ_WHEEL_LEVELS; level++) {
        unsigned shift = 8 * level;
        if (delta < (1ull << (shift + 8)) || level == PQ_WHEEL_LEVELS - 1) {
            uint64_t at = n->deadline;
            if (level == PQ_WHEEL_LEVELS - 1 && delta >= (1ull << (shift + 8)))
                at = w->now + (255ull << shift);   /* park at the horizon */
            link_node(w, i, level, (unsigned)((at >> shift) & 0xFF));
            return;
        }
    }
}

int pq_wheel_add(pq_wheel_t *w, uint64_t deadline, uint64_t *handle, uint32_t *index)
{
    uint32_t i = w->free_head;
    if (i != PQ_WHEEL_NONE) {
        w->free_head = w->nodes[i].next;
    } else {
        if (w->used == w->cap) {
            if (w->cap >= PQ_WHEEL_NONE / 2)
                return -E2BIG;
            uint32_t ncap = w->cap ? w->cap * 2 : 1024;
            node_t *nn = realloc(w->nodes, (size_t)ncap * sizeof *nn);
            if (!nn)
                return -ENOMEM;
            w->nodes = nn;
            w->cap = ncap;
        }
        i = w->used++;
        w->nodes[i].generation = 0;
    }
    node_t *n = &w->nodes[i];
    n->generation++;
    n->deadline = deadline;
    place(w, i);
    w->count++;
    *handle = ((uint64_t)n->generation << 32) | i;
    *index = i;
    return 0;
}

static void free_node(pq_wheel_t *w, uint32_t i)
{
    w->nodes[i].generation++;               /* stale handles stop matching */
    w->nodes[i].level = UNLINKED;
    w->nodes[i].next = w->free_head;
    w->free_head = i;
}

int pq_wheel_cancel(pq_wheel_t *w, uint64_t handle, uint32_t *index)
{
    uint32_t i = (uint32_t)handle;
    if (i >= w->used || w->nodes[i].generation != (uint32_t)(handle >> 32))
        return 0;
    node_t *n = &w->nodes[i];
    if (n->level == UNLINKED) {
        /* on the due list: remove it there (rare: due but not yet collected) */
        uint32_t *p = &w->due_head, prev = PQ_WHEEL_NONE;
        while (*p != PQ_WHEEL_NONE && *p != i) {
            prev = *p;
            p = &w->nodes[*p].next;
        }
        if (*p != i)
            return 0;
        *p = n->next;
        if (w->due_tail == i)
            w->due_tail = prev;
    } else {
        unlink_node(w, i);
    }
    free_node(w, i);
    w->count--;
    *index = i;
    return 1;
}

/* Empty bucket (level, slot) and place its timers again (now lower down). */
static void cascade(pq_wheel_t *w, unsigned level, unsigned slot)
{
    uint32_t i = w->heads[level][slot];
    w->heads[level][slot] = PQ_WHEEL_NONE;
    w->occupied[level][slot / 64] &= ~(1ull << (slot % 64));
    while (i != PQ_WHEEL_NONE) {
        uint32_t next = w->nodes[i].next;
        w->nodes[i].level = UNLINKED;
        place(w, i);
        i = next;
    }
}

/* Next occupied slot of level 0 at or after `from` (0..255), or -1. */
static int next_occupied0(const pq_wheel_t *w, unsigned from)
{
    for (unsigned word = from / 64; word < PQ_WHEEL_SLOTS / 64; word++) {
        uint64_t bits = w->occupied[0][word];
        if (word == from / 64)
            bits &= ~0ull << (from % 64);
        if (bits)
            return (int)(word * 64 + (unsigned)__builtin_ctzll(bits));
    }
    return -1;
}

/* Move the current tick to `target`, moving due timers to the due list. */
static void advance(pq_wheel_t *w, uint64_t target)
{
    while (w->now < target) {
        unsigned idx = (unsigned)(w->now & 0xFF);
        int occ = next_occupied0(w, idx + 1);
        uint64_t boundary = (w->now | 0xFF) + 1;            /* next level-0 wrap */
        uint64_t step = occ >= 0 ? (w->now & ~0xFFull) + (unsigned)occ : boundary;
        if (step > target)
            step = target;
        w->now = step;
        if ((w->now & 0xFF) == 0) {
            /* crossing boundaries: empty the upper buckets that start here, top down */
            for (unsigned level = PQ_WHEEL_LEVELS - 1; level >= 1; level--) {
                unsigned shift = 8 * level;
                if ((w->now & ((1ull << shift) - 1)) == 0)
                    cascade(w, level, (unsigned)((w->now >> shift) & 0xFF));
            }
        }
        cascade(w, 0, (unsigned)(w->now & 0xFF));          /* its timers are due now */
    }
}

size_t pq_wheel_expire(pq_wheel_t *w, uint64_t now, uint32_t *out, size_t max)
{
    if (now > w->now) {
        /* timers due at the current tick are collected too */
        cascade(w, 0, (unsigned)(w->now & 0xFF));
        advance(w, now);
    } else {
        cascade(w, 0, (unsigned)(w->now & 0xFF));
    }
    size_t n = 0;
    while (n < max && w->due_head != PQ_WHEEL_NONE) {
        uint32_t i = w->due_head;
        w->due_head = w->nodes[i].next;
        if (w->due_head == PQ_WHEEL_NONE)
            w->due_tail = PQ_WHEEL_NONE;
        out[n++] = i;
        free_node(w, i);
        w->count--;
    }
    return n;
}

size_t pq_wheel_count(const pq_wheel_t *w)
{
    return w->count;
}

uint64_t pq_wheel_next_deadline(const pq_wheel_t *w)
{
    if (w->count == 0)
        return UINT64_MAX;
    if (w->due_head != PQ_WHEEL_NONE)
        return w->now;
    uint64_t best = UINT64_MAX;
    for (unsigned level = 0; level < PQ_WHEEL_LEVELS; level++) {
        unsigned shift = 8 * level;
        uint64_t base = w->now >> shift;
        for (unsigned k = level ? 1 : 0; k <= PQ_WHEEL_SLOTS; k++) {
            unsigned slot = (unsigned)((base + k) & 0xFF);
            if (w->occupied[level][slot / 64] >> (slot % 64) & 1) {
                uint64_t start = (base + k) << shift;   /* the bucket is emptied then */
                if (start < best)
                    best = start;
                break;
            }
        }
    }
    return best > w->now ? best : w->now;
}

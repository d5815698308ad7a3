/* pq_error.h - error codes and the per-thread error message of the native core.
 *
 * Every native function returns 0 (or a non-negative count) on success and a
 * negative code on failure: -errno for an operating-system failure, -PQ_E* for
 * ours.  A failing function may leave a human-readable message naming the file,
 * byte position and limit involved in a thread-local buffer, read back with
 * pq_error_message(); the binding turns code + message into one exception.
 */
#ifndef PQ_ERROR_H
#define PQ_ERROR_H

#include <stdarg.h>

/* Our codes sit far above any errno value. */
#define PQ_ECORRUPT   10001   /* a file's bytes fail validation (CRC, length, magic) */
#define PQ_ETOOLARGE  10002   /* a record exceeds max_message_bytes or the segment */
#define PQ_ERANGE     10003   /* offset below log start or above log end */
#define PQ_ECONFIG    10004   /* stored configuration disagrees with the request */
#define PQ_EFORMAT    10005   /* a file of an unknown format version */
#define PQ_ECLOSED    10006   /* the object was closed */
#define PQ_ELEASE     10007   /* the lease expired and the message was delivered again */
#define PQ_EFENCED    10008   /* a group member was removed (declared dead) and must rejoin */
#define PQ_EFULL      10009   /* a fixed-size table is full (group members) */

#define PQ_ERRMSG_MAX 512

/* Record a message for the current thread; returns `code` so that callers can
 * write `return pq_error_set(-PQ_ECORRUPT, "...", ...)`. */
int pq_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last message recorded by this thread, or "" if none. */
const char *pq_error_message(void);

/* Forget this thread's message (called before each binding call). */
void pq_error_clear(void);

#endif

/* pq_error.c - the per-thread error message buffer (see pq_error.h). */
#include "pq_error.h"

#include <stdio.h>

static _Thread_local char errmsg[PQ_ERRMSG_MAX];

int pq_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return code;
}

const char *pq_error_message(void) { return errmsg; }

void pq_error_clear(void) { errmsg[0] = '\0'; }

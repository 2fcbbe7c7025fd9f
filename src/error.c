/*
 * error.c - error words, per-thread error messages, logging and the clock.
 *
 * Every failing library call records a sentence for mv_last_error() in
 * thread-local storage (mv__fail) so that a caller can say which argument or
 * limit was at fault; the return value stays a plain negative errno.  A
 * fault resolved in a vCPU's SIGBUS handler keeps the message the thread had
 * (mv__error_keep, mv__error_restore).  The library prints nothing: log
 * lines go to the host's callback, if any.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[MV__ERROR_MAX];

const char *mv_strerror(int err)
{
    if (err > 0)
        err = -err;
    switch (err) {
    case 0:
        return "success";
    case -EUCLEAN:
        return "invariant violated (audit failed)";
    case -ESRCH:
        return "no such domain";
    case -EBUSY:
        return "busy";
    case -ENOSPC:
        return "machine frame space exhausted";
    case -EEXIST:
        return "already exists";
    case -EALREADY:
        return "already in that state";
    default:
        return strerror(-err);
    }
}

const char *mv_last_error(void)
{
    return last_error;
}

void mv__clear_error(void)
{
    last_error[0] = '\0';
}

void mv__error_keep(struct mv__error_kept *kept)
{
    memcpy(kept->message, last_error, strnlen(last_error, MV__ERROR_MAX - 1) + 1);
}

void mv__error_restore(const struct mv__error_kept *kept)
{
    memcpy(last_error, kept->message, strnlen(kept->message, MV__ERROR_MAX - 1) + 1);
}

int mv__fail(int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return err;
}

void mv__log(struct mv_host *host, enum mv_log_level level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!host || !host->config.log || level > host->config.log_level)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    host->config.log(host->config.log_opaque, level, line);
}

uint64_t mv__now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

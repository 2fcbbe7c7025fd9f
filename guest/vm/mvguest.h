/*
 * mvguest.h - what the in-guest agent's files share: the workload slots the
 * agent and its workload children both see (shared memory, one writer per
 * slot: the child), the one-line JSON reply builder, and the entry points of
 * each file.  Built only by scripts/guest-image.sh, statically, for the guest.
 */
#ifndef MVGUEST_H
#define MVGUEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MVG_PAGE 4096u
#define MVG_MAX_WORKLOADS 8
#define MVG_REPLY_MAX (1u << 20)

/* Counters a workload child publishes; the agent reads them for `status`
 * and `verify-check`.  Written by the child with relaxed atomic stores,
 * read by the agent with relaxed atomic loads: each value is consistent,
 * the set is a snapshot only roughly. */
struct mvg_counters {
    uint64_t ops;        /* iterations / passes / jobs, per workload */
    uint64_t bytes;      /* bytes written or read */
    uint64_t errors;     /* failed system calls and the like */
    /* verify only */
    uint64_t pages;
    uint64_t checks;     /* page checks done */
    uint64_t rewrites;   /* page rewrites with a new version */
    uint64_t mismatches;
    uint64_t bad_page;   /* first bad page index (valid if mismatches) */
    uint64_t bad_word;
    uint64_t expected;
    uint64_t found;
    uint64_t ready;      /* 1 once the initial fill is done */
};

struct mvg_slot {
    char name[16];
    char arg[32];
    pid_t pid;           /* 0: free */
    uint64_t started_ms;
    struct mvg_counters c;
};

#define MVG_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)
#define MVG_ADD(field, v) MVG_SET(field, MVG_GET(field) + (v))
#define MVG_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* reply.c: builds the single reply line. */
struct mvg_reply {
    char *buf;
    size_t len, cap;
    int first;           /* no member yet */
};
void mvg_reply_begin(struct mvg_reply *r, const char *id, int ok);
void mvg_reply_raw(struct mvg_reply *r, const char *s);
void mvg_reply_u64(struct mvg_reply *r, const char *key, uint64_t v);
void mvg_reply_str(struct mvg_reply *r, const char *key, const char *v);
void mvg_reply_key(struct mvg_reply *r, const char *key); /* then raw value */
void mvg_reply_printf(struct mvg_reply *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mvg_reply_end(struct mvg_reply *r);
void mvg_reply_error(struct mvg_reply *r, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* util (mvguest.c) */
uint64_t mvg_now_ms(void);
uint64_t mvg_mono_us(void);
void mvg_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mvg_sleep_ms(unsigned ms);
int mvg_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* workloads.c: run in the child; never return. arg is validated by
 * mvg_workload_check first. */
int mvg_workload_check(const char *name, const char *arg, char *err, size_t errlen);
void mvg_workload_main(const char *name, const char *arg, struct mvg_counters *c)
    __attribute__((noreturn));

/* verify.c */
void mvg_verify_main(uint64_t mib, struct mvg_counters *c) __attribute__((noreturn));
void mvg_verify_report(struct mvg_reply *r, const char *id, const struct mvg_slot *s);

/* memcmds.c: commands run in the agent itself */
void mvg_cmd_dirty(struct mvg_reply *r, const char *id, const char *arg);
void mvg_cmd_touch(struct mvg_reply *r, const char *id, const char *arg);
void mvg_cmd_meminfo(struct mvg_reply *r, const char *id);

#endif

/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The few PostgreSQL version differences certctl_sched cares about,
 *		kept in one place (PostgreSQL 13 to 17; only 15 is tested).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_COMPAT_H
#define CERTCTL_SCHED_COMPAT_H

#include "utils/guc.h"
#include "utils/wait_event.h"

/* PG15 replaced the warning-only placeholder check with a reservation */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/* PG15 requires shared memory requests to be made from shmem_request_hook */
#if PG_VERSION_NUM >= 150000
#define CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/* PG16 declares _PG_init in fmgr.h */
#if PG_VERSION_NUM < 160000
extern void _PG_init(void);
#endif

/*
 * The shutdown grace and run timeout are enforced by a periodic timer, which
 * needs enable_timeout_every (PG15+).  On older servers the run timeout is a
 * one-shot timer and SIGTERM mid-run is bounded by the run timeout only.
 */
#if PG_VERSION_NUM >= 150000
#define CERTCTL_SCHED_HAVE_TIMEOUT_EVERY 1
#endif

/* pgstat_report_stat() returns long since PG15 */
#define certctl_sched_report_stat() ((void) pgstat_report_stat(true))

#endif							/* CERTCTL_SCHED_COMPAT_H */

/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The few PostgreSQL version differences certctl_sched cares about,
 *		kept in one place.  certctl_sched is built and tested on PostgreSQL
 *		15; it uses APIs that appeared in 15 (shmem_request_hook,
 *		InitMaterializedSRF, enable_timeout_every, MarkGUCPrefixReserved).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_COMPAT_H
#define CERTCTL_SCHED_COMPAT_H

#include "pgstat.h"
#include "utils/guc.h"
#include "utils/wait_event.h"

#if PG_VERSION_NUM < 150000
#error "certctl_sched requires PostgreSQL 15 or later"
#endif

#define CERTCTL_SCHED_HAVE_SHMEM_REQUEST_HOOK 1
#define CERTCTL_SCHED_HAVE_TIMEOUT_EVERY 1

/* PG16 declares _PG_init in fmgr.h */
#if PG_VERSION_NUM < 160000
extern void _PG_init(void);
#endif

/* flushes the process's statistics after a transaction of its own */
#define certctl_sched_report_stat() ((void) pgstat_report_stat(true))

#endif							/* CERTCTL_SCHED_COMPAT_H */

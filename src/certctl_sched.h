/*-------------------------------------------------------------------------
 *
 * certctl_sched.h
 *		Shared declarations of certctl_sched: the loop table, settings,
 *		the shared-memory status of every loop, and the run machinery.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_H
#define CERTCTL_SCHED_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/lwlock.h"

/* Class id of certctl_sched's advisory locks (two-int form); the loop number is the second key. */
#define CERTCTL_SCHED_LOCK_CLASSID	0x43435344	/* "CCSD", 1128485700 */

#define CERTCTL_SCHED_NLOOPS		6
#define CERTCTL_SCHED_MAX_DATABASES	16
#define CERTCTL_SCHED_ERRLEN		512

/* One of certctl's scheduler loops. */
typedef struct LoopDef
{
	const char *name;			/* name in SQL and settings, e.g. "renewal" */
	const char *title;			/* as certctl's logs call it, e.g. "renewal check" */
	int			default_interval_ms;	/* -1 = disabled */
	int			default_timeout_ms;
	bool		run_at_start;	/* first run at start (else after one interval) */
	const char *body_sql;		/* one batch: $1 now, $2 batch size, $3 interval; NULL = no body yet */
} LoopDef;

extern const LoopDef certctl_sched_loops[CERTCTL_SCHED_NLOOPS];

/* Worker states shown by loop_status() */
typedef enum LoopState
{
	LOOP_STOPPED = 0,			/* no worker process */
	LOOP_STARTING,
	LOOP_IDLE,
	LOOP_RUNNING,
	LOOP_DISABLED,
	LOOP_PAUSED,
	LOOP_WAITING_FOR_EXTENSION
} LoopState;

/* Outcome of a run (or a skipped tick) */
typedef enum RunResult
{
	RESULT_NONE = 0,
	RESULT_OK,
	RESULT_ERROR,
	RESULT_SKIPPED_LOCKED,
	RESULT_INTERRUPTED,
	RESULT_CANCELLED
} RunResult;

/* Live status of one loop in one database; protected by CertctlSchedShared->lock. */
typedef struct LoopSlot
{
	int			loop;			/* index into certctl_sched_loops */
	char		dbname[NAMEDATALEN];
	Oid			dboid;			/* set once the worker has connected */
	pid_t		pid;			/* 0 when no worker runs */
	Latch	   *latch;			/* the worker's latch, NULL when none */
	LoopState	state;
	int			interval_ms;
	bool		paused;
	bool		run_requested;	/* run_now() asked for a run */
	bool		config_changed; /* pause/resume/CREATE EXTENSION: re-read loop_control */
	int			connect_failures;	/* consecutive exits before a connection */
	TimestampTz last_started;
	TimestampTz last_finished;
	TimestampTz next_run;
	RunResult	last_result;
	char		last_error[CERTCTL_SCHED_ERRLEN];
	int64		last_rows;
	int64		runs;
	int64		successes;
	int64		failures;
	int64		timeouts;
	int64		skipped_locked;
} LoopSlot;

typedef struct CertctlSchedShared
{
	LWLock	   *lock;
	int			nslots;
	LoopSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} CertctlSchedShared;

/* settings (init.c) */
extern char *certctl_sched_database;
extern char *certctl_sched_role;
extern bool certctl_sched_enabled;
extern int	certctl_sched_interval_ms[CERTCTL_SCHED_NLOOPS];
extern int	certctl_sched_timeout_ms[CERTCTL_SCHED_NLOOPS];
extern int	certctl_sched_shutdown_timeout_ms;
extern int	certctl_sched_batch_size;
extern char *certctl_sched_certctl_schema;
extern int	certctl_sched_history_retention_s;
extern bool certctl_sched_preloaded;

/* init.c */
extern int	certctl_sched_database_list(char names[][NAMEDATALEN], int max);

/* shmem.c */
extern CertctlSchedShared *certctl_sched_shared;
extern void certctl_sched_shmem_install_hooks(int nslots);
extern LoopSlot *certctl_sched_find_slot(Oid dboid, const char *dbname, int loop);
extern void certctl_sched_wake_at_commit(int loop);
extern const char *certctl_sched_state_name(LoopState state);
extern const char *certctl_sched_result_name(RunResult result);

/* worker.c */
extern PGDLLEXPORT void certctl_sched_worker_main(Datum main_arg) pg_attribute_noreturn();

/* run.c */
typedef struct RunOutcome
{
	RunResult	result;
	int64		rows;
	char		error[CERTCTL_SCHED_ERRLEN];
	bool		timed_out;
} RunOutcome;

extern int	certctl_sched_loop_by_name(const char *name);
extern Datum certctl_sched_ms_interval(int ms);
extern int64 certctl_sched_run_batch(int loop, TimestampTz now, int batch_size);
extern void certctl_sched_run_cursor(int loop, bool start);
extern void certctl_sched_record_outcome(LoopSlot *slot, TimestampTz started,
										 TimestampTz finished, const RunOutcome *outcome);
extern void certctl_sched_lock_tag(int loop, LOCKTAG *tag);
extern int	certctl_sched_lock_holder(int loop);

#endif							/* CERTCTL_SCHED_H */

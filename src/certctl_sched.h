/*-------------------------------------------------------------------------
 *
 * certctl_sched.h
 *		Declarations shared by certctl_sched's C files: the loop descriptors,
 *		the run context every run carries, the shared status of the loops,
 *		the settings, and each file's entry points.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CERTCTL_SCHED_H
#define CERTCTL_SCHED_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "utils/palloc.h"
#include "utils/resowner.h"

/* The version of the SQL objects this library works with (pg_extension.extversion). */
#define CERTCTL_SCHED_SQL_VERSION	"0.2"

/* Class id of certctl_sched's advisory locks (two-int form); the loop number is the second key. */
#define CERTCTL_SCHED_LOCK_CLASSID	0x43435344	/* "CCSD", 1128485700 */

#define CERTCTL_SCHED_NLOOPS		6
#define CERTCTL_SCHED_MAX_DATABASES	16
#define CERTCTL_SCHED_ERRLEN		512

/* ----------------------------------------------------------------
 * Runs
 * ----------------------------------------------------------------
 */

/* Who runs a loop, which decides its lock and its transactions (runner.c). */
typedef enum RunMode
{
	RUN_WORKER,					/* background worker: session lock, a transaction per batch */
	RUN_PROCEDURE,				/* CALL certctl_sched.run(): session lock, a commit per batch */
	RUN_FUNCTION				/* run_loop(): transaction lock, every batch in the caller's transaction */
} RunMode;

/* Outcome of a run (or of a skipped tick) */
typedef enum RunResult
{
	RESULT_NONE = 0,
	RESULT_OK,
	RESULT_ERROR,
	RESULT_SKIPPED_LOCKED,
	RESULT_INTERRUPTED,
	RESULT_CANCELLED
} RunResult;

typedef struct RunOutcome
{
	RunResult	result;
	int64		rows;			/* rows acted on, committed */
	int64		skipped;		/* rows the loop cannot process, left alone */
	char		skipped_example[CERTCTL_SCHED_ERRLEN];	/* one of them, and why */
	char		error[CERTCTL_SCHED_ERRLEN];
	char		warning[CERTCTL_SCHED_ERRLEN];	/* a problem the run worked around, logged once */
	bool		timed_out;
} RunOutcome;

struct LoopDef;
struct LoopSlot;

/*
 * Everything one run needs, passed to the runner and to the loop's
 * callbacks.  Allocated in, and living as long as, mcxt.
 */
typedef struct RunContext
{
	const struct LoopDef *def;
	RunMode		mode;
	struct LoopSlot *slot;		/* shared status; NULL when there is none */
	const char *trigger;		/* schedule, run_now, run_loop or run */
	TimestampTz sched;			/* the tick, passed to the loop as "now" */
	TimestampTz started;		/* when the lock was taken */
	TimestampTz deadline;		/* run timeout (0: none) */
	int			batch_size;
	MemoryContext mcxt;			/* lives for the run */
	int64		history_id;		/* run_history row (0: none yet) */
	char	   *cursor;			/* last key the previous batch claimed; NULL at the start */
	bool		done;			/* the loop has nothing left to do in this run */
	void	   *loop_state;		/* the loop's own state for the run */
	RunOutcome	out;
	/* the runner's own */
	Oid			ext_owner;		/* the extension's owner: bookkeeping runs with its rights */
	bool		locked;			/* holds the loop's advisory lock */
	bool		in_step;		/* a step (transaction or subtransaction) is open */
	ResourceOwner save_owner;	/* resource owner outside the step's subtransaction */
	struct ErrorData *failure;	/* the error to raise again once the run is recorded */
} RunContext;

/*
 * How a loop runs.  batch() does one batch in the current transaction, which
 * the runner opens and commits around it, and returns the rows it acted on;
 * it sets ctx->done when nothing is left.  begin() and end() are optional;
 * end() is called on every path, error included, outside any transaction.
 */
typedef struct LoopOps
{
	void		(*begin) (RunContext *ctx);
	int64		(*batch) (RunContext *ctx);
	void		(*end) (RunContext *ctx);
} LoopOps;

/* One of certctl's scheduler loops (loops.c). */
typedef struct LoopDef
{
	int			index;			/* position in the table; lock key = index + 1 */
	const char *name;			/* name in SQL and settings, e.g. "renewal" */
	const char *title;			/* as certctl's logs call it, e.g. "renewal check" */
	int			default_interval_ms;	/* -1 = disabled */
	int			default_timeout_ms;
	bool		run_at_start;	/* first run at start (else after one interval) */
	const char *body;			/* SQL loops: the internal body function, e.g. "_renewal_batch" */
	const char *const *tables;	/* certctl tables the loop touches (its owner's rights apply) */
	const LoopOps *ops;
} LoopDef;

extern const LoopDef certctl_sched_loops[CERTCTL_SCHED_NLOOPS];
extern const LoopDef *certctl_sched_loop_by_name(const char *name);
extern const LoopDef *certctl_sched_loop_arg(const char *name);

/* ----------------------------------------------------------------
 * Shared status (status.c)
 * ----------------------------------------------------------------
 */

/* Worker states shown by loop_status() */
typedef enum LoopState
{
	LOOP_STOPPED = 0,			/* no worker process */
	LOOP_STARTING,
	LOOP_IDLE,
	LOOP_RUNNING,
	LOOP_DISABLED,
	LOOP_PAUSED,
	LOOP_WAITING_FOR_EXTENSION,
	LOOP_ERROR					/* the loop's state could not be read; retried on schedule */
} LoopState;

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
	bool		run_requested;	/* run_now() asked for a run */
	bool		config_changed; /* pause/resume/CREATE EXTENSION: re-read the loop's state */
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

extern CertctlSchedShared *certctl_sched_shared;
extern void certctl_sched_status_request(int ndb, char dbnames[][NAMEDATALEN]);
extern LoopSlot *certctl_sched_find_slot(Oid dboid, const char *dbname, int loop);
extern LoopSlot *certctl_sched_my_slot(int loop);
extern void certctl_sched_slot_set_state(LoopSlot *slot, LoopState state, TimestampTz next_run,
										 int interval_ms);
extern void certctl_sched_slot_set_error(LoopSlot *slot, const char *error);
extern void certctl_sched_record_start(LoopSlot *slot, TimestampTz started);
extern void certctl_sched_record_progress(LoopSlot *slot, int64 rows);
extern void certctl_sched_record_outcome(LoopSlot *slot, TimestampTz started,
										 TimestampTz finished, const RunOutcome *outcome);
extern void certctl_sched_wake_at_commit(int loop);
extern const char *certctl_sched_state_name(LoopState state);
extern const char *certctl_sched_result_name(RunResult result);

/* ----------------------------------------------------------------
 * Settings (guc.c)
 * ----------------------------------------------------------------
 */
extern char *certctl_sched_database;
extern char *certctl_sched_role;
extern bool certctl_sched_enabled;
extern int	certctl_sched_interval_ms[CERTCTL_SCHED_NLOOPS];
extern int	certctl_sched_timeout_ms[CERTCTL_SCHED_NLOOPS];
extern int	certctl_sched_shutdown_timeout_ms;
extern int	certctl_sched_batch_size;
extern char *certctl_sched_certctl_schema;
extern int	certctl_sched_history_retention_s;
extern int	certctl_sched_certctl_version;
extern int	certctl_sched_notifications_concurrency;
extern int	certctl_sched_notifications_request_timeout_ms;
extern int	certctl_sched_network_scan_concurrency;
extern char *certctl_sched_network_scan_allowed_networks;

/* values of certctl_sched.certctl_version */
#define CERTCTL_VERSION_AUTO	0
#define CERTCTL_VERSION_4D59FD1	1
#define CERTCTL_VERSION_HEAD	2

extern void certctl_sched_define_settings(bool preloading);
extern int	certctl_sched_parse_databases(const char *value, char names[][NAMEDATALEN],
										  char *why, size_t whylen);
extern Datum certctl_sched_ms_interval(int ms);

/* ----------------------------------------------------------------
 * Whose rights statements run with, and the catalog state (owner.c)
 * ----------------------------------------------------------------
 */

/* A saved identity, restored by certctl_sched_leave_role() */
typedef struct RoleSwitch
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} RoleSwitch;

/* What a runner needs to know of the extension in the current database */
typedef struct ExtensionState
{
	bool		exists;
	bool		current;		/* its SQL objects are the version this library needs */
	char		version[NAMEDATALEN];
	Oid			owner;
	bool		paused;			/* (for the loop asked about) */
} ExtensionState;

extern void certctl_sched_pin_session_settings(void);
extern void certctl_sched_enter_role(RoleSwitch *rs, Oid role, bool restricted);
extern void certctl_sched_leave_role(RoleSwitch *rs);
extern Oid	certctl_sched_tables_owner(const LoopDef *def);
extern void certctl_sched_read_extension(const LoopDef *def, ExtensionState *st);
extern void certctl_sched_require_current_extension(void);

/* ----------------------------------------------------------------
 * The guard: run deadline, shutdown bound, soft stop (guard.c)
 * ----------------------------------------------------------------
 */
extern void certctl_sched_guard_init(bool worker);
extern void certctl_sched_guard_sigterm(void);
extern bool certctl_sched_shutdown_requested(void);
extern void certctl_sched_guard_arm(TimestampTz deadline);
extern void certctl_sched_guard_disarm(void);
extern bool certctl_sched_guard_timed_out(void);
extern bool certctl_sched_guard_cancelled_at_shutdown(void);
extern TimestampTz certctl_sched_guard_soft_stop_at(const RunContext *ctx);
extern void certctl_sched_clear_cancel(void);

/* ----------------------------------------------------------------
 * Runs (runner.c), their history (history.c), SQL bodies (sqlbody.c)
 * ----------------------------------------------------------------
 */
extern void certctl_sched_run(const LoopDef *def, RunMode mode, TimestampTz sched, const char *trigger,
							  RunOutcome *out);
extern void certctl_sched_lock_tag(const LoopDef *def, LOCKTAG *tag);
extern int	certctl_sched_lock_holder(int loop, Oid dboid);

extern void certctl_sched_history_open(RunContext *ctx);
extern void certctl_sched_history_progress(RunContext *ctx, int64 rows);
extern void certctl_sched_history_close(RunContext *ctx);
extern void certctl_sched_history_insert(RunContext *ctx);

extern const LoopOps certctl_sched_sql_body_ops;
extern const LoopOps certctl_sched_notify_ops;
extern const LoopOps certctl_sched_scan_ops;

/* worker.c */
extern PGDLLEXPORT void certctl_sched_worker_main(Datum main_arg) pg_attribute_noreturn();

#endif							/* CERTCTL_SCHED_H */

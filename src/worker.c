/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background worker of one loop in one database: it sleeps on its
 *		latch until the next due time, then runs the loop body batch after
 *		batch under the loop's advisory lock, and records the outcome.
 *
 * Scheduling is fixed-rate, like certctl's Go ticker: due times lie on a grid
 * of the interval.  Missed grid points (a long run, a stall, a paused or
 * disabled loop) are coalesced into a single run at the latest one.
 *
 * Shutdown: SIGTERM only sets a flag.  An idle worker sees it at once and
 * exits.  A running worker lets the current batch's transaction finish, then
 * stops.  A periodic timer armed only while a run is in progress enforces the
 * run timeout and certctl_sched.shutdown_timeout by cancelling the current
 * statement (a catchable ERROR, rolled back), and, should even that not end
 * the run, terminates the worker two seconds later as die() would.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "certctl_sched.h"

/* how often the guard timer looks at the run deadline and the shutdown bound */
#define GUARD_TICK_MS			100
/* after cancelling at shutdown, how long before the worker is terminated outright */
#define SHUTDOWN_KILL_GRACE_MS	2000
/* rate limits of repeated log lines */
#define SKIP_WARNING_EVERY_MS	(60 * 1000)
#define SAME_ERROR_EVERY_MS		(5 * 60 * 1000)
/* backoff before reconnecting after failed connections (database or role missing) */
#define CONNECT_BACKOFF_MAX_MS	(10 * 60 * 1000)

static volatile sig_atomic_t got_sigterm = false;
static volatile TimestampTz sigterm_at = 0;
static volatile TimestampTz run_deadline = 0;
static volatile sig_atomic_t run_timed_out = false;
static volatile sig_atomic_t shutdown_cancelled = false;
static volatile sig_atomic_t shutdown_killed = false;

static TimeoutId guard_timeout_id;
static LoopSlot *MySlot = NULL;
static int	MyLoop = -1;
static const LoopDef *MyDef = NULL;
static MemoryContext RunContext = NULL;

/* what the worker knows of its database's catalog */
static bool extension_exists = false;
static bool loop_paused = false;

/* log rate limiting */
static TimestampTz last_skip_warning = 0;
static int64 skips_since_warning = 0;
static TimestampTz last_error_logged = 0;
static char last_error_text[CERTCTL_SCHED_ERRLEN];

/* SIGTERM: remember when, and wake the main loop; the run in progress is left alone. */
static void
handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (!got_sigterm)
	{
		sigterm_at = GetCurrentTimestamp();
		got_sigterm = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Asks for the current statement to be cancelled, as a statement timeout would. */
static void
cancel_current_statement(void)
{
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/*
 * Guard timer, in SIGALRM context while a run is in progress: sets interrupt
 * flags only.  The flags make the next CHECK_FOR_INTERRUPTS raise an ERROR
 * (cancel) or FATAL (die); a commit waiting on synchronous replication reads
 * them directly and stops waiting.
 */
static void
guard_timer(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (run_deadline != 0 && !run_timed_out && now >= run_deadline)
	{
		run_timed_out = true;
		cancel_current_statement();
	}
	if (got_sigterm)
	{
		TimestampTz bound = sigterm_at + (TimestampTz) certctl_sched_shutdown_timeout_ms * 1000;

		if (!shutdown_cancelled && now >= bound)
		{
			shutdown_cancelled = true;
			cancel_current_statement();
		}
		else if (shutdown_cancelled && !shutdown_killed &&
				 now >= bound + (TimestampTz) SHUTDOWN_KILL_GRACE_MS * 1000)
		{
			shutdown_killed = true;
			InterruptPending = true;
			ProcDiePending = true;
			SetLatch(MyLatch);
		}
	}
}

/* Starts the guard timer for a run. */
static void
guard_start(int timeout_ms)
{
	run_timed_out = false;
	run_deadline = timeout_ms > 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms) : 0;
#ifdef CERTCTL_SCHED_HAVE_TIMEOUT_EVERY
	enable_timeout_every(guard_timeout_id,
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), GUARD_TICK_MS),
						 GUARD_TICK_MS);
#else
	if (timeout_ms > 0)
		enable_timeout_after(guard_timeout_id, timeout_ms);
#endif
}

/* Stops the guard timer after a run. */
static void
guard_stop(void)
{
	disable_timeout(guard_timeout_id, false);
	run_deadline = 0;
}

/*
 * Sleeps on the latch until it is set or timeout_ms (-1: no timeout) passes.
 * SIGALRM is blocked meanwhile: after a run, timeout.c leaves the guard's
 * interval timer armed (re-arming is cheaper than cancelling; PostgreSQL 14
 * and 15 do not cancel it at all), and the one last SIGALRM would set the
 * latch and wake an idle worker for nothing.  Blocked, it stays pending and is
 * delivered when the worker wakes for a reason; nothing that must fire while
 * the worker sleeps uses SIGALRM (it holds no locks and runs no transaction).
 */
static void
sleep_on_latch(long timeout_ms)
{
	sigset_t	alarm;
	sigset_t	saved;

	sigemptyset(&alarm);
	sigaddset(&alarm, SIGALRM);
	sigprocmask(SIG_BLOCK, &alarm, &saved);
	(void) WaitLatch(MyLatch,
					 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (timeout_ms >= 0 ? WL_TIMEOUT : 0),
					 timeout_ms, PG_WAIT_EXTENSION);
	sigprocmask(SIG_SETMASK, &saved, NULL);
	ResetLatch(MyLatch);
}

/* Sets the state shown by loop_status(). */
static void
publish_state(LoopState state, TimestampTz next_run)
{
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	MySlot->state = state;
	MySlot->next_run = next_run;
	MySlot->interval_ms = certctl_sched_interval_ms[MyLoop];
	MySlot->paused = loop_paused;
	LWLockRelease(certctl_sched_shared->lock);
}

/* Clears the slot when the worker exits, however it exits. */
static void
worker_exit(int code, Datum arg)
{
	if (MySlot == NULL)
		return;
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	MySlot->pid = 0;
	MySlot->latch = NULL;
	MySlot->state = LOOP_STOPPED;
	MySlot->next_run = 0;
	LWLockRelease(certctl_sched_shared->lock);
}

/* Error context for the connection attempt, so a FATAL names its setting. */
static void
connect_error_context(void *arg)
{
	errcontext("certctl_sched \"%s\" worker connecting to database \"%s\" (certctl_sched.database) as %s",
			   MyDef->name, MySlot->dbname,
			   certctl_sched_role[0] ? certctl_sched_role : "the bootstrap superuser");
}

/* Starts a transaction of the worker's own, with a snapshot. */
static void
begin_xact(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commits a transaction started by begin_xact(). */
static void
commit_xact(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	certctl_sched_report_stat();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Bookkeeping transactions (history, loop_control) do not wait for
 * synchronous replication: their loss at a failover is harmless, and a
 * worker must be able to record a cancelled run while the standby is gone.
 */
static void
bookkeeping_commit_is_local(void)
{
	(void) set_config_option("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * Returns whether a failure described by text should be logged: not when the
 * same failure was logged less than SAME_ERROR_EVERY_MS ago, so a loop that
 * fails on every tick does not flood the log.
 */
static bool
failure_is_news(const char *text)
{
	TimestampTz now = GetCurrentTimestamp();

	if (strcmp(last_error_text, text) == 0 &&
		!TimestampDifferenceExceeds(last_error_logged, now, SAME_ERROR_EVERY_MS))
		return false;
	strlcpy(last_error_text, text, sizeof(last_error_text));
	last_error_logged = now;
	return true;
}

/*
 * Cleans up after an ERROR caught in the worker, as PostgresMain does:
 * returns a copy of the error (in RunContext), logging it first if asked and
 * if it is news.
 */
static ErrorData *
recover_from_error(bool log_it)
{
	ErrorData  *edata;

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(RunContext);
	edata = CopyErrorData();
	if (log_it && failure_is_news(edata->message))
		EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
	QueryCancelPending = false;
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(RunContext);
	RESUME_INTERRUPTS();
	return edata;
}

/* Reads whether the extension exists and whether this loop is paused. Caller is in a transaction. */
static void
read_catalog_state(void)
{
	extension_exists = OidIsValid(get_extension_oid("certctl_sched", true));
	loop_paused = false;
	if (extension_exists)
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(MyDef->name)};

		SPI_connect();
		if (SPI_execute_with_args("SELECT paused FROM certctl_sched.loop_control WHERE loop = $1",
								  1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			loop_paused = !isnull && DatumGetBool(d);
		}
		SPI_finish();
	}
}

/* Re-reads the catalog state in a transaction of its own; errors are logged and leave the loop waiting. */
static void
refresh_catalog_state(void)
{
	PG_TRY();
	{
		begin_xact("certctl_sched: reading loop state");
		read_catalog_state();
		commit_xact();
	}
	PG_CATCH();
	{
		(void) recover_from_error(true);
		extension_exists = false;
	}
	PG_END_TRY();
}

/* Logs, at most once a minute, that ticks are being skipped because the lock is busy. */
static void
warn_skipped(int holder)
{
	TimestampTz now = GetCurrentTimestamp();

	skips_since_warning++;
	if (!TimestampDifferenceExceeds(last_skip_warning, now, SKIP_WARNING_EVERY_MS))
		return;
	if (holder > 0)
		ereport(WARNING,
				(errmsg("%s still running in process %d, skipping tick", MyDef->title, holder),
				 errdetail("certctl_sched \"%s\" skipped " INT64_FORMAT " tick(s) since the last warning because advisory lock (%d, %d) is held.",
						   MyDef->name, skips_since_warning, CERTCTL_SCHED_LOCK_CLASSID, MyLoop + 1)));
	else
		ereport(WARNING,
				(errmsg("%s still running, skipping tick", MyDef->title),
				 errdetail("certctl_sched \"%s\" skipped " INT64_FORMAT " tick(s) since the last warning because advisory lock (%d, %d) is held.",
						   MyDef->name, skips_since_warning, CERTCTL_SCHED_LOCK_CLASSID, MyLoop + 1)));
	last_skip_warning = now;
	skips_since_warning = 0;
}

/*
 * Phase 1 of a run: checks the extension and the pause flag, takes the
 * loop's advisory lock (session level, so it spans the run's transactions),
 * marks stale "running" history rows of dead processes as failed, and
 * inserts this run's history row.  Returns the history id, or 0 when the
 * run must not happen (*skipped tells whether the lock was busy).  The run
 * starts (*started) once the lock is held, so runs never overlap in history.
 */
static int64
begin_run(TimestampTz sched, TimestampTz *started, const char *trigger, bool *skipped)
{
	LOCKTAG		tag;
	int64		history_id = 0;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[4];

	*skipped = false;
	begin_xact("certctl_sched: starting run");
	bookkeeping_commit_is_local();
	read_catalog_state();
	if (!extension_exists || loop_paused)
	{
		commit_xact();
		return 0;
	}

	certctl_sched_lock_tag(MyLoop, &tag);
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		warn_skipped(certctl_sched_lock_holder(MyLoop));
		commit_xact();
		*skipped = true;
		return 0;
	}

	certctl_sched_run_cursor(MyLoop, true);
	*started = GetCurrentTimestamp();
	values[0] = CStringGetTextDatum(MyDef->name);
	values[1] = CStringGetTextDatum(trigger);
	values[2] = TimestampTzGetDatum(sched);
	values[3] = TimestampTzGetDatum(*started);
	SPI_connect();
	SPI_execute_with_args("UPDATE certctl_sched.run_history h"
						  " SET status = 'error', finished_at = pg_catalog.now(),"
						  " error = 'run did not finish: process ' || h.pid || ' exited while it ran (crash or restart)'"
						  " WHERE h.loop = $1 AND h.status = 'running' AND h.pid <> pg_catalog.pg_backend_pid()"
						  " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = h.pid)",
						  1, argtypes, values, NULL, false, 0);
	if (SPI_execute_with_args("INSERT INTO certctl_sched.run_history"
							  " (loop, trigger, scheduled_at, started_at, status, pid)"
							  " VALUES ($1, $2, $3, $4, 'running', pg_catalog.pg_backend_pid()) RETURNING id",
							  4, argtypes, values, NULL, false, 1) == SPI_OK_INSERT_RETURNING &&
		SPI_processed == 1)
	{
		bool		isnull;

		history_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	commit_xact();
	return history_id;
}

/*
 * Adds a batch's rows to the run's history row, in the batch's own
 * transaction, so the row counts exactly what was committed even if the
 * worker dies before the run ends.
 */
static void
note_progress(int64 history_id, int64 rows)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		values[2];

	values[0] = Int64GetDatum(history_id);
	values[1] = Int64GetDatum(rows);
	SPI_connect();
	SPI_execute_with_args("UPDATE certctl_sched.run_history SET rows = rows + $2 WHERE id = $1",
						  2, argtypes, values, NULL, false, 0);
	SPI_finish();
}

/* Phase 3 of a run: completes its history row and prunes history older than the retention. */
static void
finish_run(int64 history_id, const RunOutcome *out)
{
	Oid			argtypes[6] = {INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(history_id);
	values[1] = CStringGetTextDatum(certctl_sched_result_name(out->result));
	values[2] = Int64GetDatum(out->rows);
	values[3] = CStringGetTextDatum(out->error);
	if (out->error[0] == '\0')
		nulls[3] = 'n';
	values[4] = CStringGetTextDatum(MyDef->name);
	values[5] = Int32GetDatum(certctl_sched_history_retention_s);

	begin_xact("certctl_sched: recording run");
	bookkeeping_commit_is_local();
	certctl_sched_run_cursor(MyLoop, false);
	SPI_connect();
	SPI_execute_with_args("UPDATE certctl_sched.run_history"
						  " SET finished_at = pg_catalog.clock_timestamp(), status = $2, error = $4"
						  " WHERE id = $1",
						  4, argtypes, values, nulls, false, 0);
	if (certctl_sched_history_retention_s >= 0)
		SPI_execute_with_args("DELETE FROM certctl_sched.run_history"
							  " WHERE loop = $5 AND started_at < pg_catalog.now() - pg_catalog.make_interval(secs => $6)"
							  " AND status <> 'running'",
							  6, argtypes, values, nulls, false, 0);
	SPI_finish();
	commit_xact();
}

/*
 * One run of the loop at tick time sched: lock, batches (one transaction
 * each) until a batch comes back short, history.  Never throws; whatever
 * happens, the worker holds no advisory lock afterwards.
 */
static void
run_tick(TimestampTz sched, const char *trigger)
{
	/* static: they are written inside PG_TRY and read after a longjmp */
	static TimestampTz started;
	static RunOutcome out;
	static int64 history_id;
	static bool skipped;

	memset(&out, 0, sizeof(out));
	started = 0;
	history_id = 0;
	skipped = false;
	MemoryContextReset(RunContext);
	MemoryContextSwitchTo(RunContext);

	PG_TRY();
	{
		history_id = begin_run(sched, &started, trigger, &skipped);
	}
	PG_CATCH();
	{
		(void) recover_from_error(true);
		history_id = 0;
	}
	PG_END_TRY();

	if (skipped)
	{
		out.result = RESULT_SKIPPED_LOCKED;
		certctl_sched_record_outcome(MySlot, 0, 0, &out);
	}
	if (history_id == 0)
	{
		LockReleaseSession(USER_LOCKMETHOD);
		return;
	}

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	MySlot->state = LOOP_RUNNING;
	MySlot->last_started = started;
	MySlot->last_rows = 0;
	LWLockRelease(certctl_sched_shared->lock);

	out.result = RESULT_OK;
	guard_start(certctl_sched_timeout_ms[MyLoop]);
	PG_TRY();
	{
		int			batch_size = certctl_sched_batch_size;

		for (;;)
		{
			int64		n;

			if (got_sigterm)
			{
				out.result = RESULT_INTERRUPTED;
				break;
			}
			begin_xact(MyDef->body_sql);
			debug_query_string = MyDef->body_sql;
			n = certctl_sched_run_batch(MyLoop, sched, batch_size);
			debug_query_string = NULL;
			if (n > 0)
				note_progress(history_id, n);
			commit_xact();

			out.rows += n;
			LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
			MySlot->last_rows = out.rows;
			LWLockRelease(certctl_sched_shared->lock);
			if (n < batch_size)
				break;
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		timed_out = run_timed_out;
		bool		cancelled_at_shutdown = shutdown_cancelled;

		debug_query_string = NULL;
		edata = recover_from_error(!timed_out && !cancelled_at_shutdown);
		if (timed_out)
		{
			out.result = RESULT_CANCELLED;
			out.timed_out = true;
			snprintf(out.error, sizeof(out.error),
					 "run exceeded certctl_sched.%s_timeout (%d ms) and was cancelled",
					 MyDef->name, certctl_sched_timeout_ms[MyLoop]);
			if (failure_is_news(out.error))
				ereport(WARNING,
						(errmsg("%s run cancelled after %d ms", MyDef->title, certctl_sched_timeout_ms[MyLoop]),
						 errdetail("The run exceeded certctl_sched.%s_timeout; its current transaction was rolled back after " INT64_FORMAT " rows.",
								   MyDef->name, out.rows)));
		}
		else if (cancelled_at_shutdown)
		{
			out.result = RESULT_CANCELLED;
			snprintf(out.error, sizeof(out.error),
					 "cancelled at shutdown: the transaction did not finish within certctl_sched.shutdown_timeout (%d ms)",
					 certctl_sched_shutdown_timeout_ms);
			ereport(WARNING,
					(errmsg("%s run cancelled at shutdown", MyDef->title),
					 errdetail("Its transaction did not finish within certctl_sched.shutdown_timeout (%d ms) and was rolled back.",
							   certctl_sched_shutdown_timeout_ms)));
		}
		else
		{
			out.result = RESULT_ERROR;
			strlcpy(out.error, edata->message, sizeof(out.error));
		}
	}
	PG_END_TRY();

	/* from here on only the shutdown bound applies */
	run_deadline = 0;
	if (out.result == RESULT_INTERRUPTED)
		ereport(LOG,
				(errmsg("certctl_sched \"%s\" run interrupted by shutdown after " INT64_FORMAT " rows",
						MyDef->name, out.rows)));

	PG_TRY();
	{
		finish_run(history_id, &out);
	}
	PG_CATCH();
	{
		(void) recover_from_error(true);
	}
	PG_END_TRY();
	guard_stop();

	LockReleaseSession(USER_LOCKMETHOD);
	certctl_sched_record_outcome(MySlot, started, GetCurrentTimestamp(), &out);
}

/* Sleeps before connecting when earlier attempts of this slot failed, doubling up to a cap. */
static void
connect_backoff(int failures)
{
	long		delay_ms;

	/* the first retry waits only for the postmaster's restart delay */
	if (failures <= 1)
		return;
	delay_ms = 10 * 1000L << Min(failures - 2, 10);
	delay_ms = Min(delay_ms, CONNECT_BACKOFF_MAX_MS);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 delay_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (got_sigterm)
		proc_exit(1);
}

/* Returns the latest grid point at or before now, given a due time in the past. */
static TimestampTz
latest_grid_point(TimestampTz due, TimestampTz now, int interval_ms)
{
	int64		step = (int64) interval_ms * 1000;

	if (now <= due || step <= 0)
		return due;
	return due + ((now - due) / step) * step;
}

/* Entry point of a worker; main_arg is the index of its slot. */
void
certctl_sched_worker_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	int			failures;
	int			interval_ms;
	TimestampTz next_due;
	TimestampTz last_sched = 0;
	ErrorContextCallback errcallback;
	LoopState	announced = LOOP_STARTING;

	MySlot = &certctl_sched_shared->slots[slotno];
	MyLoop = MySlot->loop;
	MyDef = &certctl_sched_loops[MyLoop];
	Assert(MyDef->body_sql != NULL);	/* loops without a body get no worker (init.c) */

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, handle_sigterm);
	BackgroundWorkerUnblockSignals();

	/* counted as a failure until the connection succeeds, so a missing database backs off */
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	failures = MySlot->connect_failures++;
	MySlot->pid = MyProcPid;
	MySlot->latch = MyLatch;
	MySlot->state = LOOP_STARTING;
	LWLockRelease(certctl_sched_shared->lock);
	before_shmem_exit(worker_exit, (Datum) 0);

	connect_backoff(failures);

	errcallback.callback = connect_error_context;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	BackgroundWorkerInitializeConnection(MySlot->dbname,
										 certctl_sched_role[0] ? certctl_sched_role : NULL, 0);
	error_context_stack = errcallback.previous;

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	MySlot->connect_failures = 0;
	MySlot->dboid = MyDatabaseId;
	LWLockRelease(certctl_sched_shared->lock);

	SetConfigOption("application_name", MyBgworkerEntry->bgw_type, PGC_USERSET, PGC_S_SESSION);
	RunContext = AllocSetContextCreate(TopMemoryContext, "certctl_sched run", ALLOCSET_DEFAULT_SIZES);
	guard_timeout_id = RegisterTimeout(USER_TIMEOUT, guard_timer);

	ereport(LOG,
			(errmsg("certctl_sched \"%s\" worker started in database \"%s\"", MyDef->name, MySlot->dbname)));

	refresh_catalog_state();
	interval_ms = certctl_sched_interval_ms[MyLoop];
	next_due = GetCurrentTimestamp();
	if (!MyDef->run_at_start && interval_ms > 0)
		next_due = TimestampTzPlusMilliseconds(next_due, interval_ms);

	for (;;)
	{
		long		timeout = -1;
		LoopState	state;
		bool		run_requested;
		bool		config_changed;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (got_sigterm)
			break;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (certctl_sched_interval_ms[MyLoop] != interval_ms)
			{
				/* a new interval applies from the last run (or from now) on */
				interval_ms = certctl_sched_interval_ms[MyLoop];
				if (interval_ms > 0)
					next_due = TimestampTzPlusMilliseconds(last_sched ? last_sched : GetCurrentTimestamp(),
														   interval_ms);
			}
		}

		LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
		run_requested = MySlot->run_requested;
		config_changed = MySlot->config_changed;
		MySlot->config_changed = false;
		LWLockRelease(certctl_sched_shared->lock);
		if (config_changed)
			refresh_catalog_state();

		now = GetCurrentTimestamp();
		if (!certctl_sched_enabled || interval_ms < 0)
			state = LOOP_DISABLED;
		else if (!extension_exists)
			state = LOOP_WAITING_FOR_EXTENSION;
		else if (loop_paused)
			state = LOOP_PAUSED;
		else if (run_requested || now >= next_due)
		{
			TimestampTz sched;
			const char *trigger;

			if (now >= next_due)
			{
				sched = latest_grid_point(next_due, now, interval_ms);
				next_due = TimestampTzPlusMilliseconds(sched, interval_ms);
				last_sched = sched;
				trigger = run_requested ? "run_now" : "schedule";
			}
			else
			{
				sched = now;
				trigger = "run_now";
			}
			if (run_requested)
			{
				LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
				MySlot->run_requested = false;
				LWLockRelease(certctl_sched_shared->lock);
			}
			publish_state(LOOP_RUNNING, next_due);
			run_tick(sched, trigger);
			continue;			/* look at the flags again before sleeping */
		}
		else
		{
			state = LOOP_IDLE;
			timeout = (long) ((next_due - now + 999) / 1000);
		}

		if (state != announced && state == LOOP_WAITING_FOR_EXTENSION)
			ereport(LOG,
					(errmsg("certctl_sched \"%s\" worker is waiting for CREATE EXTENSION certctl_sched in database \"%s\"",
							MyDef->name, MySlot->dbname)));
		announced = state;
		publish_state(state, state == LOOP_IDLE ? next_due : 0);

		sleep_on_latch(timeout);
	}

	ereport(LOG,
			(errmsg("certctl_sched \"%s\" worker shutting down", MyDef->name)));
	/* exit code 1: restarted after the restart delay unless the server is shutting down */
	proc_exit(1);
}

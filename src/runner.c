/*-------------------------------------------------------------------------
 *
 * runner.c
 *		The run protocol, one implementation for every runner: take the
 *		loop's advisory lock, open the run's history row, run batches, record
 *		the outcome, release the lock.
 *
 * What differs between runners is a parameter (RunMode), not a copy:
 *	- the worker takes a session lock and runs each step in a transaction of
 *	  its own, guarded by the run timeout and the shutdown bound (guard.c);
 *	- CALL certctl_sched.run() takes a session lock too and commits each
 *	  step (a subtransaction, then SPI_commit), exactly as the worker does;
 *	- run_loop() takes a transaction lock and runs each step in a
 *	  subtransaction of the caller's transaction, which commits them all.
 * A failed step is rolled back alone; the steps before it stay.  Whatever
 * happens, the runner returns holding no lock of the run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "certctl_sched.h"

/* rate limits of a worker's repeated log lines */
#define SKIP_WARNING_EVERY_MS	(60 * 1000)
#define SAME_MESSAGE_EVERY_MS	(5 * 60 * 1000)

/* a worker's log rate limiting (per process) */
static TimestampTz last_skip_warning = 0;
static int64 skips_since_warning = 0;
static TimestampTz last_message_logged = 0;
static char last_message[CERTCTL_SCHED_ERRLEN];

/* what a step's transaction is, per mode */
static void step_begin(RunContext *ctx, const char *activity);
static void step_commit(RunContext *ctx);
static void step_abort(RunContext *ctx);
static void report_error(ErrorData *edata);

/*
 * Fills in the advisory lock tag of a loop in the current database, laid out
 * exactly as pg_try_advisory_lock(int4, int4) does, so that SQL sessions can
 * take and see the same lock.
 */
void
certctl_sched_lock_tag(const LoopDef *def, LOCKTAG *tag)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) CERTCTL_SCHED_LOCK_CLASSID, (uint32) (def->index + 1), 2);
}

/*
 * Returns the pid of a process holding a loop's advisory lock in database
 * dboid, other than this one, or 0.  Must be called in a transaction.
 */
int
certctl_sched_lock_holder(int loop, Oid dboid)
{
	Oid			argtypes[3] = {OIDOID, INT4OID, INT4OID};
	Datum		values[3];
	int			pid = 0;

	values[0] = ObjectIdGetDatum(dboid);
	values[1] = Int32GetDatum(CERTCTL_SCHED_LOCK_CLASSID);
	values[2] = Int32GetDatum(loop + 1);
	SPI_connect();
	if (SPI_execute_with_args("SELECT pid FROM pg_catalog.pg_locks"
							  " WHERE locktype OPERATOR(pg_catalog.=) 'advisory' AND granted"
							  " AND objsubid OPERATOR(pg_catalog.=) 2 AND database OPERATOR(pg_catalog.=) $1"
							  " AND classid::pg_catalog.int8 OPERATOR(pg_catalog.=) $2"
							  " AND objid::pg_catalog.int8 OPERATOR(pg_catalog.=) $3"
							  " AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid() LIMIT 1",
							  3, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			pid = DatumGetInt32(d);
	}
	SPI_finish();
	return pid;
}

/*
 * Returns whether a worker should log message: not when it logged the same
 * text less than SAME_MESSAGE_EVERY_MS ago, so that a loop failing on every
 * tick does not flood the log.  Other runners log everything.
 */
static bool
is_news(const RunContext *ctx, const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	if (ctx->mode != RUN_WORKER)
		return true;
	if (strcmp(last_message, message) == 0 &&
		!TimestampDifferenceExceeds(last_message_logged, now, SAME_MESSAGE_EVERY_MS))
		return false;
	strlcpy(last_message, message, sizeof(last_message));
	last_message_logged = now;
	return true;
}

/* Starts a step: a transaction (worker) or a subtransaction (the others). */
static void
step_begin(RunContext *ctx, const char *activity)
{
	if (ctx->mode == RUN_WORKER)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
		debug_query_string = activity;
	}
	else
	{
		ctx->save_owner = CurrentResourceOwner;
		BeginInternalSubTransaction(NULL);
	}
	ctx->in_step = true;
}

/*
 * Commits a step: the worker's transaction; the procedure's subtransaction
 * and then its transaction; run_loop()'s subtransaction only.  Returns in
 * the run's memory context.
 */
static void
step_commit(RunContext *ctx)
{
	if (ctx->mode == RUN_WORKER)
	{
		debug_query_string = NULL;
		PopActiveSnapshot();
		CommitTransactionCommand();
		certctl_sched_report_stat();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	else
	{
		ReleaseCurrentSubTransaction();
		CurrentResourceOwner = ctx->save_owner;
		ctx->in_step = false;
		if (ctx->mode == RUN_PROCEDURE)
			SPI_commit();
	}
	ctx->in_step = false;
	MemoryContextSwitchTo(ctx->mcxt);
}

/*
 * Rolls back a step after an error; returns in the run's memory context.
 * (For the procedure, an error of SPI_commit itself comes after the
 * subtransaction ended: SPI has already rolled the transaction back.)
 */
static void
step_abort(RunContext *ctx)
{
	if (ctx->mode == RUN_WORKER)
	{
		debug_query_string = NULL;
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	else if (ctx->in_step)
	{
		RollbackAndReleaseCurrentSubTransaction();
		CurrentResourceOwner = ctx->save_owner;
	}
	ctx->in_step = false;
	MemoryContextSwitchTo(ctx->mcxt);
}

/*
 * After an ERROR caught during a step: copies it into the run's memory,
 * reports it (see report_error) unless the guard caused it, rolls the step
 * back and returns the copy.  The cancel that caused it, if any, is consumed.
 */
static ErrorData *
recover(RunContext *ctx)
{
	ErrorData  *edata;
	bool		guarded = ctx->mode == RUN_WORKER &&
		(certctl_sched_guard_timed_out() || certctl_sched_guard_cancelled_at_shutdown());

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(ctx->mcxt);
	edata = CopyErrorData();
	if (ctx->mode == RUN_WORKER && !guarded && is_news(ctx, edata->message))
		EmitErrorReport();
	FlushErrorState();
	step_abort(ctx);
	certctl_sched_clear_cancel();
	RESUME_INTERRUPTS();
	if (ctx->mode == RUN_FUNCTION && edata->sqlerrcode != ERRCODE_QUERY_CANCELED)
		report_error(edata);
	return edata;
}

/*
 * Tells run_loop()'s caller about an error its run caught (and returns as
 * its status): the error itself, as a WARNING.  A worker logs its errors
 * as they are caught, at most every SAME_MESSAGE_EVERY_MS for the same text.
 */
static void
report_error(ErrorData *edata)
{
	ErrorData  *warning = palloc(sizeof(ErrorData));

	memcpy(warning, edata, sizeof(ErrorData));
	warning->elevel = WARNING;
	ThrowErrorData(warning);
}

/* Warns that the loop's lock is busy: every time for an operator, at most once a minute for a worker. */
static void
warn_skipped(RunContext *ctx)
{
	TimestampTz now = GetCurrentTimestamp();
	int			holder;

	skips_since_warning++;
	if (ctx->mode == RUN_WORKER &&
		!TimestampDifferenceExceeds(last_skip_warning, now, SKIP_WARNING_EVERY_MS))
		return;
	holder = certctl_sched_lock_holder(ctx->def->index, MyDatabaseId);
	ereport(WARNING,
			(errmsg("%s still running%s, skipping %s", ctx->def->title,
					holder > 0 ? psprintf(" in process %d", holder) : "",
					ctx->mode == RUN_WORKER ? "tick" : "run"),
			 ctx->mode == RUN_WORKER ?
			 errdetail_plural("certctl_sched \"%s\" skipped " INT64_FORMAT " tick since the last warning because advisory lock (%d, %d) is held.",
							  "certctl_sched \"%s\" skipped " INT64_FORMAT " ticks since the last warning because advisory lock (%d, %d) is held.",
							  skips_since_warning, ctx->def->name, skips_since_warning,
							  CERTCTL_SCHED_LOCK_CLASSID, ctx->def->index + 1) :
			 errdetail("Advisory lock (%d, %d) is held.", CERTCTL_SCHED_LOCK_CLASSID, ctx->def->index + 1)));
	last_skip_warning = now;
	skips_since_warning = 0;
}

/* Takes the loop's advisory lock without waiting; returns false when another process holds it. */
static bool
take_lock(RunContext *ctx)
{
	LOCKTAG		tag;

	certctl_sched_lock_tag(ctx->def, &tag);
	if (LockAcquire(&tag, ExclusiveLock, ctx->mode != RUN_FUNCTION, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	ctx->locked = true;
	return true;
}

/* Releases a session lock taken by take_lock() (a transaction lock ends with the caller's transaction). */
static void
release_lock(RunContext *ctx)
{
	LOCKTAG		tag;

	if (!ctx->locked || ctx->mode == RUN_FUNCTION)
		return;
	certctl_sched_lock_tag(ctx->def, &tag);
	LockRelease(&tag, ExclusiveLock, true);
	ctx->locked = false;
}

/*
 * Makes the current step's commit local (worker and procedure: their own
 * transactions).  Bookkeeping does not wait for synchronous replication: its
 * loss at a failover is harmless, and a run must be able to record that it
 * was cancelled while the standby is gone.
 */
static void
bookkeeping_commit_is_local(RunContext *ctx)
{
	if (ctx->mode != RUN_FUNCTION)
		(void) set_config_option("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * First step of a run: checks that the extension's objects are current
 * (and, for a worker, that the loop is not paused), takes the lock and
 * opens the history row.  Returns whether the run goes on; if not,
 * ctx->out says why (skipped_locked, or RESULT_NONE with the reason).
 */
static bool
open_run(RunContext *ctx)
{
	ExtensionState st;

	step_begin(ctx, "certctl_sched: starting run");
	bookkeeping_commit_is_local(ctx);
	certctl_sched_read_extension(ctx->def, &st);
	if (!st.exists || !st.current || (st.paused && ctx->mode == RUN_WORKER))
	{
		ctx->out.result = RESULT_NONE;
		if (!st.exists)
			snprintf(ctx->out.error, CERTCTL_SCHED_ERRLEN, "extension \"certctl_sched\" does not exist");
		else if (!st.current)
			snprintf(ctx->out.error, CERTCTL_SCHED_ERRLEN,
					 "extension \"certctl_sched\" is at version %s, but its library needs version %s: run ALTER EXTENSION certctl_sched UPDATE",
					 st.version, CERTCTL_SCHED_SQL_VERSION);
		step_commit(ctx);
		return false;
	}
	ctx->ext_owner = st.owner;
	if (!take_lock(ctx))
	{
		warn_skipped(ctx);
		step_commit(ctx);
		ctx->out.result = RESULT_SKIPPED_LOCKED;
		return false;
	}
	ctx->started = GetCurrentTimestamp();
	if (certctl_sched_timeout_ms[ctx->def->index] > 0)
		ctx->deadline = TimestampTzPlusMilliseconds(ctx->started, certctl_sched_timeout_ms[ctx->def->index]);
	if (ctx->mode != RUN_FUNCTION)
		certctl_sched_history_open(ctx);
	step_commit(ctx);
	return true;
}

/* Runs the batches until the loop is done, SIGTERM or the run timeout stops it, or a batch fails. */
static void
run_batches(RunContext *ctx)
{
	ctx->out.result = RESULT_OK;
	for (;;)
	{
		int64		n;

		if (ctx->mode == RUN_WORKER && certctl_sched_shutdown_requested())
		{
			ctx->out.result = RESULT_INTERRUPTED;
			return;
		}
		/* a cancel taken by a commit waiting on synchronous replication is seen here */
		if (ctx->mode == RUN_WORKER && certctl_sched_guard_timed_out())
		{
			ctx->out.result = RESULT_CANCELLED;
			ctx->out.timed_out = true;
			return;
		}
		step_begin(ctx, ctx->def->title);
		n = ctx->def->ops->batch(ctx);
		if (n > 0 && ctx->history_id != 0)
			certctl_sched_history_progress(ctx, n);
		step_commit(ctx);
		ctx->out.rows += n;
		certctl_sched_record_progress(ctx->slot, ctx->out.rows);
		if (ctx->done)
			return;
	}
}

/* Classifies an error that ended the batches: the run timeout, the shutdown bound, a cancel, or a failure. */
static void
classify_failure(RunContext *ctx, ErrorData *edata)
{
	if (ctx->mode == RUN_WORKER && certctl_sched_guard_timed_out())
	{
		ctx->out.result = RESULT_CANCELLED;
		ctx->out.timed_out = true;
	}
	else if (ctx->mode == RUN_WORKER && certctl_sched_guard_cancelled_at_shutdown())
	{
		ctx->out.result = RESULT_CANCELLED;
		snprintf(ctx->out.error, CERTCTL_SCHED_ERRLEN,
				 "cancelled at shutdown: the transaction did not finish within certctl_sched.shutdown_timeout (%d ms)",
				 certctl_sched_shutdown_timeout_ms);
		ereport(WARNING,
				(errmsg("%s run cancelled at shutdown", ctx->def->title),
				 errdetail("Its transaction did not finish within certctl_sched.shutdown_timeout (%d ms) and was rolled back.",
						   certctl_sched_shutdown_timeout_ms)));
	}
	else
	{
		ctx->out.result = edata->sqlerrcode == ERRCODE_QUERY_CANCELED ? RESULT_CANCELLED : RESULT_ERROR;
		strlcpy(ctx->out.error, edata->message, CERTCTL_SCHED_ERRLEN);
	}
}

/* Describes a run stopped by its timeout, in the outcome and (rate-limited) in the log. */
static void
note_timeout(RunContext *ctx)
{
	int			timeout_ms = certctl_sched_timeout_ms[ctx->def->index];

	snprintf(ctx->out.error, CERTCTL_SCHED_ERRLEN,
			 "run exceeded certctl_sched.%s_timeout (%d ms) and was cancelled", ctx->def->name, timeout_ms);
	if (is_news(ctx, ctx->out.error))
		ereport(WARNING,
				(errmsg("%s run cancelled after %d ms", ctx->def->title, timeout_ms),
				 errdetail_plural("The run exceeded certctl_sched.%s_timeout; its current transaction was rolled back after " INT64_FORMAT " row.",
								  "The run exceeded certctl_sched.%s_timeout; its current transaction was rolled back after " INT64_FORMAT " rows.",
								  ctx->out.rows, ctx->def->name, ctx->out.rows)));
}

/* Logs, rate-limited, the rows a run skipped because it cannot process them. */
static void
report_skipped(RunContext *ctx)
{
	char	   *msg;

	if (ctx->out.skipped == 0)
		return;
	msg = psprintf("%s skipped " INT64_FORMAT " rows it cannot process", ctx->def->title, ctx->out.skipped);
	if (!is_news(ctx, msg))
		return;
	ereport(WARNING,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg_plural("%s skipped " INT64_FORMAT " row it cannot process",
						   "%s skipped " INT64_FORMAT " rows it cannot process",
						   ctx->out.skipped, ctx->def->title, ctx->out.skipped),
			 errdetail("For example %s.", ctx->out.skipped_example),
			 errhint("Such rows are left unchanged and reported by every run until they are corrected.")));
}

/* Logs, rate-limited, a problem the run worked around (e.g. a channel without a usable configuration). */
static void
report_warning(RunContext *ctx)
{
	if (ctx->out.warning[0] == '\0' || !is_news(ctx, ctx->out.warning))
		return;
	ereport(WARNING,
			(errmsg("%s: %s", ctx->def->title, ctx->out.warning)));
}

/* Last step of a run: records the outcome in the history row (with no cancel pending). */
static void
close_run(RunContext *ctx)
{
	if (ctx->mode == RUN_WORKER)
		certctl_sched_guard_arm(0); /* from here on only the shutdown bound applies */
	certctl_sched_clear_cancel();
	PG_TRY();
	{
		step_begin(ctx, "certctl_sched: recording run");
		bookkeeping_commit_is_local(ctx);
		if (ctx->mode == RUN_FUNCTION)
			certctl_sched_history_insert(ctx);
		else
			certctl_sched_history_close(ctx);
		step_commit(ctx);
	}
	PG_CATCH();
	{
		/* recover() logged the error itself (a worker, rate-limited) */
		(void) recover(ctx);
		ereport(WARNING,
				(errmsg("could not record the outcome of the %s run", ctx->def->title),
				 errdetail("Its history row stays \"running\" until the loop's next run marks it as an error.")));
	}
	PG_END_TRY();
}

/*
 * Handles an error that ended the run early: records it, and decides
 * whether it must be raised again to the caller (the procedure's errors, and
 * an operator's cancel of run_loop()).
 */
static void
fail_run(RunContext *ctx, ErrorData *edata)
{
	classify_failure(ctx, edata);
	if (ctx->mode == RUN_PROCEDURE ||
		(ctx->mode == RUN_FUNCTION && edata->sqlerrcode == ERRCODE_QUERY_CANCELED))
		ctx->failure = edata;
}

/* The run's steps.  Errors are caught and recorded; see fail_run() for those raised again. */
static void
run_steps(RunContext *ctx)
{
	volatile bool opened = false;

	PG_TRY();
	{
		opened = open_run(ctx);
	}
	PG_CATCH();
	{
		fail_run(ctx, recover(ctx));
	}
	PG_END_TRY();
	if (!opened)
		return;

	certctl_sched_record_start(ctx->slot, ctx->started);
	if (ctx->mode == RUN_WORKER)
		certctl_sched_guard_arm(ctx->deadline);
	PG_TRY();
	{
		if (ctx->def->ops->begin)
			ctx->def->ops->begin(ctx);
		run_batches(ctx);
	}
	PG_CATCH();
	{
		fail_run(ctx, recover(ctx));
	}
	PG_END_TRY();
	if (ctx->def->ops->end)
		ctx->def->ops->end(ctx);
	if (ctx->out.timed_out)
		note_timeout(ctx);
	if (ctx->out.result == RESULT_INTERRUPTED)
		ereport(LOG,
				(errmsg_plural("certctl_sched \"%s\" run interrupted by shutdown after " INT64_FORMAT " row",
							   "certctl_sched \"%s\" run interrupted by shutdown after " INT64_FORMAT " rows",
							   ctx->out.rows, ctx->def->name, ctx->out.rows)));
	report_skipped(ctx);
	report_warning(ctx);
	if (ctx->failure == NULL || ctx->mode == RUN_PROCEDURE)
		close_run(ctx);
}

/* Error context of a worker's runs, so that its log lines name the loop. */
static void
run_error_context(void *arg)
{
	RunContext *ctx = (RunContext *) arg;

	errcontext("certctl_sched \"%s\" run (%s)", ctx->def->name, ctx->trigger);
}

/* Returns a new run context in its own memory context (under TopMemoryContext, deleted by the run). */
static RunContext *
new_run_context(const LoopDef *def, RunMode mode, TimestampTz sched, const char *trigger)
{
	MemoryContext mcxt = AllocSetContextCreate(TopMemoryContext, "certctl_sched run", ALLOCSET_SMALL_SIZES);
	RunContext *ctx = MemoryContextAllocZero(mcxt, sizeof(RunContext));

	ctx->def = def;
	ctx->mode = mode;
	ctx->slot = certctl_sched_my_slot(def->index);
	ctx->trigger = trigger;
	ctx->sched = sched;
	ctx->batch_size = certctl_sched_batch_size;
	ctx->mcxt = mcxt;
	return ctx;
}

/*
 * Runs loop def once at tick time sched and fills *out with the outcome
 * (RESULT_NONE with the reason in out->error when the run could not start).
 * The worker calls it outside any transaction; run_loop() and run() inside
 * the caller's.  Errors are caught and recorded; the procedure's, and an
 * operator's cancel of run_loop(), are raised again once the run is
 * recorded.  No lock of the run outlives the call, whatever happens.
 */
void
certctl_sched_run(const LoopDef *def, RunMode mode, TimestampTz sched, const char *trigger, RunOutcome *out)
{
	MemoryContext caller = CurrentMemoryContext;
	RunContext *ctx = new_run_context(def, mode, sched, trigger);
	ErrorContextCallback errcallback;

	errcallback.callback = run_error_context;
	errcallback.arg = ctx;
	errcallback.previous = error_context_stack;
	if (mode == RUN_WORKER)
		error_context_stack = &errcallback;
	MemoryContextSwitchTo(ctx->mcxt);
	PG_TRY();
	{
		run_steps(ctx);
	}
	PG_FINALLY();
	{
		release_lock(ctx);
		error_context_stack = errcallback.previous;
		MemoryContextSwitchTo(caller);
	}
	PG_END_TRY();

	if (ctx->out.result != RESULT_NONE)
		certctl_sched_record_outcome(ctx->slot, ctx->started, GetCurrentTimestamp(), &ctx->out);
	*out = ctx->out;
	if (ctx->failure != NULL)
	{
		/* the copy of the error lives in the run's memory: free it with the caller's */
		MemoryContextSetParent(ctx->mcxt, caller);
		ReThrowError(ctx->failure);
	}
	MemoryContextDelete(ctx->mcxt);
}

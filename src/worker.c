/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The background worker of one loop in one database: signals, the
 *		latch loop and the schedule.  It sleeps until the loop's next due
 *		time, then hands the tick to the runner (runner.c).
 *
 * Scheduling is fixed-rate, like certctl's Go ticker: due times lie on a grid
 * of the interval.  Missed grid points (a long run, a stall, a paused or
 * disabled loop) are coalesced into a single run at the latest one.
 *
 * Signals: SIGTERM only sets a flag; an idle worker exits at once, a running
 * one within the bounds guard.c enforces.  SIGINT (pg_cancel_backend) while
 * idle is ignored; during a run it cancels the run only.  SIGHUP reloads the
 * settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "certctl_sched.h"

/* backoff before reconnecting after failed connections (database or role missing) */
#define CONNECT_BACKOFF_MAX_MS	(10 * 60 * 1000)

static LoopSlot *MySlot = NULL;
static const LoopDef *MyDef = NULL;

/* what the worker last read of its database */
static ExtensionState ext;
static bool state_unreadable = false;

/* SIGTERM: note it and wake the main loop; a run in progress is left to the guard. */
static void
handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	certctl_sched_guard_sigterm();
	SetLatch(MyLatch);
	errno = save_errno;
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

/*
 * Re-reads what the worker needs to know of its database (the extension, its
 * version, the pause flag), guarded like every transaction of the worker.
 * A failure is shown as state "error" with the message, and retried on the
 * loop's schedule and whenever the loop's state changes.
 */
static void
refresh_state(MemoryContext mcxt)
{
	certctl_sched_guard_arm(0);
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "certctl_sched: reading loop state");
		certctl_sched_read_extension(MyDef, &ext);
		PopActiveSnapshot();
		CommitTransactionCommand();
		state_unreadable = false;
		if (ext.exists && !ext.current)
			certctl_sched_slot_set_error(MySlot,
										 psprintf("extension \"certctl_sched\" is at version %s, but its library needs version %s: run ALTER EXTENSION certctl_sched UPDATE",
												  ext.version, CERTCTL_SCHED_SQL_VERSION));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(mcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		certctl_sched_clear_cancel();
		RESUME_INTERRUPTS();
		if (!state_unreadable || strcmp(edata->message, MySlot->last_error) != 0)
			ereport(LOG,
					(errmsg("certctl_sched \"%s\" worker could not read the loop's state", MyDef->name),
					 errdetail_internal("%s", edata->message),
					 errhint("The worker tries again at the loop's next due time.")));
		state_unreadable = true;
		certctl_sched_slot_set_error(MySlot, edata->message);
	}
	PG_END_TRY();
	certctl_sched_guard_disarm();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(mcxt);
}

/*
 * Runs the loop for tick sched.  The runner catches the loop's errors; one
 * that escapes it anyway is logged, and the worker carries on.  A run that
 * could not start (extension gone or outdated, loop paused) makes the worker
 * re-read the loop's state.
 */
static void
run_tick(TimestampTz sched, const char *trigger, MemoryContext mcxt)
{
	RunOutcome	out;

	certctl_sched_slot_set_state(MySlot, LOOP_RUNNING, MySlot->next_run, certctl_sched_interval_ms[MyDef->index]);
	certctl_sched_guard_arm(0);
	PG_TRY();
	{
		certctl_sched_run(MyDef, RUN_WORKER, sched, trigger, &out);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(mcxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		certctl_sched_clear_cancel();
		RESUME_INTERRUPTS();
		out.result = RESULT_ERROR;
	}
	PG_END_TRY();
	certctl_sched_guard_disarm();
	MemoryContextSwitchTo(mcxt);
	if (out.result == RESULT_NONE)
		refresh_state(mcxt);
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
	if (certctl_sched_shutdown_requested())
		proc_exit(1);
}

/* Connects to the slot's database as certctl_sched.role and pins the session's settings. */
static void
connect_to_database(void)
{
	ErrorContextCallback errcallback;
	int			failures;

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

	certctl_sched_pin_session_settings();
	SetConfigOption("application_name", MyBgworkerEntry->bgw_type, PGC_USERSET, PGC_S_SESSION);
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

/* Returns and clears a pending run_now() request; with keep false, drops it (the loop cannot run now). */
static bool
take_run_request(bool keep)
{
	bool		requested;

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	requested = MySlot->run_requested;
	MySlot->run_requested = false;
	LWLockRelease(certctl_sched_shared->lock);
	return requested && keep;
}

/* Returns whether the loop's state changed (pause, resume, CREATE EXTENSION), clearing the flag. */
static bool
take_config_change(void)
{
	bool		changed;

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	changed = MySlot->config_changed;
	MySlot->config_changed = false;
	LWLockRelease(certctl_sched_shared->lock);
	return changed;
}

/* Returns the state the loop is in when it is not due to run, given what the worker knows. */
static LoopState
resting_state(int interval_ms)
{
	if (!certctl_sched_enabled || interval_ms < 0)
		return LOOP_DISABLED;
	if (state_unreadable)
		return LOOP_ERROR;
	if (!ext.exists || !ext.current)
		return LOOP_WAITING_FOR_EXTENSION;
	if (ext.paused)
		return LOOP_PAUSED;
	return LOOP_IDLE;
}

/*
 * Logs when the worker starts waiting for the extension, once per wait and
 * reason (missing, or at another version); *announced remembers what was
 * said last (0: nothing).
 */
static void
announce_state(LoopState state, int *announced)
{
	int			reason = state != LOOP_WAITING_FOR_EXTENSION ? 0 : ext.exists ? 2 : 1;

	if (reason == *announced)
		return;
	*announced = reason;
	if (reason == 2)
		ereport(LOG,
				(errmsg("certctl_sched \"%s\" worker is waiting for ALTER EXTENSION certctl_sched UPDATE in database \"%s\"",
						MyDef->name, MySlot->dbname),
				 errdetail("The extension is at version %s; this library needs version %s.",
						   ext.version, CERTCTL_SCHED_SQL_VERSION)));
	else if (reason == 1)
		ereport(LOG,
				(errmsg("certctl_sched \"%s\" worker is waiting for CREATE EXTENSION certctl_sched in database \"%s\"",
						MyDef->name, MySlot->dbname)));
}

/* Entry point of a worker; main_arg is the index of its slot. */
void
certctl_sched_worker_main(Datum main_arg)
{
	MemoryContext mcxt;
	int			interval_ms;
	TimestampTz next_due;
	TimestampTz last_sched = 0;
	int			announced = 0;

	MySlot = &certctl_sched_shared->slots[DatumGetInt32(main_arg)];
	MyDef = &certctl_sched_loops[MySlot->loop];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, handle_sigterm);
	BackgroundWorkerUnblockSignals();
	connect_to_database();
	certctl_sched_guard_init(true);
	mcxt = AllocSetContextCreate(TopMemoryContext, "certctl_sched worker", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(mcxt);

	ereport(LOG,
			(errmsg("certctl_sched \"%s\" worker started in database \"%s\"", MyDef->name, MySlot->dbname)));

	refresh_state(mcxt);
	interval_ms = certctl_sched_interval_ms[MyDef->index];
	next_due = GetCurrentTimestamp();
	if (!MyDef->run_at_start && interval_ms > 0)
		next_due = TimestampTzPlusMilliseconds(next_due, interval_ms);

	for (;;)
	{
		LoopState	state;
		TimestampTz now;

		MemoryContextReset(mcxt);
		/* a cancel outside a run is ignored: it must not become a FATAL */
		certctl_sched_clear_cancel();
		CHECK_FOR_INTERRUPTS();
		if (certctl_sched_shutdown_requested())
			break;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (certctl_sched_interval_ms[MyDef->index] != interval_ms)
			{
				/* a new interval applies from the last run (or from now) on */
				interval_ms = certctl_sched_interval_ms[MyDef->index];
				if (interval_ms > 0)
					next_due = TimestampTzPlusMilliseconds(last_sched ? last_sched : GetCurrentTimestamp(),
														   interval_ms);
			}
		}

		now = GetCurrentTimestamp();
		/* an unreadable state is retried on the schedule, like a run */
		if (take_config_change() || (state_unreadable && now >= next_due))
			refresh_state(mcxt);
		state = resting_state(interval_ms);

		if (state == LOOP_IDLE && (take_run_request(true) || now >= next_due))
		{
			TimestampTz sched = now;
			const char *trigger = "run_now";

			if (now >= next_due)
			{
				sched = latest_grid_point(next_due, now, interval_ms);
				next_due = TimestampTzPlusMilliseconds(sched, interval_ms);
				last_sched = sched;
				trigger = MySlot->run_requested ? "run_now" : "schedule";
				(void) take_run_request(false);
			}
			MySlot->next_run = next_due;
			run_tick(sched, trigger, mcxt);
			continue;			/* look at the flags again before sleeping */
		}
		if (state != LOOP_IDLE)
			(void) take_run_request(false);
		if (state == LOOP_ERROR && now >= next_due && interval_ms > 0)
			next_due = TimestampTzPlusMilliseconds(latest_grid_point(next_due, now, interval_ms), interval_ms);

		announce_state(state, &announced);
		certctl_sched_slot_set_state(MySlot, state,
									 (state == LOOP_IDLE || state == LOOP_ERROR) ? next_due : 0,
									 interval_ms);
		sleep_on_latch((state == LOOP_IDLE || state == LOOP_ERROR) ?
					   (long) ((next_due - now + 999) / 1000) : -1);
	}

	ereport(LOG,
			(errmsg("certctl_sched \"%s\" worker shutting down", MyDef->name)));
	/* exit code 1: restarted after the restart delay unless the server is shutting down */
	proc_exit(1);
}

/*-------------------------------------------------------------------------
 *
 * guard.c
 *		The guard of a worker's transactions: the run timeout, the shutdown
 *		bound after SIGTERM, and the soft stop of I/O loops before either.
 *
 * SIGTERM only sets a flag (certctl_sched_guard_sigterm).  While a worker
 * is in a transaction of its own, a periodic timer (SIGALRM) looks at two
 * deadlines: the run's timeout and SIGTERM's time plus
 * certctl_sched.shutdown_timeout.  Past either it cancels the current
 * statement (a catchable ERROR, rolled back by the runner); should even that
 * not end the transaction (a commit waiting on synchronous replication takes
 * the cancel as a mere warning), the runner stops at the next batch boundary,
 * and two seconds after the shutdown bound the worker is terminated as die()
 * would.  Loops doing network I/O stop their transfers earlier, at the soft
 * stop, so that what they received is still recorded and committed.
 *
 * The state here is per process: a signal handler can only reach globals.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "certctl_sched.h"

/* how often the timer looks at the deadlines */
#define GUARD_TICK_MS			100
/* after cancelling at shutdown, how long before the worker is terminated outright */
#define SHUTDOWN_KILL_GRACE_MS	2000
/* how long before a deadline the soft stop comes: a tenth of the time left, between these bounds */
#define SOFT_STOP_MIN_MARGIN_MS	200
#define SOFT_STOP_MAX_MARGIN_MS	2000

static volatile sig_atomic_t got_sigterm = false;
static volatile TimestampTz sigterm_at = 0;
static volatile TimestampTz run_deadline = 0;
static volatile sig_atomic_t run_timed_out = false;
static volatile sig_atomic_t shutdown_cancelled = false;
static volatile sig_atomic_t shutdown_killed = false;

static bool guard_registered = false;
static TimeoutId guard_timeout_id;

/* Asks for the current statement to be cancelled, as a statement timeout would. */
static void
cancel_current_statement(void)
{
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/*
 * The timer, in SIGALRM context: sets interrupt flags only.  They make the
 * next CHECK_FOR_INTERRUPTS raise an ERROR (cancel) or FATAL (die); a commit
 * waiting on synchronous replication reads them directly and stops waiting.
 */
static void
guard_timer(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz bound;

	if (run_deadline != 0 && !run_timed_out && now >= run_deadline)
	{
		run_timed_out = true;
		cancel_current_statement();
	}
	if (!got_sigterm)
		return;
	bound = sigterm_at + (TimestampTz) certctl_sched_shutdown_timeout_ms * 1000;
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

/* Registers the timer (once per process). */
void
certctl_sched_guard_init(bool worker)
{
	if (guard_registered)
		return;
	guard_timeout_id = RegisterTimeout(USER_TIMEOUT, guard_timer);
	guard_registered = true;
}

/* Notes SIGTERM; called from the signal handler. */
void
certctl_sched_guard_sigterm(void)
{
	if (!got_sigterm)
	{
		sigterm_at = GetCurrentTimestamp();
		got_sigterm = true;
	}
}

/* Returns whether SIGTERM has arrived. */
bool
certctl_sched_shutdown_requested(void)
{
	return got_sigterm;
}

/*
 * Starts guarding a transaction (or a run) of the worker; deadline is the
 * run timeout's end, or 0 when only the shutdown bound applies.  Calling it
 * again moves the deadline (the timer keeps going).
 */
void
certctl_sched_guard_arm(TimestampTz deadline)
{
	Assert(guard_registered);
	run_timed_out = false;
	run_deadline = deadline;
#ifdef CERTCTL_SCHED_HAVE_TIMEOUT_EVERY
	if (!get_timeout_active(guard_timeout_id))
		enable_timeout_every(guard_timeout_id,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), GUARD_TICK_MS),
							 GUARD_TICK_MS);
#else
	if (deadline != 0)
		enable_timeout_at(guard_timeout_id, deadline);
#endif
}

/* Stops guarding (the worker is about to sleep). */
void
certctl_sched_guard_disarm(void)
{
	if (guard_registered)
		disable_timeout(guard_timeout_id, false);
	run_deadline = 0;
}

/* Returns whether the run timeout has passed since the guard was armed. */
bool
certctl_sched_guard_timed_out(void)
{
	return run_timed_out;
}

/* Returns whether the shutdown bound has passed and the worker's statement was cancelled for it. */
bool
certctl_sched_guard_cancelled_at_shutdown(void)
{
	return shutdown_cancelled;
}

/* Returns how long before the end of a span of span_us a soft stop comes: a tenth of it, clamped. */
static int64
soft_stop_margin_us(int64 span_us)
{
	return Max(Min(span_us / 10, (int64) SOFT_STOP_MAX_MARGIN_MS * 1000), (int64) SOFT_STOP_MIN_MARGIN_MS * 1000);
}

/*
 * Returns when an I/O loop must stop its transfers and record what it has
 * received: a margin before the run's deadline or before the shutdown bound,
 * whichever comes first (0: never).  The hard cancel comes at the deadline or
 * bound itself.
 */
TimestampTz
certctl_sched_guard_soft_stop_at(const RunContext *ctx)
{
	TimestampTz stop = 0;

	if (ctx->deadline != 0)
		stop = ctx->deadline - soft_stop_margin_us(ctx->deadline - ctx->started);
	if (ctx->mode == RUN_WORKER && got_sigterm)
	{
		int64		span = (int64) certctl_sched_shutdown_timeout_ms * 1000;
		TimestampTz bound = sigterm_at + span - soft_stop_margin_us(span);

		if (stop == 0 || bound < stop)
			stop = bound;
	}
	return stop;
}

/*
 * Forgets a pending cancel, which must not hit the bookkeeping that records
 * a run's outcome (nor an idle worker: a cancel outside a run is ignored).
 */
void
certctl_sched_clear_cancel(void)
{
	QueryCancelPending = false;
}

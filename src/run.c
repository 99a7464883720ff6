/*-------------------------------------------------------------------------
 *
 * run.c
 *		What a run of a loop is made of, shared by the workers and by
 *		run_loop(): the loop table, the advisory lock key, one batch of a
 *		loop body, and the bookkeeping of outcomes in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "certctl_sched.h"

/*
 * The six certctl loops, in lock-key order (key = index + 1).  Defaults are
 * certctl's.  Bodies take the tick time, the batch size and the loop interval
 * (the agent health threshold) and return the rows they handled.
 */
const LoopDef certctl_sched_loops[CERTCTL_SCHED_NLOOPS] = {
	{"renewal", "renewal check", 3600 * 1000, 300 * 1000, true,
	"SELECT certctl_sched.check_expiring_certificates($1, $2)"},
	{"job_processor", "job processor", 30 * 1000, 120 * 1000, true,
	"SELECT certctl_sched.process_pending_jobs($1, $2)"},
	{"agent_health", "agent health check", 120 * 1000, 60 * 1000, true,
	"SELECT certctl_sched.mark_stale_agents_offline($1, $2, $3)"},
	{"notifications", "notification processor", -1, 60 * 1000, true, NULL},
	{"short_lived_expiry", "short-lived expiry check", 30 * 1000, 30 * 1000, false,
	"SELECT certctl_sched.expire_short_lived_certificates($1, $2)"},
	{"network_scan", "network scan", -1, 1800 * 1000, true, NULL},
};

/* Returns the index of the loop with this SQL name, or -1. */
int
certctl_sched_loop_by_name(const char *name)
{
	for (int i = 0; i < CERTCTL_SCHED_NLOOPS; i++)
		if (strcmp(certctl_sched_loops[i].name, name) == 0)
			return i;
	return -1;
}

/*
 * Fills in the advisory lock tag of a loop in the current database, laid out
 * exactly as pg_try_advisory_lock(int4, int4) does, so that SQL sessions can
 * take and see the same lock.
 */
void
certctl_sched_lock_tag(int loop, LOCKTAG *tag)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) CERTCTL_SCHED_LOCK_CLASSID, (uint32) (loop + 1), 2);
}

/*
 * Returns the pid of a process holding the loop's advisory lock, or 0.
 * Must be called inside a transaction; uses SPI.
 */
int
certctl_sched_lock_holder(int loop)
{
	Oid			argtypes[3] = {OIDOID, INT4OID, INT4OID};
	Datum		values[3];
	int			pid = 0;

	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = Int32GetDatum(CERTCTL_SCHED_LOCK_CLASSID);
	values[2] = Int32GetDatum(loop + 1);

	SPI_connect();
	if (SPI_execute_with_args("SELECT pid FROM pg_catalog.pg_locks"
							  " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
							  " AND database = $1 AND classid::int8 = $2 AND objid::int8 = $3"
							  " AND pid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid() LIMIT 1",
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

/* Returns an interval Datum of ms milliseconds. */
Datum
certctl_sched_ms_interval(int ms)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (int64) ms * 1000;
	return IntervalPGetDatum(iv);
}

/*
 * Runs one batch of a loop's body in the current transaction and returns the
 * number of rows it handled.  The caller provides the transaction and an
 * active snapshot is pushed here for the call.
 */
int64
certctl_sched_run_batch(int loop, TimestampTz now, int batch_size)
{
	const LoopDef *def = &certctl_sched_loops[loop];
	Oid			argtypes[3] = {TIMESTAMPTZOID, INT4OID, INTERVALOID};
	Datum		values[3];
	int64		rows = 0;
	bool		isnull = true;
	int			ret;

	Assert(def->body_sql != NULL);
	values[0] = TimestampTzGetDatum(now);
	values[1] = Int32GetDatum(batch_size);
	/* agent health's threshold is its interval, as in certctl; certctl's default when the loop is disabled */
	values[2] = certctl_sched_ms_interval(certctl_sched_interval_ms[loop] > 0 ?
										  certctl_sched_interval_ms[loop] : def->default_interval_ms);

	SPI_connect();
	ret = SPI_execute_with_args(def->body_sql, 3, argtypes, values, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "unexpected result from \"%s\": %d", def->body_sql, ret);
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			rows = DatumGetInt32(d);
	}
	SPI_finish();
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("loop body of \"%s\" returned NULL", def->name)));
	return rows;
}

/*
 * Starts (start = true) or ends the run cursor of a loop in this session:
 * the placeholder setting certctl_sched_run.<loop>, which the loop bodies
 * read and advance so that each batch of a run resumes after the last row
 * the previous one claimed (see _run_cursor in the install script).  Must be
 * called in a transaction; the setting is transactional like any SET.
 */
void
certctl_sched_run_cursor(int loop, bool start)
{
	char		name[64];

	snprintf(name, sizeof(name), "certctl_sched_run.%s", certctl_sched_loops[loop].name);
	(void) set_config_option(name, start ? "#" : "", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SET, true, 0, false);
}

/*
 * Records the outcome of a run, or of a skipped tick (started == 0), in the
 * loop's shared status.  slot may be NULL (library not preloaded).
 */
void
certctl_sched_record_outcome(LoopSlot *slot, TimestampTz started, TimestampTz finished,
							 const RunOutcome *outcome)
{
	if (slot == NULL)
		return;
	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	if (outcome->result == RESULT_SKIPPED_LOCKED)
	{
		slot->skipped_locked++;
		slot->last_result = RESULT_SKIPPED_LOCKED;
	}
	else
	{
		slot->runs++;
		slot->last_started = started;
		slot->last_finished = finished;
		slot->last_result = outcome->result;
		slot->last_rows = outcome->rows;
		strlcpy(slot->last_error, outcome->error, sizeof(slot->last_error));
		/* a run stopped by shutdown between batches is neither a success nor a failure */
		if (outcome->result == RESULT_OK)
			slot->successes++;
		else if (outcome->result != RESULT_INTERRUPTED)
			slot->failures++;
		if (outcome->timed_out)
			slot->timeouts++;
	}
	LWLockRelease(certctl_sched_shared->lock);
}

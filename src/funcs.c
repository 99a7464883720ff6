/*-------------------------------------------------------------------------
 *
 * funcs.c
 *		SQL-callable functions: loop_status(), lock_key(), run_now(),
 *		run_loop() and the commit-time wake-up used by pause()/resume() and
 *		CREATE EXTENSION.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "certctl_sched.h"

PG_FUNCTION_INFO_V1(certctl_sched_loop_status);
PG_FUNCTION_INFO_V1(certctl_sched_lock_key);
PG_FUNCTION_INFO_V1(certctl_sched_run_now);
PG_FUNCTION_INFO_V1(certctl_sched_run_loop);
PG_FUNCTION_INFO_V1(certctl_sched_wake_workers_at_commit);

#define LOOP_STATUS_COLS 17

/* Returns the loop index of a loop name argument, or raises an error naming the valid ones. */
static int
loop_arg(text *name)
{
	char	   *s = text_to_cstring(name);
	int			loop = certctl_sched_loop_by_name(s);

	if (loop < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown certctl_sched loop \"%s\"", s),
				 errhint("The loops are renewal, job_processor, agent_health, notifications, short_lived_expiry and network_scan.")));
	return loop;
}

/* Raises an error unless the library was preloaded (there is no shared status otherwise). */
static void
require_preload(void)
{
	if (certctl_sched_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("certctl_sched is not loaded via shared_preload_libraries"),
				 errhint("Add certctl_sched to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Returns this database's slot of a loop, or NULL when the database is not in certctl_sched.database. */
static LoopSlot *
my_slot(int loop)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	return certctl_sched_find_slot(MyDatabaseId, dbname, loop);
}

/*
 * loop_status(): one row per loop and database, read from shared memory, so
 * it works while a run is in progress and on a standby.
 */
Datum
certctl_sched_loop_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	tupdesc;
	Tuplestorestate *tupstore;
	MemoryContext oldcxt;
	bool		in_recovery = RecoveryInProgress();

	require_preload();
	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		(rsinfo->allowedModes & SFRM_Materialize) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	tupdesc = CreateTupleDescCopy(tupdesc);
	tupstore = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tupstore;
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(oldcxt);

	for (int i = 0; i < certctl_sched_shared->nslots; i++)
	{
		LoopSlot	s;
		Datum		values[LOOP_STATUS_COLS];
		bool		nulls[LOOP_STATUS_COLS];
		const char *state;
		const char *result;
		NameData   *dbname = palloc0(sizeof(NameData));
		int			c = 0;

		LWLockAcquire(certctl_sched_shared->lock, LW_SHARED);
		memcpy(&s, &certctl_sched_shared->slots[i], sizeof(LoopSlot));
		LWLockRelease(certctl_sched_shared->lock);

		memset(nulls, 0, sizeof(nulls));
		namestrcpy(dbname, s.dbname);
		if (s.pid == 0)
			/* a loop without a body in this version has no worker (init.c) */
			state = in_recovery ? "standby" :
				certctl_sched_loops[s.loop].body_sql ? "stopped" : "disabled";
		else
			state = certctl_sched_state_name(s.state);
		result = certctl_sched_result_name(s.last_result);
		if (s.pid == 0)
			s.interval_ms = certctl_sched_interval_ms[s.loop];

		values[c++] = CStringGetTextDatum(certctl_sched_loops[s.loop].name);
		values[c++] = NameGetDatum(dbname);
		nulls[c] = (s.pid == 0);
		values[c++] = Int32GetDatum(s.pid);
		values[c++] = CStringGetTextDatum(state);
		nulls[c] = (s.interval_ms < 0);
		values[c++] = certctl_sched_ms_interval(s.interval_ms);
		nulls[c] = (s.last_started == 0);
		values[c++] = TimestampTzGetDatum(s.last_started);
		nulls[c] = (s.last_finished == 0 || s.last_finished < s.last_started);
		values[c++] = TimestampTzGetDatum(s.last_finished);
		nulls[c] = nulls[c - 1];
		values[c++] = IntervalPGetDatum(DatumGetIntervalP(DirectFunctionCall2(timestamp_mi,
																			  TimestampTzGetDatum(s.last_finished),
																			  TimestampTzGetDatum(s.last_started))));
		nulls[c] = (result == NULL);
		values[c++] = result ? CStringGetTextDatum(result) : (Datum) 0;
		nulls[c] = (s.last_error[0] == '\0');
		values[c++] = CStringGetTextDatum(s.last_error);
		nulls[c] = (s.last_started == 0);
		values[c++] = Int64GetDatum(s.last_rows);
		values[c++] = Int64GetDatum(s.runs);
		values[c++] = Int64GetDatum(s.successes);
		values[c++] = Int64GetDatum(s.failures);
		values[c++] = Int64GetDatum(s.timeouts);
		values[c++] = Int64GetDatum(s.skipped_locked);
		nulls[c] = (s.next_run == 0 || s.pid == 0);
		values[c++] = TimestampTzGetDatum(s.next_run);
		Assert(c == LOOP_STATUS_COLS);
		tuplestore_putvalues(tupstore, tupdesc, values, nulls);
	}
	return (Datum) 0;
}

/* lock_key(loop): the two-int advisory lock key guarding the loop. */
Datum
certctl_sched_lock_key(PG_FUNCTION_ARGS)
{
	int			loop = loop_arg(PG_GETARG_TEXT_PP(0));
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int32GetDatum(CERTCTL_SCHED_LOCK_CLASSID);
	values[1] = Int32GetDatum(loop + 1);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * run_now(loop): asks this database's worker of the loop to run now.
 * Returns true when a running worker was woken; false when none runs (the
 * request is kept and served when it starts).
 */
Datum
certctl_sched_run_now(PG_FUNCTION_ARGS)
{
	int			loop = loop_arg(PG_GETARG_TEXT_PP(0));
	LoopSlot   *slot;
	bool		woken = false;

	require_preload();
	slot = my_slot(loop);
	if (slot == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no certctl_sched worker runs in database \"%s\"", get_database_name(MyDatabaseId)),
				 errhint("Add the database to certctl_sched.database and restart the server, or use certctl_sched.run_loop().")));

	LWLockAcquire(certctl_sched_shared->lock, LW_EXCLUSIVE);
	slot->run_requested = true;
	if (slot->latch != NULL && slot->pid != 0)
	{
		SetLatch(slot->latch);
		woken = true;
	}
	LWLockRelease(certctl_sched_shared->lock);
	PG_RETURN_BOOL(woken);
}

/* Inserts a run_loop() history row in the caller's transaction. */
static void
insert_history(int loop, TimestampTz sched, TimestampTz started, const RunOutcome *out)
{
	Oid			argtypes[6] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, INT8OID, TEXTOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(certctl_sched_loops[loop].name);
	values[1] = TimestampTzGetDatum(sched);
	values[2] = TimestampTzGetDatum(started);
	values[3] = CStringGetTextDatum(certctl_sched_result_name(out->result));
	values[4] = Int64GetDatum(out->rows);
	values[5] = CStringGetTextDatum(out->error);
	if (out->error[0] == '\0')
		nulls[5] = 'n';

	SPI_connect();
	SPI_execute_with_args("INSERT INTO certctl_sched.run_history"
						  " (loop, trigger, scheduled_at, started_at, finished_at, status, rows, error, pid)"
						  " VALUES ($1, 'run_loop', $2, $3, pg_catalog.clock_timestamp(), $4, $5, $6,"
						  " pg_catalog.pg_backend_pid())",
						  6, argtypes, values, nulls, false, 0);
	SPI_finish();
}

/*
 * run_loop(loop, now): runs the loop body in the calling session, batch after
 * batch inside the caller's transaction, under the loop's advisory lock
 * (transaction level: released when the caller's transaction ends, so the
 * work is committed before anyone else may run the loop).  A busy lock skips
 * the run.  An error in the body is rolled back (subtransaction), recorded
 * and returned as the status; a cancel is re-raised.
 */
Datum
certctl_sched_run_loop(PG_FUNCTION_ARGS)
{
	int			loop;
	const LoopDef *def;
	TimestampTz now;
	TimestampTz started;
	LOCKTAG		tag;
	LoopSlot   *slot;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	/* static: written inside PG_TRY and read after a longjmp */
	static RunOutcome out;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("loop name must not be null")));
	loop = loop_arg(PG_GETARG_TEXT_PP(0));
	def = &certctl_sched_loops[loop];
	if (def->body_sql == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("certctl_sched loop \"%s\" is not implemented in this version", def->name)));
	now = PG_ARGISNULL(1) ? GetCurrentTransactionStartTimestamp() : PG_GETARG_TIMESTAMPTZ(1);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	slot = certctl_sched_shared ? my_slot(loop) : NULL;
	memset(&out, 0, sizeof(out));

	certctl_sched_lock_tag(loop, &tag);
	if (LockAcquire(&tag, ExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		int			holder = certctl_sched_lock_holder(loop);

		ereport(WARNING,
				(errmsg("%s still running in process %d, skipping run", def->title, holder),
				 errdetail("Advisory lock (%d, %d) is held.", CERTCTL_SCHED_LOCK_CLASSID, loop + 1)));
		out.result = RESULT_SKIPPED_LOCKED;
		certctl_sched_record_outcome(slot, 0, 0, &out);
		values[0] = CStringGetTextDatum("skipped_locked");
		values[1] = Int64GetDatum(0);
		nulls[2] = true;
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
	}

	started = GetCurrentTimestamp();
	out.result = RESULT_OK;
	certctl_sched_run_cursor(loop, true);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		int			batch_size = certctl_sched_batch_size;

		for (;;)
		{
			int64		n = certctl_sched_run_batch(loop, now, batch_size);

			out.rows += n;
			if (n < batch_size)
				break;
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		out.result = RESULT_ERROR;
		out.rows = 0;
		strlcpy(out.error, edata->message, sizeof(out.error));
		ereport(WARNING,
				(errmsg("%s run failed: %s", def->title, edata->message),
				 errdetail("The run's changes were rolled back.")));
	}
	PG_END_TRY();
	certctl_sched_run_cursor(loop, false);

	insert_history(loop, now, started, &out);
	certctl_sched_record_outcome(slot, started, GetCurrentTimestamp(), &out);

	values[0] = CStringGetTextDatum(certctl_sched_result_name(out.result));
	values[1] = Int64GetDatum(out.rows);
	nulls[2] = (out.error[0] == '\0');
	values[2] = CStringGetTextDatum(out.error);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* _wake_workers_at_commit(loop): wake this database's worker of loop (NULL: all) once the transaction commits. */
Datum
certctl_sched_wake_workers_at_commit(PG_FUNCTION_ARGS)
{
	int			loop = PG_ARGISNULL(0) ? -1 : loop_arg(PG_GETARG_TEXT_PP(0));

	if (certctl_sched_shared != NULL)
		certctl_sched_wake_at_commit(loop);
	PG_RETURN_VOID();
}

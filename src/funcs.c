/*-------------------------------------------------------------------------
 *
 * funcs.c
 *		SQL-callable functions: loop_status(), lock_key(), run_now(),
 *		run_loop(), the procedure run(), and the commit-time wake-up used by
 *		pause()/resume(), loop_control and CREATE EXTENSION.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "certctl_sched.h"

PG_FUNCTION_INFO_V1(certctl_sched_loop_status);
PG_FUNCTION_INFO_V1(certctl_sched_lock_key);
PG_FUNCTION_INFO_V1(certctl_sched_run_now);
PG_FUNCTION_INFO_V1(certctl_sched_run_loop);
PG_FUNCTION_INFO_V1(certctl_sched_run_procedure);
PG_FUNCTION_INFO_V1(certctl_sched_wake_workers_at_commit);

#define LOOP_STATUS_COLS 18

/* the advisory locks of certctl_sched held now: database, loop, pid */
typedef struct LockHolder
{
	Oid			dboid;
	int			loop;
	int			pid;
} LockHolder;

/* Returns the loop named by a text argument. */
static const LoopDef *
loop_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("loop name must not be null")));
	return certctl_sched_loop_arg(text_to_cstring(PG_GETARG_TEXT_PP(argno)));
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

/* Reads every certctl_sched advisory lock held now (pg_locks), into *holders; returns how many. */
static int
read_lock_holders(LockHolder **holders)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(CERTCTL_SCHED_LOCK_CLASSID)};
	int			n = 0;

	SPI_connect();
	if (SPI_execute_with_args("SELECT database, objid::pg_catalog.int4, pid FROM pg_catalog.pg_locks"
							  " WHERE locktype OPERATOR(pg_catalog.=) 'advisory' AND granted"
							  " AND objsubid OPERATOR(pg_catalog.=) 2 AND pid IS NOT NULL"
							  " AND classid::pg_catalog.int8 OPERATOR(pg_catalog.=) $1",
							  1, argtypes, values, NULL, true, 0) == SPI_OK_SELECT)
	{
		*holders = SPI_palloc(Max(SPI_processed, 1) * sizeof(LockHolder));
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			HeapTuple	t = SPI_tuptable->vals[i];
			TupleDesc	d = SPI_tuptable->tupdesc;

			(*holders)[n].dboid = DatumGetObjectId(SPI_getbinval(t, d, 1, &isnull));
			(*holders)[n].loop = DatumGetInt32(SPI_getbinval(t, d, 2, &isnull)) - 1;
			(*holders)[n].pid = DatumGetInt32(SPI_getbinval(t, d, 3, &isnull));
			n++;
		}
	}
	SPI_finish();
	return n;
}

/* Returns the pid holding a loop's lock in a database, or 0. */
static int
holder_of(LockHolder *holders, int n, Oid dboid, int loop)
{
	for (int i = 0; i < n; i++)
		if (holders[i].dboid == dboid && holders[i].loop == loop)
			return holders[i].pid;
	return 0;
}

/* Fills values/nulls with one loop_status() row from a copy of a slot. */
static void
status_row(LoopSlot *s, bool in_recovery, int holder, Datum *values, bool *nulls)
{
	const char *state;
	const char *result = certctl_sched_result_name(s->last_result);
	NameData   *dbname = palloc0(sizeof(NameData));
	int			c = 0;

	if (s->pid == 0)
	{
		state = in_recovery ? "standby" : "stopped";
		s->interval_ms = certctl_sched_interval_ms[s->loop];
	}
	else
		state = certctl_sched_state_name(s->state);
	namestrcpy(dbname, s->dbname);

	memset(nulls, 0, LOOP_STATUS_COLS * sizeof(bool));
	values[c++] = CStringGetTextDatum(certctl_sched_loops[s->loop].name);
	values[c++] = NameGetDatum(dbname);
	nulls[c] = (s->pid == 0);
	values[c++] = Int32GetDatum(s->pid);
	values[c++] = CStringGetTextDatum(state);
	nulls[c] = (s->interval_ms < 0);
	values[c++] = certctl_sched_ms_interval(s->interval_ms);
	nulls[c] = (s->last_started == 0);
	values[c++] = TimestampTzGetDatum(s->last_started);
	nulls[c] = (s->last_finished == 0 || s->last_finished < s->last_started);
	values[c++] = TimestampTzGetDatum(s->last_finished);
	nulls[c] = nulls[c - 1];
	values[c++] = IntervalPGetDatum(DatumGetIntervalP(DirectFunctionCall2(timestamp_mi,
																		  TimestampTzGetDatum(s->last_finished),
																		  TimestampTzGetDatum(s->last_started))));
	nulls[c] = (result == NULL);
	values[c++] = result ? CStringGetTextDatum(result) : (Datum) 0;
	nulls[c] = (s->last_error[0] == '\0');
	values[c++] = CStringGetTextDatum(s->last_error);
	nulls[c] = (s->last_started == 0);
	values[c++] = Int64GetDatum(s->last_rows);
	values[c++] = Int64GetDatum(s->runs);
	values[c++] = Int64GetDatum(s->successes);
	values[c++] = Int64GetDatum(s->failures);
	values[c++] = Int64GetDatum(s->timeouts);
	values[c++] = Int64GetDatum(s->skipped_locked);
	nulls[c] = (s->next_run == 0 || s->pid == 0);
	values[c++] = TimestampTzGetDatum(s->next_run);
	nulls[c] = (holder == 0);
	values[c++] = Int32GetDatum(holder);
	Assert(c == LOOP_STATUS_COLS);
}

/*
 * loop_status(): one row per loop and database, read from shared memory, so
 * it works while a run is in progress and on a standby; the holder of each
 * loop's lock is looked up in pg_locks at the call.
 */
Datum
certctl_sched_loop_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		in_recovery = RecoveryInProgress();
	LockHolder *holders = NULL;
	int			nholders;

	require_preload();
	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != LOOP_STATUS_COLS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("function certctl_sched.loop_status() returns %d columns, but the certctl_sched library returns %d",
						rsinfo->setDesc->natts, LOOP_STATUS_COLS),
				 errhint("Run ALTER EXTENSION certctl_sched UPDATE.")));
	nholders = read_lock_holders(&holders);

	for (int i = 0; i < certctl_sched_shared->nslots; i++)
	{
		LoopSlot	s;
		Datum		values[LOOP_STATUS_COLS];
		bool		nulls[LOOP_STATUS_COLS];
		Oid			dboid;

		LWLockAcquire(certctl_sched_shared->lock, LW_SHARED);
		memcpy(&s, &certctl_sched_shared->slots[i], sizeof(LoopSlot));
		LWLockRelease(certctl_sched_shared->lock);
		dboid = OidIsValid(s.dboid) ? s.dboid : get_database_oid(s.dbname, true);
		status_row(&s, in_recovery, holder_of(holders, nholders, dboid, s.loop), values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* lock_key(loop): the two-int advisory lock key guarding the loop. */
Datum
certctl_sched_lock_key(PG_FUNCTION_ARGS)
{
	const LoopDef *def = loop_arg(fcinfo, 0);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int32GetDatum(CERTCTL_SCHED_LOCK_CLASSID);
	values[1] = Int32GetDatum(def->index + 1);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* Returns why a loop's worker cannot run it now (NULL: it can), as seen by the worker and this session. */
static const char *
why_not_runnable(const LoopDef *def, LoopSlot *slot)
{
	LoopState	state;

	if (!certctl_sched_enabled || certctl_sched_interval_ms[def->index] < 0)
		return "it is disabled";
	LWLockAcquire(certctl_sched_shared->lock, LW_SHARED);
	state = slot->pid != 0 ? slot->state : LOOP_STOPPED;
	LWLockRelease(certctl_sched_shared->lock);
	if (state == LOOP_DISABLED)
		return "it is disabled";
	if (state == LOOP_PAUSED)
		return "it is paused";
	if (state == LOOP_WAITING_FOR_EXTENSION)
		return "its worker waits for the extension";
	return NULL;
}

/*
 * run_now(loop): asks this database's worker of the loop to run now.
 * Returns true when the request was made and a running worker woken, false
 * (with a notice saying why) when the loop cannot run now; a request made
 * while the worker is restarting is served when it starts.
 */
Datum
certctl_sched_run_now(PG_FUNCTION_ARGS)
{
	const LoopDef *def = loop_arg(fcinfo, 0);
	LoopSlot   *slot;
	const char *why;
	bool		woken = false;

	require_preload();
	slot = certctl_sched_my_slot(def->index);
	if (slot == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no certctl_sched worker runs in database \"%s\"", get_database_name(MyDatabaseId)),
				 errhint("Add the database to certctl_sched.database and restart the server, or use certctl_sched.run_loop().")));
	why = why_not_runnable(def, slot);
	if (why != NULL)
	{
		ereport(NOTICE,
				(errmsg("certctl_sched \"%s\" cannot run now: %s", def->name, why)));
		PG_RETURN_BOOL(false);
	}
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

/* Returns the "now" argument of run_loop()/run(): the tick time to pass the loop (default: the transaction's start). */
static TimestampTz
now_arg(FunctionCallInfo fcinfo, int argno)
{
	TimestampTz now;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return GetCurrentTransactionStartTimestamp();
	now = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_NOT_FINITE(now))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("now must be a finite timestamp")));
	return now;
}

/* Raises the reason a run could not start (extension missing or outdated). */
static void
report_not_run(const RunOutcome *out)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s", out->error)));
}

/*
 * run_loop(loop, now): runs the loop in the calling session, batch after
 * batch in the caller's transaction, under the loop's advisory lock
 * (transaction level: held until the caller's transaction ends, so the work
 * is committed before anyone else may run the loop).  Returns (status,
 * rows, error); a busy lock returns skipped_locked, a failing batch is
 * rolled back and returned as error.
 */
Datum
certctl_sched_run_loop(PG_FUNCTION_ARGS)
{
	const LoopDef *def = loop_arg(fcinfo, 0);
	TimestampTz now = now_arg(fcinfo, 1);
	TupleDesc	tupdesc;
	RunOutcome	out;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	certctl_sched_run(def, RUN_FUNCTION, now, "run_loop", &out);
	if (out.result == RESULT_NONE)
		report_not_run(&out);
	values[0] = CStringGetTextDatum(certctl_sched_result_name(out.result));
	values[1] = Int64GetDatum(out.rows);
	nulls[2] = (out.error[0] == '\0');
	values[2] = CStringGetTextDatum(out.error);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * run(loop, now), a procedure: runs the loop exactly as its worker does,
 * under a session lock, committing each batch.  Must be called by CALL
 * outside a transaction block.  A failed run is recorded, then its error
 * raised; a busy lock is a warning.
 */
Datum
certctl_sched_run_procedure(PG_FUNCTION_ARGS)
{
	const LoopDef *def = loop_arg(fcinfo, 0);
	TimestampTz now = now_arg(fcinfo, 1);
	CallContext *call = (CallContext *) fcinfo->context;
	RunOutcome	out;

	if (call == NULL || !IsA(call, CallContext) || call->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("certctl_sched.run() commits each batch, so it cannot run inside a transaction block"),
				 errhint("Call it with CALL outside a transaction block, or use certctl_sched.run_loop().")));
	SPI_connect_ext(SPI_OPT_NONATOMIC);
	certctl_sched_run(def, RUN_PROCEDURE, now, "run", &out);
	SPI_finish();
	if (out.result == RESULT_NONE)
		report_not_run(&out);
	if (out.result != RESULT_SKIPPED_LOCKED)
		ereport(NOTICE,
				(errmsg_plural("%s run %s: " INT64_FORMAT " row", "%s run %s: " INT64_FORMAT " rows", out.rows,
							   def->title, certctl_sched_result_name(out.result), out.rows),
				 out.error[0] ? errdetail_internal("%s", out.error) : 0));
	PG_RETURN_VOID();
}

/* _wake_workers_at_commit(loop): wake this database's worker of loop (NULL: all) once the transaction commits. */
Datum
certctl_sched_wake_workers_at_commit(PG_FUNCTION_ARGS)
{
	int			loop = PG_ARGISNULL(0) ? -1 : loop_arg(fcinfo, 0)->index;

	if (certctl_sched_shared != NULL)
		certctl_sched_wake_at_commit(loop);
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * history.c
 *		Every statement on certctl_sched.run_history: the row a run opens,
 *		its progress, its outcome, the pruning of old rows, and the row of a
 *		run_loop() call.
 *
 * They run in the caller's transaction, with the extension owner's rights
 * and a pinned search_path (owner.c); every operator is schema-qualified, so
 * nothing a database owner sets or creates reaches them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "certctl_sched.h"

/* Runs one history statement with the extension owner's rights; returns the first column of a returned row. */
static int64
history_exec(RunContext *ctx, const char *sql, int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	RoleSwitch	rs;
	int64		result = 0;
	int			ret;

	certctl_sched_enter_role(&rs, ctx->ext_owner, false);
	SPI_connect();
	ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, false, 0);
	if (ret == SPI_OK_INSERT_RETURNING && SPI_processed == 1)
	{
		bool		isnull;

		result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return result;
}

/*
 * Opens the history row of a run that holds the loop's session lock: first
 * marks the loop's rows still "running" as errors (under the lock no other
 * run of the loop is alive, so they are left over from a process that died,
 * or whose last bookkeeping failed), then inserts this run's row.
 */
void
certctl_sched_history_open(RunContext *ctx)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(ctx->def->name);
	values[1] = CStringGetTextDatum(ctx->trigger);
	values[2] = TimestampTzGetDatum(ctx->sched);
	values[3] = TimestampTzGetDatum(ctx->started);
	(void) history_exec(ctx,
						"UPDATE certctl_sched.run_history h"
						" SET status = 'error', finished_at = pg_catalog.now(),"
						" error = CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_stat_activity a"
						"                           WHERE a.pid OPERATOR(pg_catalog.=) h.pid)"
						"   THEN 'run did not finish: its outcome could not be recorded'"
						"   ELSE pg_catalog.format('run did not finish: process %s exited while it ran (crash or restart)', h.pid)"
						" END"
						" WHERE h.loop OPERATOR(pg_catalog.=) $1 AND h.status OPERATOR(pg_catalog.=) 'running'",
						1, argtypes, values, NULL);
	ctx->history_id = history_exec(ctx,
								   "INSERT INTO certctl_sched.run_history"
								   " (loop, trigger, scheduled_at, started_at, status, pid)"
								   " VALUES ($1, $2, $3, $4, 'running', pg_catalog.pg_backend_pid()) RETURNING id",
								   4, argtypes, values, NULL);
}

/*
 * Adds a batch's rows to the run's history row, in the batch's own
 * transaction, so the row counts exactly what was committed even if the
 * process dies before the run ends.
 */
void
certctl_sched_history_progress(RunContext *ctx, int64 rows)
{
	Oid			argtypes[2] = {INT8OID, INT8OID};
	Datum		values[2];

	values[0] = Int64GetDatum(ctx->history_id);
	values[1] = Int64GetDatum(rows);
	(void) history_exec(ctx,
						"UPDATE certctl_sched.run_history SET rows = rows OPERATOR(pg_catalog.+) $2"
						" WHERE id OPERATOR(pg_catalog.=) $1",
						2, argtypes, values, NULL);
}

/* Deletes the loop's finished history rows older than certctl_sched.history_retention. */
static void
history_prune(RunContext *ctx)
{
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		values[2];

	if (certctl_sched_history_retention_s < 0)
		return;
	values[0] = CStringGetTextDatum(ctx->def->name);
	values[1] = Int32GetDatum(certctl_sched_history_retention_s);
	(void) history_exec(ctx,
						"DELETE FROM certctl_sched.run_history"
						" WHERE loop OPERATOR(pg_catalog.=) $1"
						" AND started_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2))"
						" AND status OPERATOR(pg_catalog.<>) 'running'",
						2, argtypes, values, NULL);
}

/* Records the outcome in the run's history row, and prunes the loop's old rows. */
void
certctl_sched_history_close(RunContext *ctx)
{
	Oid			argtypes[4] = {INT8OID, TEXTOID, TEXTOID, INT8OID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(ctx->history_id);
	values[1] = CStringGetTextDatum(certctl_sched_result_name(ctx->out.result));
	values[2] = CStringGetTextDatum(ctx->out.error);
	if (ctx->out.error[0] == '\0')
		nulls[2] = 'n';
	values[3] = Int64GetDatum(ctx->out.skipped);
	(void) history_exec(ctx,
						"UPDATE certctl_sched.run_history"
						" SET finished_at = pg_catalog.clock_timestamp(), status = $2, error = $3, skipped = $4"
						" WHERE id OPERATOR(pg_catalog.=) $1",
						4, argtypes, values, nulls);
	history_prune(ctx);
}

/* Inserts the finished history row of a run_loop() call, in the caller's transaction. */
void
certctl_sched_history_insert(RunContext *ctx)
{
	Oid			argtypes[7] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, INT8OID, TEXTOID, INT8OID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(ctx->def->name);
	values[1] = TimestampTzGetDatum(ctx->sched);
	values[2] = TimestampTzGetDatum(ctx->started);
	values[3] = CStringGetTextDatum(certctl_sched_result_name(ctx->out.result));
	values[4] = Int64GetDatum(ctx->out.rows);
	values[5] = CStringGetTextDatum(ctx->out.error);
	if (ctx->out.error[0] == '\0')
		nulls[5] = 'n';
	values[6] = Int64GetDatum(ctx->out.skipped);
	(void) history_exec(ctx,
						"INSERT INTO certctl_sched.run_history"
						" (loop, trigger, scheduled_at, started_at, finished_at, status, rows, error, skipped, pid)"
						" VALUES ($1, 'run_loop', $2, $3, pg_catalog.clock_timestamp(), $4, $5, $6, $7,"
						" pg_catalog.pg_backend_pid())",
						7, argtypes, values, nulls);
	history_prune(ctx);
}

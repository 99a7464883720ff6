/*-------------------------------------------------------------------------
 *
 * sqlbody.c
 *		Loops whose work is one SQL function called batch after batch: the
 *		renewal check, the job processor, agent health and short-lived
 *		expiry.
 *
 * Each batch calls the loop's internal body, certctl_sched._<loop>_batch(
 * now, batch_size, after, threshold), with the rights of the owner of the
 * certctl tables (owner.c).  The body resumes after key "after" (the run
 * cursor: NULL for the first batch) and returns what it did:
 *	claimed		rows it looked at (batch_size unless the table is done)
 *	acted		rows it changed
 *	last_key	the last key it claimed: where the next batch resumes
 *	skipped		claimed rows it cannot process (bad data), left unchanged
 *	skipped_example	one of those, and why
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "certctl_sched.h"

/* Returns the value of column col of the SPI result's only row as a C string in mcxt, or NULL. */
static char *
result_text(int col, MemoryContext mcxt)
{
	char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	return value ? MemoryContextStrdup(mcxt, value) : NULL;
}

/* Returns the int4 value of column col of the SPI result's only row (0 for NULL). */
static int64
result_int(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/* Notes the outcome of one batch in the run context. */
static void
note_batch(RunContext *ctx, int64 claimed, char *last_key, int64 skipped, char *example)
{
	if (last_key != NULL)
	{
		if (ctx->cursor)
			pfree(ctx->cursor);
		ctx->cursor = last_key;
	}
	if (skipped > 0 && ctx->out.skipped == 0 && example != NULL)
		strlcpy(ctx->out.skipped_example, example, CERTCTL_SCHED_ERRLEN);
	ctx->out.skipped += skipped;
	ctx->done = claimed < ctx->batch_size;
}

/* One batch of a SQL loop, in the current transaction; returns the rows it changed. */
static int64
sql_body_batch(RunContext *ctx)
{
	const LoopDef *def = ctx->def;
	Oid			owner = certctl_sched_tables_owner(def);
	Oid			argtypes[4] = {TIMESTAMPTZOID, INT4OID, TEXTOID, INTERVALOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int			interval_ms = certctl_sched_interval_ms[def->index];
	char	   *sql;
	RoleSwitch	rs;
	int64		claimed;
	int64		acted;

	sql = psprintf("SELECT claimed, acted, last_key, skipped, skipped_example FROM certctl_sched.%s($1, $2, $3, $4)",
				   def->body);
	values[0] = TimestampTzGetDatum(ctx->sched);
	values[1] = Int32GetDatum(ctx->batch_size);
	values[2] = ctx->cursor ? CStringGetTextDatum(ctx->cursor) : (Datum) 0;
	nulls[2] = ctx->cursor ? ' ' : 'n';
	/* agent health's threshold is its interval, as in certctl; certctl's default when the loop is disabled */
	values[3] = certctl_sched_ms_interval(interval_ms > 0 ? interval_ms : def->default_interval_ms);

	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	if (SPI_execute_with_args(sql, 4, argtypes, values, nulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "unexpected result from %s", sql);
	claimed = result_int(1);
	acted = result_int(2);
	note_batch(ctx, claimed, result_text(3, ctx->mcxt), result_int(4), result_text(5, CurrentMemoryContext));
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return acted;
}

const LoopOps certctl_sched_sql_body_ops = {NULL, sql_body_batch, NULL};

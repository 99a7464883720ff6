/*-------------------------------------------------------------------------
 *
 * scan.c
 *		The network scan loop: certctl's network scan targets probed with TLS
 *		handshakes, hundreds at once (probe.c), and every certificate the
 *		peers present recorded as certctl records it.
 *
 * SQL decides, C probes (sql/src/network_scan.sql says what each SQL step
 * does).  One batch, in one transaction: claim whole due targets up to an
 * endpoint budget and expand their endpoints (with the rights of certctl's
 * table owner, targets locked for the batch); probe every endpoint of every
 * claimed target, interleaved; record the scans, certificates, targets and
 * audit events in one function call (table owner's rights).  At the soft stop
 * or SIGTERM the handshakes in flight are abandoned: what completed is
 * recorded, the unfinished endpoints count as errors, and the targets cut
 * short keep their last scan time, so the next run scans them again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "certctl_sched.h"
#include "io.h"
#include "probe.h"

int			certctl_sched_network_scan_concurrency = 256;
char	   *certctl_sched_network_scan_allowed_networks = NULL;

/* endpoint errors kept per target in the audit event (all are counted) */
#define ERRORS_KEPT		5
/* most text recorded for one target (certificates past it are counted as errors instead) */
#define MAX_TARGET_RESULTS	(128 * 1024 * 1024)

/* a claimed target, as the batch keeps it */
typedef struct Target
{
	char	   *id;
	char	   *cidrs;			/* JSON array, as claimed */
	char	   *errors;			/* JSON array of its entries' errors */
	int			nerrors;
	char	   *notes;			/* JSON array */
	int			endpoints;
	int			failed;
	int			unfinished;
	int			ncerts;
	StringInfoData kept;		/* the first endpoint errors, JSON objects joined by ',' */
	int			nkept;
} Target;

/* the loop's state for one run (in the run's memory context) */
typedef struct ScanRun
{
	int			capped;			/* the fewest handshakes in flight when descriptors ran out (0: never) */
	bool		read_deferred;
	Datum		deferred;		/* text[]: targets earlier runs cut short, claimed after the others */
	List	   *skipped;		/* ids of the targets this run skipped (claimed, not scannable) */
} ScanRun;

/* Returns column col of SPI row r as a C string in CurrentMemoryContext, or NULL. */
static char *
col_text(int r, int col)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col);

	return v ? pstrdup(v) : NULL;
}

/* Returns int column col of SPI row r (0 for NULL). */
static int64
col_int(int r, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		return 0;
	switch (SPI_gettypeid(SPI_tuptable->tupdesc, col))
	{
		case INT8OID:
			return DatumGetInt64(d);
		case BOOLOID:
			return DatumGetBool(d);
		default:
			return DatumGetInt32(d);
	}
}

/* Returns a text[] Datum of a list of C strings. */
static Datum
text_array(List *strings)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(list_length(strings), 1));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, strings)
		d[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Keeps the targets cut short (since their last complete scan) and returns
 * them all, with the extension owner's rights; called with empty lists to
 * read them.  The result is copied into the run's memory.
 */
static Datum
deferrals(RunContext *ctx, List *complete, List *cut_short)
{
	Oid			argtypes[4] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZOID};
	Datum		values[4] = {CStringGetTextDatum(certctl_sched_certctl_schema), text_array(complete),
	text_array(cut_short), TimestampTzGetDatum(ctx->sched)};
	RoleSwitch	rs;
	bool		isnull;
	Datum		result;

	certctl_sched_enter_role(&rs, ctx->ext_owner, false);
	SPI_connect();
	SPI_execute_with_args("SELECT certctl_sched._scan_deferred($1, $2, $3, $4)", 4, argtypes, values, NULL, false, 1);
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	{
		MemoryContext old = MemoryContextSwitchTo(ctx->mcxt);

		result = datumCopy(result, false, -1);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return result;
}

/*
 * Claims due targets (table owner's rights) and returns their JSON, NULL for
 * none; notes the targets skipped, sets ctx->done.
 */
static char *
claim(RunContext *ctx, ScanRun *sr, Oid owner)
{
	Oid			argtypes[6] = {TIMESTAMPTZOID, INT4OID, TEXTARRAYOID, TEXTARRAYOID, BOOLOID, TEXTOID};
	Datum		values[6];
	RoleSwitch	rs;
	char	   *json = NULL;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = TimestampTzGetDatum(ctx->sched);
	values[1] = Int32GetDatum(4 * Max(certctl_sched_network_scan_concurrency, 1));
	values[2] = text_array(sr->skipped);
	values[3] = sr->deferred;
	values[4] = BoolGetDatum(certctl_sched_allow_loopback);
	values[5] = CStringGetTextDatum(certctl_sched_network_scan_allowed_networks ?
									certctl_sched_network_scan_allowed_networks : "");
	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	/* (the allowed networks split as the setting's check hook splits them: on commas and spaces) */
	SPI_execute_with_args("SELECT claimed, skipped, skipped_example, skipped_ids, done, targets::pg_catalog.text"
						  " FROM certctl_sched._scan_claim($1, $2, $3, $4, $5, pg_catalog.array_remove("
						  "pg_catalog.regexp_split_to_array($6, '[,[:space:]]+'), '')::pg_catalog.inet[])",
						  6, argtypes, values, NULL, false, 1);
	if (col_int(0, 2) > 0)
	{
		MemoryContext old = MemoryContextSwitchTo(ctx->mcxt);
		bool		isnull;
		Datum	   *ids;
		int			n;

		ctx->out.skipped += col_int(0, 2);
		if (ctx->out.skipped_example[0] == '\0')
			strlcpy(ctx->out.skipped_example, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3),
					CERTCTL_SCHED_ERRLEN);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &ids, NULL, &n);
		for (int i = 0; i < n; i++)
			sr->skipped = lappend(sr->skipped, TextDatumGetCString(ids[i]));
		MemoryContextSwitchTo(old);
	}
	ctx->done = col_int(0, 5) != 0;
	if (col_int(0, 1) > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6);

		json = v ? MemoryContextStrdup(caller, v) : NULL;
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return json;
}

/* Fills a probe's address from an IP address text and a port; false if it is no address. */
static bool
set_address(Probe *p, const char *ip, int port)
{
	memset(&p->addr, 0, sizeof(p->addr));
	if (strchr(ip, ':') == NULL)
	{
		struct sockaddr_in *a = (struct sockaddr_in *) &p->addr;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		p->addrlen = sizeof(*a);
		return inet_pton(AF_INET, ip, &a->sin_addr) == 1;
	}
	else
	{
		struct sockaddr_in6 *a = (struct sockaddr_in6 *) &p->addr;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		p->addrlen = sizeof(*a);
		return inet_pton(AF_INET6, ip, &a->sin6_addr) == 1;
	}
}

/*
 * Reads the claimed targets and their endpoints, the targets' endpoints
 * interleaved (the first of each target, then the second of each...).
 */
static Probe *
expand(const char *json, Target **targets, int *ntargets, int *nprobes)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(json)};
	MemoryContext mcxt = CurrentMemoryContext;
	Probe	   *probes;

	SPI_connect();
	SPI_execute_with_args("SELECT t.x ->> 'id', (t.x -> 'cidrs')::pg_catalog.text, (t.x -> 'errors')::pg_catalog.text,"
						  " pg_catalog.jsonb_array_length(t.x -> 'errors'), (t.x -> 'notes')::pg_catalog.text,"
						  " pg_catalog.jsonb_array_length(t.x -> 'endpoints')"
						  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) WITH ORDINALITY AS t(x, n)"
						  " ORDER BY t.n", 1, argtypes, values, NULL, true, 0);
	*ntargets = (int) SPI_processed;
	*targets = MemoryContextAllocZero(mcxt, sizeof(Target) * Max(*ntargets, 1));
	for (int i = 0; i < *ntargets; i++)
	{
		Target	   *t = &(*targets)[i];
		MemoryContext old = MemoryContextSwitchTo(mcxt);

		t->id = col_text(i, 1);
		t->cidrs = col_text(i, 2);
		t->errors = col_text(i, 3);
		t->nerrors = (int) col_int(i, 4);
		t->notes = col_text(i, 5);
		t->endpoints = (int) col_int(i, 6);
		initStringInfo(&t->kept);
		MemoryContextSwitchTo(old);
	}
	SPI_execute_with_args("SELECT t.n::pg_catalog.int4 - 1, e.x ->> 'e', e.x ->> 'a', (e.x ->> 'p')::pg_catalog.int4,"
						  " (t.x ->> 'timeout_ms')::pg_catalog.int4"
						  " FROM pg_catalog.jsonb_array_elements($1::pg_catalog.jsonb) WITH ORDINALITY AS t(x, n),"
						  " pg_catalog.jsonb_array_elements(t.x -> 'endpoints') WITH ORDINALITY AS e(x, k)"
						  " ORDER BY e.k, t.n", 1, argtypes, values, NULL, true, 0);
	*nprobes = (int) SPI_processed;
	probes = MemoryContextAllocZero(mcxt, sizeof(Probe) * Max(*nprobes, 1));
	for (int i = 0; i < *nprobes; i++)
	{
		Probe	   *p = &probes[i];
		MemoryContext old = MemoryContextSwitchTo(mcxt);
		char	   *ip = col_text(i, 3);

		p->target = (int) col_int(i, 1);
		p->endpoint = col_text(i, 2);
		p->timeout_ms = (int) col_int(i, 5);
		MemoryContextSwitchTo(old);
		if (!set_address(p, ip, (int) col_int(i, 4)))
		{
			p->started = p->done = true;
			snprintf(p->error, sizeof(p->error), "not an IP address: %s", ip);
		}
	}
	SPI_finish();
	return probes;
}

/* Appends "key": value (a JSON string, escaped by PostgreSQL) to buf, after a comma unless first. */
static void
json_str(StringInfo buf, const char *key, const char *value, bool first)
{
	if (!first)
		appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/* Appends one certificate as _scan_record() reads it. */
static void
json_cert(StringInfo buf, const char *endpoint, const CertFields *c)
{
	appendStringInfoChar(buf, '{');
	json_str(buf, "endpoint", endpoint, true);
	json_str(buf, "fingerprint_sha256", c->fingerprint_sha256, false);
	json_str(buf, "common_name", c->common_name, false);
	appendStringInfoString(buf, ",\"sans\":");
	if (c->nsans == 0)
		appendStringInfoString(buf, "null");
	else
	{
		appendStringInfoChar(buf, '[');
		for (int i = 0; i < c->nsans; i++)
		{
			if (i > 0)
				appendStringInfoChar(buf, ',');
			escape_json(buf, c->sans[i]);
		}
		appendStringInfoChar(buf, ']');
	}
	json_str(buf, "serial_number", c->serial_number, false);
	json_str(buf, "issuer_dn", c->issuer_dn, false);
	json_str(buf, "subject_dn", c->subject_dn, false);
	json_str(buf, "not_before", timestamptz_to_str(c->not_before), false);
	json_str(buf, "not_after", timestamptz_to_str(c->not_after), false);
	json_str(buf, "key_algorithm", c->key_algorithm, false);
	appendStringInfo(buf, ",\"key_size\":%d,\"is_ca\":%s", c->key_size, c->is_ca ? "true" : "false");
	json_str(buf, "pem_data", c->pem_data, false);
	appendStringInfoChar(buf, '}');
}

/* Counts a probe's outcome into its target, keeping the first few errors. */
static void
tally(Target *t, const Probe *p)
{
	const char *error = p->done ? (p->error[0] ? p->error : NULL) :
		"not finished: the scan was stopped (run timeout or shutdown)";

	if (!p->done)
		t->unfinished++;
	if (error == NULL)
	{
		t->ncerts += p->ncerts;
		return;
	}
	t->failed++;
	if (t->nkept++ >= ERRORS_KEPT)
		return;
	if (t->kept.len > 0)
		appendStringInfoChar(&t->kept, ',');
	appendStringInfoChar(&t->kept, '{');
	json_str(&t->kept, "endpoint", p->endpoint, true);
	json_str(&t->kept, "error", error, false);
	appendStringInfoChar(&t->kept, '}');
}

/*
 * Builds one target's results for _scan_record(): its outcome and every
 * certificate its endpoints presented, at most MAX_TARGET_RESULTS of text
 * (certificates past it are counted as errors).  Timestamps are passed as
 * timestamptz_to_str() writes them: ISO, with the offset, whatever DateStyle.
 */
static char *
target_json(Target *tg, int t, Probe *probes, int nprobes, TimestampTz started, TimestampTz finished)
{
	StringInfoData certs;
	StringInfoData buf;
	long		secs;
	int			usecs;
	int			dropped = 0;

	initStringInfo(&certs);
	for (int i = 0; i < nprobes; i++)
	{
		if (probes[i].target != t || !probes[i].done || probes[i].error[0])
			continue;
		for (int c = 0; c < probes[i].ncerts; c++)
		{
			int			before = certs.len;

			if (certs.len > 0)
				appendStringInfoChar(&certs, ',');
			json_cert(&certs, probes[i].endpoint, &probes[i].certs[c]);
			if (certs.len > MAX_TARGET_RESULTS)
			{
				certs.len = before;
				certs.data[before] = '\0';
				dropped++;
			}
		}
	}
	TimestampDifference(started, finished, &secs, &usecs);
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	json_str(&buf, "id", tg->id, true);
	appendStringInfo(&buf, ",\"cidrs\":%s,\"notes\":%s", tg->cidrs, tg->notes);
	appendStringInfo(&buf, ",\"complete\":%s,\"endpoints\":%d,\"errors_count\":%d,\"duration_ms\":%ld",
					 tg->unfinished == 0 ? "true" : "false", tg->endpoints, tg->failed + tg->nerrors + dropped,
					 secs * 1000 + usecs / 1000);
	json_str(&buf, "started_at", timestamptz_to_str(started), false);
	/* its entries' errors first, then the first endpoint errors */
	appendStringInfo(&buf, ",\"errors\":%s", tg->errors);
	if (tg->kept.len > 0)
	{
		buf.len--;				/* (the closing bracket of the entries' errors) */
		appendStringInfo(&buf, "%s%s]", tg->nerrors > 0 ? "," : "", tg->kept.data);
	}
	appendStringInfo(&buf, ",\"certs\":[%s]}", certs.data);
	pfree(certs.data);
	return buf.data;
}

/* Records one target's results (table owner's rights); returns the targets recorded (1). */
static int64
record(RunContext *ctx, Oid owner, const char *results)
{
	Oid			argtypes[2] = {TIMESTAMPTZOID, TEXTOID};
	Datum		values[2] = {TimestampTzGetDatum(ctx->sched), CStringGetTextDatum(results)};
	RoleSwitch	rs;
	int64		n;

	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	SPI_execute_with_args("SELECT certctl_sched._scan_record($1, pg_catalog.jsonb_build_array($2::pg_catalog.jsonb))",
						  2, argtypes, values, NULL, false, 1);
	n = col_int(0, 1);
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return n;
}

/* ProbeLimits.stop_now of a worker: SIGTERM abandons the handshakes in flight. */
static bool
worker_stopping(void)
{
	return certctl_sched_shutdown_requested();
}

/* LoopOps.begin: the run's state. */
static void
scan_begin(RunContext *ctx)
{
	ctx->loop_state = MemoryContextAllocZero(ctx->mcxt, sizeof(ScanRun));
}

/* Claims, probes and records one batch of targets; returns the targets recorded.  See scan_batch(). */
static int64
scan_targets(RunContext *ctx)
{
	ScanRun    *sr = (ScanRun *) ctx->loop_state;
	Oid			owner = certctl_sched_tables_owner(ctx->def);
	char	   *json;
	Target	   *targets;
	int			ntargets;
	int			nprobes;
	Probe	   *probes;
	ProbeLimits lim;
	ProbeRun	run;
	TimestampTz started;
	TimestampTz finished;
	int64		recorded = 0;
	List	   *complete = NIL;
	List	   *cut_short = NIL;

	lim.stop_at = certctl_sched_guard_soft_stop_at(ctx);
	if (lim.stop_at != 0 && GetCurrentTimestamp() >= lim.stop_at)
	{
		ctx->done = true;		/* no new batch past the soft stop */
		return 0;
	}
	if (!sr->read_deferred)
	{
		sr->deferred = deferrals(ctx, NIL, NIL);
		sr->read_deferred = true;
	}
	json = claim(ctx, sr, owner);
	if (json == NULL)
		return 0;
	probes = expand(json, &targets, &ntargets, &nprobes);
	if (ntargets == 0)
		return 0;
	lim.concurrency = Max(certctl_sched_network_scan_concurrency, 1);
	lim.stop_now = ctx->mode == RUN_WORKER ? worker_stopping : NULL;
	lim.stop_starting = NULL;
	started = GetCurrentTimestamp();
	certctl_sched_probe_all(probes, nprobes, &lim, CurrentMemoryContext, &run);
	finished = GetCurrentTimestamp();
	if (run.capped > 0 && (sr->capped == 0 || run.capped < sr->capped))
		sr->capped = run.capped;
	for (int i = 0; i < nprobes; i++)
		tally(&targets[probes[i].target], &probes[i]);
	for (int t = 0; t < ntargets; t++)
	{
		recorded += record(ctx, owner, target_json(&targets[t], t, probes, nprobes, started, finished));
		if (targets[t].unfinished > 0)
			cut_short = lappend(cut_short, targets[t].id);
		else
			complete = lappend(complete, targets[t].id);
	}
	sr->deferred = deferrals(ctx, complete, cut_short);
	/* cut short: SIGTERM ends the run as interrupted (the runner), the soft stop ends it here */
	if (cut_short != NIL)
		ctx->done = !certctl_sched_shutdown_requested();
	return recorded;
}

/* LoopOps.end: reports, once, that the descriptors capped the concurrency. */
static void
scan_end(RunContext *ctx)
{
	ScanRun    *sr = (ScanRun *) ctx->loop_state;

	if (sr && sr->capped > 0)
		snprintf(ctx->out.warning, CERTCTL_SCHED_ERRLEN,
				 "only %d handshakes could run at once, not certctl_sched.network_scan_concurrency (%d): no file descriptor was left (raise max_files_per_process)",
				 sr->capped, certctl_sched_network_scan_concurrency);
}

/*
 * LoopOps.batch: one batch of targets, in a memory context of its own (the
 * certificates are many; run_loop()'s batches, subtransactions kept to the
 * end of the caller's transaction, must not pile them up).
 */
static int64
scan_batch(RunContext *ctx)
{
	MemoryContext batch = AllocSetContextCreate(CurrentMemoryContext, "certctl_sched network scan batch",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(batch);
	int64		n = scan_targets(ctx);

	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch);
	return n;
}

const LoopOps certctl_sched_scan_ops = {scan_begin, scan_batch, scan_end};

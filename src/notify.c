/*-------------------------------------------------------------------------
 *
 * notify.c
 *		The notifications loop: certctl's pending notifications delivered
 *		over HTTP and SMTP, concurrently, with retries; test_channel(); and
 *		the webhook's HMAC-SHA256.
 *
 * SQL decides, C transports (sql/src/notifications.sql says what each SQL
 * step does).  One batch, in one transaction: read the channels (once per
 * run: their names, and their secrets resolved here, env:NAME and file:/path
 * included); claim the due rows (with the rights of certctl's table owner,
 * rows locked for the batch); render their requests (with the extension
 * owner's rights: secrets are added only here); send them all at once
 * (transfer.c); record every outcome in one statement.  Rows not sent — the
 * soft stop came, SIGTERM stopped new sends, their channel's circuit broke —
 * stay due, no attempt spent.  Secrets never reach a log line, an error, the
 * history or the metrics: error texts are scrubbed of the channel's secret
 * and endpoint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "certctl_sched.h"
#include "io.h"

PG_FUNCTION_INFO_V1(certctl_sched_hmac_sha256_hex);
PG_FUNCTION_INFO_V1(certctl_sched_test_channel);

int			certctl_sched_notifications_concurrency = 16;
int			certctl_sched_notifications_request_timeout_ms = 10000;	/* certctl's notifiers' */

/* consecutive transient failures of a channel after which its other rows of the batch wait for the next run */
#define BREAKER_FAILURES	5
/* longest Retry-After honoured (seconds) */
#define MAX_RETRY_AFTER_S	3600
/* largest secret read from a file */
#define MAX_SECRET_FILE		65536

/* a configured channel, for the run */
typedef struct Channel
{
	char	   *name;
	bool		enabled;
	bool		usable;			/* enabled, and its secret could be read */
	char	   *secret;			/* resolved; NULL: none */
	char	   *endpoint;		/* (to scrub from error texts) */
	char	   *problem;		/* why an enabled channel cannot be used, NULL if it can */
	bool		tripped;		/* its circuit broke: no more sends this run */
} Channel;

/* the notifications loop's state for one run (in the run's memory context) */
typedef struct NotifyRun
{
	bool		loaded;
	bool		retry_columns;	/* certctl's schema has notification_events.retry_count etc. */
	int			nchannels;
	Channel    *channels;
	StringInfoData warnings;	/* configuration problems, reported once at the end of the run */
	int			no_fd;			/* notifications not sent for want of a file descriptor */
	bool		count_next;		/* the next batch only counts the backlog */
} NotifyRun;

/* one notification of a batch, as rendered */
typedef struct Notification
{
	char	   *id;
	Channel    *channel;
	char	   *error;			/* no request can be made: why */
	Transfer	t;
} Notification;

/* ----------------------------------------------------------------
 * Channels and secrets
 * ----------------------------------------------------------------
 */

/*
 * Resolves a channel's secret: a literal, or env:NAME (the server's
 * environment) or file:/path (read here).  Returns false with the reason in
 * why, which never contains the secret.
 */
static bool
resolve_secret(const char *ref, char **secret, char *why, size_t whylen)
{
	*secret = NULL;
	if (ref == NULL)
		return true;
	if (strncmp(ref, "env:", 4) == 0)
	{
		const char *v = getenv(ref + 4);

		if (v == NULL)
		{
			snprintf(why, whylen, "environment variable %s is not set", ref + 4);
			return false;
		}
		*secret = pstrdup(v);
		return true;
	}
	if (strncmp(ref, "file:", 5) == 0)
	{
		FILE	   *f = AllocateFile(ref + 5, "r");
		char	   *buf;
		size_t		n;

		if (f == NULL)
		{
			snprintf(why, whylen, "could not read file \"%s\": %m", ref + 5);
			return false;
		}
		buf = palloc(MAX_SECRET_FILE + 1);
		n = fread(buf, 1, MAX_SECRET_FILE, f);
		FreeFile(f);
		while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
			n--;
		buf[n] = '\0';
		*secret = buf;
		return true;
	}
	*secret = pstrdup(ref);
	return true;
}

/* Returns column col of SPI result row r as a C string (palloc'd in mcxt), or NULL. */
static char *
spi_text(int r, int col, MemoryContext mcxt)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col);

	return v ? MemoryContextStrdup(mcxt, v) : NULL;
}

/* Returns boolean column col of SPI result row r. */
static bool
spi_bool(int r, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

/*
 * Reads the channels (with the extension owner's rights) and resolves their
 * secrets into the run's memory; notes each channel that cannot be used.
 * Called in a transaction.
 */
static void
load_channels(RunContext *ctx, NotifyRun *nr, Oid ext_owner)
{
	RoleSwitch	rs;

	certctl_sched_enter_role(&rs, ext_owner, false);
	SPI_connect();
	SPI_execute("SELECT channel, enabled, secret, endpoint FROM certctl_sched.notification_channels ORDER BY channel",
				true, 0);
	nr->nchannels = (int) SPI_processed;
	nr->channels = MemoryContextAllocZero(ctx->mcxt, sizeof(Channel) * Max(nr->nchannels, 1));
	for (int i = 0; i < nr->nchannels; i++)
	{
		Channel    *c = &nr->channels[i];
		char	   *ref = spi_text(i, 3, CurrentMemoryContext);
		char		why[256];
		MemoryContext old;

		c->name = spi_text(i, 1, ctx->mcxt);
		c->enabled = spi_bool(i, 2);
		c->endpoint = spi_text(i, 4, ctx->mcxt);
		old = MemoryContextSwitchTo(ctx->mcxt);
		c->usable = c->enabled && resolve_secret(ref, &c->secret, why, sizeof(why));
		if (c->enabled && !c->usable)
		{
			c->problem = pstrdup(why);
			appendStringInfo(&nr->warnings, "%schannel %s cannot be used: its secret is unavailable (%s)",
							 nr->warnings.len ? "; " : "", c->name, c->problem);
		}
		MemoryContextSwitchTo(old);
	}
	SPI_execute("SELECT notification_retries FROM certctl_sched._certctl_features("
				"current_setting('certctl_sched.certctl_schema'))", true, 1);
	nr->retry_columns = SPI_processed == 1 && spi_bool(0, 1);
	SPI_finish();
	certctl_sched_leave_role(&rs);
	nr->loaded = true;
}

/* Returns the run's channel named name (case-insensitively), or NULL. */
static Channel *
find_channel(NotifyRun *nr, const char *name)
{
	for (int i = 0; i < nr->nchannels; i++)
		if (pg_strcasecmp(nr->channels[i].name, name) == 0)
			return &nr->channels[i];
	return NULL;
}

/* Returns a text[] Datum of the channels that may send now (usable, circuit not broken). */
static Datum
sending_channels(NotifyRun *nr)
{
	Datum	   *names = palloc(sizeof(Datum) * Max(nr->nchannels, 1));
	int			n = 0;

	for (int i = 0; i < nr->nchannels; i++)
		if (nr->channels[i].usable && !nr->channels[i].tripped)
			names[n++] = CStringGetTextDatum(nr->channels[i].name);
	return PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* Returns a text[] Datum of the enabled channels that cannot be used (their secret is unavailable). */
static Datum
unusable_channels(NotifyRun *nr)
{
	Datum	   *names = palloc(sizeof(Datum) * Max(nr->nchannels, 1));
	int			n = 0;

	for (int i = 0; i < nr->nchannels; i++)
		if (nr->channels[i].enabled && !nr->channels[i].usable)
			names[n++] = CStringGetTextDatum(nr->channels[i].name);
	return PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* Returns a JSON object text {channel: secret} of the usable channels' secrets, built by PostgreSQL. */
static char *
secrets_json(NotifyRun *nr)
{
	Datum	   *keys = palloc(sizeof(Datum) * Max(nr->nchannels, 1));
	Datum	   *vals = palloc(sizeof(Datum) * Max(nr->nchannels, 1));
	int			n = 0;
	Oid			argtypes[2] = {TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[2];
	char	   *result;
	MemoryContext caller = CurrentMemoryContext;

	for (int i = 0; i < nr->nchannels; i++)
		if (nr->channels[i].usable && nr->channels[i].secret)
		{
			keys[n] = CStringGetTextDatum(nr->channels[i].name);
			vals[n++] = CStringGetTextDatum(nr->channels[i].secret);
		}
	values[0] = PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(vals, n, TEXTOID, -1, false, TYPALIGN_INT));
	SPI_connect();
	SPI_execute_with_args("SELECT pg_catalog.json_object($1, $2)::pg_catalog.text", 2, argtypes, values, NULL, true, 1);
	result = spi_text(0, 1, caller);
	SPI_finish();
	return result ? result : pstrdup("{}");
}

/* ----------------------------------------------------------------
 * Requests and outcomes
 * ----------------------------------------------------------------
 */

/* Returns a palloc'd NULL-terminated array of the strings of a text[] column of an SPI row (NULL for NULL). */
static char **
spi_text_array(int r, int col, MemoryContext mcxt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, &isnull);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	char	  **out;

	if (isnull)
		return NULL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	out = MemoryContextAllocZero(mcxt, sizeof(char *) * (n + 1));
	for (int i = 0, j = 0; i < n; i++)
		if (!nulls[i])
			out[j++] = MemoryContextStrdup(mcxt, TextDatumGetCString(elems[i]));
	return out;
}

/*
 * Renders the requests of claimed notifications (a JSON array) with the
 * extension owner's rights; returns them in CurrentMemoryContext, *n set.
 */
static Notification *
render(NotifyRun *nr, const char *claimed, Oid ext_owner, int *n)
{
	MemoryContext mcxt = CurrentMemoryContext;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	RoleSwitch	rs;
	Notification *out = NULL;

	certctl_sched_enter_role(&rs, ext_owner, false);
	values[0] = CStringGetTextDatum(claimed);
	values[1] = CStringGetTextDatum(secrets_json(nr));
	SPI_connect();
	SPI_execute_with_args("SELECT id, channel, url, headers, body, mail_from, mail_rcpt, username, password,"
						  " starttls, error FROM certctl_sched._notification_requests($1::pg_catalog.jsonb,"
						  " $2::pg_catalog.jsonb)", 2, argtypes, values, NULL, true, 0);
	*n = (int) SPI_processed;
	out = MemoryContextAllocZero(mcxt, sizeof(Notification) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		Notification *x = &out[i];
		Transfer   *t = &x->t;

		x->id = spi_text(i, 1, mcxt);
		x->channel = find_channel(nr, spi_text(i, 2, CurrentMemoryContext));
		t->url = spi_text(i, 3, mcxt);
		t->headers = spi_text_array(i, 4, mcxt);
		t->body = spi_text(i, 5, mcxt);
		t->mail_from = spi_text(i, 6, mcxt);
		t->mail_rcpt = spi_text(i, 7, mcxt);
		t->username = spi_text(i, 8, mcxt);
		t->password = spi_text(i, 9, mcxt);
		t->starttls = spi_bool(i, 10);
		x->error = spi_text(i, 11, mcxt);
		t->group = x->channel ? x->channel->name : "";
		t->index = i;
		if (t->body == NULL)
			t->body = "";
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return out;
}

/* Replaces every occurrence of secret in str (in place, same length or shorter) by "[redacted]". */
static char *
scrub(const char *str, const char *secret)
{
	StringInfoData out;
	const char *p = str;
	const char *hit;

	if (secret == NULL || secret[0] == '\0' || strlen(secret) < 4)
		return pstrdup(str);
	initStringInfo(&out);
	while ((hit = strstr(p, secret)) != NULL)
	{
		appendBinaryStringInfo(&out, p, hit - p);
		appendStringInfoString(&out, "[redacted]");
		p = hit + strlen(secret);
	}
	appendStringInfoString(&out, p);
	return out.data;
}

/*
 * Returns the start of a response body for an error message: whitespace
 * collapsed, at most 200 bytes of whole characters, bytes that are not
 * valid in the database encoding replaced by '?'.
 */
static char *
body_excerpt(const Transfer *t)
{
	StringInfoData out;
	bool		space = false;
	int			enc = GetDatabaseEncoding();

	initStringInfo(&out);
	for (int i = 0; i < t->response_len;)
	{
		unsigned char c = (unsigned char) t->response[i];
		int			len = 1;

		if (c == '\r' || c == '\n' || c == '\t' || c == ' ')
			space = out.len > 0;
		else if (c >= 0x20 && c != 0x7f)
		{
			if (c >= 0x80)
				len = pg_encoding_verifymbchar(enc, t->response + i, t->response_len - i);
			if (out.len + (space ? 1 : 0) + Max(len, 1) > 200)
				break;
			if (space)
				appendStringInfoChar(&out, ' ');
			if (len > 0)
				appendBinaryStringInfo(&out, t->response + i, len);
			else
				appendStringInfoChar(&out, '?');
			len = Max(len, 1);
			space = false;
		}
		i += len;
	}
	return out.data;
}

/*
 * Classifies a finished transfer: "sent", "retry_after" (429), "transient"
 * (5xx, 408, timeouts, connection errors, SMTP 4xx) or "permanent" (other
 * 4xx, SMTP 5xx, a refused address, a malformed URL).
 */
static const char *
transfer_outcome(const Transfer *t)
{
	bool		smtp = t->url && pg_strncasecmp(t->url, "smtp", 4) == 0;

	if (t->curl_code == 0 && (smtp || (t->status >= 200 && t->status < 300)))
		return "sent";
	if (t->curl_code == 0)
		return t->status == 429 ? "retry_after" :
			(t->status == 408 || t->status >= 500) ? "transient" : "permanent";
	return (t->refused || t->curl_code == 3 /* CURLE_URL_MALFORMAT */ || t->curl_code == 1 ||
			(smtp && t->status >= 500)) ? "permanent" : "transient";
}

/* TransferLimits.transient: does a finished transfer count toward its channel's circuit breaker? */
static bool
transfer_transient(const Transfer *t)
{
	return !t->no_fd && strcmp(transfer_outcome(t), "transient") == 0;
}

/*
 * Classifies the outcome of a notification: an outcome of
 * transfer_outcome(), "permanent" for a row no request could be made for, or
 * NULL when it was not sent (aborted, never started, no descriptor left);
 * *error gets the text to record (scrubbed of secrets).
 */
static const char *
classify(const Notification *x, char **error)
{
	const Transfer *t = &x->t;
	const char *chan = x->channel ? x->channel->name : "?";
	const char *outcome;
	char	   *text;

	*error = NULL;
	if (x->error)
	{
		*error = psprintf("%s: %s", chan, x->error);
		return "permanent";
	}
	if (!t->done || t->no_fd)
		return NULL;
	outcome = transfer_outcome(t);
	if (strcmp(outcome, "sent") == 0)
		return outcome;
	if (t->curl_code == 0)
	{
		char	   *excerpt = body_excerpt(t);

		text = psprintf("%s: HTTP %ld%s%s", chan, t->status, excerpt[0] ? ": " : "", excerpt);
	}
	else
		text = psprintf("%s: %s", chan, t->error);
	if (x->channel)
		text = scrub(scrub(text, x->channel->secret), x->channel->endpoint);
	*error = text;
	return outcome;
}

/* Returns a text[] Datum of the given strings (NULLs allowed). */
static Datum
text_array(char **strs, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		nulls[i] = strs[i] == NULL;
		d[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(strs[i]);
	}
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Records the outcomes of a batch: on 4d59fd1's schema through the
 * extension's retry state first (extension owner), then in
 * notification_events (table owner).  Returns the rows recorded.
 */
static int64
record(RunContext *ctx, NotifyRun *nr, Notification *xs, int n, Oid owner)
{
	char	  **ids = palloc0(sizeof(char *) * Max(n, 1));
	char	  **outcomes = palloc0(sizeof(char *) * Max(n, 1));
	char	  **errors = palloc0(sizeof(char *) * Max(n, 1));
	char	  **retry = palloc0(sizeof(char *) * Max(n, 1));
	int			m = 0;
	Oid			argtypes[5] = {TIMESTAMPTZOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[5];
	const char *outcomes_json =
		"(SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', u.i, 'outcome', u.o,"
		" 'retry_after', u.r::pg_catalog.int4, 'error', u.e)), '[]')"
		" FROM ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5))"
		" AS u(i, o, r, e))";
	RoleSwitch	rs;
	char	   *decisions = NULL;

	for (int i = 0; i < n; i++)
	{
		char	   *error;
		const char *outcome = classify(&xs[i], &error);

		if (xs[i].t.no_fd)
			nr->no_fd++;
		if (outcome == NULL)
			continue;
		ids[m] = xs[i].id;
		outcomes[m] = (char *) outcome;
		errors[m] = error;
		retry[m] = strcmp(outcome, "retry_after") == 0 && xs[i].t.retry_after_s > 0 ?
			psprintf("%ld", Min(xs[i].t.retry_after_s, (long) MAX_RETRY_AFTER_S)) : NULL;
		m++;
	}
	if (m == 0)
		return 0;
	/* retries count from when the answers came: the tick plus the time the run has taken */
	values[0] = TimestampTzGetDatum(ctx->sched + (GetCurrentTimestamp() - ctx->started));
	values[1] = text_array(ids, m);
	values[2] = text_array(outcomes, m);
	values[3] = text_array(retry, m);
	values[4] = text_array(errors, m);
	if (!nr->retry_columns)
	{
		Oid			dtypes[3] = {TIMESTAMPTZOID, TEXTOID, TEXTOID};
		Datum		dvalues[3];

		certctl_sched_enter_role(&rs, ctx->ext_owner, false);
		SPI_connect();
		SPI_execute_with_args(psprintf("SELECT %s::pg_catalog.text", outcomes_json), 5, argtypes, values, NULL, true, 1);
		dvalues[0] = values[0];
		dvalues[1] = CStringGetTextDatum(certctl_sched_certctl_schema);
		dvalues[2] = CStringGetTextDatum(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		SPI_execute_with_args("SELECT certctl_sched._notification_attempts_record($1, $2, $3::pg_catalog.jsonb)::pg_catalog.text",
							  3, dtypes, dvalues, NULL, false, 1);
		decisions = spi_text(0, 1, ctx->mcxt);
		SPI_finish();
		certctl_sched_leave_role(&rs);
	}
	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	if (decisions)
	{
		Oid			dtypes[2] = {TIMESTAMPTZOID, TEXTOID};
		Datum		dvalues[2] = {values[0], CStringGetTextDatum(decisions)};

		SPI_execute_with_args("SELECT certctl_sched._notifications_record($1, $2::pg_catalog.jsonb)",
							  2, dtypes, dvalues, NULL, false, 1);
	}
	else
		SPI_execute_with_args(psprintf("SELECT certctl_sched._notifications_record($1, %s)", outcomes_json),
							  5, argtypes, values, NULL, false, 1);
	SPI_finish();
	certctl_sched_leave_role(&rs);
	if (decisions)
		pfree(decisions);
	return m;
}

/* ----------------------------------------------------------------
 * The loop
 * ----------------------------------------------------------------
 */

/* TransferLimits.stop_at: the run's soft stop, which SIGTERM brings forward. */
static TimestampTz
soft_stop(void *arg)
{
	return certctl_sched_guard_soft_stop_at((const RunContext *) arg);
}

/* TransferLimits.stop_starting of a worker: SIGTERM stops new sends. */
static bool
worker_stopping(void)
{
	return certctl_sched_shutdown_requested();
}

/* Sends a batch's notifications; returns how many were sent or failed (not aborted). */
static void
send_all(RunContext *ctx, Notification *xs, int n)
{
	Transfer   *ts = palloc0(sizeof(Transfer) * Max(n, 1));
	int		   *map = palloc(sizeof(int) * Max(n, 1));
	int			m = 0;
	TransferLimits lim;

	for (int i = 0; i < n; i++)
		if (xs[i].error == NULL)
		{
			ts[m] = xs[i].t;
			map[m++] = i;
		}
	lim.concurrency = Max(certctl_sched_notifications_concurrency, 1);
	lim.per_group = Max(lim.concurrency / 2, 1);
	lim.timeout_ms = certctl_sched_notifications_request_timeout_ms;
	lim.stop_at = soft_stop;
	lim.arg = ctx;
	lim.stop_starting = ctx->mode == RUN_WORKER ? worker_stopping : NULL;
	lim.breaker = BREAKER_FAILURES;
	lim.transient = transfer_transient;
	(void) certctl_sched_transfer_all(ts, m, &lim);
	for (int j = 0; j < m; j++)
		xs[map[j]].t = ts[j];
}

/*
 * Returns a text[] Datum of the rows waiting for a retry on 4d59fd1's schema,
 * whose state the table owner cannot read (extension owner's rights): they
 * are not due yet.  Empty on today's schema.
 */
static Datum
waiting_ids(RunContext *ctx)
{
	Oid			argtypes[2] = {TIMESTAMPTZOID, TEXTOID};
	Datum		values[2] = {TimestampTzGetDatum(ctx->sched), CStringGetTextDatum(certctl_sched_certctl_schema)};
	RoleSwitch	rs;
	bool		isnull;
	Datum		ids;

	certctl_sched_enter_role(&rs, ctx->ext_owner, false);
	SPI_connect();
	SPI_execute_with_args("SELECT certctl_sched._notifications_waiting($1, $2)", 2, argtypes, values, NULL, false, 1);
	ids = SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull), false, -1);
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return ids;
}

/* Claims a batch of due notifications (table owner's rights); returns their JSON, NULL for none. */
static char *
claim(RunContext *ctx, NotifyRun *nr, Oid owner, int limit, int *claimed)
{
	Oid			argtypes[5] = {TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	RoleSwitch	rs;
	char	   *json = NULL;
	MemoryContext mcxt = CurrentMemoryContext;

	values[0] = TimestampTzGetDatum(ctx->sched);
	values[1] = Int32GetDatum(limit);
	values[2] = ctx->cursor ? CStringGetTextDatum(ctx->cursor) : (Datum) 0;
	nulls[2] = ctx->cursor ? ' ' : 'n';
	values[3] = sending_channels(nr);
	values[4] = waiting_ids(ctx);
	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	SPI_execute_with_args("SELECT claimed, last_key, notifications::pg_catalog.text"
						  " FROM certctl_sched._notifications_claim($1, $2, $3, $4, $5)",
						  5, argtypes, values, nulls, false, 1);
	{
		bool		isnull;
		char	   *last_key = spi_text(0, 2, ctx->mcxt);

		*claimed = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		json = spi_text(0, 3, mcxt);
		if (last_key)
		{
			if (ctx->cursor)
				pfree(ctx->cursor);
			ctx->cursor = last_key;
		}
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
	return json;
}

/*
 * Counts what waits for each channel (table owner's rights) and keeps it in
 * notification_backlog (extension owner's rights); notes channels whose
 * notifications wait for want of a usable configuration.
 */
static void
count_backlog(RunContext *ctx, NotifyRun *nr, Oid owner)
{
	RoleSwitch	rs;
	Oid			argtypes[2] = {TIMESTAMPTZOID, TEXTARRAYOID};
	Datum		values[2] = {TimestampTzGetDatum(ctx->sched), waiting_ids(ctx)};
	char	   *counts;
	MemoryContext caller = CurrentMemoryContext;

	certctl_sched_enter_role(&rs, owner, true);
	SPI_connect();
	SPI_execute_with_args("SELECT coalesce(pg_catalog.jsonb_agg(b), '[]')::pg_catalog.text"
						  " FROM certctl_sched._notifications_backlog($1, $2) b", 2, argtypes, values, NULL, false, 1);
	counts = spi_text(0, 1, caller);
	SPI_finish();
	certctl_sched_leave_role(&rs);

	certctl_sched_enter_role(&rs, ctx->ext_owner, false);
	SPI_connect();
	{
		Oid			btypes[3] = {TIMESTAMPTZOID, TEXTOID, TEXTARRAYOID};
		Datum		bvalues[3] = {values[0], CStringGetTextDatum(counts ? counts : "[]"), unusable_channels(nr)};

		SPI_execute("DELETE FROM certctl_sched.notification_backlog", false, 0);
		SPI_execute_with_args(
			"INSERT INTO certctl_sched.notification_backlog (channel, state, due, waiting, counted_at)"
			" SELECT b.channel, CASE WHEN c.channel IS NULL THEN 'unconfigured' WHEN NOT c.enabled THEN 'disabled'"
			"        WHEN c.channel OPERATOR(pg_catalog.=) ANY ($3) THEN 'unusable' ELSE 'configured' END,"
			" b.due, b.waiting, $1"
			" FROM pg_catalog.jsonb_to_recordset($2::pg_catalog.jsonb) AS b(channel text, due bigint, waiting bigint)"
			" LEFT JOIN certctl_sched.notification_channels c"
			"   ON pg_catalog.lower(c.channel) OPERATOR(pg_catalog.=) pg_catalog.lower(b.channel)",
			3, btypes, bvalues, NULL, false, 0);
		SPI_execute("SELECT pg_catalog.string_agg(pg_catalog.format('%s (%s)', channel, due), ', ' ORDER BY channel)"
					" FROM certctl_sched.notification_backlog WHERE state OPERATOR(pg_catalog.<>) 'configured'"
					" AND due OPERATOR(pg_catalog.>) 0", false, 1);
		if (SPI_processed == 1)
		{
			char	   *waiting = spi_text(0, 1, CurrentMemoryContext);

			if (waiting)
			{
				MemoryContext old = MemoryContextSwitchTo(ctx->mcxt);

				appendStringInfo(&nr->warnings, "%snotifications wait for channels without a usable configuration: %s",
								 nr->warnings.len ? "; " : "", waiting);
				MemoryContextSwitchTo(old);
			}
		}
	}
	SPI_finish();
	certctl_sched_leave_role(&rs);
}

/* LoopOps.begin: the run's state. */
static void
notify_begin(RunContext *ctx)
{
	NotifyRun  *nr = MemoryContextAllocZero(ctx->mcxt, sizeof(NotifyRun));
	MemoryContext old = MemoryContextSwitchTo(ctx->mcxt);

	initStringInfo(&nr->warnings);
	MemoryContextSwitchTo(old);
	ctx->loop_state = nr;
}

/*
 * Notes the channels whose circuit broke in this batch (transfer.c started
 * no more of them) and returns how many notifications were left unsent for
 * another reason: aborted at the soft stop, never started because SIGTERM
 * came, no descriptor left.
 */
static int
unsent(NotifyRun *nr, const Notification *xs, int n, bool stopping)
{
	int			count = 0;

	for (int i = 0; i < n; i++)
	{
		const Notification *x = &xs[i];

		if (x->error != NULL || (x->t.done && !x->t.no_fd))
			continue;
		if (!x->t.started && !stopping && x->channel && !x->channel->tripped)
		{
			x->channel->tripped = true;
			appendStringInfo(&nr->warnings, "%schannel %s failed %d times in a row: its other notifications wait for the next run",
							 nr->warnings.len ? "; " : "", x->channel->name, BREAKER_FAILURES);
		}
		if (x->t.started || stopping || x->t.no_fd)
			count++;
	}
	return count;
}

/* Returns whether the run must stop sending: SIGTERM (a worker's), or its soft stop has come. */
static bool
stopping(RunContext *ctx)
{
	TimestampTz stop = certctl_sched_guard_soft_stop_at(ctx);

	return (ctx->mode == RUN_WORKER && certctl_sched_shutdown_requested()) ||
		(stop != 0 && GetCurrentTimestamp() >= stop);
}

/* One batch: claim, render, send, record; returns the notifications recorded.  See notify_batch(). */
static int64
send_batch(RunContext *ctx, NotifyRun *nr, Oid owner)
{
	int			limit = 4 * Max(certctl_sched_notifications_concurrency, 1);
	int			claimed = 0;
	int			n = 0;
	char	   *json;
	Notification *xs;
	int64		recorded;

	/* no new batch past the soft stop */
	if (stopping(ctx))
	{
		ctx->done = true;
		return 0;
	}
	json = claim(ctx, nr, owner, limit, &claimed);
	ctx->done = claimed < limit;
	if (claimed == 0)
	{
		count_backlog(ctx, nr, owner);
		return 0;
	}
	xs = render(nr, json, ctx->ext_owner, &n);
	send_all(ctx, xs, n);
	recorded = record(ctx, nr, xs, n, owner);
	if (unsent(nr, xs, n, stopping(ctx)) > 0)
	{
		/* SIGTERM: the runner ends the run as interrupted; soft stop, no descriptor: the run ends here */
		ctx->done = !(ctx->mode == RUN_WORKER && certctl_sched_shutdown_requested());
		return recorded;
	}
	/* the backlog is counted in a transaction of its own, once these outcomes are committed */
	if (ctx->done)
	{
		nr->count_next = true;
		ctx->done = false;
	}
	return recorded;
}

/*
 * LoopOps.batch: one batch of notifications (in a memory context of its
 * own, so that run_loop()'s batches, subtransactions kept to the end of the
 * caller's transaction, do not pile up what they allocated); or, after the
 * last one, the count of the backlog, unless the soft stop has come.
 */
static int64
notify_batch(RunContext *ctx)
{
	NotifyRun  *nr = (NotifyRun *) ctx->loop_state;
	Oid			owner = certctl_sched_tables_owner(ctx->def);
	MemoryContext batch = AllocSetContextCreate(CurrentMemoryContext, "certctl_sched notifications batch",
												ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(batch);
	int64		recorded = 0;

	if (!nr->loaded)
	{
		MemoryContextSwitchTo(ctx->mcxt);
		load_channels(ctx, nr, ctx->ext_owner);
		MemoryContextSwitchTo(batch);
	}
	if (nr->count_next)
	{
		if (!stopping(ctx))
			count_backlog(ctx, nr, owner);
		ctx->done = true;
	}
	else
		recorded = send_batch(ctx, nr, owner);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch);
	return recorded;
}

/* LoopOps.end: hands the run's configuration problems to the runner, which reports them once. */
static void
notify_end(RunContext *ctx)
{
	NotifyRun  *nr = (NotifyRun *) ctx->loop_state;

	if (nr && nr->no_fd > 0)
		appendStringInfo(&nr->warnings, "%sno file descriptor was left for %d notification(s): they wait for the next run (raise max_files_per_process, or lower certctl_sched.notifications_concurrency)",
						 nr->warnings.len ? "; " : "", nr->no_fd);
	if (nr && nr->warnings.len > 0)
		strlcpy(ctx->out.warning, nr->warnings.data, CERTCTL_SCHED_ERRLEN);
	for (int i = 0; nr && i < nr->nchannels; i++)
		if (nr->channels[i].secret)
			memset(nr->channels[i].secret, 0, strlen(nr->channels[i].secret));
}

const LoopOps certctl_sched_notify_ops = {notify_begin, notify_batch, notify_end};

/* ----------------------------------------------------------------
 * SQL functions
 * ----------------------------------------------------------------
 */

/* _hmac_sha256_hex(key, data): lowercase hex HMAC-SHA256 of data's bytes (the webhook's X-Signature). */
Datum
certctl_sched_hmac_sha256_hex(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	text	   *data = PG_GETARG_TEXT_PP(1);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	char		hex[2 * EVP_MAX_MD_SIZE + 1];

	if (HMAC(EVP_sha256(), VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
			 (unsigned char *) VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), mac, &len) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute an HMAC-SHA256")));
	for (unsigned int i = 0; i < len; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	PG_RETURN_TEXT_P(cstring_to_text(hex));
}

/*
 * test_channel(channel, recipient): sends one test message through a
 * configured channel, now, from the calling session, and returns (status,
 * http_status, error): status is sent or failed.  Nothing is written.
 */
Datum
certctl_sched_test_channel(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *recipient = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	RunContext	ctx;
	NotifyRun	nr;
	Channel    *c;
	ExtensionState st;
	Notification *xs;
	int			n = 0;
	char	   *error = NULL;
	const char *outcome;
	TupleDesc	tupdesc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		args[3];
	char		argnulls[3] = {' ', ' ', 'n'};
	char	   *json;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("channel must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	certctl_sched_read_extension(NULL, &st);
	memset(&ctx, 0, sizeof(ctx));
	memset(&nr, 0, sizeof(nr));
	initStringInfo(&nr.warnings);
	ctx.mcxt = CurrentMemoryContext;
	ctx.mode = RUN_FUNCTION;
	ctx.ext_owner = st.owner;
	ctx.started = GetCurrentTimestamp();
	ctx.deadline = TimestampTzPlusMilliseconds(ctx.started, certctl_sched_notifications_request_timeout_ms + 5000);
	load_channels(&ctx, &nr, st.owner);
	c = find_channel(&nr, name);
	if (c == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("notification channel \"%s\" is not configured", name),
				 errhint("Add a row for it to certctl_sched.notification_channels.")));
	if (!c->usable)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("notification channel \"%s\" cannot be used", name),
				 c->problem ? errdetail("Its secret is unavailable: %s.", c->problem) : errdetail("It is disabled."),
				 c->problem ? 0 : errhint("Set enabled in certctl_sched.notification_channels.")));

	/* one notification, as a claim would return it */
	args[0] = CStringGetTextDatum(c->name);
	args[1] = recipient ? CStringGetTextDatum(recipient) : (Datum) 0;
	argnulls[1] = recipient ? ' ' : 'n';
	SPI_connect();
	SPI_execute_with_args("SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object("
						  " 'id', 'test-' OPERATOR(pg_catalog.||) pg_catalog.gen_random_uuid(), 'channel', $1,"
						  " 'type', 'Test', 'recipient', coalesce($2, ''), 'certificate_id', NULL,"
						  " 'message', 'This is a test message from certctl_sched.',"
						  " 'created_at', pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')))::pg_catalog.text",
						  3, argtypes, args, argnulls, true, 1);
	json = spi_text(0, 1, ctx.mcxt);
	SPI_finish();

	xs = render(&nr, json, st.owner, &n);
	if (n == 1)
	{
		send_all(&ctx, xs, 1);
		outcome = classify(&xs[0], &error);
	}
	else
		outcome = NULL;
	values[0] = CStringGetTextDatum(outcome && strcmp(outcome, "sent") == 0 ? "sent" : "failed");
	values[1] = Int32GetDatum((int32) (n == 1 ? xs[0].t.status : 0));
	nulls[1] = n != 1 || xs[0].t.status == 0;
	values[2] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[2] = error == NULL;
	if (outcome == NULL && error == NULL)
	{
		values[2] = CStringGetTextDatum("not sent: the soft stop came first");
		nulls[2] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

-- Notifications (certctl's NotificationService.ProcessPendingNotifications and, today, RetryFailedNotifications):
-- SQL decides what to send and records what happened; C (notify.c, transfer.c) sends.  A batch is:
--   1. _notifications_claim(), with the rights of certctl's table owner: locks the due rows of configured channels;
--   2. _notification_requests(), with the extension owner's rights (it reads the channel configuration and its
--      secrets): the request of each row, or why none can be made;
--   3. the transfers, concurrently (notify.c);
--   4. _notifications_record(), with the table owner's rights: every outcome, in one statement; on certctl 4d59fd1's
--      schema, which has no retry columns, _notification_attempts_record() first keeps the retry state in the
--      extension's table notification_attempts and says what becomes of each row.
-- A row is due when it is pending, or (today's schema) failed with a retry due: next_retry_at has come, or it is a
-- row certctl marked failed without one (certctl's own retry sweep never retries those); and never before its
-- next_retry_at.  The retry state table is in docs/notifications.md.

-- What becomes of a row after a send, from its state and the send's outcome: sent; permanent (a 4xx other than 408
-- and 429, a bad row); retry_after (429: again at Retry-After, no attempt spent); transient (5xx, 408, timeout,
-- connection error): a pending row fails with a retry in 1 minute; a failed row with retry_count r < 4 is retried
-- in 2^r minutes with retry_count r + 1; at r = 4 it is dead.  So up to six sends, as today's certctl's sweep.
CREATE OR REPLACE FUNCTION certctl_sched._notification_decision(now timestamptz, status text, retry_count integer,
	next_retry_at timestamptz, last_error text, outcome text, retry_after integer, error text,
	OUT new_status text, OUT new_retry_count integer, OUT new_next_retry_at timestamptz, OUT new_last_error text,
	OUT sent boolean)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE outcome
			WHEN 'sent' THEN 'sent'
			WHEN 'permanent' THEN 'failed'
			WHEN 'retry_after' THEN status
			WHEN 'transient' THEN CASE WHEN lower(status) = 'failed' AND retry_count >= 4 THEN 'dead' ELSE 'failed' END
		END,
	CASE WHEN outcome = 'transient' AND lower(status) = 'failed' AND retry_count < 4 THEN retry_count + 1
		ELSE retry_count END,
	CASE outcome
		WHEN 'retry_after' THEN now + make_interval(secs => least(greatest(coalesce(retry_after, 60), 1), 3600))
		WHEN 'transient' THEN CASE
			WHEN lower(status) <> 'failed' THEN now + interval '1 minute'
			WHEN retry_count < 4 THEN now + make_interval(mins => (2 ^ retry_count)::integer)
		END
	END,
	CASE WHEN outcome = 'sent' THEN last_error ELSE error END,
	outcome = 'sent'
$$;

-- Claims a batch of due notifications on the given channels (compared case-insensitively: certctl's seed data writes
-- "email"), in primary-key order after "after": locks them (FOR UPDATE SKIP LOCKED: two runners never send one row)
-- and returns them as a JSON array.  "waiting": rows whose retry is not due yet, on 4d59fd1's schema (their state
-- is in notification_attempts, which the table owner cannot read).
CREATE OR REPLACE FUNCTION certctl_sched._notifications_claim(now timestamptz, batch_size integer, after text,
	channels text[], waiting text[], OUT claimed integer, OUT last_key text, OUT notifications jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, batch_size, ARRAY['notification_events']);
	f record := certctl_sched._certctl_features(s);
	-- a due notification on one of the channels (t: the notification)
	due text := format('%s AND lower(t.channel) = ANY (%L::text[])',
		CASE WHEN f.notification_retries THEN $q$
			((lower(t.status) = 'pending' AND (t.next_retry_at IS NULL OR t.next_retry_at <= $1))
			 OR (lower(t.status) = 'failed' AND t.retry_count < 5
				 AND (t.next_retry_at <= $1 OR (t.next_retry_at IS NULL AND t.last_error IS NULL))))$q$
			ELSE format('(lower(t.status) = %L AND t.id <> ALL (%L::text[]))', 'pending', coalesce(waiting, '{}')) END,
		(SELECT array_agg(lower(c)) FROM unnest(channels) AS c));
	-- how certctl's status index spells the due statuses (NULL: no index; then a walk of the keys)
	spellings text[] := certctl_sched._status_spellings(s, 'notification_events',
		CASE WHEN f.notification_retries THEN ARRAY['pending', 'failed'] ELSE ARRAY['pending'] END);
	ids text[];
BEGIN
	SELECT w.ids INTO ids
	FROM certctl_sched._claim_windows(s, 'notification_events', format($q$
		SELECT array_agg(b.id ORDER BY b.id), NULL::text[]
		FROM (
			SELECT t.id
			FROM %1$I.notification_events t
			WHERE %2$s
				AND t.id > $3 AND t.id <= $4
				AND ($5::text[] IS NULL OR t.id = ANY ($5::text[]))
			ORDER BY t.id
			LIMIT $2
			FOR UPDATE OF t SKIP LOCKED
		) b$q$, s, due), now, batch_size, after, spellings, due) w;
	claimed := coalesce(cardinality(ids), 0);
	last_key := ids[claimed];
	IF claimed = 0 THEN
		RETURN;
	END IF;
	-- the rows, each with what the request and the decision need
	EXECUTE format($q$
		SELECT jsonb_agg(jsonb_build_object('id', n.id, 'channel', n.channel, 'type', n.type,
				'certificate_id', n.certificate_id, 'recipient', n.recipient, 'message', n.message, 'status', n.status,
				'retry_count', %2$s, 'created_at', %3$s) ORDER BY n.id)
		FROM unnest($1::text[]) AS k(id)
		CROSS JOIN LATERAL (SELECT * FROM %1$I.notification_events n WHERE n.id = k.id OFFSET 0) n$q$,
		s, CASE WHEN f.notification_retries THEN 'n.retry_count' ELSE '0' END,
		CASE WHEN f.notification_created_at
			THEN $q$to_char(n.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')$q$ ELSE 'NULL::text' END)
	INTO notifications
	USING ids;
END
$body$;

-- The request of each claimed notification (a JSON array from _notifications_claim), built from the row and its
-- channel's configuration; secrets (a JSON object: channel -> secret, resolved by the worker) are added here.  A row
-- no request can be made for (no recipient for email, CR or LF in a mail header, an endpoint that is no URL of the
-- channel's kind) gets the reason in "error".  Runs with the extension owner's rights.  Request formats are today's
-- certctl's notifiers', plus each service's idempotency key carrying the row id: PagerDuty dedup_key, OpsGenie
-- alias, the webhook's Idempotency-Key header and event_id, the mail's Message-ID.  A row's request is the same on
-- every retry, so its signature and key are too.
CREATE OR REPLACE FUNCTION certctl_sched._notification_requests(notifications jsonb, secrets jsonb)
RETURNS TABLE (id text, channel text, url text, headers text[], body text, mail_from text, mail_rcpt text,
	username text, password text, starttls boolean, error text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH r AS (
	SELECT x.*, c.channel AS ch, c.options AS o, secrets ->> c.channel AS secret,
		coalesce(c.endpoint, CASE c.channel WHEN 'PagerDuty' THEN 'https://events.pagerduty.com/v2/enqueue'
											WHEN 'OpsGenie' THEN 'https://api.opsgenie.com/v2/alerts' END) AS endpoint
	FROM jsonb_to_recordset(notifications) AS x(id text, channel text, type text, certificate_id text,
		recipient text, message text, status text, retry_count integer, created_at text)
	JOIN certctl_sched.notification_channels c ON lower(c.channel) = lower(x.channel)
),
q AS (
	SELECT r.*,
		CASE r.ch
			WHEN 'Slack' THEN jsonb_strip_nulls(jsonb_build_object('text', '*' || r.type || E'*\n' || r.message,
				'channel', r.o ->> 'channel', 'username', coalesce(r.o ->> 'username', 'certctl')))::text
			WHEN 'Teams' THEN jsonb_build_object('@type', 'MessageCard', '@context', 'https://schema.org/extensions',
				'themeColor', '0076D7', 'summary', r.type,
				'sections', jsonb_build_array(jsonb_build_object('activityTitle', r.type, 'text', r.message,
					'markdown', true)))::text
			WHEN 'PagerDuty' THEN jsonb_build_object('routing_key', r.secret, 'event_action', 'trigger',
				'dedup_key', r.id,
				'payload', jsonb_build_object('summary', r.type, 'severity', coalesce(r.o ->> 'severity', 'warning'),
					'source', 'certctl', 'custom_details', jsonb_build_object('body', r.message,
						'recipient', r.recipient)))::text
			WHEN 'OpsGenie' THEN jsonb_strip_nulls(jsonb_build_object('message', r.type, 'alias', r.id,
				'description', nullif(r.message, ''), 'priority', coalesce(r.o ->> 'priority', 'P3'),
				'source', 'certctl'))::text
			WHEN 'Webhook' THEN jsonb_strip_nulls(jsonb_build_object('type', 'event', 'event_id', r.id,
				'event_type', r.type, 'subject', r.type, 'body', r.message, 'recipient', r.recipient,
				'created_at', r.created_at, 'certificate_id', nullif(r.certificate_id, '')))::text
			WHEN 'Email' THEN
				concat_ws(E'\r\n',
					'Date: ' || to_char(r.created_at::timestamptz AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS') || ' +0000',
					'From: ' || (r.o ->> 'from'),
					'To: ' || r.recipient,
					'Subject: ' || r.type,
					'Message-ID: <' || r.id || '@certctl_sched>',
					'MIME-Version: 1.0',
					'Content-Type: text/plain; charset=utf-8',
					'',
					replace(replace(r.message, E'\r\n', E'\n'), E'\n', E'\r\n'))
		END AS body
	FROM r
)
SELECT q.id, q.ch, q.endpoint,
	CASE WHEN q.ch <> 'Email' THEN array_remove(ARRAY[
		'Content-Type: application/json',
		CASE q.ch WHEN 'OpsGenie' THEN 'Authorization: GenieKey ' || q.secret END,
		CASE q.ch WHEN 'Webhook' THEN 'User-Agent: certctl-notifier/1.0' END,
		CASE q.ch WHEN 'Webhook' THEN 'Idempotency-Key: ' || q.id END,
		CASE WHEN q.ch = 'Webhook' AND q.secret IS NOT NULL
			THEN 'X-Signature: sha256=' || certctl_sched._hmac_sha256_hex(q.secret, q.body) END,
		CASE WHEN q.ch = 'Webhook' AND q.secret IS NOT NULL THEN 'X-Signature-Algorithm: sha256' END
	], NULL) END,
	q.body,
	CASE WHEN q.ch = 'Email' THEN q.o ->> 'from' END,
	CASE WHEN q.ch = 'Email' THEN q.recipient END,
	CASE WHEN q.ch = 'Email' THEN q.o ->> 'username' END,
	CASE WHEN q.ch = 'Email' THEN q.secret END,
	q.ch = 'Email' AND coalesce(q.o ->> 'tls', 'starttls') = 'starttls' AND q.endpoint ILIKE 'smtp://%',
	CASE
		-- header values (the id is the Idempotency-Key and Message-ID; the secret an Authorization) take no control
		-- character: no header can be injected
		WHEN q.id ~ '[[:cntrl:]]' THEN 'the notification id contains a control character'
		WHEN q.secret ~ '[[:cntrl:]]' THEN 'the channel''s secret contains a control character'
		WHEN q.endpoint IS NULL OR q.endpoint = '' THEN 'the channel has no endpoint'
		WHEN q.ch = 'Email' AND q.endpoint !~* '^smtps?://[^/?#]+' THEN 'the endpoint is no smtp:// or smtps:// URL'
		WHEN q.ch <> 'Email' AND q.endpoint !~* '^https?://[^/?#]+' THEN 'the endpoint is no http:// or https:// URL'
		WHEN q.ch IN ('PagerDuty', 'OpsGenie') AND q.secret IS NULL THEN 'the channel has no secret'
		WHEN q.ch = 'Email' AND coalesce(q.recipient, '') = '' THEN 'the notification has no recipient'
		WHEN q.ch = 'Email' AND coalesce(q.o ->> 'from', '') = '' THEN 'the channel has no "from" option'
		WHEN q.ch = 'Email' AND (q.recipient ~ '[\r\n]' OR q.type ~ '[\r\n]' OR (q.o ->> 'from') ~ '[\r\n]')
			THEN 'a mail header value contains CR or LF'
		WHEN q.ch = 'Email' AND coalesce(q.o ->> 'tls', 'starttls') NOT IN ('starttls', 'none')
			THEN 'the channel''s "tls" option must be "starttls" or "none"'
	END
FROM q
$$;

-- Records the outcome of each sent notification ("outcomes", a JSON array of {id, outcome, retry_after, error}, see
-- _notification_decision), in one statement; rows not in it (aborted, never sent) stay as they are.  On today's
-- schema the retry state is the row's own (status, retry_count, next_retry_at, last_error); on 4d59fd1's, "outcome"
-- is "apply" with the status and error decided by _notification_attempts_record().  Returns the rows recorded.
CREATE OR REPLACE FUNCTION certctl_sched._notifications_record(now timestamptz, outcomes jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, 1, ARRAY['notification_events']);
	f record := certctl_sched._certctl_features(s);
	n integer;
BEGIN
	-- what notification_delivery_guard() lets through
	PERFORM set_config('certctl_sched.delivering_notifications', 'on', true);
	IF f.notification_retries THEN
		EXECUTE format($q$
			UPDATE %I.notification_events n
			SET (status, retry_count, next_retry_at, last_error, sent_at) = (
				SELECT d.new_status, d.new_retry_count, d.new_next_retry_at, d.new_last_error,
					CASE WHEN d.sent THEN $1 ELSE n.sent_at END
				FROM certctl_sched._notification_decision($1, n.status, n.retry_count, n.next_retry_at, n.last_error,
					o.outcome, o.retry_after, o.error) d)
			FROM jsonb_to_recordset($2) AS o(id text, outcome text, retry_after integer, error text)
			WHERE n.id = o.id$q$, s)
		USING now, outcomes;
	ELSE
		EXECUTE format($q$
			UPDATE %I.notification_events n
			SET status = o.status, error = coalesce(o.error, n.error),
				sent_at = CASE WHEN o.status = 'sent' THEN $1 ELSE n.sent_at END
			FROM jsonb_to_recordset($2) AS o(id text, outcome text, status text, error text)
			WHERE n.id = o.id AND o.outcome = 'apply' AND o.status IS NOT NULL$q$, s)
		USING now, outcomes;
	END IF;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$body$;

-- On 4d59fd1's schema: keeps the retry state of each outcome in notification_attempts (the status today's schema
-- would have, pending after a 429 or failed, the retry count, the next retry, the last error) and returns what becomes
-- of each row in notification_events (for _notifications_record): sent; failed, for good or when dead (with the error);
-- or nothing (status NULL: it stays pending, waiting for its retry, in notification_attempts).  Runs with the
-- extension owner's rights.
CREATE OR REPLACE FUNCTION certctl_sched._notification_attempts_record(now timestamptz, certctl_schema text,
	outcomes jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
WITH o AS (
	SELECT o.*, a.notification_id IS NOT NULL AS retrying, coalesce(a.retry_count, 0) AS retry_count, d.*
	FROM jsonb_to_recordset(outcomes) AS o(id text, outcome text, retry_after integer, error text)
	LEFT JOIN certctl_sched.notification_attempts a
		ON a.certctl_schema = _notification_attempts_record.certctl_schema AND a.notification_id = o.id
	CROSS JOIN LATERAL certctl_sched._notification_decision(now, coalesce(a.status, 'pending'),
		coalesce(a.retry_count, 0), a.next_retry_at, a.last_error, o.outcome, o.retry_after, o.error) d
),
gone AS (
	DELETE FROM certctl_sched.notification_attempts a USING o
	WHERE a.certctl_schema = _notification_attempts_record.certctl_schema AND a.notification_id = o.id
		AND o.new_next_retry_at IS NULL
),
kept AS (
	INSERT INTO certctl_sched.notification_attempts AS a (certctl_schema, notification_id, status, retry_count,
		next_retry_at, last_error, updated_at)
	SELECT _notification_attempts_record.certctl_schema, o.id, o.new_status, o.new_retry_count, o.new_next_retry_at,
		o.new_last_error, now
	FROM o WHERE o.new_next_retry_at IS NOT NULL
	ON CONFLICT (certctl_schema, notification_id) DO UPDATE
		SET status = excluded.status, retry_count = excluded.retry_count, next_retry_at = excluded.next_retry_at,
			last_error = excluded.last_error, updated_at = excluded.updated_at
)
SELECT coalesce(jsonb_agg(jsonb_build_object('id', o.id, 'outcome', 'apply',
	'status', CASE WHEN o.sent THEN 'sent' WHEN o.new_next_retry_at IS NULL THEN 'failed' END,
	'error', CASE WHEN NOT o.sent THEN o.new_last_error END)), '[]')
FROM o
$$;

-- The notification rows waiting for their retry on 4d59fd1's schema (not due before next_retry_at).
CREATE OR REPLACE FUNCTION certctl_sched._notifications_waiting(now timestamptz, certctl_schema text)
RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce(array_agg(notification_id), '{}') FROM certctl_sched.notification_attempts
WHERE certctl_schema = _notifications_waiting.certctl_schema AND next_retry_at > now
$$;

-- How many notifications wait for each channel, configured or not: due now, and waiting for a retry ("retrying": on
-- 4d59fd1's schema, the rows whose retry is not due yet).  Counted once per run (the run's last batch) with the table
-- owner's rights; the worker keeps the counts in notification_backlog.
CREATE OR REPLACE FUNCTION certctl_sched._notifications_backlog(now timestamptz, retrying text[],
	OUT channel text, OUT due bigint, OUT waiting bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, 1, ARRAY['notification_events']);
	f record := certctl_sched._certctl_features(s);
	spellings text[] := certctl_sched._status_spellings(s, 'notification_events', ARRAY['pending', 'failed']);
BEGIN
	RETURN QUERY EXECUTE format($q$
		SELECT n.channel::text, count(*) FILTER (WHERE %2$s), count(*) FILTER (WHERE NOT (%2$s))
		FROM %1$I.notification_events n
		WHERE (lower(n.status) = 'pending' OR (%3$s)) AND %4$s
		GROUP BY n.channel ORDER BY n.channel$q$, s,
		CASE WHEN f.notification_retries THEN '(n.next_retry_at IS NULL OR n.next_retry_at <= $1)'
			ELSE 'n.id <> ALL ($2)' END,
		CASE WHEN f.notification_retries
			THEN $q$lower(n.status) = 'failed' AND n.retry_count < 5 AND (n.next_retry_at IS NOT NULL OR n.last_error IS NULL)$q$
			ELSE 'false' END,
		CASE WHEN spellings IS NULL THEN 'true' ELSE 'n.status::text = ANY ($3)' END)
	USING now, coalesce(retrying, '{}'), spellings;
END
$body$;

-- The delivery guard, for certctl's table owner to put on notification_events when certctl's own server runs too:
-- certctl's notification loop, which cannot be switched off, marks every pending notification of a channel it has no
-- notifier for "sent" without sending it.  The guard keeps such rows as they were unless the update comes from this
-- extension's notifications loop (_notifications_record, which says so in certctl_sched.delivering_notifications):
--   CREATE TRIGGER certctl_sched_delivery_guard BEFORE UPDATE OF status ON notification_events FOR EACH ROW
--     WHEN (NEW.status = 'sent' AND OLD.status IS DISTINCT FROM 'sent')
--     EXECUTE FUNCTION certctl_sched.notification_delivery_guard();
-- It guards delivery, not access: a role that may update the table may also set the setting.
CREATE OR REPLACE FUNCTION certctl_sched.notification_delivery_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF TG_OP = 'UPDATE' AND NEW.status = 'sent' AND OLD.status IS DISTINCT FROM 'sent'
		AND coalesce(current_setting('certctl_sched.delivering_notifications', true), '') <> 'on' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END
$$;

-- Renewal check (certctl's RenewalService.CheckExpiringCertificates), for one batch of certificates.
--
-- Candidates are certificates expiring within certctl's 31-day window that the run does not skip (RenewalInProgress
-- and Archived; with today's certctl's rules also Revoked, Failed and Expired, see _certctl_features) and that need at
-- least one of:
--   a status transition: Expired at or after expires_at, else Expiring (never from Revoked);
--   threshold alerts, for each threshold of the policy that the days left (truncated toward zero) have reached: an
--   ExpirationWarning notification (status pending, for the notifications loop to deliver) plus an
--   expiration_alert_sent audit, per channel of the threshold's severity tier when certctl's schema has the channel
--   matrix (migration 000026; see _alert_routes), else on channel Email; an alert is due unless one was recorded
--   for this certificate, threshold, expiry date (and channel, with the matrix) by anyone, certctl included (a
--   renewed certificate, with a new expiry date, alerts again); with the matrix, a tier without channels writes an
--   expiration_alert_skipped_no_channels audit and an unknown channel an expiration_alert_skipped_invalid_channel
--   audit, on every run, as today's certctl does; never for Revoked certificates;
--   a renewal job: policy auto_renew, inside the policy's renewal_window_days, issuer row present and enabled, not
--   Revoked, and no active (Pending, Running, AwaitingCSR, AwaitingApproval) Renewal job for the certificate; the
--   job is created Pending with max_attempts 3, the certificate becomes RenewalInProgress (instead of Expiring or
--   Expired: the job's own state is the more specific one, and certctl ends in that state too), audit
--   renewal_job_created.
-- A certificate whose only "need" cannot be met (issuer disabled, manual policy) is no candidate, so it is never
-- re-picked.  A certificate expiring at -infinity is claimed but skipped (counted in skipped), never computed with.
-- Notifications get created_at = now where certctl's schema has that column (migration 000017).
--
-- Concurrency: statement 1 claims the batch with FOR NO KEY UPDATE SKIP LOCKED; the certificate's row lock is the
-- per-certificate mutex that certctl lacks (it does not block the foreign-key checks of inserted jobs and
-- notifications).  Statement 2 re-evaluates the needs with a fresh snapshot, taken after the locks were granted, so
-- alerts and jobs a concurrent runner committed are seen and never duplicated; the status update is conditional on
-- the status read at the claim.
CREATE OR REPLACE FUNCTION certctl_sched._renewal_batch(now timestamptz, batch_size integer, after text,
	threshold interval, OUT claimed integer, OUT acted integer, OUT last_key text, OUT skipped integer,
	OUT skipped_example text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, batch_size, ARRAY['managed_certificates', 'renewal_policies', 'issuers',
		'owners', 'jobs', 'notification_events', 'audit_events']);
	f record := certctl_sched._certctl_features(s);
	-- certificates the run leaves alone entirely: certctl's list at 4d59fd1, or today's
	skip_statuses text[] := CASE WHEN f.head
		THEN '{renewalinprogress,archived,revoked,failed,expired}' ELSE '{renewalinprogress,archived}' END;
	-- renewal policies with their effective thresholds and alert routes, and the routes of a certificate without a
	-- policy row, evaluated once per statement
	policies text := format($q$
		p AS MATERIALIZED (
			SELECT id, auto_renew, renewal_window_days,
				certctl_sched._alert_thresholds(alert_thresholds_days) AS parsed_thresholds,
				(SELECT jsonb_agg(to_jsonb(r)) FROM certctl_sched._alert_routes(
					coalesce(certctl_sched._alert_thresholds(alert_thresholds_days), '{30,14,7,0}'), %2$s, %3$s, %4$L) r)
					AS routes
			FROM %1$I.renewal_policies),
		dflt AS MATERIALIZED (
			SELECT (SELECT jsonb_agg(to_jsonb(r))
					FROM certctl_sched._alert_routes('{30,14,7,0}', NULL, NULL, %4$L) r) AS routes)$q$,
		s, CASE WHEN f.alert_matrix THEN 'alert_channels' ELSE 'NULL::jsonb' END,
		CASE WHEN f.alert_matrix THEN 'alert_severity_map' ELSE 'NULL::jsonb' END, f.alert_matrix);
	-- a certificate (c, whose source each statement names first) with its policy (p), issuer (i), derived values (e)
	-- and needs (d), read in the statement's snapshot; the claim and the actions evaluate the same definitions
	certs text := format($q$
		LEFT JOIN p ON p.id = c.renewal_policy_id
		CROSS JOIN dflt
		LEFT JOIN %1$I.issuers i ON i.id = c.issuer_id
		CROSS JOIN LATERAL (
			SELECT lower(c.status) AS ls,
				isfinite(c.expires_at) AS usable,
				isfinite(c.expires_at) AND lower(c.status) <> ALL (%2$L::text[])
					AND lower(c.status) <> 'revoked' AS workable,
				CASE WHEN c.expires_at <= $1 THEN 'Expired' ELSE 'Expiring' END AS new_status,
				-- (an infinite expiry is never computed with: its row is skipped, see usable)
				CASE WHEN isfinite(c.expires_at)
					THEN (extract(epoch FROM c.expires_at) - extract(epoch FROM $1)) / 86400 END AS days,
				CASE WHEN isfinite(c.expires_at)
					THEN trunc((extract(epoch FROM c.expires_at) - extract(epoch FROM $1)) / 86400)::bigint END AS days_int,
				to_char(c.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS expiry_date,
				coalesce(p.routes, dflt.routes) AS routes
		) e
		CROSS JOIN LATERAL (
			SELECT e.workable AND e.ls <> lower(e.new_status) AS transition,
				-- the alerts due: each route whose threshold the days left have reached, an alert only if none was
				-- recorded yet for this certificate, threshold and expiry date (and, with the channel matrix, channel),
				-- whoever wrote it
				CASE WHEN e.workable THEN (
					SELECT jsonb_agg(r ORDER BY (r->>'threshold')::bigint DESC, r->>'kind', r->>'channel')
					FROM jsonb_array_elements(e.routes) AS r
					WHERE e.days_int <= (r->>'threshold')::bigint
						AND (r->>'kind' <> 'alert' OR NOT EXISTS (
							SELECT FROM %1$I.notification_events n
							WHERE n.certificate_id = c.id
								AND n.type = 'ExpirationWarning'
								AND strpos(n.message, '[threshold:' || (r->>'threshold') || ']') > 0
								AND strpos(n.message, '(' || e.expiry_date || ')') > 0
								AND (NOT %3$L OR n.channel = r->>'channel')
							OFFSET 0))	-- a per-row index probe, never a hashed scan of the whole table
				) END AS due_alerts,
				-- days, not a timestamp, against the window: any renewal_window_days fits (a timestamp could overflow)
				coalesce(e.workable AND p.auto_renew
					AND e.days <= p.renewal_window_days
					AND i.enabled
					AND NOT EXISTS (
						SELECT FROM %1$I.jobs j
						WHERE j.certificate_id = c.id
							AND lower(j.type) = 'renewal'
							AND lower(j.status) IN ('pending', 'running', 'awaitingcsr', 'awaitingapproval')
						OFFSET 0),	-- a per-row index probe, never a hashed scan of the whole table
					false) AS renew
		) d$q$, s, skip_statuses, f.alert_matrix);
	-- the claimed certificates, with the status read at the claim
	claimed_rows text := $q$
		k AS (SELECT * FROM unnest($3::text[], $4::text[]) AS k(id, status_read))$q$;
	claimed_ids text[];
	claimed_status text[];
	malformed text[];
BEGIN
	skipped := 0;
	-- once per run, in its first batch: policies of certificates in the window whose thresholds cannot be read (the
	-- defaults apply)
	IF after IS NULL THEN
		EXECUTE format($q$
			SELECT array_agg(p.id ORDER BY p.id) FROM %1$I.renewal_policies p
			WHERE certctl_sched._alert_thresholds(p.alert_thresholds_days) IS NULL
				AND EXISTS (SELECT FROM %1$I.managed_certificates c
							WHERE c.renewal_policy_id = p.id AND c.expires_at < $1 + interval '31 days'
								AND lower(c.status) <> ALL ($2) AND lower(c.status) <> 'revoked')$q$, s)
		INTO malformed
		USING now, skip_statuses;
		IF malformed IS NOT NULL THEN
			RAISE WARNING 'ignoring malformed alert_thresholds_days of renewal policies %',
				array_to_string(ARRAY(SELECT format('"%s"', m) FROM unnest(malformed) AS m), ', ')
				USING DETAIL = 'alert_thresholds_days must be a JSON array of integers; '
						'the default thresholds of 30, 14, 7 and 0 days are used instead.',
					HINT = 'Correct alert_thresholds_days of these renewal policies.';
		END IF;
	END IF;

	-- 1. claim a batch of certificates that need something, with the status read
	SELECT w.ids, w.info INTO claimed_ids, claimed_status
	FROM certctl_sched._claim_windows(s, 'managed_certificates', format($q$
		WITH %2$s
		SELECT array_agg(b.id ORDER BY b.id), array_agg(b.ls ORDER BY b.id)
		FROM (
			SELECT c.id, CASE WHEN e.usable THEN e.ls END AS ls
			FROM %3$I.managed_certificates c
			%1$s
			WHERE c.expires_at < $1 + interval '31 days'
				AND lower(c.status) <> ALL (%4$L::text[])
				AND (NOT e.usable OR d.transition OR d.renew OR d.due_alerts IS NOT NULL)
				AND c.id > $3 AND c.id <= $4
				AND ($5::text[] IS NULL OR c.id = ANY ($5::text[]))
			ORDER BY c.id
			LIMIT $2
			FOR NO KEY UPDATE OF c SKIP LOCKED
		) b$q$, certs, policies, s, skip_statuses), now, batch_size, after, NULL, NULL) w;
	claimed := coalesce(cardinality(claimed_ids), 0);
	last_key := claimed_ids[claimed];
	acted := 0;
	IF claimed = 0 THEN
		RETURN;
	END IF;
	-- claimed rows with an infinite expiry (a NULL status) cannot be processed: counted and left alone
	SELECT count(*), 'certificate "' || min(k.id) || '" (expires_at is -infinity)'
	INTO skipped, skipped_example
	FROM unnest(claimed_ids, claimed_status) AS k(id, status_read)
	WHERE k.status_read IS NULL;

	-- 2. act on the claimed certificates, their needs re-checked in a fresh snapshot (taken after the claim's locks
	-- were granted): the alerts due, each a notification and an audit row (with the channel matrix, a tier without
	-- channels or a channel certctl does not know is audited instead); the renewal job with its audit row; the
	-- status, conditional on the status read at the claim
	EXECUTE format($q$
		WITH %2$s, %3$s,
		v AS MATERIALIZED (
			SELECT c.id, c.common_name, c.owner_id, k.status_read, e.new_status, e.days, e.days_int, e.expiry_date,
				d.transition, d.renew, d.due_alerts
			FROM k
			-- one primary-key probe per claimed certificate, whatever the planner makes of the table's size
			CROSS JOIN LATERAL (SELECT * FROM %4$I.managed_certificates c WHERE c.id = k.id OFFSET 0) c
			%1$s
			WHERE k.status_read = e.ls
		),
		a AS MATERIALIZED (
			SELECT v.id AS certificate_id, v.common_name, (r->>'threshold')::bigint AS threshold, r->>'tier' AS tier,
				r->>'channel' AS channel, r->>'kind' AS kind, v.days_int, v.expiry_date,
				coalesce(nullif(o.email, ''), v.owner_id) AS recipient
			FROM v
			LEFT JOIN %4$I.owners o ON o.id = v.owner_id
			CROSS JOIN LATERAL jsonb_array_elements(v.due_alerts) AS r
		),
		n AS (
			INSERT INTO %4$I.notification_events (id, type, certificate_id, channel, recipient, message, sent_at,
				status %5$s)
			SELECT 'notif-' || gen_random_uuid(), 'ExpirationWarning', a.certificate_id, a.channel, a.recipient,
				CASE WHEN a.threshold <= 0
					THEN '[EXPIRED] The certificate for ' || a.common_name || ' has expired (' || a.expiry_date
						|| E').\n\nImmediate action required.\n\n[threshold:' || a.threshold || ']'
					ELSE 'The certificate for ' || a.common_name || ' will expire in ' || a.days_int || ' days ('
						|| a.expiry_date || E').\n\nPlease schedule renewal.\n\n[threshold:' || a.threshold || ']'
				END,
				NULL, 'pending' %6$s
			FROM a WHERE a.kind = 'alert'
		),
		na AS (
			INSERT INTO %4$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details,
				timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System',
				CASE a.kind WHEN 'alert' THEN 'expiration_alert_sent'
					WHEN 'no_channels' THEN 'expiration_alert_skipped_no_channels'
					ELSE 'expiration_alert_skipped_invalid_channel' END,
				'certificate', a.certificate_id,
				jsonb_build_object('threshold_days', a.threshold, 'days_until_expiry', a.days_int)
					|| CASE WHEN a.tier IS NULL THEN '{}'
						WHEN a.kind = 'alert' THEN jsonb_build_object('channel', a.channel, 'severity_tier', a.tier)
						WHEN a.kind = 'no_channels' THEN jsonb_build_object('severity_tier', a.tier)
						ELSE jsonb_build_object('severity_tier', a.tier, 'invalid_channel', a.channel) END,
				$1
			FROM a
		),
		x AS MATERIALIZED (
			SELECT v.id, v.status_read, v.new_status, v.days, v.renew,
				CASE WHEN v.renew THEN 'job-' || gen_random_uuid() END AS job_id
			FROM v
			WHERE v.transition OR v.renew
		),
		j AS (
			INSERT INTO %4$I.jobs (id, type, certificate_id, target_id, status, attempts, max_attempts, last_error,
				scheduled_at, started_at, completed_at, created_at)
			SELECT x.job_id, 'Renewal', x.id, NULL, 'Pending', 0, 3, NULL, $1, NULL, NULL, $1
			FROM x WHERE x.renew
		),
		ja AS (
			INSERT INTO %4$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details,
				timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System', 'renewal_job_created', 'certificate', x.id,
				jsonb_build_object('days_until_expiry', x.days::float8, 'job_id', x.job_id), $1
			FROM x WHERE x.renew
		),
		u AS (
			UPDATE %4$I.managed_certificates u
			SET status = CASE WHEN x.renew THEN 'RenewalInProgress' ELSE x.new_status END,
				updated_at = $1
			FROM x
			WHERE u.id = x.id AND lower(u.status) = x.status_read
		)
		SELECT count(*) FROM v$q$, certs, policies, claimed_rows, s,
		CASE WHEN f.notification_created_at THEN ', created_at' ELSE '' END,
		CASE WHEN f.notification_created_at THEN ', $1' ELSE '' END)
	INTO acted
	USING now, batch_size, claimed_ids, claimed_status;
END
$body$;

-- The renewal check for one batch from the start of the table: the rows claimed (see _renewal_batch).
CREATE OR REPLACE FUNCTION certctl_sched.check_expiring_certificates(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT claimed FROM certctl_sched._renewal_batch(now, batch_size, NULL, NULL)
$$;


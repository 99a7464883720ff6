/* sql/certctl_sched--0.1.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION certctl_sched" to load this file. \quit

--
-- Persistent state
--

-- One row per paused loop; pause()/resume() write it, the loop's worker reads it before every run.
CREATE TABLE certctl_sched.loop_control (
	loop		text PRIMARY KEY,
	paused		boolean NOT NULL DEFAULT false,
	changed_at	timestamptz NOT NULL DEFAULT now(),
	changed_by	name NOT NULL DEFAULT current_user
);
-- pausing a loop survives pg_dump/restore like any other setting
SELECT pg_catalog.pg_extension_config_dump('certctl_sched.loop_control', '');

-- One row per run, scheduled or manual; pruned by certctl_sched.history_retention.
CREATE TABLE certctl_sched.run_history (
	id				bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	loop			text NOT NULL,
	trigger			text NOT NULL,		-- schedule, run_now, run_loop
	scheduled_at	timestamptz NOT NULL,	-- the tick time, passed to the loop body as "now"
	started_at		timestamptz NOT NULL,
	finished_at		timestamptz,
	status			text NOT NULL,		-- running, ok, error, interrupted, cancelled
	rows			bigint NOT NULL DEFAULT 0,
	error			text,
	pid				integer NOT NULL
);
CREATE INDEX run_history_loop_started_idx ON certctl_sched.run_history (loop, started_at);
CREATE INDEX run_history_running_idx ON certctl_sched.run_history (loop) WHERE status = 'running';

--
-- Status and control (C)
--

CREATE FUNCTION certctl_sched.loop_status(
	OUT loop text,
	OUT database name,
	OUT pid integer,
	OUT state text,
	OUT "interval" interval,
	OUT last_started timestamptz,
	OUT last_finished timestamptz,
	OUT last_duration interval,
	OUT last_result text,
	OUT last_error text,
	OUT last_rows bigint,
	OUT runs bigint,
	OUT successes bigint,
	OUT failures bigint,
	OUT timeouts bigint,
	OUT skipped_locked bigint,
	OUT next_run timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'certctl_sched_loop_status'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW certctl_sched.loops AS
	SELECT * FROM certctl_sched.loop_status();

CREATE FUNCTION certctl_sched.lock_key(loop text, OUT classid integer, OUT objid integer)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_lock_key'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION certctl_sched.run_now(loop text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'certctl_sched_run_now'
LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION certctl_sched.run_loop(loop text, now timestamptz DEFAULT NULL,
	OUT status text, OUT rows bigint, OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_run_loop'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

-- wake this database's workers when the current transaction commits (after CREATE EXTENSION, pause, resume)
CREATE FUNCTION certctl_sched._wake_workers_at_commit(loop text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'certctl_sched_wake_workers_at_commit'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

CREATE FUNCTION certctl_sched.pause(loop text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM certctl_sched.lock_key(loop);	-- rejects unknown loop names
	INSERT INTO certctl_sched.loop_control AS c (loop, paused) VALUES (pause.loop, true)
	ON CONFLICT ON CONSTRAINT loop_control_pkey
		DO UPDATE SET paused = true, changed_at = now(), changed_by = current_user;
	PERFORM certctl_sched._wake_workers_at_commit(loop);
END
$$;

CREATE FUNCTION certctl_sched.resume(loop text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM certctl_sched.lock_key(loop);
	INSERT INTO certctl_sched.loop_control AS c (loop, paused) VALUES (resume.loop, false)
	ON CONFLICT ON CONSTRAINT loop_control_pkey
		DO UPDATE SET paused = false, changed_at = now(), changed_by = current_user;
	PERFORM certctl_sched._wake_workers_at_commit(loop);
END
$$;

-- Prometheus text exposition of loop_status()
CREATE FUNCTION certctl_sched.metrics()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH s AS (
	SELECT format('loop="%s",database="%s"', loop, replace(replace(database::text, '\', '\\'), '"', '\"')) AS l, *
	FROM certctl_sched.loop_status()
), m(ord, name, kind, help, val) AS (
	SELECT 1, 'certctl_sched_up', 'gauge', 'Whether the loop''s worker is running (1) or not (0).', NULL::text UNION ALL
	SELECT 2, 'certctl_sched_running', 'gauge', 'Whether a run is in progress.', NULL UNION ALL
	SELECT 3, 'certctl_sched_runs_total', 'counter', 'Runs started.', NULL UNION ALL
	SELECT 4, 'certctl_sched_successes_total', 'counter', 'Runs that finished ok.', NULL UNION ALL
	SELECT 5, 'certctl_sched_failures_total', 'counter', 'Runs that failed with an error or timed out.', NULL UNION ALL
	SELECT 6, 'certctl_sched_timeouts_total', 'counter', 'Runs cancelled by their run timeout.', NULL UNION ALL
	SELECT 7, 'certctl_sched_skipped_locked_total', 'counter', 'Ticks skipped because the loop''s advisory lock was held elsewhere.', NULL UNION ALL
	SELECT 8, 'certctl_sched_last_run_rows', 'gauge', 'Rows processed by the last run.', NULL UNION ALL
	SELECT 9, 'certctl_sched_last_run_duration_seconds', 'gauge', 'Duration of the last run.', NULL UNION ALL
	SELECT 10, 'certctl_sched_last_run_finished_timestamp_seconds', 'gauge', 'When the last run finished (Unix time).', NULL UNION ALL
	SELECT 11, 'certctl_sched_next_run_timestamp_seconds', 'gauge', 'When the next run is due (Unix time).', NULL
)
SELECT string_agg(block, '' ORDER BY ord)
FROM (
	SELECT m.ord,
		format(E'# HELP %s %s\n# TYPE %s %s\n', m.name, m.help, m.name, m.kind) ||
		coalesce(string_agg(format(E'%s{%s} %s\n', m.name, s.l,
			CASE m.ord
				WHEN 1 THEN (s.pid IS NOT NULL)::int::text
				WHEN 2 THEN (s.state = 'running')::int::text
				WHEN 3 THEN s.runs::text
				WHEN 4 THEN s.successes::text
				WHEN 5 THEN s.failures::text
				WHEN 6 THEN s.timeouts::text
				WHEN 7 THEN s.skipped_locked::text
				WHEN 8 THEN coalesce(s.last_rows, 0)::text
				WHEN 9 THEN coalesce(extract(epoch FROM s.last_duration), 0)::text
				WHEN 10 THEN coalesce(extract(epoch FROM s.last_finished), 0)::text
				WHEN 11 THEN coalesce(extract(epoch FROM s.next_run), 0)::text
			END), '' ORDER BY s.loop, s.database), '') AS block
	FROM m CROSS JOIN s
	GROUP BY m.ord, m.name, m.kind, m.help
) b
$$;

-- BEGIN loop bodies

--
-- Loop bodies: certctl's database-side scheduler work, one batch per call
--
-- Each body takes the run's time ("now", the tick, so that runs and tests are deterministic) and a batch size, does
-- at most one batch of work in the caller's transaction and returns how many candidate rows it acted on (at most
-- batch_size).  Only rows that need a change the body can make are candidates, and acting on a row removes it from
-- the candidates, so every batch makes progress and a result below batch_size means nothing is left to do (rows
-- locked by a concurrent runner aside): the caller repeats while the result equals batch_size.
--
-- Concurrency: the bodies require READ COMMITTED.  Rows are claimed with SKIP LOCKED, so concurrent runners split
-- the work instead of queueing behind each other, and the row lock is held until the caller's transaction ends.
-- Every PL/pgSQL statement takes a fresh snapshot, so the statements after a claim see whatever a concurrent runner
-- committed before we got the lock; every state change is conditional on the state that was read (never a full-row
-- rewrite), so a concurrent revocation, renewal or heartbeat wins over the loop.
--
-- Plans: a body's statements read one batch of rows, or one window of primary keys, and reach every other row by an
-- index probe.  The bodies run with enable_hashjoin, enable_mergejoin, enable_material and enable_bitmapscan off, so
-- that the planner never trades those probes for a scan of a whole table or of a whole secondary index (a bitmap of
-- every pending job or stale agent, ANDed with the window), which its cost model prefers for a few thousand random
-- probes into tables of 10^4 to 10^5 rows: a scan per batch would make a run quadratic in the table.  And with jit
-- off: every statement is planned for one execution, for which JIT compilation costs more than it saves.
--
-- certctl's tables are reached by dynamic SQL in the schema named by certctl_sched.certctl_schema.  certctl's Go
-- code writes CamelCase status literals while its column defaults and seed data are lowercase: statuses and types
-- are read case-insensitively and written as certctl's CamelCase literals.  New rows get certctl's ID prefixes
-- followed by a random UUID, unique across processes (certctl's own IDs are nanosecond timestamps).
--

-- Common prologue of the loop bodies: validates the arguments and the transaction's isolation level, checks that the
-- named certctl tables exist, and returns the (unquoted) name of the schema that holds them.
CREATE FUNCTION certctl_sched._certctl_schema_checked(now timestamptz, batch_size integer, VARIADIC tables text[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	certctl_schema text := coalesce(nullif(current_setting('certctl_sched.certctl_schema', true), ''), 'public');
	tbl text;
BEGIN
	IF now IS NULL THEN
		RAISE EXCEPTION 'now must not be null'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be at least 1'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('batch_size is %s.', coalesce(batch_size::text, 'null'));
	END IF;
	-- the claim-then-recheck pattern relies on each statement seeing what concurrent runners committed before it
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'certctl_sched loop bodies must run in a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state',
				DETAIL = format('The transaction isolation level is %s.', upper(current_setting('transaction_isolation'))),
				HINT = 'Call the loop body in a READ COMMITTED transaction, e.g. through certctl_sched.run_loop().';
	END IF;
	FOREACH tbl IN ARRAY tables LOOP
		IF to_regclass(format('%I.%I', certctl_schema, tbl)) IS NULL THEN
			RAISE EXCEPTION 'certctl table "%.%" does not exist', certctl_schema, tbl
				USING ERRCODE = 'undefined_table',
					HINT = 'Set certctl_sched.certctl_schema to the schema that holds certctl''s tables.';
		END IF;
	END LOOP;
	RETURN certctl_schema;
END
$$;

-- The alert thresholds of a renewal policy (renewal_policies.alert_thresholds_days), as certctl's
-- EffectiveAlertThresholds reads them: a non-empty JSON array of integers is used as is (duplicates removed), an empty
-- array or JSON null means the defaults 30, 14, 7 and 0 days.  Returns NULL for anything else (malformed), for which
-- the caller also uses the defaults and warns.
CREATE FUNCTION certctl_sched._alert_thresholds(thresholds jsonb)
RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE
	WHEN thresholds IS NULL OR jsonb_typeof(thresholds) = 'null' THEN '{30,14,7,0}'::bigint[]
	WHEN jsonb_typeof(thresholds) <> 'array' THEN NULL
	WHEN jsonb_array_length(thresholds) = 0 THEN '{30,14,7,0}'::bigint[]
	-- integers only, as Go's json.Unmarshal into []int: no fractions, strings or exponents; 18 digits fit int64
	WHEN EXISTS (SELECT FROM jsonb_array_elements(thresholds) AS e
				 WHERE jsonb_typeof(e) <> 'number' OR e::text !~ '^-?[0-9]{1,18}$') THEN NULL
	ELSE ARRAY(SELECT DISTINCT e::text::bigint FROM jsonb_array_elements(thresholds) AS e ORDER BY 1 DESC)
END
$$;

-- Where a run's next batch starts.  certctl_sched's runners (the workers and run_loop) set the placeholder setting
-- certctl_sched_run.<loop> to '#' when a run starts and clear it when it ends; a body finding '#<key>' there claims
-- only rows whose primary key sorts after <key>, and records the last key it claimed.  So a run reads each row once
-- (linear in the table, however many batches), and a row skipped in a run -- locked by a concurrent runner, or
-- needing no change -- is not looked at again in that run.  A direct call (no '#') starts from the beginning.
CREATE FUNCTION certctl_sched._run_cursor(loop text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE WHEN v LIKE '#%' THEN substr(v, 2) END
FROM (SELECT current_setting('certctl_sched_run.' || loop, true) AS v) s
$$;

-- Records the last key a batch of the current run claimed (see _run_cursor); a no-op outside a run.  The setting is
-- transactional: a batch that rolls back does not move the cursor.
CREATE FUNCTION certctl_sched._run_cursor_advance(loop text, last_key text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT set_config('certctl_sched_run.' || loop, '#' || last_key, false)
WHERE last_key IS NOT NULL AND certctl_sched._run_cursor(loop) IS NOT NULL
$$;

-- The upper end of the next window of primary keys of a certctl table: the largest of the next `size` ids after
-- `after`, or NULL past the end.  Claims scan one such window at a time, so each statement reads a bounded key
-- range in key order whatever the planner thinks of their filters' selectivity (a run stays linear in the table).
CREATE FUNCTION certctl_sched._key_window(certctl_schema text, tbl text, after text, size integer)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hi text;
BEGIN
	EXECUTE format('SELECT max(id) FROM (SELECT id FROM %I.%I WHERE id > $1 ORDER BY id LIMIT $2) w', certctl_schema, tbl)
	INTO hi
	USING after, size;
	RETURN hi;
END
$$;

-- Renewal check (certctl's RenewalService.CheckExpiringCertificates), for one batch of certificates.
--
-- Candidates are certificates expiring within certctl's 31-day window, neither RenewalInProgress nor Archived, that
-- need at least one of:
--   a status transition: Expired at or after expires_at, else Expiring (never from RenewalInProgress, Archived or
--   Revoked);
--   threshold alerts: an ExpirationWarning notification (channel Email, status pending, for the notifications loop
--   to deliver) plus an expiration_alert_sent audit for each threshold of the policy that the days left (truncated
--   toward zero) have reached and that has no alert yet for this certificate, threshold and expiry date, whoever
--   wrote it (certctl's own rows count; a renewed certificate, with a new expiry date, alerts again); never for
--   Revoked certificates;
--   a renewal job: policy auto_renew, inside the policy's renewal_window_days, issuer present and enabled, not
--   Revoked, and no active (Pending, Running, AwaitingCSR, AwaitingApproval) Renewal job for the certificate; the
--   job is created Pending with max_attempts 3, the certificate becomes RenewalInProgress (instead of Expiring or
--   Expired: the job's own state is the more specific one, and certctl ends in that state too), audit
--   renewal_job_created.
-- A certificate whose only "need" cannot be met (issuer disabled, manual policy) is no candidate, so it is never
-- re-picked.  Returns the number of certificates claimed (at most batch_size), in primary-key order (see
-- _run_cursor).
--
-- Concurrency: statement 1 claims the batch with FOR NO KEY UPDATE SKIP LOCKED; the certificate's row lock is the
-- per-certificate mutex that certctl lacks (it does not block the foreign-key checks of inserted jobs and
-- notifications).  Statement 2 re-evaluates the needs with a fresh snapshot, taken after the locks were granted, so
-- alerts and jobs a concurrent runner committed are seen and never duplicated; the status update is conditional on
-- the status read at the claim.
CREATE FUNCTION certctl_sched.check_expiring_certificates(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off SET enable_bitmapscan = off
AS $body$
DECLARE
	s text := certctl_sched._certctl_schema_checked(now, batch_size,
		'managed_certificates', 'renewal_policies', 'issuers', 'owners', 'jobs', 'notification_events',
		'audit_events');
	-- renewal policies with their effective thresholds, evaluated once per statement
	policies text := format($q$
		p AS MATERIALIZED (
			SELECT id, auto_renew, renewal_window_days,
				certctl_sched._alert_thresholds(alert_thresholds_days) AS parsed_thresholds
			FROM %I.renewal_policies)$q$, s);
	-- a certificate (c, whose source each statement names first) with its policy (p), issuer (i), derived values (e)
	-- and needs (d), read in the statement's snapshot; the claim and the actions evaluate the same definitions
	certs text := format($q$
		LEFT JOIN p ON p.id = c.renewal_policy_id
		LEFT JOIN %1$I.issuers i ON i.id = c.issuer_id
		CROSS JOIN LATERAL (
			SELECT lower(c.status) AS ls,
				lower(c.status) NOT IN ('renewalinprogress', 'archived', 'revoked') AS workable,
				CASE WHEN c.expires_at <= $1 THEN 'Expired' ELSE 'Expiring' END AS new_status,
				(extract(epoch FROM c.expires_at) - extract(epoch FROM $1)) / 86400 AS days,
				trunc((extract(epoch FROM c.expires_at) - extract(epoch FROM $1)) / 86400)::bigint AS days_int,
				to_char(c.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS expiry_date,
				coalesce(p.parsed_thresholds, '{30,14,7,0}') AS thresholds
		) e
		CROSS JOIN LATERAL (
			SELECT e.workable AND e.ls <> lower(e.new_status) AS transition,
				CASE WHEN e.workable THEN ARRAY(
					SELECT t FROM unnest(e.thresholds) AS t
					WHERE e.days_int <= t
						AND NOT EXISTS (
							SELECT FROM %1$I.notification_events n
							WHERE n.certificate_id = c.id
								AND lower(replace(n.type, '_', '')) = 'expirationwarning'
								AND strpos(n.message, '[threshold:' || t || ']') > 0
								AND strpos(n.message, '(' || e.expiry_date || ')') > 0
							OFFSET 0)	-- a per-row index probe, never a hashed scan of the whole table
					ORDER BY t DESC)
				ELSE '{}' END AS due_thresholds,
				coalesce(e.workable AND p.auto_renew
					AND c.expires_at <= $1 + make_interval(days => p.renewal_window_days)
					AND i.enabled
					AND NOT EXISTS (
						SELECT FROM %1$I.jobs j
						WHERE j.certificate_id = c.id
							AND lower(j.type) = 'renewal'
							AND lower(j.status) IN ('pending', 'running', 'awaitingcsr', 'awaitingapproval')
						OFFSET 0),	-- a per-row index probe, never a hashed scan of the whole table
					false) AS renew
		) d$q$, s);
	-- the claimed certificates, with the status read at the claim
	claimed text := $q$
		k AS (SELECT * FROM unnest($3::text[], $4::text[]) AS k(id, status_read))$q$;
	claimed_ids text[];
	claimed_status text[];
	malformed text[];
	more_ids text[];
	more_status text[];
	more_malformed text[];
	lo text := coalesce(certctl_sched._run_cursor('renewal'), '');
	hi text;
BEGIN
	-- 1. claim a batch of certificates that need something, one window of keys at a time
	LOOP
		hi := certctl_sched._key_window(s, 'managed_certificates', lo, batch_size * 10);
		EXIT WHEN hi IS NULL;
		EXECUTE format($q$
			WITH %2$s
			SELECT array_agg(b.id ORDER BY b.id),
				array_agg(b.ls ORDER BY b.id),
				array_agg(DISTINCT b.policy_id) FILTER (WHERE b.malformed)
			FROM (
				SELECT c.id, c.expires_at, e.ls, p.id AS policy_id,
					p.id IS NOT NULL AND p.parsed_thresholds IS NULL AS malformed
				FROM %3$I.managed_certificates c
				%1$s
				WHERE c.expires_at < $1 + interval '31 days'
					AND lower(c.status) NOT IN ('renewalinprogress', 'archived')
					AND (d.transition OR d.renew OR cardinality(d.due_thresholds) > 0)
					AND c.id > $3 AND c.id <= $4
				ORDER BY c.id
				LIMIT $2
				FOR NO KEY UPDATE OF c SKIP LOCKED
			) b$q$, certs, policies, s)
		INTO more_ids, more_status, more_malformed
		USING now, batch_size - coalesce(cardinality(claimed_ids), 0), lo, hi;
		claimed_ids := claimed_ids || more_ids;
		claimed_status := claimed_status || more_status;
		malformed := malformed || more_malformed;
		EXIT WHEN coalesce(cardinality(claimed_ids), 0) >= batch_size;
		lo := hi;
	END LOOP;

	IF claimed_ids IS NULL THEN
		RETURN 0;
	END IF;
	PERFORM certctl_sched._run_cursor_advance('renewal', claimed_ids[cardinality(claimed_ids)]);

	-- once per run (tick time), not once per batch
	IF malformed IS NOT NULL
		AND coalesce(current_setting('certctl_sched_run.renewal_warned', true), '') IS DISTINCT FROM now::text THEN
		PERFORM set_config('certctl_sched_run.renewal_warned', now::text, false);
		RAISE WARNING 'ignoring malformed alert_thresholds_days of renewal policies %',
			array_to_string(ARRAY(SELECT format('"%s"', m) FROM unnest(malformed) AS m ORDER BY 1), ', ')
			USING DETAIL = 'alert_thresholds_days must be a JSON array of integers; '
					'the default thresholds of 30, 14, 7 and 0 days are used instead.',
				HINT = 'Correct alert_thresholds_days of these renewal policies.';
	END IF;

	-- 2. act on the claimed certificates, their needs re-checked in a fresh snapshot (taken after the claim's locks
	-- were granted): one notification and one audit row per due threshold; the renewal job with its audit row; the
	-- status, conditional on the status read at the claim
	EXECUTE format($q$
		WITH %2$s, %3$s,
		v AS MATERIALIZED (
			SELECT c.id, c.common_name, c.owner_id, k.status_read, e.new_status, e.days, e.days_int, e.expiry_date,
				d.transition, d.renew, d.due_thresholds
			FROM k
			-- one primary-key probe per claimed certificate, whatever the planner makes of the table's size
			CROSS JOIN LATERAL (SELECT * FROM %4$I.managed_certificates c WHERE c.id = k.id OFFSET 0) c
			%1$s
			WHERE k.status_read = e.ls
		),
		a AS MATERIALIZED (
			SELECT v.id AS certificate_id, v.common_name, t.threshold, v.days_int, v.expiry_date,
				coalesce(nullif(o.email, ''), v.owner_id) AS recipient
			FROM v
			LEFT JOIN %4$I.owners o ON o.id = v.owner_id
			CROSS JOIN LATERAL unnest(v.due_thresholds) AS t(threshold)
		),
		n AS (
			INSERT INTO %4$I.notification_events (id, type, certificate_id, channel, recipient, message, sent_at, status)
			SELECT 'notif-' || gen_random_uuid(), 'ExpirationWarning', a.certificate_id, 'Email', a.recipient,
				CASE WHEN a.threshold <= 0
					THEN '[EXPIRED] The certificate for ' || a.common_name || ' has expired (' || a.expiry_date
						|| E').\n\nImmediate action required.\n\n[threshold:' || a.threshold || ']'
					ELSE 'The certificate for ' || a.common_name || ' will expire in ' || a.days_int || ' days ('
						|| a.expiry_date || E').\n\nPlease schedule renewal.\n\n[threshold:' || a.threshold || ']'
				END,
				NULL, 'pending'
			FROM a
		),
		na AS (
			INSERT INTO %4$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details,
				timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System', 'expiration_alert_sent', 'certificate',
				a.certificate_id, jsonb_build_object('threshold_days', a.threshold, 'days_until_expiry', a.days_int), $1
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
		)
		UPDATE %4$I.managed_certificates u
		SET status = CASE WHEN x.renew THEN 'RenewalInProgress' ELSE x.new_status END,
			updated_at = $1
		FROM x
		WHERE u.id = x.id AND lower(u.status) = x.status_read$q$, certs, policies, claimed, s)
	USING now, batch_size, claimed_ids, claimed_status;

	RETURN cardinality(claimed_ids);
END
$body$;

-- Job processor (certctl's JobService.ProcessPendingJobs), agent key-generation mode, for one batch of jobs.
--
-- Claims due Pending jobs (scheduled_at null or not after now) of type Renewal, Issuance or Deployment, in primary-key
-- order (see _run_cursor).  Renewal and Issuance: a missing certificate or issuer, or a disabled issuer, fails the job
-- with certctl's error text; otherwise the job becomes AwaitingCSR (attempts counted, started_at set) for the agent to
-- submit a CSR, the certificate becomes RenewalInProgress (unless it is Revoked or Archived: unlike certctl, never
-- resurrect those) and renewal_awaiting_csr is audited.  Deployment: a missing certificate, target or agent fails the
-- job; an agent whose last heartbeat is more than 5 minutes old fails it with a DeploymentFailure notification and a
-- deployment_job_failed audit; otherwise the job gets its target's agent_id and stays Pending, where that agent's work
-- poll finds it (certctl moves it to Running, out of the agents' reach), with one deployment_job_dispatched audit.  A
-- dispatched job is claimed again only if its agent goes offline.  Failed jobs keep attempts and completed_at as they
-- were, as in certctl.  Validation and unknown types are never claimed: they are counted in one notice per run (by its
-- last, short batch).
-- Returns the number of jobs claimed (at most batch_size); each of them leaves the claimable set.
--
-- Concurrency: the claim is FOR UPDATE SKIP LOCKED, so concurrent runners never process the same job; job updates
-- also require the job to be still pending.  The certificate update waits for a concurrent writer of the row and
-- then re-checks its condition against the latest version, so a concurrent revocation is never overwritten.
CREATE FUNCTION certctl_sched.process_pending_jobs(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off SET enable_bitmapscan = off
AS $body$
DECLARE
	s text := certctl_sched._certctl_schema_checked(now, batch_size,
		'jobs', 'managed_certificates', 'issuers', 'deployment_targets', 'agents', 'owners', 'notification_events',
		'audit_events');
	claimed_ids text[];
	more text[];
	lo text := coalesce(certctl_sched._run_cursor('job_processor'), '');
	hi text;
	waiting bigint;
	waiting_types text;
BEGIN
	-- 1. claim a batch of due jobs this loop handles, one window of keys at a time
	LOOP
		hi := certctl_sched._key_window(s, 'jobs', lo, batch_size * 10);
		EXIT WHEN hi IS NULL;
		EXECUTE format($q$
			SELECT array_agg(b.id ORDER BY b.id)
			FROM (
				SELECT j.id
				FROM %1$I.jobs j
				WHERE lower(j.status) = 'pending'
					AND (j.scheduled_at IS NULL OR j.scheduled_at <= $1)
					AND (lower(j.type) IN ('renewal', 'issuance')
						OR (lower(j.type) = 'deployment'
							AND (j.agent_id IS NULL
								OR EXISTS (SELECT FROM %1$I.agents a
										   WHERE a.id = j.agent_id
											   AND a.last_heartbeat_at < $1 - interval '5 minutes'))))
					AND j.id > $3 AND j.id <= $4
				ORDER BY j.id
				LIMIT $2
				FOR UPDATE OF j SKIP LOCKED
			) b$q$, s)
		INTO more
		USING now, batch_size - coalesce(cardinality(claimed_ids), 0), lo, hi;
		claimed_ids := claimed_ids || more;
		EXIT WHEN coalesce(cardinality(claimed_ids), 0) >= batch_size;
		lo := hi;
	END LOOP;
	PERFORM certctl_sched._run_cursor_advance('job_processor', claimed_ids[cardinality(claimed_ids)]);

	IF claimed_ids IS NOT NULL THEN
		-- 2. decide each job's outcome and apply it: job, certificate, notification and audit in one statement
		EXECUTE format($q$
			WITH x AS MATERIALIZED (
				SELECT j.id, j.certificate_id, j.target_id, t.name AS target_name, a.id AS agent_id,
					lower(j.type) IN ('renewal', 'issuance') AS renewal,
					c.common_name,
					coalesce(nullif(o.email, ''), c.owner_id) AS recipient,
					CASE
						WHEN j.certificate_id IS NULL THEN 'certificate fetch failed: job has no certificate_id'
						WHEN c.id IS NULL THEN 'certificate fetch failed: certificate ' || j.certificate_id || ' not found'
						WHEN lower(j.type) IN ('renewal', 'issuance') THEN
							CASE
								WHEN c.issuer_id = '' THEN 'certificate has no issuer assigned'
								WHEN i.id IS NULL OR NOT i.enabled THEN 'issuer connector not found for ' || c.issuer_id
							END
						WHEN j.target_id IS NULL THEN 'target_id not found in job'
						WHEN t.id IS NULL THEN 'target fetch failed: target ' || j.target_id || ' not found'
						WHEN a.id IS NULL
							THEN 'agent fetch failed: agent ' || coalesce(j.agent_id, t.agent_id) || ' not found'
						WHEN a.last_heartbeat_at < $1 - interval '5 minutes' THEN 'agent is offline'
					END AS error
				FROM unnest($3::text[]) AS k(id)
				-- one primary-key probe per claimed job, whatever the planner makes of the table's size
				CROSS JOIN LATERAL (SELECT * FROM %1$I.jobs j WHERE j.id = k.id OFFSET 0) j
				LEFT JOIN %1$I.managed_certificates c ON c.id = j.certificate_id
				LEFT JOIN %1$I.issuers i ON i.id = c.issuer_id
				LEFT JOIN %1$I.deployment_targets t ON t.id = j.target_id
				LEFT JOIN %1$I.agents a ON a.id = coalesce(j.agent_id, t.agent_id)
				LEFT JOIN %1$I.owners o ON o.id = c.owner_id
				WHERE lower(j.status) = 'pending'
			),
			uj AS (
				UPDATE %1$I.jobs u
				SET status = CASE
						WHEN x.error IS NOT NULL THEN 'Failed'
						WHEN x.renewal THEN 'AwaitingCSR'
						ELSE u.status
					END,
					last_error = CASE
						WHEN x.error IS NOT NULL THEN x.error
						WHEN x.renewal THEN NULL
						ELSE u.last_error
					END,
					attempts = u.attempts + CASE WHEN x.error IS NULL AND x.renewal THEN 1 ELSE 0 END,
					started_at = CASE WHEN x.error IS NULL AND x.renewal THEN $1 ELSE u.started_at END,
					agent_id = CASE WHEN x.error IS NULL AND NOT x.renewal THEN x.agent_id ELSE u.agent_id END
				FROM x
				WHERE u.id = x.id AND lower(u.status) = 'pending'
			),
			uc AS (
				UPDATE %1$I.managed_certificates u
				SET status = 'RenewalInProgress', updated_at = $1
				FROM x
				WHERE x.renewal AND x.error IS NULL
					AND u.id = x.certificate_id
					-- re-checked against the latest row version: a concurrent revocation or archival wins
					AND lower(u.status) NOT IN ('renewalinprogress', 'revoked', 'archived')
			),
			n AS (
				INSERT INTO %1$I.notification_events (id, type, certificate_id, channel, recipient, message, sent_at,
					status)
				SELECT 'notif-' || gen_random_uuid(), 'DeploymentFailure', x.certificate_id, 'Email', x.recipient,
					'The certificate for ' || x.common_name || ' failed to deploy to ' || x.target_name
						|| E'.\n\nError: agent offline\n\nPlease investigate.',
					NULL, 'pending'
				FROM x WHERE x.error = 'agent is offline'
			)
			INSERT INTO %1$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details,
				timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System', v.action, 'certificate', x.certificate_id,
				v.details, $1
			FROM x
			CROSS JOIN LATERAL (
				SELECT 'renewal_awaiting_csr' AS action,
					jsonb_build_object('job_id', x.id, 'keygen_mode', 'agent') AS details
				WHERE x.renewal AND x.error IS NULL
				UNION ALL
				SELECT 'deployment_job_failed',
					jsonb_build_object('job_id', x.id, 'reason', 'agent offline', 'target_id', x.target_id)
				WHERE x.error = 'agent is offline'
				UNION ALL
				SELECT 'deployment_job_dispatched',
					jsonb_build_object('job_id', x.id, 'target_id', x.target_id, 'agent_id', x.agent_id)
				WHERE NOT x.renewal AND x.error IS NULL
			) v$q$, s)
		USING now, batch_size, claimed_ids;
	END IF;

	-- 3. due jobs no loop handles stay Pending (as in certctl), reported rather than re-errored on every tick; counted
	-- once per run, by its last (short) batch
	IF coalesce(cardinality(claimed_ids), 0) >= batch_size THEN
		RETURN cardinality(claimed_ids);
	END IF;
	EXECUTE format($q$
		SELECT sum(n), string_agg(format('%%s (%%s)', type, n), ', ' ORDER BY type)
		FROM (
			SELECT j.type, count(*) AS n
			FROM %1$I.jobs j
			WHERE lower(j.status) = 'pending'
				AND (j.scheduled_at IS NULL OR j.scheduled_at <= $1)
				AND lower(j.type) NOT IN ('renewal', 'issuance', 'deployment')
			GROUP BY j.type
		) w$q$, s)
	INTO waiting, waiting_types
	USING now;
	IF waiting > 0 THEN
		RAISE NOTICE '% pending jobs have a type the job processor does not handle', waiting
			USING DETAIL = format('Job types: %s.', waiting_types),
				HINT = 'Validation jobs and jobs of unknown types stay Pending, as in certctl.';
	END IF;

	RETURN coalesce(cardinality(claimed_ids), 0);
END
$body$;

-- Agent health check (certctl's AgentService.MarkStaleAgentsOffline), for one batch of agents.
--
-- Online agents whose last heartbeat is older than threshold (certctl uses the loop's interval, 2 minutes by
-- default) become Offline; only the status column is written.  Agents without a heartbeat are left alone, and so are
-- retired agents when the agents table has certctl's later retired_at column.  Returns the number of agents marked
-- offline (at most batch_size).
--
-- Concurrency: one UPDATE over a batch claimed (in a CTE) with FOR NO KEY UPDATE SKIP LOCKED.  An agent whose
-- heartbeat is being written is skipped, and one whose heartbeat committed after our snapshot is re-checked against
-- its latest version (EvalPlanQual) and dropped: a concurrent heartbeat always wins.
CREATE FUNCTION certctl_sched.mark_stale_agents_offline(now timestamptz, batch_size integer,
	threshold interval DEFAULT interval '2 minutes')
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off SET enable_bitmapscan = off
AS $body$
DECLARE
	s text := certctl_sched._certctl_schema_checked(now, batch_size, 'agents');
	not_retired text := '';
	marked integer := 0;
	claimed integer := 0;
	n_marked integer;
	n_claimed integer;
	last_id text;
	lo text := coalesce(certctl_sched._run_cursor('agent_health'), '');
	hi text;
BEGIN
	IF threshold IS NULL OR threshold <= interval '0' THEN
		RAISE EXCEPTION 'threshold must be a positive interval'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('threshold is %s.', coalesce(threshold::text, 'null'));
	END IF;

	-- certctl's migration 000015 adds agents.retired_at; older schemas have no retired agents
	IF EXISTS (SELECT FROM pg_catalog.pg_attribute
			   WHERE attrelid = format('%I.agents', s)::regclass
				   AND attname = 'retired_at' AND attnum > 0 AND NOT attisdropped) THEN
		not_retired := 'AND a.retired_at IS NULL';
	END IF;

	-- the claim is a CTE, evaluated once: an IN (subquery) could be rescanned and claim more than a batch; one window
	-- of keys at a time
	LOOP
		hi := certctl_sched._key_window(s, 'agents', lo, batch_size * 10);
		EXIT WHEN hi IS NULL;
		EXECUTE format($q$
			WITH claimed AS MATERIALIZED (
				SELECT a.id
				FROM %1$I.agents a
				WHERE lower(a.status) = 'online'
					AND a.last_heartbeat_at < $1 - $3
					%2$s
					AND a.id > $4 AND a.id <= $5
				ORDER BY a.id
				LIMIT $2
				FOR NO KEY UPDATE OF a SKIP LOCKED
			),
			marked AS (
				UPDATE %1$I.agents u
				SET status = 'Offline'
				FROM claimed
				WHERE u.id = claimed.id
					AND lower(u.status) = 'online'
					AND u.last_heartbeat_at < $1 - $3
				RETURNING u.id
			)
			SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM claimed), (SELECT max(id) FROM claimed)$q$,
			s, not_retired)
		INTO n_marked, n_claimed, last_id
		USING now, batch_size - claimed, threshold, lo, hi;
		marked := marked + n_marked;
		claimed := claimed + n_claimed;
		EXIT WHEN claimed >= batch_size;
		lo := hi;
	END LOOP;
	PERFORM certctl_sched._run_cursor_advance('agent_health', last_id);
	RETURN marked;
END
$body$;

-- Short-lived certificate expiry (certctl's RenewalService.ExpireShortLivedCertificates), for one batch.
--
-- Active or Expiring certificates at or past expires_at whose profile is short-lived (allow_short_lived and
-- 0 < max_ttl_seconds < 3600; the profile's enabled flag is not consulted, as in certctl) become Expired, with one
-- short_lived_cert_expired audit each.  Returns the number of certificates expired (at most batch_size).
--
-- Concurrency: one statement; the batch is claimed (in a CTE) with FOR NO KEY UPDATE SKIP LOCKED, which re-checks
-- a row updated after our snapshot against its latest version, and the update is conditional on the status and
-- expiry read, so a concurrent renewal (new expires_at) or revocation wins, and two runners never both expire (and
-- audit) the same certificate.
CREATE FUNCTION certctl_sched.expire_short_lived_certificates(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off SET enable_bitmapscan = off
AS $body$
DECLARE
	s text := certctl_sched._certctl_schema_checked(now, batch_size,
		'managed_certificates', 'certificate_profiles', 'audit_events');
	expired integer := 0;
	claimed integer := 0;
	n_expired integer;
	n_claimed integer;
	last_id text;
	lo text := coalesce(certctl_sched._run_cursor('short_lived_expiry'), '');
	hi text;
BEGIN
	-- one window of keys at a time
	LOOP
		hi := certctl_sched._key_window(s, 'managed_certificates', lo, batch_size * 10);
		EXIT WHEN hi IS NULL;
		EXECUTE format($q$
			WITH claimed AS MATERIALIZED (
				SELECT c.id
				FROM %1$I.managed_certificates c
				JOIN %1$I.certificate_profiles p ON p.id = c.certificate_profile_id
				WHERE lower(c.status) IN ('active', 'expiring')
					AND c.expires_at <= $1
					AND p.allow_short_lived AND p.max_ttl_seconds > 0 AND p.max_ttl_seconds < 3600
					AND c.id > $3 AND c.id <= $4
				ORDER BY c.id
				LIMIT $2
				FOR NO KEY UPDATE OF c SKIP LOCKED
			),
			x AS (
				UPDATE %1$I.managed_certificates u
				SET status = 'Expired', updated_at = $1
				FROM claimed
				WHERE u.id = claimed.id
					AND lower(u.status) IN ('active', 'expiring')
					AND u.expires_at <= $1
				RETURNING u.id, u.certificate_profile_id, u.expires_at
			),
			a AS (
			INSERT INTO %1$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System', 'short_lived_cert_expired', 'certificate', x.id,
				-- expired_at as Go marshals a time.Time (RFC 3339, fraction without trailing zeros), in UTC
				jsonb_build_object('profile_id', x.certificate_profile_id,
					'expired_at', to_char(x.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
						|| coalesce('.' || nullif(rtrim(to_char(x.expires_at AT TIME ZONE 'UTC', 'US'), '0'), ''), '')
						|| 'Z'),
				$1
			FROM x
			)
			SELECT (SELECT count(*) FROM x), (SELECT count(*) FROM claimed), (SELECT max(id) FROM claimed)$q$, s)
		INTO n_expired, n_claimed, last_id
		USING now, batch_size - claimed, lo, hi;
		expired := expired + n_expired;
		claimed := claimed + n_claimed;
		EXIT WHEN claimed >= batch_size;
		lo := hi;
	END LOOP;
	PERFORM certctl_sched._run_cursor_advance('short_lived_expiry', last_id);
	RETURN expired;
END
$body$;

-- The loop bodies change certctl's data (jobs, notifications, statuses) and the helpers exist only for them: not for
-- PUBLIC.  A role that runs the bodies (certctl_sched.role, when it is not a superuser) needs EXECUTE on them and on
-- both helpers and, since they are SECURITY INVOKER, privileges on certctl's tables.
REVOKE ALL ON FUNCTION certctl_sched._certctl_schema_checked(timestamptz, integer, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._alert_thresholds(jsonb) FROM PUBLIC;
-- (_key_window, _run_cursor and _run_cursor_advance stay executable by PUBLIC: _key_window reads only what its caller
-- may read, the other two only read and set the caller's own session setting certctl_sched_run.<loop>; every role that
-- runs a body needs them)
REVOKE ALL ON FUNCTION certctl_sched.check_expiring_certificates(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.process_pending_jobs(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.mark_stale_agents_offline(timestamptz, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.expire_short_lived_certificates(timestamptz, integer) FROM PUBLIC;

-- END loop bodies

--
-- Privileges
--

-- status, history and metrics are for monitoring roles only
REVOKE ALL ON FUNCTION certctl_sched.loop_status() FROM PUBLIC;
REVOKE ALL ON certctl_sched.loops FROM PUBLIC;
REVOKE ALL ON certctl_sched.run_history FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.loop_status() TO pg_monitor;
GRANT SELECT ON certctl_sched.loops TO pg_monitor;
GRANT SELECT ON certctl_sched.run_history TO pg_monitor;
GRANT EXECUTE ON FUNCTION certctl_sched.metrics() TO pg_monitor;

-- running, waking, pausing and resuming loops change what the scheduler does: superusers (and roles they grant) only
REVOKE ALL ON FUNCTION certctl_sched.run_now(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.run_loop(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._wake_workers_at_commit(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.pause(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.resume(text) FROM PUBLIC;
REVOKE ALL ON certctl_sched.loop_control FROM PUBLIC;

-- the loop keys are public knowledge: any process may take the same lock to cooperate (every other object of the
-- schema keeps its own, narrower privileges)
GRANT USAGE ON SCHEMA certctl_sched TO PUBLIC;
GRANT EXECUTE ON FUNCTION certctl_sched.lock_key(text) TO PUBLIC;

-- wake this database's workers once CREATE EXTENSION commits, so loops start without waiting for a tick
SELECT certctl_sched._wake_workers_at_commit();

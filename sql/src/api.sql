--
-- Status and control
--

CREATE OR REPLACE FUNCTION certctl_sched.loop_status(
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
	OUT next_run timestamptz,
	OUT lock_holder integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'certctl_sched_loop_status'
LANGUAGE C STRICT VOLATILE;

CREATE OR REPLACE VIEW certctl_sched.loops AS
	SELECT * FROM certctl_sched.loop_status();

CREATE OR REPLACE FUNCTION certctl_sched.lock_key(loop text, OUT classid integer, OUT objid integer)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_lock_key'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

CREATE OR REPLACE FUNCTION certctl_sched.run_now(loop text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'certctl_sched_run_now'
LANGUAGE C STRICT VOLATILE;

CREATE OR REPLACE FUNCTION certctl_sched.run_loop(loop text, now timestamptz DEFAULT NULL,
	OUT status text, OUT rows bigint, OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_run_loop'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

-- runs a loop exactly as its worker does, committing each batch: CALL certctl_sched.run('renewal')
CREATE OR REPLACE PROCEDURE certctl_sched.run(loop text, now timestamptz DEFAULT NULL)
AS 'MODULE_PATHNAME', 'certctl_sched_run_procedure'
LANGUAGE C;

-- wake this database's workers when the current transaction commits (after CREATE EXTENSION, pause, resume)
CREATE OR REPLACE FUNCTION certctl_sched._wake_workers_at_commit(loop text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'certctl_sched_wake_workers_at_commit'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

-- loop_control changed, by pause()/resume() or by plain DML: wake the loops' workers at commit
CREATE OR REPLACE FUNCTION certctl_sched._loop_control_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM certctl_sched._wake_workers_at_commit();
	RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER loop_control_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON certctl_sched.loop_control
	FOR EACH STATEMENT EXECUTE FUNCTION certctl_sched._loop_control_changed();

-- pause() and resume() run with the extension owner's rights, so that EXECUTE on them is all an operator needs;
-- changed_by records the session user (the login role) who asked
CREATE OR REPLACE FUNCTION certctl_sched.pause(loop text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM certctl_sched.lock_key(loop);	-- rejects unknown loop names
	INSERT INTO certctl_sched.loop_control AS c (loop, paused, changed_by) VALUES (pause.loop, true, session_user)
	ON CONFLICT ON CONSTRAINT loop_control_pkey
		DO UPDATE SET paused = true, changed_at = now(), changed_by = session_user;
END
$$;

CREATE OR REPLACE FUNCTION certctl_sched.resume(loop text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM certctl_sched.lock_key(loop);
	INSERT INTO certctl_sched.loop_control AS c (loop, paused, changed_by) VALUES (resume.loop, false, session_user)
	ON CONFLICT ON CONSTRAINT loop_control_pkey
		DO UPDATE SET paused = false, changed_at = now(), changed_by = session_user;
END
$$;

-- Prometheus text exposition of loop_status()
CREATE OR REPLACE FUNCTION certctl_sched.metrics()
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
	UNION ALL
	-- the notifications waiting for each channel, as the notifications loop last counted them
	SELECT 11 + k.ord,
		format(E'# HELP %s %s\n# TYPE %s gauge\n', k.name, k.help, k.name) ||
		string_agg(format(E'%s{database="%s",channel="%s",state="%s"} %s\n', k.name,
			replace(replace(current_database()::text, '\', '\\'), '"', '\"'),
			replace(replace(b.channel, '\', '\\'), '"', '\"'), b.state,
			CASE k.ord WHEN 1 THEN b.due ELSE b.waiting END), '' ORDER BY b.channel)
	FROM (VALUES (1, 'certctl_sched_notifications_due', 'Notifications due for delivery, per channel and channel state (configured, disabled, unconfigured).'),
				 (2, 'certctl_sched_notifications_waiting', 'Notifications waiting for a retry, per channel.')) AS k(ord, name, help)
	CROSS JOIN certctl_sched.notification_backlog b
	GROUP BY k.ord, k.name, k.help
) b
$$;

--
-- Notifications
--

-- lowercase hex HMAC-SHA256 of data's bytes under key (the webhook's signature)
CREATE OR REPLACE FUNCTION certctl_sched._hmac_sha256_hex(key text, data text)
RETURNS text
AS 'MODULE_PATHNAME', 'certctl_sched_hmac_sha256_hex'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

-- sends one test message through a configured channel now, from this session, and says what happened; writes nothing
CREATE OR REPLACE FUNCTION certctl_sched.test_channel(channel text, recipient text DEFAULT NULL,
	OUT status text, OUT http_status integer, OUT error text)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_test_channel'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

--
-- Network scan
--

-- the fields certctl records for a certificate (the first of a PEM text), as the network scan reads them
CREATE OR REPLACE FUNCTION certctl_sched._x509_fields(pem text, OUT fingerprint_sha256 text, OUT common_name text,
	OUT sans text[], OUT serial_number text, OUT issuer_dn text, OUT subject_dn text, OUT not_before timestamptz,
	OUT not_after timestamptz, OUT key_algorithm text, OUT key_size integer, OUT is_ca boolean, OUT pem_data text)
RETURNS record
AS 'MODULE_PATHNAME', 'certctl_sched_x509_fields_sql'
LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;

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
GRANT USAGE ON SCHEMA certctl_sched TO pg_monitor;

-- running, waking, pausing and resuming loops change what the scheduler does: superusers (and roles they grant) only
REVOKE ALL ON FUNCTION certctl_sched.run_now(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.run_loop(text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched._wake_workers_at_commit(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.pause(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certctl_sched.resume(text) FROM PUBLIC;
REVOKE ALL ON certctl_sched.loop_control FROM PUBLIC;

-- the loop keys are public knowledge: any process may take the same lock to cooperate
GRANT EXECUTE ON FUNCTION certctl_sched.lock_key(text) TO PUBLIC;

-- wake this database's workers once CREATE EXTENSION commits, so loops start without waiting for a tick
SELECT certctl_sched._wake_workers_at_commit();

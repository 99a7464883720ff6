--
-- The extension's schema and its tables (fresh installs only; upgrades change them in upgrade-*.sql)
--

-- CREATE EXTENSION adopts a schema "certctl_sched" that already exists.  Refuse one that another role owns or that
-- already holds objects: whoever put them there could have planted functions that overload certctl_sched's own.
DO $$
DECLARE
	nsp oid := 'certctl_sched'::regnamespace;
	owner name := (SELECT nspowner::regrole::name FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) nsp);
BEGIN
	IF owner OPERATOR(pg_catalog.<>) current_user THEN
		RAISE EXCEPTION 'schema "certctl_sched" already exists and is owned by role "%"', owner
			USING ERRCODE = 'insufficient_privilege',
				DETAIL = 'certctl_sched creates its objects in a schema of its own, owned by the role that creates the extension.',
				HINT = 'Drop the schema, or make the role that creates the extension its owner, and try again.';
	END IF;
	IF EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_conversion WHERE connamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_opfamily WHERE opfnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_statistic_ext WHERE stxnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_ts_config WHERE cfgnamespace OPERATOR(pg_catalog.=) nsp)
		OR EXISTS (SELECT FROM pg_catalog.pg_ts_dict WHERE dictnamespace OPERATOR(pg_catalog.=) nsp) THEN
		RAISE EXCEPTION 'schema "certctl_sched" already exists and is not empty'
			USING ERRCODE = 'duplicate_schema',
				HINT = 'Drop the schema (after saving what it holds) and try again.';
	END IF;
END
$$;

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
	trigger			text NOT NULL,		-- schedule, run_now, run_loop, run
	scheduled_at	timestamptz NOT NULL,	-- the tick time, passed to the loop body as "now"
	started_at		timestamptz NOT NULL,
	finished_at		timestamptz,
	status			text NOT NULL,		-- running, ok, error, interrupted, cancelled
	rows			bigint NOT NULL DEFAULT 0,
	error			text,
	pid				integer NOT NULL,
	skipped			bigint NOT NULL DEFAULT 0	-- rows the loop could not process (bad data), left unchanged
);
CREATE INDEX run_history_loop_started_idx ON certctl_sched.run_history (loop, started_at);
CREATE INDEX run_history_running_idx ON certctl_sched.run_history (loop) WHERE status = 'running';

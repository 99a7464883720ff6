-- api: the status and control functions: loops, lock_key, run_loop, run_history, pause/resume, metrics, privileges
-- (the workers of this instance are disabled by certctl_sched.enabled = off, see test/regress.conf)
\set SHOW_CONTEXT never

-- one row per loop of this database (and of isolation_regression, also in certctl_sched.database)
-- (whether the workers have connected yet is timing: the database did not exist when the server started)
SELECT loop, database, interval, last_result, runs, failures, skipped_locked
FROM certctl_sched.loops WHERE database = current_database() ORDER BY loop;
SELECT count(*) FROM certctl_sched.loop_status();

-- the advisory lock keys: class id 1128485700, loop numbers in a fixed order
SELECT loop, (certctl_sched.lock_key(loop)).*
FROM unnest(ARRAY['renewal', 'job_processor', 'agent_health', 'notifications', 'short_lived_expiry',
	'network_scan']) AS loop;
SELECT certctl_sched.lock_key('nosuch');
SELECT certctl_sched.lock_key(NULL) IS NULL AS null_in_null_out;

-- run_loop() runs a body in this session, on certctl's tables in certctl_sched.certctl_schema
CREATE SCHEMA api;
SET search_path = api;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
RESET search_path;
SET certctl_sched.certctl_schema = api;
INSERT INTO api.agents (id, name, hostname, status, last_heartbeat_at, api_key_hash)
SELECT 'a' || i, 'a' || i, 'h', 'Online', '2026-11-28 11:00:00+00', 'x' FROM generate_series(1, 5) i;
SET certctl_sched.batch_size = 2;
SELECT * FROM certctl_sched.run_loop('agent_health', '2026-11-28 12:00:00+00');
SELECT status, count(*) FROM api.agents GROUP BY status;
SELECT * FROM certctl_sched.run_loop('agent_health', '2026-11-28 12:00:00+00');
-- the run's batch cursor is passed to the bodies explicitly: no session setting carries it
SELECT count(*) AS hidden_settings FROM pg_settings WHERE name LIKE 'certctl_sched_run.%';
SELECT loop, trigger, scheduled_at, status, rows, error, pid = pg_backend_pid() AS by_me,
	finished_at >= started_at AS finished
FROM certctl_sched.run_history ORDER BY id;
SELECT runs, successes, failures, last_result, last_rows
FROM certctl_sched.loops WHERE loop = 'agent_health' AND database = current_database();

-- a failing body: rolled back, recorded, returned (not raised)
SET certctl_sched.certctl_schema = nosuch;
SELECT * FROM certctl_sched.run_loop('job_processor');
SELECT status, error FROM certctl_sched.run_history WHERE loop = 'job_processor';
SELECT failures, last_result, last_error
FROM certctl_sched.loops WHERE loop = 'job_processor' AND database = current_database();
RESET certctl_sched.certctl_schema;
SELECT * FROM certctl_sched.run_loop(NULL);

-- the lock is held until the end of the caller's transaction
BEGIN;
SELECT status FROM certctl_sched.run_loop('short_lived_expiry');
SELECT classid, objid, objsubid, mode, granted FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid();
COMMIT;
SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();

-- pause and resume: persistent rows in loop_control, unknown loops refused
SELECT certctl_sched.pause('renewal');
SELECT loop, paused, changed_by = current_user AS by_me FROM certctl_sched.loop_control;
SELECT certctl_sched.resume('renewal');
SELECT loop, paused FROM certctl_sched.loop_control;
SELECT certctl_sched.pause('nosuch');
-- run_now() refuses a loop that cannot run (here: certctl_sched.enabled is off), and says why
SELECT certctl_sched.run_now('renewal') AS requested;

-- metrics: Prometheus text exposition
SELECT line FROM regexp_split_to_table(certctl_sched.metrics(), E'\n') AS line
WHERE line LIKE '#%' OR line LIKE '%loop="agent_health",database="contrib_regression"%'
	AND line !~ 'timestamp_seconds|duration_seconds';

-- privileges: monitoring roles read status, history and metrics; nobody else changes anything
CREATE ROLE api_monitor IN ROLE pg_monitor;
CREATE ROLE api_nobody;
SET ROLE api_monitor;
SELECT count(*) > 0 AS sees_loops FROM certctl_sched.loops;
SELECT count(*) > 0 AS sees_history FROM certctl_sched.run_history;
SELECT length(certctl_sched.metrics()) > 0 AS sees_metrics;
SELECT certctl_sched.run_now('renewal');
SELECT certctl_sched.pause('renewal');
SELECT * FROM certctl_sched.run_loop('renewal');
RESET ROLE;
SET ROLE api_nobody;
SELECT * FROM certctl_sched.loops;
SELECT * FROM certctl_sched.run_history;
SELECT certctl_sched.metrics();
SELECT * FROM certctl_sched.lock_key('renewal');
RESET ROLE;
DROP ROLE api_monitor, api_nobody;

-- the settings, as pg_settings shows them
SELECT name, setting, unit, context, short_desc FROM pg_settings WHERE name LIKE 'certctl_sched.%' ORDER BY name;

-- bad_rows: rows the loops cannot process (infinite expiry, attempts at the integer limit) are skipped, counted and
-- reported once per run, and the rest of the batch proceeds; extreme but valid values are processed; a non-finite
-- "now" is refused
\set now '2026-11-28 12:00:00+00'
\set SHOW_CONTEXT never
CREATE SCHEMA bad_rows;
SET search_path = bad_rows, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
SET certctl_sched.certctl_schema = 'bad_rows';

INSERT INTO teams (id, name) VALUES ('t1', 'team');
INSERT INTO owners (id, name, email, team_id) VALUES ('o1', 'Alice', 'alice@example.com', 't1');
INSERT INTO issuers (id, name, type) VALUES ('iss', 'iss', 'local');
INSERT INTO renewal_policies (id, name, renewal_window_days, auto_renew) VALUES
	('rp', 'rp', 30, true),
	('rp-huge', 'huge window', 2147483647, true),
	('rp-negative', 'negative window', -2147483648, true);
INSERT INTO certificate_profiles (id, name, allow_short_lived, max_ttl_seconds) VALUES ('cp', 'cp', true, 300);
CREATE FUNCTION pg_temp.cert(id text, status text, expires_at timestamptz, policy text, profile text) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO bad_rows.managed_certificates (id, name, common_name, owner_id, team_id, issuer_id,
		renewal_policy_id, certificate_profile_id, status, expires_at)
	VALUES (id, id, id || '.example.com', 'o1', 't1', 'iss', policy, profile, status, expires_at)
$$;

-- renewal: an expiry of -infinity is skipped (before: "cannot convert infinity to bigint" failed every run); a
-- window of 2^31 days renews, one of -2^31 days never does (before: "timestamp out of range")
SELECT pg_temp.cert('a-bad', 'Active', '-infinity', 'rp', NULL);
SELECT pg_temp.cert('b-ok', 'Active', :'now'::timestamptz + interval '10 days', 'rp', NULL);
SELECT pg_temp.cert('c-huge', 'Active', :'now'::timestamptz + interval '20 days', 'rp-huge', NULL);
SELECT pg_temp.cert('d-negative', 'Active', :'now'::timestamptz + interval '20 days', 'rp-negative', NULL);
SELECT pg_temp.cert('e-future', 'Active', 'infinity', 'rp', NULL);
SELECT claimed, acted, last_key, skipped, skipped_example
FROM certctl_sched._renewal_batch(:'now', 100, NULL, NULL);
SELECT id, status, expires_at FROM managed_certificates ORDER BY id;
SELECT certificate_id, type, status FROM jobs ORDER BY certificate_id;
-- the skipped row is not written, and is counted again by the next run
SELECT claimed, acted, skipped FROM certctl_sched._renewal_batch(:'now', 100, NULL, NULL);

-- a run reports the skipped rows once, in its history and in one warning
SELECT * FROM certctl_sched.run_loop('renewal', :'now');
SELECT loop, status, rows, skipped FROM certctl_sched.run_history WHERE loop = 'renewal';

-- short-lived expiry: an expiry of -infinity has no time to record and is skipped
DELETE FROM jobs;
DELETE FROM audit_events;
UPDATE managed_certificates SET status = 'Active', certificate_profile_id = 'cp';
UPDATE managed_certificates SET expires_at = :'now'::timestamptz - interval '1 minute' WHERE id = 'b-ok';
SELECT claimed, acted, last_key, skipped, skipped_example
FROM certctl_sched._short_lived_expiry_batch(:'now', 100, NULL, NULL);
SELECT id, status FROM managed_certificates ORDER BY id;
SELECT resource_id, details->>'expired_at' AS expired_at FROM audit_events;

-- job processor: a renewal job whose attempts cannot be counted up is skipped and stays Pending (before:
-- "integer out of range" failed every run)
DELETE FROM audit_events;
UPDATE managed_certificates SET status = 'Active', expires_at = :'now'::timestamptz + interval '10 days';
INSERT INTO jobs (id, type, certificate_id, status, attempts, scheduled_at) VALUES
	('j1', 'Renewal', 'b-ok', 'Pending', 2147483647, :'now'),
	('j2', 'Renewal', 'c-huge', 'Pending', 0, :'now');
SELECT claimed, acted, last_key, skipped, skipped_example
FROM certctl_sched._job_processor_batch(:'now', 100, NULL, NULL);
SELECT id, status, attempts FROM jobs ORDER BY id;

-- "now" must be a finite time, for the runners and the bodies alike
SELECT * FROM certctl_sched.run_loop('renewal', 'infinity');
SELECT * FROM certctl_sched.run_loop('renewal', '-infinity');
SELECT certctl_sched.check_expiring_certificates('infinity', 10);

RESET certctl_sched.certctl_schema;
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA bad_rows CASCADE;
RESET client_min_messages;

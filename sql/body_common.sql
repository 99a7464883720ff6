-- body_common: what all loop bodies share: argument checks, READ COMMITTED, missing certctl tables, privileges
\set now '2026-11-28 12:00:00+00'
\set SHOW_CONTEXT never

-- SQLSTATE and message of a statement's error
CREATE FUNCTION pg_temp.error_of(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- the bodies and their helpers: SECURITY INVOKER, search_path pinned, executable by PUBLIC (nobody gains anything by
-- calling them: they run with the caller's rights); the internal bodies carry the planner settings
SELECT p.oid::regprocedure AS function, l.lanname, p.prosecdef, p.proconfig,
	has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'certctl_sched'::regnamespace
	AND p.proname IN ('check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
		'expire_short_lived_certificates', '_renewal_batch', '_job_processor_batch', '_agent_health_batch',
		'_short_lived_expiry_batch', '_check_args', '_alert_thresholds', '_key_window', '_status_spellings',
		'_claim_windows')
ORDER BY p.proname;

-- a fixture schema whose name needs quoting
CREATE SCHEMA "Body Common";
SET search_path = "Body Common", public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
RESET search_path;
SET certctl_sched.certctl_schema = 'Body Common';
SELECT certctl_sched.check_expiring_certificates(:'now', 10) AS renewal,
	certctl_sched.process_pending_jobs(:'now', 10) AS jobs,
	certctl_sched.mark_stale_agents_offline(:'now', 10) AS agents,
	certctl_sched.expire_short_lived_certificates(:'now', 10) AS short_lived;

-- arguments: batch_size at least 1, now and threshold not null, threshold positive
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(%L, %s)', f, :'now', b))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f,
	unnest(ARRAY['0', '-1', 'NULL']) AS b;
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(NULL, 10)', f))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f;
SELECT pg_temp.error_of(format('SELECT certctl_sched.mark_stale_agents_offline(%L, 10, %s)', :'now', t))
FROM unnest(ARRAY['interval ''0''', 'interval ''-1 minute''', 'NULL']) AS t;
SELECT certctl_sched.check_expiring_certificates(:'now', 0);

-- the claim-then-recheck pattern needs READ COMMITTED
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT certctl_sched.process_pending_jobs(:'now', 10);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(%L, 10)', f, :'now'))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f;
ROLLBACK;

-- missing certctl tables: a clear error naming the table, with a hint at certctl_sched.certctl_schema
SET certctl_sched.certctl_schema = 'body_common_nowhere';
SELECT certctl_sched.check_expiring_certificates(:'now', 10);
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(%L, 10)', f, :'now'))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f;
-- a schema with only some of the tables: the first missing one is named
CREATE SCHEMA body_common_partial;
CREATE TABLE body_common_partial.managed_certificates (id text);
CREATE TABLE body_common_partial.jobs (id text);
SET certctl_sched.certctl_schema = 'body_common_partial';
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(%L, 10)', f, :'now'))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f;
-- the default is public (which holds no certctl tables in this database)
RESET certctl_sched.certctl_schema;
SELECT to_regclass('public.managed_certificates') IS NULL AS public_has_no_certctl_tables;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 10);

-- an expired short-lived certificate in the quoted schema, for the privilege checks
INSERT INTO "Body Common".teams (id, name) VALUES ('t1', 'team');
INSERT INTO "Body Common".owners (id, name, email, team_id) VALUES ('o1', 'Alice', 'alice@example.com', 't1');
INSERT INTO "Body Common".issuers (id, name, type) VALUES ('iss', 'iss', 'local');
INSERT INTO "Body Common".renewal_policies (id, name, renewal_window_days) VALUES ('rp', 'rp', 30);
INSERT INTO "Body Common".certificate_profiles (id, name, allow_short_lived, max_ttl_seconds)
VALUES ('cp', 'cp', true, 600);
INSERT INTO "Body Common".managed_certificates (id, name, common_name, owner_id, team_id, issuer_id,
	renewal_policy_id, certificate_profile_id, status, expires_at)
VALUES ('mc', 'mc', 'mc.example.com', 'o1', 't1', 'iss', 'rp', 'cp', 'Active', :'now');

-- privileges: an ordinary role may call the bodies, but they run with its own rights: without privileges on
-- certctl's tables it can do nothing ...
CREATE ROLE regress_body_common_user;
SET certctl_sched.certctl_schema = 'Body Common';
SET ROLE regress_body_common_user;
SELECT pg_temp.error_of(format('SELECT certctl_sched.%s(%L, 10)', f, :'now'))
FROM unnest(ARRAY['check_expiring_certificates', 'process_pending_jobs', 'mark_stale_agents_offline',
	'expire_short_lived_certificates']) AS f;
RESET ROLE;
-- ... but what those privileges allow
GRANT USAGE ON SCHEMA "Body Common" TO regress_body_common_user;
GRANT SELECT, UPDATE ON "Body Common".managed_certificates TO regress_body_common_user;
GRANT SELECT ON "Body Common".certificate_profiles TO regress_body_common_user;
GRANT INSERT ON "Body Common".audit_events TO regress_body_common_user;
SET ROLE regress_body_common_user;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 10);
RESET ROLE;
SELECT id, status FROM "Body Common".managed_certificates;

RESET certctl_sched.certctl_schema;
SET client_min_messages = warning;
DROP OWNED BY regress_body_common_user;
DROP ROLE regress_body_common_user;
DROP SCHEMA "Body Common", body_common_partial CASCADE;
RESET client_min_messages;

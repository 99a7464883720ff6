-- body_short_lived: expire_short_lived_certificates on fixture data: profile rule, statuses, expiry boundary, batches
\set now '2026-11-28 12:00:00+00'
CREATE SCHEMA body_short_lived;
SET search_path = body_short_lived, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
SET certctl_sched.certctl_schema = 'body_short_lived';

INSERT INTO teams (id, name) VALUES ('t1', 'team');
INSERT INTO owners (id, name, email, team_id) VALUES ('o1', 'Alice', 'alice@example.com', 't1');
INSERT INTO issuers (id, name, type) VALUES ('iss', 'iss', 'local');
INSERT INTO renewal_policies (id, name, renewal_window_days) VALUES ('rp', 'rp', 30);
-- short-lived: allow_short_lived and 0 < max_ttl_seconds < 3600; enabled is not consulted
INSERT INTO certificate_profiles (id, name, allow_short_lived, max_ttl_seconds, enabled) VALUES
	('cp-short', 'short', true, 300, true),
	('cp-3599', '3599', true, 3599, true),
	('cp-disabled', 'disabled', true, 60, false),
	('cp-3600', '3600', true, 3600, true),
	('cp-ttl0', 'ttl0', true, 0, true),
	('cp-not-allowed', 'not allowed', false, 300, true);
CREATE FUNCTION pg_temp.cert(id text, status text, expires_at timestamptz, profile text) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO body_short_lived.managed_certificates (id, name, common_name, owner_id, team_id, issuer_id,
		renewal_policy_id, certificate_profile_id, status, expires_at, updated_at)
	VALUES (id, id, id || '.example.com', 'o1', 't1', 'iss', 'rp', profile, status, expires_at, '2026-01-01')
$$;
SELECT pg_temp.cert('s01', 'Active', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s02', 'expiring', :'now'::timestamptz - interval '30.25 seconds', 'cp-3599');
SELECT pg_temp.cert('s03', 'ACTIVE', :'now', 'cp-short');
SELECT pg_temp.cert('s04', 'Active', :'now'::timestamptz - interval '1 hour', 'cp-disabled');
SELECT pg_temp.cert('s05', 'Active', :'now'::timestamptz + interval '1 second', 'cp-short');
SELECT pg_temp.cert('s06', 'Active', :'now'::timestamptz - interval '1 minute', 'cp-3600');
SELECT pg_temp.cert('s07', 'Active', :'now'::timestamptz - interval '1 minute', 'cp-ttl0');
SELECT pg_temp.cert('s08', 'Active', :'now'::timestamptz - interval '1 minute', 'cp-not-allowed');
SELECT pg_temp.cert('s09', 'Active', :'now'::timestamptz - interval '1 minute', NULL);
SELECT pg_temp.cert('s10', 'Active', NULL, 'cp-short');
SELECT pg_temp.cert('s11', 'Revoked', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s12', 'Pending', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s13', 'Failed', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s14', 'RenewalInProgress', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s15', 'Expired', :'now'::timestamptz - interval '1 minute', 'cp-short');
SELECT pg_temp.cert('s16', 'Archived', :'now'::timestamptz - interval '1 minute', 'cp-short');

CREATE TABLE before AS SELECT id, status FROM managed_certificates;

SELECT certctl_sched.expire_short_lived_certificates(:'now', 100);
SELECT c.id, b.status AS was, c.status, c.updated_at = :'now' AS updated
FROM managed_certificates c JOIN before b USING (id) ORDER BY c.id;
-- one audit per expired certificate; expired_at is expires_at in RFC 3339, UTC
SELECT resource_id, action, resource_type, actor, actor_type, details, timestamp = :'now' AS at_now
FROM audit_events ORDER BY resource_id;
SELECT count(DISTINCT id) = count(*) AND bool_and(id ~ '^audit-[0-9a-f-]{36}$') AS ids_ok FROM audit_events;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 100);
SELECT count(*) AS audits FROM audit_events;

-- batch boundaries, earliest expiry first
UPDATE managed_certificates c SET status = b.status FROM before b WHERE c.id = b.id;
DELETE FROM audit_events;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 1) AS batch_of_1;
SELECT string_agg(resource_id, ' ' ORDER BY resource_id) AS expired FROM audit_events;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 1) AS batch_of_1;
SELECT string_agg(resource_id, ' ' ORDER BY resource_id) AS expired FROM audit_events;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 2) AS batch_of_2;
SELECT string_agg(resource_id, ' ' ORDER BY resource_id) AS expired FROM audit_events;
SELECT certctl_sched.expire_short_lived_certificates(:'now', 2) AS batch_of_2;

RESET certctl_sched.certctl_schema;
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA body_short_lived CASCADE;
RESET client_min_messages;

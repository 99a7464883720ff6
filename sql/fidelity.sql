-- fidelity: the loops follow the certctl version whose schema they find: certctl's schema at 4d59fd1
-- (test/certctl_schema.sql, in schema fid_old) and today's (test/certctl_schema_head.sql, in schema fid_head), the
-- same data in both; certctl_sched.certctl_version overrides the version the rules without a schema marker follow
\set now '2026-11-28 12:00:00+00'
\set SHOW_CONTEXT never
CREATE SCHEMA fid_old;
CREATE SCHEMA fid_head;
SET search_path = fid_old;
\set ECHO none
\i test/certctl_schema.sql
SET search_path = fid_head;
\i test/certctl_schema_head.sql
\set ECHO all
RESET search_path;

-- what each schema has (one catalog lookup per call)
SELECT 'fid_old' AS schema, * FROM certctl_sched._certctl_features('fid_old')
UNION ALL SELECT 'fid_head', * FROM certctl_sched._certctl_features('fid_head');
SET certctl_sched.certctl_version = 'head';
SELECT head FROM certctl_sched._certctl_features('fid_old');
SET certctl_sched.certctl_version = '4d59fd1';
SELECT head FROM certctl_sched._certctl_features('fid_head');
RESET certctl_sched.certctl_version;

-- the same certctl data in both schemas
CREATE FUNCTION pg_temp.fill(s text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format($q$
		SET LOCAL search_path = %I;
		INSERT INTO teams (id, name) VALUES ('t1', 'team');
		INSERT INTO owners (id, name, email, team_id) VALUES ('o1', 'Alice', 'alice@example.com', 't1');
		INSERT INTO issuers (id, name, type) VALUES ('iss', 'iss', 'local');
		INSERT INTO renewal_policies (id, name, renewal_window_days, auto_renew) VALUES
			('rp', 'default', 30, false), ('rp-matrix', 'matrix', 30, false);
		INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id,
			status, expires_at)
		SELECT id, id, id || '.example.com', 'o1', 't1', 'iss', policy, status, '2026-12-03 12:00:00+00'
		FROM (VALUES ('c-active', 'rp', 'Active'), ('c-failed', 'rp', 'Failed'), ('c-expired', 'rp', 'Expired'),
					 ('c-lower-expired', 'rp', 'expired'), ('c-matrix', 'rp-matrix', 'Active')) v(id, policy, status);
		INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash) VALUES
			('a-online', 'a-online', 'h', 'Online', '2026-11-28 11:59:00+00', 'x'),
			('a-offline', 'a-offline', 'h', 'Online', '2026-11-28 11:00:00+00', 'x');
		INSERT INTO deployment_targets (id, name, type, agent_id) VALUES ('tgt', 'tgt', 'nginx', 'a-online');
		$q$, s);
END
$$;
SELECT pg_temp.fill('fid_old'), pg_temp.fill('fid_head');
-- the alert channel matrix of today's certctl (only fid_head has the columns)
UPDATE fid_head.renewal_policies
SET alert_channels = '{"informational": [], "warning": ["Slack", "Email", "Pager"], "critical": ["PagerDuty"]}',
	alert_severity_map = '{"7": "critical", "+14 days": "warning", "30": "Critical"}'
WHERE id = 'rp-matrix';

-- Runs the renewal body on schema s; returns the rows it wrote, readably.
CREATE FUNCTION pg_temp.renewal(s text, OUT what text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('certctl_sched.certctl_schema', s, true);
	PERFORM certctl_sched._renewal_batch('2026-11-28 12:00:00+00', 100, NULL, NULL);
	RETURN QUERY EXECUTE format($q$
		SELECT 'cert ' || id || ': ' || status FROM %1$I.managed_certificates
		UNION ALL
		SELECT 'alert ' || certificate_id || ' ' || channel || ': ' || substring(message FROM '\[threshold:-?\d+\]')
		FROM %1$I.notification_events
		UNION ALL
		SELECT 'audit ' || resource_id || ' ' || action || ' ' || details::text FROM %1$I.audit_events
		ORDER BY 1$q$, s);
END
$$;

-- (3) renewal: at 4d59fd1 every status but RenewalInProgress and Archived is processed (Failed and Expired move to
-- Expiring, get alerts); today's certctl skips Failed, Expired and Revoked entirely (statuses read case-insensitively)
-- (4) with the matrix: one alert per channel of the threshold's tier, its channel and tier in the audit; a tier
-- without channels and a channel certctl does not know are audited instead; without it: one Email alert per
-- threshold
SELECT * FROM pg_temp.renewal('fid_old');
SELECT * FROM pg_temp.renewal('fid_head');
-- (6) today's certctl's notification_events.created_at: the run's time
SELECT count(*) AS alerts, count(*) FILTER (WHERE created_at = :'now') AS created_now FROM fid_head.notification_events;
-- (4) dedup per certificate, threshold, expiry and channel: a second run writes no alert (the skip audits come again,
-- as today's certctl writes them on every run)
SELECT * FROM pg_temp.renewal('fid_head') WHERE what NOT LIKE 'cert %';
-- (3) the version setting overrides auto: 4d59fd1's rules on today's schema, today's on 4d59fd1's schema
TRUNCATE fid_head.notification_events, fid_head.audit_events, fid_old.notification_events, fid_old.audit_events;
UPDATE fid_head.managed_certificates SET status = 'Failed' WHERE id = 'c-failed';
UPDATE fid_old.managed_certificates SET status = 'Failed' WHERE id = 'c-failed';
SET certctl_sched.certctl_version = '4d59fd1';
SELECT * FROM pg_temp.renewal('fid_head') WHERE what LIKE '%c-failed%';
SET certctl_sched.certctl_version = 'head';
SELECT * FROM pg_temp.renewal('fid_old') WHERE what LIKE '%c-failed%';
RESET certctl_sched.certctl_version;

-- (2) alert dedup matches certctl's type literal exactly: an alert recorded by another writer as
-- "expiration_warning" does not stand for certctl's ExpirationWarning
TRUNCATE fid_old.notification_events, fid_old.audit_events;
UPDATE fid_old.managed_certificates SET status = 'Active';
INSERT INTO fid_old.notification_events (id, type, certificate_id, channel, recipient, message, status)
VALUES ('n-other', 'expiration_warning', 'c-active', 'email', 'x',
	'The certificate for c-active.example.com will expire in 5 days (2026-12-03).\n\n[threshold:30]', 'sent');
SELECT * FROM pg_temp.renewal('fid_old') WHERE what LIKE 'alert c-active%';

-- Runs the job processor on schema s; returns the jobs, notifications and audits written, readably.
CREATE FUNCTION pg_temp.jobs(s text, OUT what text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('certctl_sched.certctl_schema', s, true);
	PERFORM certctl_sched._job_processor_batch('2026-11-28 12:00:00+00', 100, NULL, NULL);
	RETURN QUERY EXECUTE format($q$
		SELECT 'job ' || id || ': ' || status || coalesce(' agent ' || agent_id, '') || coalesce(' (' || last_error || ')', '')
		FROM %1$I.jobs
		UNION ALL
		SELECT 'notification ' || type || ': ' || replace(message, E'\n', ' ') || coalesce(' at ' || (to_jsonb(n) ->> 'created_at'), '')
		FROM %1$I.notification_events n WHERE type = 'DeploymentFailure'
		UNION ALL
		SELECT 'audit ' || action || ' ' || details::text FROM %1$I.audit_events WHERE action LIKE 'deployment%%'
		ORDER BY 1$q$, s);
END
$$;

-- (1) a deployment checks its target's agent (online), not the job's agent_id (offline): dispatched, both versions
INSERT INTO fid_old.jobs (id, type, certificate_id, target_id, agent_id, status) VALUES
	('j-1', 'Deployment', 'c-active', 'tgt', 'a-offline', 'Pending');
INSERT INTO fid_head.jobs (id, type, certificate_id, target_id, agent_id, status) VALUES
	('j-1', 'Deployment', 'c-active', 'tgt', 'a-offline', 'Pending');
SELECT * FROM pg_temp.jobs('fid_old');
SELECT * FROM pg_temp.jobs('fid_head');

-- (5) today's certctl fails a deployment to a retired agent, with its own texts (the retired agent's heartbeat is
-- fresh); 4d59fd1's schema has no retired agents, and 4d59fd1's rules dispatch
UPDATE fid_head.agents SET retired_at = '2026-11-27 00:00:00+00' WHERE id = 'a-online';
INSERT INTO fid_head.jobs (id, type, certificate_id, target_id, status) VALUES
	('j-2', 'Deployment', 'c-active', 'tgt', 'Pending');
SET certctl_sched.certctl_version = '4d59fd1';
SELECT * FROM pg_temp.jobs('fid_head') WHERE what LIKE '%j-2%';
RESET certctl_sched.certctl_version;
UPDATE fid_head.jobs SET status = 'Pending', agent_id = NULL WHERE id = 'j-2';
TRUNCATE fid_head.audit_events;
SELECT * FROM pg_temp.jobs('fid_head') WHERE what NOT LIKE 'job j-1%';

-- agent health: retired agents are never marked offline where the schema has them
UPDATE fid_head.agents SET last_heartbeat_at = '2026-11-28 11:00:00+00';
SET certctl_sched.certctl_schema = 'fid_head';
SELECT claimed, acted FROM certctl_sched._agent_health_batch(:'now', 100, NULL, NULL);
SELECT id, status, retired_at IS NOT NULL AS retired FROM fid_head.agents ORDER BY id;
RESET certctl_sched.certctl_schema;

SET client_min_messages = warning;
DROP SCHEMA fid_old, fid_head CASCADE;
RESET client_min_messages;

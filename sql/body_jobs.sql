-- body_jobs: process_pending_jobs on fixture data: renewal/issuance dispatch, deployment dispatch, failures, batches
\set now '2026-11-28 12:00:00+00'
CREATE SCHEMA body_jobs;
SET search_path = body_jobs, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
SET certctl_sched.certctl_schema = 'body_jobs';

INSERT INTO teams (id, name) VALUES ('t1', 'team');
INSERT INTO owners (id, name, email, team_id) VALUES
	('o-alice', 'Alice', 'alice@example.com', 't1'),
	('o-noemail', 'Nobody', '', 't1');
INSERT INTO issuers (id, name, type, enabled) VALUES
	('iss-on', 'on', 'local', true),
	('iss-off', 'off', 'local', false);
INSERT INTO renewal_policies (id, name, renewal_window_days) VALUES ('rp', 'rp', 30);
INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, api_key_hash) VALUES
	('ag-online', 'online', 'h1', 'Online', :'now'::timestamptz - interval '1 minute', 'x'),
	('ag-never', 'never', 'h2', 'online', NULL, 'x'),
	('ag-stale', 'stale', 'h3', 'Online', :'now'::timestamptz - interval '10 minutes', 'x'),
	('ag-edge', 'edge', 'h4', 'Online', :'now'::timestamptz - interval '5 minutes', 'x');
INSERT INTO deployment_targets (id, name, type, agent_id) VALUES
	('tg-online', 'web-1', 'nginx', 'ag-online'),
	('tg-never', 'web-2', 'nginx', 'ag-never'),
	('tg-stale', 'web-3', 'nginx', 'ag-stale'),
	('tg-edge', 'web-4', 'nginx', 'ag-edge');
INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id, status,
	expires_at, updated_at) VALUES
	('mc-a', 'a', 'a.example.com', 'o-alice', 't1', 'iss-on', 'rp', 'Expiring', :'now', '2026-01-01'),
	('mc-b', 'b', 'b.example.com', 'o-alice', 't1', 'iss-on', 'rp', 'renewalinprogress', :'now', '2026-01-01'),
	('mc-off', 'off', 'off.example.com', 'o-alice', 't1', 'iss-off', 'rp', 'Active', :'now', '2026-01-01'),
	('mc-noemail', 'noemail', 'noemail.example.com', 'o-noemail', 't1', 'iss-on', 'rp', 'Active', :'now', '2026-01-01'),
	('mc-revoked', 'revoked', 'revoked.example.com', 'o-alice', 't1', 'iss-on', 'rp', 'Revoked', :'now', '2026-01-01');
-- rows certctl's foreign keys would not allow, as if referenced rows were lost: a certificate whose issuer is gone or
-- empty, a target whose agent is gone
SET session_replication_role = replica;
INSERT INTO managed_certificates (id, name, common_name, owner_id, team_id, issuer_id, renewal_policy_id, status,
	expires_at, updated_at) VALUES
	('mc-noiss', 'noiss', 'noiss.example.com', 'o-alice', 't1', 'iss-gone', 'rp', 'Active', :'now', '2026-01-01'),
	('mc-empty', 'empty', 'empty.example.com', 'o-alice', 't1', '', 'rp', 'Active', :'now', '2026-01-01');
INSERT INTO deployment_targets (id, name, type, agent_id) VALUES ('tg-orphan', 'web-5', 'nginx', 'ag-gone');
-- jobs in creation order; the processor takes them oldest first
CREATE FUNCTION pg_temp.job(n int, id text, type text, status text, cert text, target text DEFAULT NULL,
	scheduled interval DEFAULT interval '-1 hour', agent text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO body_jobs.jobs (id, type, certificate_id, target_id, agent_id, status, scheduled_at, created_at)
	VALUES (id, type, cert, target, agent, status, '2026-11-28 12:00:00+00'::timestamptz + scheduled,
		'2026-11-28 00:00:00+00'::timestamptz + n * interval '1 minute')
$$;
SELECT pg_temp.job(1, 'j01', 'Renewal', 'Pending', 'mc-a');
SELECT pg_temp.job(2, 'j02', 'issuance', 'pending', 'mc-b', scheduled => NULL);
SELECT pg_temp.job(3, 'j03', 'Renewal', 'Pending', 'mc-a', scheduled => interval '1 hour');
SELECT pg_temp.job(4, 'j04', 'Renewal', 'Pending', 'mc-gone');
SELECT pg_temp.job(5, 'j05', 'Renewal', 'Pending', NULL);
SELECT pg_temp.job(6, 'j06', 'Renewal', 'PENDING', 'mc-off');
SELECT pg_temp.job(7, 'j07', 'Renewal', 'Pending', 'mc-noiss');
SELECT pg_temp.job(8, 'j08', 'Renewal', 'Pending', 'mc-empty');
SELECT pg_temp.job(9, 'j09', 'Renewal', 'Running', 'mc-a');
SELECT pg_temp.job(10, 'j10', 'Renewal', 'AwaitingCSR', 'mc-a');
SELECT pg_temp.job(11, 'j11', 'DEPLOYMENT', 'Pending', 'mc-a', 'tg-online');
SELECT pg_temp.job(12, 'j12', 'deployment', 'pending', 'mc-a', 'tg-never');
SELECT pg_temp.job(13, 'j13', 'Deployment', 'Pending', 'mc-noemail', 'tg-stale');
SELECT pg_temp.job(14, 'j14', 'Deployment', 'Pending', 'mc-a', 'tg-edge');
SELECT pg_temp.job(15, 'j15', 'Deployment', 'Pending', 'mc-a', NULL);
SELECT pg_temp.job(16, 'j16', 'Deployment', 'Pending', 'mc-a', 'tg-gone');
SELECT pg_temp.job(17, 'j17', 'Deployment', 'Pending', 'mc-a', 'tg-orphan');
SELECT pg_temp.job(18, 'j18', 'Deployment', 'Pending', 'mc-gone', 'tg-online');
SELECT pg_temp.job(19, 'j19', 'Deployment', 'Pending', 'mc-a', 'tg-online', agent => 'ag-online');
SELECT pg_temp.job(20, 'j20', 'Deployment', 'Pending', 'mc-a', 'tg-stale', agent => 'ag-stale');
SELECT pg_temp.job(21, 'j21', 'Validation', 'Pending', 'mc-a');
SELECT pg_temp.job(22, 'j22', 'frobnicate', 'pending', 'mc-a');
SELECT pg_temp.job(23, 'j23', 'Validation', 'Pending', 'mc-a', scheduled => interval '1 day');
SELECT pg_temp.job(24, 'j24', 'Deployment', 'Completed', 'mc-a', 'tg-online');
SELECT pg_temp.job(25, 'j25', 'Renewal', 'Pending', 'mc-a', scheduled => interval '0');
SELECT pg_temp.job(26, 'j26', 'Deployment', 'Pending', 'mc-a', 'tg-online', scheduled => interval '1 hour');
SELECT pg_temp.job(27, 'j27', 'Renewal', 'Pending', 'mc-revoked');
RESET session_replication_role;
UPDATE jobs SET attempts = 1 WHERE id = 'j25';

CREATE VIEW job_state AS
	SELECT id, type, status, attempts, started_at = '2026-11-28 12:00:00+00' AS started_now, last_error, agent_id,
		completed_at
	FROM jobs;
CREATE TABLE before AS SELECT * FROM job_state;

-- 18 due jobs of the handled types; one notice for the two waiting Validation/unknown jobs
SELECT certctl_sched.process_pending_jobs(:'now', 100);

SELECT j.*, (j.*)::text = (b.*)::text AS unchanged
FROM job_state j JOIN before b USING (id) ORDER BY id;

-- certificates: RenewalInProgress for dispatched renewals, unless already so (mc-b), Revoked or Archived
SELECT id, status, updated_at = :'now' AS updated FROM managed_certificates ORDER BY id;

-- DeploymentFailure notifications for offline agents, certctl's message, owner's email or id
SELECT certificate_id, type, channel, recipient, status, sent_at, message FROM notification_events
WHERE id ~ '^notif-[0-9a-f-]{36}$' ORDER BY certificate_id;

-- one audit per dispatched or offline-failed job, certctl's details
SELECT action, resource_type, resource_id, details, actor, actor_type, timestamp = :'now' AS at_now
FROM audit_events WHERE id ~ '^audit-[0-9a-f-]{36}$' ORDER BY details->>'job_id', action;

-- again: nothing to claim, the notice again, no second dispatch audit
SELECT certctl_sched.process_pending_jobs(:'now', 100);
SELECT count(*) AS audits FROM audit_events;

-- the agent of dispatched jobs j11 and j19 goes offline: they are claimed again and fail
UPDATE agents SET last_heartbeat_at = :'now'::timestamptz - interval '6 minutes' WHERE id = 'ag-online';
SELECT certctl_sched.process_pending_jobs(:'now', 100);
SELECT id, status, last_error, agent_id FROM jobs WHERE id IN ('j11', 'j19') ORDER BY id;
SELECT count(*) AS notifications, count(DISTINCT id) AS distinct_ids FROM notification_events;
SELECT action, details->>'job_id' AS job, count(*) FROM audit_events GROUP BY 1, 2 ORDER BY 2, 1;

--
-- batch boundaries: oldest first, a waiting Validation job never stalls a batch
--
DELETE FROM jobs;
SELECT pg_temp.job(0, 'v1', 'Validation', 'Pending', 'mc-a');
SELECT pg_temp.job(1, 'b1', 'Renewal', 'Pending', 'mc-a');
SELECT pg_temp.job(3, 'b3', 'Issuance', 'Pending', 'mc-a');
SELECT pg_temp.job(2, 'b2', 'Deployment', 'Pending', 'mc-a', 'tg-never');
CREATE VIEW done AS
	SELECT string_agg(id, ' ' ORDER BY id) AS done FROM jobs
	WHERE lower(status) <> 'pending' OR agent_id IS NOT NULL;
SET client_min_messages = warning;
SELECT certctl_sched.process_pending_jobs(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.process_pending_jobs(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.process_pending_jobs(:'now', 1) AS batch_of_1;
SELECT * FROM done;
SELECT certctl_sched.process_pending_jobs(:'now', 1) AS batch_of_1;
SELECT * FROM done;
UPDATE jobs SET status = 'Pending', agent_id = NULL;
SELECT certctl_sched.process_pending_jobs(:'now', 1000) AS batch_of_1000;
SELECT * FROM done;
SELECT certctl_sched.process_pending_jobs(:'now', 1000) AS batch_of_1000;
RESET client_min_messages;

RESET certctl_sched.certctl_schema;
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA body_jobs CASCADE;
RESET client_min_messages;

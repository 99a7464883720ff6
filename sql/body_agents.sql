-- body_agents: mark_stale_agents_offline on fixture data: threshold, case, NULL heartbeats, retired agents, batches
\set now '2026-11-28 12:00:00+00'
CREATE SCHEMA body_agents;
SET search_path = body_agents, public;
\set ECHO none
\i test/certctl_schema.sql
\set ECHO all
SET certctl_sched.certctl_schema = 'body_agents';

CREATE FUNCTION pg_temp.agent(id text, status text, heartbeat_age interval) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO body_agents.agents (id, name, hostname, status, last_heartbeat_at, api_key_hash, os, version)
	VALUES (id, id, id || '.example.com', status, '2026-11-28 12:00:00+00'::timestamptz - heartbeat_age,
		'hash-' || id, 'linux', '1.0')
$$;
SELECT pg_temp.agent('a-stale', 'Online', interval '3 minutes');
SELECT pg_temp.agent('a-fresh', 'Online', interval '1 minute');
SELECT pg_temp.agent('a-edge', 'Online', interval '2 minutes');
SELECT pg_temp.agent('a-lower', 'online', interval '10 minutes');
SELECT pg_temp.agent('a-upper', 'ONLINE', interval '1 day');
SELECT pg_temp.agent('a-never', 'Online', NULL);
SELECT pg_temp.agent('a-offline', 'Offline', interval '1 day');
SELECT pg_temp.agent('a-degraded', 'Degraded', interval '1 day');
SELECT pg_temp.agent('a-future', 'Online', interval '-1 minute');

CREATE TABLE before AS SELECT a.*, a.xmin::text AS row_version FROM agents a;

-- default threshold (2 minutes, certctl's loop interval): older than that, strictly
SELECT certctl_sched.mark_stale_agents_offline(:'now', 100);
SELECT a.id, b.status AS was, a.status, a.xmin::text <> b.row_version AS written,
	(a.name, a.hostname, a.last_heartbeat_at, a.registered_at, a.api_key_hash, a.os, a.architecture, a.ip_address,
		a.version) IS NOT DISTINCT FROM
	(b.name, b.hostname, b.last_heartbeat_at, b.registered_at, b.api_key_hash, b.os, b.architecture, b.ip_address,
		b.version) AS other_columns_kept
FROM agents a JOIN before b USING (id) ORDER BY a.id;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 100);
SELECT count(*) AS audits, (SELECT count(*) FROM notification_events) AS notifications FROM audit_events;

-- the worker passes its loop interval as the threshold
UPDATE agents a SET status = b.status FROM before b WHERE a.id = b.id;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 100, interval '15 minutes');
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';

-- certctl's later schemas retire agents (agents.retired_at): retired agents are left alone
UPDATE agents a SET status = b.status FROM before b WHERE a.id = b.id;
ALTER TABLE agents ADD COLUMN retired_at timestamptz;
UPDATE agents SET retired_at = :'now' WHERE id IN ('a-stale', 'a-upper');
SELECT certctl_sched.mark_stale_agents_offline(:'now', 100);
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';
ALTER TABLE agents DROP COLUMN retired_at;
-- a dropped retired_at column is not consulted
UPDATE agents a SET status = b.status FROM before b WHERE a.id = b.id;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 100);
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';

-- batch boundaries: the stalest first, three calls of 1, then 0
UPDATE agents a SET status = b.status FROM before b WHERE a.id = b.id;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 1) AS batch_of_1;
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';
SELECT certctl_sched.mark_stale_agents_offline(:'now', 1) AS batch_of_1;
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';
SELECT certctl_sched.mark_stale_agents_offline(:'now', 1) AS batch_of_1;
SELECT string_agg(id, ' ' ORDER BY id) AS offline FROM agents WHERE status = 'Offline';
SELECT certctl_sched.mark_stale_agents_offline(:'now', 1) AS batch_of_1;
UPDATE agents a SET status = b.status FROM before b WHERE a.id = b.id;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 3) AS batch_of_3;
SELECT certctl_sched.mark_stale_agents_offline(:'now', 3) AS batch_of_3;

RESET certctl_sched.certctl_schema;
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA body_agents CASCADE;
RESET client_min_messages;

-- test/certctl_data.sql: deterministic certctl fixture data (a realistic mix of statuses, casing drift and edge cases)
\set certctl_data_saved_echo :ECHO
\set ECHO none
--
-- Fills the (empty) tables created by test/certctl_schema.sql, wherever search_path finds them, in one transaction.
-- Set-based only (INSERT ... SELECT generate_series): certs=1000000 takes about 25 s.  Same variables give the same
-- rows: random() is seeded with setseed(), and every time is an offset from :now.
--
-- psql variables (all optional):
--   certs    number of managed_certificates              (default 300; at least 1)
--   agents   number of agents, besides 'server-scanner'   (default max(10, certs/20))
--   jobs     number of jobs                               (default certs/5)
--   owners   number of owners                             (default max(20, certs/100))
--   teams    number of teams                              (default max(4, owners/10))
--   now      timestamptz literal all times are relative to (default: the current time)
--   quiet    if set, print nothing at the end             (default: print counts per table and status)
--   bulk     on: load like pg_restore (see below)         (default: on when certs >= 100000)
-- e.g.  psql -X -v ON_ERROR_STOP=1 -v certs=1000 -v now="'2026-11-28 12:00:00+00'" -f test/certctl_data.sql
--
-- The first rows of managed_certificates, agents and jobs are one of each kind (see the CASE lists), so even small
-- data sets contain every edge case; after them, kinds repeat in exact proportions per 1000 (per 100 for agents).
-- 'cert-2' is the first certificate on the disabled issuer 'iss-legacy' (every 97th after it too).

-- stop at the first error, and no command tags or echo while filling (all restored at the end, e.g. for pg_regress)
\set certctl_data_saved_stop :ON_ERROR_STOP
\set certctl_data_saved_quiet :QUIET
\set ON_ERROR_STOP on
\set QUIET on
\if :{?certs}
\else
\set certs 300
\endif
\if :{?now}
\else
\set now now
\endif
\if :{?agents}
\else
SELECT greatest(10, :certs / 20) AS agents \gset
\endif
\if :{?jobs}
\else
SELECT :certs / 5 AS jobs \gset
\endif
\if :{?owners}
\else
SELECT greatest(20, :certs / 100) AS owners \gset
\endif
\if :{?teams}
\else
SELECT greatest(4, :owners / 10) AS teams \gset
\endif
-- accept now='2026-11-28 12:00:00+00' with or without its quotes, and pin it to one literal
SELECT quote_literal(btrim(:'now', '''')::timestamptz) AS now \gset
SELECT (:certs >= 1 AND :agents >= 1 AND :jobs >= 0 AND :owners >= 1 AND :teams >= 1) AS certctl_data_ok \gset
\if :certctl_data_ok
\else
DO $$
BEGIN
	RAISE EXCEPTION 'certctl_data.sql: certs, agents, owners and teams must be at least 1, jobs at least 0';
END
$$;
\endif

-- All or nothing: one transaction (unless the caller already opened one; then it is the caller's to end).
-- In an open transaction block this statement started later than the transaction did.
SELECT transaction_timestamp() = statement_timestamp() AS certctl_data_own_xact \gset
\if :certctl_data_own_xact
BEGIN;
\endif
-- Speed (settings restored at the end): JIT compiling costs more than it saves here.  Bulk mode (default for
-- certs >= 100000, or -v bulk=on/off) loads like pg_restore: the secondary indexes and foreign keys of the tables
-- filled here are dropped first and re-created after the load, built by one sort and checked by one join each
-- instead of row by row.  Constraint-backed and extension-owned indexes are left alone.
\if :{?bulk}
\else
SELECT :certs >= 100000 AS bulk \gset
\endif
SELECT current_setting('jit') AS certctl_data_saved_jit,
	   current_setting('work_mem') AS certctl_data_saved_work_mem,
	   current_setting('maintenance_work_mem') AS certctl_data_saved_mwm \gset
SELECT set_config('jit', 'off', false), set_config('work_mem', '64MB', false),
	   set_config('maintenance_work_mem', '256MB', false) \g /dev/null
\if :bulk
CREATE TEMP TABLE certctl_data_deferred ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY kind, oid) AS ord, drop_sql, create_sql
FROM (
	SELECT 1 AS kind, i.indexrelid AS oid, format('DROP INDEX %s', i.indexrelid::regclass) AS drop_sql,
		   pg_get_indexdef(i.indexrelid) AS create_sql
	FROM pg_index i
	WHERE i.indrelid = ANY (ARRAY['owners', 'managed_certificates', 'agents', 'deployment_targets',
								  'certificate_target_mappings', 'jobs', 'notification_events', 'audit_events']::regclass[])
	  AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
	  AND NOT EXISTS (SELECT FROM pg_depend d
					  WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid AND d.deptype = 'e')
	UNION ALL
	SELECT 2, c.oid, format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname),
		   format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
	FROM pg_constraint c
	WHERE c.contype = 'f'
	  AND c.conrelid = ANY (ARRAY['owners', 'managed_certificates', 'deployment_targets', 'certificate_target_mappings',
								  'jobs', 'notification_events']::regclass[])
) d;
SELECT drop_sql FROM certctl_data_deferred ORDER BY ord \gexec
\endif

SELECT setseed(0.20260328) \g /dev/null

-- issuers: certctl's registry keys (enabled) plus one that is disabled
INSERT INTO issuers (id, name, type, config, enabled, created_at, updated_at)
SELECT id, name, type, config::jsonb, enabled,
	   :now::timestamptz - interval '400 days', :now::timestamptz - interval '400 days'
FROM (VALUES
	('iss-local', 'Local CA', 'GenericCA', '{"ca_common_name":"certctl Local CA"}', true),
	('iss-acme-staging', 'ACME staging', 'ACME', '{"directory_url":"https://acme.invalid/staging/directory"}', true),
	('iss-acme-prod', 'ACME production', 'ACME', '{"directory_url":"https://acme.invalid/directory"}', true),
	('iss-stepca', 'step-ca', 'StepCA', '{"url":"https://ca.corp.example:9000","provisioner":"certctl"}', true),
	('iss-openssl', 'OpenSSL script', 'OpenSSL', '{"sign_script":"/opt/certctl/sign.sh"}', true),
	('iss-legacy', 'Legacy CA (retired)', 'GenericCA', '{}', false)
) AS v(id, name, type, config, enabled);

-- certificate profiles: short-lived means allow_short_lived AND 0 < max_ttl_seconds < 3600 (prof-short-lived only)
INSERT INTO certificate_profiles (id, name, description, max_ttl_seconds, allow_short_lived, created_at, updated_at)
SELECT id, name, description, ttl, short,
	   :now::timestamptz - interval '300 days', :now::timestamptz - interval '300 days'
FROM (VALUES
	('prof-standard', 'Standard TLS', 'No TTL limit', 0, false),
	('prof-short-lived', 'Short-lived (15 min)', 'Ephemeral workload certificates', 900, true),
	('prof-short-no-ttl', 'Short-lived flag, no TTL', 'allow_short_lived but max_ttl_seconds 0: not short-lived', 0, true),
	('prof-two-hours', 'Two hours', 'max_ttl_seconds 7200: not short-lived', 7200, true)
) AS v(id, name, description, ttl, short);

-- certctl's later migrations renamed and added columns: fill whichever schema is there, certctl's at 4d59fd1
-- (test/certctl_schema.sql) or today's (test/certctl_schema_head.sql)
SELECT CASE WHEN 'renewal_policies.retry_interval_seconds' = ANY (cols) THEN 'retry_interval_seconds'
			ELSE 'retry_interval_minutes' END AS certctl_data_retry_col,
	   'renewal_policies.alert_channels' = ANY (cols) AS certctl_data_matrix,
	   'agents.retired_at' = ANY (cols) AS certctl_data_retired
FROM (SELECT array_agg(attrelid::regclass::text || '.' || attname) AS cols
	  FROM pg_attribute WHERE attrelid IN ('renewal_policies'::regclass, 'agents'::regclass) AND attnum > 0) a \gset

-- renewal policies, three of them with thresholds certctl falls back to [30,14,7,0] for
INSERT INTO renewal_policies (id, name, renewal_window_days, auto_renew, max_retries, :certctl_data_retry_col,
							  alert_thresholds_days, created_at, updated_at)
SELECT id, name, win, auto, 3, 60, thr::jsonb,
	   :now::timestamptz - interval '300 days', :now::timestamptz - interval '300 days'
FROM (VALUES
	('rp-standard', 'Standard', 30, true, '[30, 14, 7, 0]'),
	('rp-aggressive', 'Aggressive', 60, true, '[60, 30, 14, 7, 3, 0]'),
	('rp-manual', 'Manual renewal', 30, false, '[30, 14, 7, 0]'),
	('rp-short', 'Short window', 14, true, '[14, 7, 0]'),
	('rp-malformed', 'Malformed thresholds (string)', 30, true, '"soon"'),
	('rp-empty-thresholds', 'Empty thresholds', 30, true, '[]'),
	('rp-bad-thresholds', 'Malformed thresholds (array of strings)', 30, true, '["a"]')
) AS v(id, name, win, auto, thr);

INSERT INTO teams (id, name, description, created_at, updated_at)
SELECT 'team-' || n,
	   (ARRAY['Platform', 'Security', 'Payments', 'Identity', 'Data', 'Edge', 'Mobile', 'Infra'])[1 + (n - 1) % 8]
	   || ' ' || n,
	   'Team ' || n, :now::timestamptz - interval '500 days', :now::timestamptz - interval '500 days'
FROM generate_series(1, :teams) n;

-- owner n belongs to team 1 + (n-1) % teams; every 50th owner (n % 50 = 7) has an empty email
INSERT INTO owners (id, name, email, team_id, created_at, updated_at)
SELECT 'o-' || n, fn || ' ' || ln,
	   CASE WHEN n % 50 = 7 THEN '' ELSE lower(fn || '.' || ln || n) || '@example.com' END,
	   'team-' || (1 + (n - 1) % :teams), :now::timestamptz - interval '450 days', :now::timestamptz - interval '450 days'
FROM (SELECT n,
			 (ARRAY['Alice', 'Bob', 'Carol', 'Dave', 'Erin', 'Frank', 'Grace', 'Heidi', 'Ivan', 'Judy',
					'Mallory'])[1 + n % 11] AS fn,
			 (ARRAY['Nguyen', 'Smith', 'Garcia', 'Müller', 'Kowalski', 'Tanaka', 'Okafor', 'Rossi', 'Silva'])[1 + n % 9] AS ln
	  FROM generate_series(1, :owners) n) o;

-- managed certificates.  kind (1-13): rows 1-13 are one of each, then (g * 7919) % 1000 spreads them per mille:
--   1 Active, expires 31-400 days out (58%)     2 Active, expires within 31 days (15%)   3 Expiring (5%)
--   4 Expired, in the past (3%)                 5 RenewalInProgress (3%)                6 Revoked (2%)
--   7 Archived (2%)                             8 Pending (2%)                          9 Failed (1%)
--  10 lowercase 'active'/'expiring' (5%)       11 NULL expires_at (1%)
--  12 short-lived profile, expiry within +-15 minutes, half already past (2%)
--  13 Active on a not-short-lived profile with a small TTL, expired seconds to minutes ago (1%)
-- issuer: 'iss-legacy' (disabled) when g % 97 = 2
INSERT INTO managed_certificates (id, name, common_name, sans, environment, owner_id, team_id, issuer_id,
								  renewal_policy_id, status, expires_at, tags, last_renewal_at, last_deployment_at,
								  created_at, updated_at, certificate_profile_id, revoked_at, revocation_reason)
SELECT 'cert-' || g,
	   svc || '-' || CASE env WHEN 'production' THEN 'prod' WHEN 'staging' THEN 'stg' WHEN 'development' THEN 'dev'
							ELSE 'qa' END || '-' || g,
	   cn,
	   CASE WHEN r7 < 0.1 THEN ARRAY[]::text[]
			WHEN r7 < 0.7 THEN ARRAY[cn]
			ELSE ARRAY[cn, svc || '-alt-' || g || '.' || dom] END,
	   env,
	   'o-' || own,
	   'team-' || (1 + (own - 1) % :teams),
	   CASE WHEN g % 97 = 2 THEN 'iss-legacy'
			WHEN r4 < 0.25 THEN 'iss-local'
			WHEN r4 < 0.60 THEN 'iss-acme-prod'
			WHEN r4 < 0.70 THEN 'iss-acme-staging'
			WHEN r4 < 0.90 THEN 'iss-stepca'
			ELSE 'iss-openssl' END,
	   CASE WHEN kind = 12 THEN 'rp-short'
			WHEN r5 < 0.55 THEN 'rp-standard'
			WHEN r5 < 0.70 THEN 'rp-aggressive'
			WHEN r5 < 0.80 THEN 'rp-manual'
			WHEN r5 < 0.88 THEN 'rp-short'
			WHEN r5 < 0.92 THEN 'rp-malformed'
			WHEN r5 < 0.96 THEN 'rp-empty-thresholds'
			ELSE 'rp-bad-thresholds' END,
	   status, exp,
	   jsonb_build_object('app', svc, 'env', env, 'cost_center', 'cc-' || (100 + own % 40)),
	   CASE WHEN r12 < 0.4 AND kind NOT IN (8, 11, 12) THEN created + (t0 - created) * r12 END,
	   CASE WHEN r12 > 0.3 AND kind NOT IN (8, 11) THEN created + (t0 - created) * (r12 - 0.3) END,
	   created,
	   created + (t0 - created) * r11,
	   CASE WHEN kind = 12 THEN 'prof-short-lived'
			WHEN kind = 13 THEN CASE WHEN r2 < 0.5 THEN 'prof-two-hours' ELSE 'prof-short-no-ttl' END
			WHEN r3 < 0.90 THEN 'prof-standard'
			WHEN r3 < 0.95 THEN NULL
			ELSE 'prof-short-no-ttl' END,
	   CASE WHEN kind = 6 OR status = 'Revoked' THEN t0 - interval '1 hour' - r9 * interval '60 days' END,
	   CASE WHEN kind = 6 OR status = 'Revoked' THEN
			(ARRAY['keyCompromise', 'superseded', 'cessationOfOperation', 'affiliationChanged'])[1 + floor(r8 * 4)::int] END
FROM (
	SELECT *,
		   svc || '-' || g || '.' || dom AS cn,
		   -- issued some time before its expiry (short-lived ones 15 minutes before), never in the future
		   CASE WHEN kind IN (12, 13) THEN least(t0, exp - interval '15 minutes')
				WHEN exp IS NULL THEN t0 - r9 * interval '30 days'
				ELSE least(t0 - interval '1 hour' - r9 * interval '30 days',
						   exp - interval '90 days' - r9 * interval '300 days') END AS created
	FROM (
		SELECT *,
			   (ARRAY['api', 'www', 'auth', 'billing', 'grafana', 'vault', 'mail', 'vpn', 'cdn', 'shop', 'search',
					  'git', 'ci', 'registry', 'kafka', 'db'])[1 + floor(r6 * 16)::int] AS svc,
			   (ARRAY['example.com', 'example.net', 'example.org', 'corp.example', 'svc.test'])[1 + floor(r7 * 5)::int] AS dom,
			   CASE WHEN r8 < 0.5 THEN 'production' WHEN r8 < 0.75 THEN 'staging'
					WHEN r8 < 0.9 THEN 'development' ELSE 'qa' END AS env,
			   1 + floor(r10 * :owners)::int AS own,
			   CASE kind
				   WHEN 1 THEN 'Active' WHEN 2 THEN 'Active' WHEN 3 THEN 'Expiring' WHEN 4 THEN 'Expired'
				   WHEN 5 THEN 'RenewalInProgress' WHEN 6 THEN 'Revoked' WHEN 7 THEN 'Archived'
				   WHEN 8 THEN 'Pending' WHEN 9 THEN 'Failed'
				   WHEN 10 THEN CASE WHEN r2 < 0.6 THEN 'active' ELSE 'expiring' END
				   WHEN 11 THEN CASE WHEN r2 < 0.5 THEN 'Active' ELSE 'Pending' END
				   WHEN 12 THEN CASE WHEN r2 < 0.70 THEN 'Active' WHEN r2 < 0.85 THEN 'Expiring'
									 WHEN r2 < 0.90 THEN 'active' WHEN r2 < 0.95 THEN 'Revoked' ELSE 'Expired' END
				   ELSE 'Active' END AS status,
			   t0 + CASE kind
				   WHEN 1 THEN interval '31 days 1 hour' + r1 * interval '369 days'
				   WHEN 2 THEN interval '1 hour' + r1 * interval '30 days 22 hours'
				   WHEN 3 THEN interval '1 hour' + r1 * interval '30 days'
				   WHEN 4 THEN -(interval '1 hour' + r1 * interval '120 days')
				   WHEN 5 THEN -interval '2 days' + r1 * interval '32 days'
				   WHEN 6 THEN -interval '30 days' + r1 * interval '330 days'
				   WHEN 7 THEN -interval '400 days' + r1 * interval '420 days'
				   WHEN 8 THEN -interval '5 days' + r1 * interval '65 days'
				   WHEN 9 THEN -interval '10 days' + r1 * interval '50 days'
				   WHEN 10 THEN CASE WHEN r2 < 0.6 THEN -interval '3 days' + r1 * interval '200 days'
									 ELSE interval '1 hour' + r1 * interval '30 days' END
				   WHEN 12 THEN -interval '15 minutes' + r1 * interval '30 minutes'
				   WHEN 13 THEN -(interval '5 seconds' + r1 * interval '30 minutes')
			   END AS exp
		FROM (
			SELECT g,
				   CASE WHEN g <= 13 THEN g
						WHEN k < 570 THEN 1 WHEN k < 720 THEN 2 WHEN k < 770 THEN 3 WHEN k < 800 THEN 4
						WHEN k < 830 THEN 5 WHEN k < 850 THEN 6 WHEN k < 870 THEN 7 WHEN k < 890 THEN 8
						WHEN k < 900 THEN 9 WHEN k < 950 THEN 10 WHEN k < 960 THEN 11 WHEN k < 980 THEN 12
						WHEN k < 990 THEN 13 ELSE 1 END AS kind,
				   random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5, random() AS r6,
				   random() AS r7, random() AS r8, random() AS r9, random() AS r10, random() AS r11,
				   random() AS r12,
				   :now::timestamptz AS t0
			FROM (SELECT g, (g::bigint * 7919) % 1000 AS k FROM generate_series(1, :certs) g) gg
		) s
		OFFSET 0	-- evaluate each derived column once per row, not once per reference
	) d
	OFFSET 0
) c;
ANALYZE managed_certificates;	-- the statements below join it: give the planner real numbers

-- agents.  kind (1-10): rows 1-10 are one of each, then (n * 37) % 100 spreads them per cent:
--   1 Online, fresh heartbeat (<1 min; 55%)       2 Online, 2-5 minutes stale (5%)
--   3 Online, stale 6 minutes to 3 days (10%)     4 lowercase 'online', stale 5 minutes to 2 days (5%)
--   5 lowercase 'online', fresh (2%)               6 Offline, heartbeat hours to a month old (13%)
--   7 Online, NULL heartbeat (3%)                  8 lowercase 'offline', NULL heartbeat (3%)
--   9 Degraded, fresh (2%)                        10 Offline, NULL heartbeat (2%)
INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, registered_at, api_key_hash,
					os, architecture, ip_address, version)
SELECT 'agent-' || n, role || '-' || n, role || '-' || n || '.corp.example',
	   CASE kind WHEN 4 THEN 'online' WHEN 5 THEN 'online' WHEN 6 THEN 'Offline' WHEN 8 THEN 'offline'
				 WHEN 9 THEN 'Degraded' WHEN 10 THEN 'Offline' ELSE 'Online' END,
	   hb,
	   least(coalesce(hb, t0), t0 - interval '1 day' - r2 * interval '400 days'),
	   md5('certctl-agent-key-' || n),
	   CASE WHEN r3 < 0.75 THEN 'linux' WHEN r3 < 0.9 THEN 'windows' WHEN r3 < 0.97 THEN 'darwin' ELSE 'freebsd' END,
	   CASE WHEN r4 < 0.7 THEN 'amd64' ELSE 'arm64' END,
	   format('10.%s.%s.%s', (n >> 16) & 255, (n >> 8) & 255, n & 255),
	   (ARRAY['v1.0.0', 'v1.1.2', 'v1.2.0', 'v1.2.1'])[1 + floor(r4 * 4)::int]
FROM (
	SELECT *,
		   (ARRAY['web', 'edge', 'lb', 'app', 'k8s-node', 'mail', 'db'])[1 + floor(r3 * 7)::int] AS role,
		   t0 - CASE kind
			   WHEN 1 THEN r1 * interval '50 seconds'
			   WHEN 2 THEN interval '2 minutes 10 seconds' + r1 * interval '2 minutes 40 seconds'
			   WHEN 3 THEN interval '6 minutes' + r1 * interval '3 days'
			   WHEN 4 THEN interval '5 minutes 30 seconds' + r1 * interval '2 days'
			   WHEN 5 THEN r1 * interval '50 seconds'
			   WHEN 6 THEN interval '1 hour' + r1 * interval '30 days'
			   WHEN 9 THEN r1 * interval '50 seconds'
		   END AS hb
	FROM (
		SELECT n,
			   CASE WHEN n <= 10 THEN n
					WHEN k < 55 THEN 1 WHEN k < 60 THEN 2 WHEN k < 70 THEN 3 WHEN k < 75 THEN 4 WHEN k < 77 THEN 5
					WHEN k < 90 THEN 6 WHEN k < 93 THEN 7 WHEN k < 96 THEN 8 WHEN k < 98 THEN 9 ELSE 10 END AS kind,
			   random() AS r1, random() AS r2, random() AS r3, random() AS r4,
			   :now::timestamptz AS t0
		FROM (SELECT n, (n::bigint * 37) % 100 AS k FROM generate_series(1, :agents) n) nn
	) s
) a;

-- the network scanner's sentinel agent, as certctl's server creates it (no heartbeat, empty metadata)
INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, registered_at, api_key_hash,
					os, architecture, ip_address, version)
VALUES ('server-scanner', 'Network Scanner (Server-Side)', '', 'Online', NULL,
		:now::timestamptz - interval '400 days', '',
		'', '', '', '');

-- deployment targets: one per agent, a second one on every third agent; every 20th agent's first one disabled
INSERT INTO deployment_targets (id, name, type, agent_id, config, enabled, created_at, updated_at)
SELECT 'tgt-' || n || '-' || i,
	   lower(typ) || '-' || i,
	   typ,
	   'agent-' || n,
	   jsonb_build_object('cert_path', format('/etc/%s/certs/site-%s.pem', lower(typ), i), 'reload', true),
	   NOT (i = 1 AND n % 20 = 13),
	   :now::timestamptz - interval '200 days', :now::timestamptz - interval '200 days'
FROM generate_series(1, :agents) n
CROSS JOIN LATERAL (SELECT i, (ARRAY['NGINX', 'Apache', 'HAProxy', 'F5', 'IIS'])[1 + (n + i) % 5] AS typ
					FROM generate_series(1, CASE WHEN n % 3 = 0 THEN 2 ELSE 1 END) i) t;

-- certificate -> target mappings for 30% of the certificates (plus a second target for some)
INSERT INTO certificate_target_mappings (certificate_id, target_id)
SELECT 'cert-' || g, 'tgt-' || a || '-' || i
FROM generate_series(1, :certs) g
CROSS JOIN LATERAL (SELECT 1 + (g::bigint * 7919) % :agents AS a) aa
CROSS JOIN LATERAL generate_series(1, CASE WHEN g % 10 = 0 AND a % 3 = 0 THEN 2 ELSE 1 END) i
WHERE g % 10 < 3;

-- jobs.  kind (1-17): rows 1-17 are one of each, then (n * 7919) % 1000 spreads them per mille:
--   1 Pending Renewal, scheduled in the past (10%)  2 ... scheduled_at NULL (2%)  3 ... scheduled in the future (3%)
--   4 Pending Issuance, scheduled past/NULL/future (5%)
--   5 Pending Deployment to a target whose agent has a fresh heartbeat (<= 5 min) (7%)
--   6 ... whose agent's heartbeat is older than 5 minutes (4%)   7 ... whose agent has no heartbeat (3%)
--   8 Pending Deployment without target_id (1%)   9 Pending Validation (3%)   10 Pending 'Rotation' (unknown type, 1%)
--  11 Completed (33%)   12 Failed (10%)   13 AwaitingCSR (6%)   14 Running (5%)
--  15 lowercase 'pending' Renewal/Deployment (4%)  16 Pending Renewal of a certificate on the disabled issuer (2%)
--  17 Cancelled (1%)
INSERT INTO jobs (id, type, certificate_id, target_id, status, attempts, max_attempts, last_error,
				  scheduled_at, started_at, completed_at, created_at, verification_status, verified_at)
WITH tgt AS MATERIALIZED (
	SELECT t.id,
		   CASE WHEN a.last_heartbeat_at IS NULL THEN 7
				WHEN a.last_heartbeat_at >= :now::timestamptz - interval '5 minutes' THEN 5 ELSE 6 END AS cls,
		   row_number() OVER (PARTITION BY CASE WHEN a.last_heartbeat_at IS NULL THEN 7
												WHEN a.last_heartbeat_at >= :now::timestamptz - interval '5 minutes'
												THEN 5 ELSE 6 END
							  ORDER BY t.id) AS rn,
		   row_number() OVER (ORDER BY t.id) AS rn_all
	FROM deployment_targets t JOIN agents a ON a.id = t.agent_id
), cls AS (
	SELECT cls, count(*) AS cnt FROM tgt GROUP BY cls
), ntgt AS (
	SELECT count(*) AS cnt FROM tgt
)
SELECT 'job-' || j.n, j.typ,
	   CASE WHEN j.kind = 16 AND :certs >= 2 THEN 'cert-' || (2 + 97 * floor(j.r2 * ((:certs - 2) / 97 + 1))::int)
			ELSE 'cert-' || (1 + floor(j.r2 * :certs)::int) END,
	   CASE WHEN j.typ = 'Deployment' AND j.kind <> 8 THEN coalesce(t1.id, t2.id) END,
	   j.status,
	   0, 3,
	   CASE WHEN j.status = 'Failed' THEN
			CASE j.typ WHEN 'Deployment' THEN 'agent is offline'
					   ELSE 'issuer renewal failed: ' || (ARRAY['acme: urn:ietf:params:acme:error:rateLimited',
																'context deadline exceeded',
																'stepca: 401 Unauthorized'])[1 + floor(j.r4 * 3)::int] END END,
	   CASE WHEN j.kind IN (2, 3, 4) THEN j.sched0 ELSE j.created END,
	   CASE WHEN j.status IN ('Completed', 'Failed', 'Running') THEN j.created + interval '30 seconds' END,
	   CASE WHEN j.status IN ('Completed', 'Failed')
			THEN j.created + interval '30 seconds' + j.r4 * interval '5 minutes' END,
	   j.created,
	   CASE WHEN j.status = 'Completed' AND j.typ = 'Deployment' THEN 'success' ELSE 'pending' END,
	   CASE WHEN j.status = 'Completed' AND j.typ = 'Deployment' THEN j.created + interval '10 minutes' END
FROM (
	SELECT *,
		   CASE WHEN kind IN (1, 2, 3, 16) THEN 'Renewal' WHEN kind = 4 THEN 'Issuance'
				WHEN kind BETWEEN 5 AND 8 THEN 'Deployment' WHEN kind = 9 THEN 'Validation' WHEN kind = 10 THEN 'Rotation'
				WHEN kind = 15 THEN CASE WHEN r1 < 0.5 THEN 'Renewal' ELSE 'Deployment' END
				ELSE (ARRAY['Renewal', 'Renewal', 'Deployment', 'Deployment', 'Issuance'])[1 + floor(r1 * 5)::int] END AS typ,
		   CASE kind WHEN 11 THEN 'Completed' WHEN 12 THEN 'Failed' WHEN 13 THEN 'AwaitingCSR' WHEN 14 THEN 'Running'
					 WHEN 15 THEN 'pending' WHEN 17 THEN 'Cancelled' ELSE 'Pending' END AS status,
		   CASE WHEN kind IN (11, 12, 17) THEN t0 - interval '1 day' - r5 * interval '60 days'
				WHEN kind IN (13, 14) THEN t0 - interval '1 minute' - r5 * interval '6 hours'
				ELSE t0 - interval '1 minute' - r5 * interval '3 days' END AS created,
		   CASE WHEN kind = 2 THEN NULL
				WHEN kind = 3 THEN t0 + interval '1 minute' + r6 * interval '2 days'
				WHEN kind = 4 THEN CASE WHEN r6 < 0.6 THEN t0 - r6 * interval '1 hour'
										WHEN r6 < 0.8 THEN NULL ELSE t0 + r6 * interval '1 day' END
				ELSE NULL END AS sched0
	FROM (
		SELECT n,
			   CASE WHEN n <= 17 THEN n
					WHEN k < 100 THEN 1 WHEN k < 120 THEN 2 WHEN k < 150 THEN 3 WHEN k < 200 THEN 4 WHEN k < 270 THEN 5
					WHEN k < 310 THEN 6 WHEN k < 340 THEN 7 WHEN k < 350 THEN 8 WHEN k < 380 THEN 9 WHEN k < 390 THEN 10
					WHEN k < 720 THEN 11 WHEN k < 820 THEN 12 WHEN k < 880 THEN 13 WHEN k < 930 THEN 14
					WHEN k < 970 THEN 15 WHEN k < 990 THEN 16 ELSE 17 END AS kind,
			   random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5, random() AS r6,
			   :now::timestamptz AS t0
		FROM (SELECT n, (n::bigint * 7919) % 1000 AS k FROM generate_series(1, :jobs) n) nn
	) s
) j
LEFT JOIN cls ON cls.cls = j.kind
LEFT JOIN tgt t1 ON t1.cls = j.kind AND t1.rn = 1 + floor(j.r3 * cls.cnt)
LEFT JOIN tgt t2 ON t2.rn_all = 1 + floor(j.r3 * (SELECT cnt FROM ntgt))
ORDER BY j.n;

-- ExpirationWarning alerts certctl's renewal loop already sent, in its exact message format: for an eighth of the
-- Expiring/Expired certificates (the thresholds already crossed), and, for 1/16 of the Active certificates
-- expiring within 31 days, alerts about their previous version (expiry one year earlier: certctl's dedup ignores
-- the expiry date, so these suppress the new alerts in certctl)
INSERT INTO notification_events (id, type, certificate_id, channel, recipient, message, sent_at, status, error)
SELECT 'notif-' || row_number() OVER (ORDER BY a.n, a.t DESC),
	   'ExpirationWarning', a.id, 'Email', a.recipient,
	   CASE WHEN a.t <= 0
			THEN format(E'[EXPIRED] The certificate for %s has expired (%s).\n\nImmediate action required.\n\n[threshold:%s]',
						a.common_name, to_char(a.exp AT TIME ZONE 'UTC', 'YYYY-MM-DD'), a.t)
			ELSE format(E'The certificate for %s will expire in %s days (%s).\n\nPlease schedule renewal.\n\n[threshold:%s]',
						a.common_name, trunc(extract(epoch FROM a.exp - a.sent_at) / 86400)::int,
						to_char(a.exp AT TIME ZONE 'UTC', 'YYYY-MM-DD'), a.t) END,
	   a.sent_at, 'sent', NULL
FROM (
	SELECT c.n, c.id, c.common_name, c.exp, c.created_at, c.old, t.t,
		   CASE WHEN o.email = '' THEN o.id ELSE o.email END AS recipient,
		   -- hourly ticks: a threshold t fires at the first tick with int(days left) <= t
		   c.exp - make_interval(days => t.t + 1) + interval '17 minutes' AS sent_at
	FROM (
		SELECT substr(id, 6)::int AS n, id, common_name, owner_id, created_at, status = 'Active' AS old,
			   CASE WHEN status = 'Active' THEN expires_at - interval '365 days' ELSE expires_at END AS exp
		FROM managed_certificates
		WHERE (status IN ('Expiring', 'Expired') AND substr(id, 6)::int % 8 = 4)
		   OR (status = 'Active' AND substr(id, 6)::int % 16 = 0
			   AND expires_at BETWEEN :now::timestamptz + interval '1 day' AND :now::timestamptz + interval '31 days')
	) c
	JOIN owners o ON o.id = c.owner_id
	CROSS JOIN unnest(ARRAY[30, 14, 7, 0]) AS t(t)
) a
WHERE a.sent_at <= :now::timestamptz AND (a.old OR a.sent_at >= a.created_at);

-- a few other notifications: renewal results already sent, plus pending and failed ones for the notification loop
INSERT INTO notification_events (id, type, certificate_id, channel, recipient, message, sent_at, status, error)
SELECT 'notif-x' || n, typ, 'cert-' || (1 + (n::bigint * 7919) % :certs), channel, 'pki-team@example.com', msg, sent,
	   st, NULL
FROM generate_series(1, greatest(6, :certs / 100)) n
CROSS JOIN LATERAL (
	SELECT CASE n % 6 WHEN 0 THEN 'RenewalFailure' WHEN 1 THEN 'DeploymentFailure' ELSE 'RenewalSuccess' END AS typ,
		   CASE WHEN n % 6 = 1 THEN 'Webhook' ELSE 'Email' END AS channel,
		   CASE n % 6 WHEN 0 THEN 'Certificate renewal failed: issuer renewal failed: context deadline exceeded'
					  WHEN 1 THEN 'Deployment failed: agent is offline'
					  ELSE 'Certificate renewed successfully' END AS msg,
		   CASE WHEN n % 6 IN (0, 1) AND n <= 12 THEN NULL
				WHEN n % 6 = 0 THEN timestamptz '0001-01-01 00:00:00+00'
				ELSE :now::timestamptz - n * interval '7 minutes' END AS sent,
		   CASE WHEN n % 6 IN (0, 1) AND n <= 12 THEN 'pending' WHEN n % 6 = 0 THEN 'failed' ELSE 'sent' END AS st
) x;

-- audit events: one per alert above, one per pending renewal job created by certctl's loop, a few agent events
INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
SELECT 'audit-a' || substr(id, 7), 'system', 'System', 'expiration_alert_sent', 'certificate', certificate_id,
	   jsonb_build_object('threshold_days', substring(message FROM '\[threshold:(-?\d+)\]')::int,
						  'days_until_expiry', coalesce(substring(message FROM 'will expire in (\d+) days')::int, 0)),
	   sent_at
FROM notification_events WHERE type = 'ExpirationWarning'
ORDER BY substr(id, 7)::int;

INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
SELECT 'audit-j' || substr(id, 5), 'system', 'System', 'renewal_job_created', 'certificate', certificate_id,
	   jsonb_build_object('job_id', id, 'days_until_expiry', 20.5), created_at
FROM jobs WHERE type = 'Renewal' AND status = 'Pending' AND certificate_id IS NOT NULL
ORDER BY substr(id, 5)::int;

INSERT INTO audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
SELECT 'audit-g' || n, 'agent-' || n, 'Agent', 'agent_registered', 'agent', 'agent-' || n,
	   jsonb_build_object('hostname', hostname), registered_at
FROM (SELECT substr(id, 7)::int AS n, hostname, registered_at FROM agents WHERE id LIKE 'agent-%') a
WHERE n <= 5
ORDER BY n;

-- today's certctl: policies routing alerts by severity tier to channels (migration 000026), and retired agents
-- (000015), among them the agents of some deployment targets
\if :certctl_data_matrix
UPDATE renewal_policies SET
	alert_channels = '{"informational": ["Email"], "warning": ["Email", "Slack"], "critical": ["Email", "PagerDuty"]}',
	alert_severity_map = '{"60": "informational", "30": "informational", "14": "warning", "7": "critical", "3": "critical"}'
WHERE id = 'rp-aggressive';
UPDATE renewal_policies SET alert_channels = '{"informational": [], "warning": ["Teams", "Pager"], "critical": ["OpsGenie"]}'
WHERE id = 'rp-short';
\endif
\if :certctl_data_retired
UPDATE agents SET retired_at = :now::timestamptz - interval '3 days', retired_reason = 'decommissioned'
WHERE id IN (SELECT 'agent-' || n FROM generate_series(11, :agents, 17) n);
\endif

ANALYZE teams, owners, issuers, certificate_profiles, renewal_policies, agents, deployment_targets,
		certificate_target_mappings, jobs, notification_events, audit_events;

\if :bulk
SELECT create_sql FROM certctl_data_deferred ORDER BY ord \gexec
\endif
SELECT set_config('jit', :'certctl_data_saved_jit', false),
	   set_config('work_mem', :'certctl_data_saved_work_mem', false),
	   set_config('maintenance_work_mem', :'certctl_data_saved_mwm', false) \g /dev/null
\if :certctl_data_own_xact
COMMIT;
\endif

\if :{?quiet}
\else
SELECT t AS "table", count AS rows
FROM (VALUES
	('teams', (SELECT count(*) FROM teams)),
	('owners', (SELECT count(*) FROM owners)),
	('issuers', (SELECT count(*) FROM issuers)),
	('certificate_profiles', (SELECT count(*) FROM certificate_profiles)),
	('renewal_policies', (SELECT count(*) FROM renewal_policies)),
	('managed_certificates', (SELECT count(*) FROM managed_certificates)),
	('agents', (SELECT count(*) FROM agents)),
	('deployment_targets', (SELECT count(*) FROM deployment_targets)),
	('certificate_target_mappings', (SELECT count(*) FROM certificate_target_mappings)),
	('jobs', (SELECT count(*) FROM jobs)),
	('notification_events', (SELECT count(*) FROM notification_events)),
	('audit_events', (SELECT count(*) FROM audit_events))
) AS v(t, count);

SELECT 'managed_certificates' AS "table", status, count(*) AS rows FROM managed_certificates GROUP BY status
UNION ALL
SELECT 'agents', status, count(*) FROM agents GROUP BY status
UNION ALL
SELECT 'jobs', type || ' ' || status, count(*) FROM jobs GROUP BY type, status
UNION ALL
SELECT 'notification_events', type || ' ' || status, count(*) FROM notification_events GROUP BY type, status
ORDER BY 1, 2;
\endif
\set ON_ERROR_STOP :certctl_data_saved_stop
\set QUIET :certctl_data_saved_quiet
\set ECHO :certctl_data_saved_echo

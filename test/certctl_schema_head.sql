-- test/certctl_schema_head.sql
--
-- certctl's tables as of its HEAD commit aad95d3, i.e. the state its migrations 000001..000028 leave them in,
-- restricted to the tables certctl_sched's loops read or write plus every table those reference by foreign key.
-- Written for certctl_sched's tests, demo and benchmarks against "today's certctl"; the 000008 equivalent is
-- test/certctl_schema.sql.
--
-- Each table is created with its final column set at HEAD, in certctl's column order (the order the migrations
-- add the columns); columns added after 000001 carry a comment naming the migration that added them.  Keys,
-- foreign keys (with certctl's auto-generated constraint names), defaults, CHECK constraints and indexes (incl.
-- the partial ones) are those the migrations leave at HEAD, with the same names, so that a catalog comparison
-- (pg_dump -s) against a database built by certctl's own migrations shows no difference for these tables.
-- Renames and drops are already folded in:
--   * 000015 turned deployment_targets.agent_id's foreign key from ON DELETE CASCADE into ON DELETE RESTRICT;
--   * 000017 renamed renewal_policies.retry_interval_minutes to retry_interval_seconds (default still 60,
--     which now reads as 60 seconds) and dropped network_scan_targets.health_check_enabled and
--     health_check_interval_seconds (added by 000011);
--   * 000012's index changes concern certificate_revocations only (not in this file).
-- As at 000008 there are no CHECK constraints on status or type columns; the only CHECKs in these tables are
-- certificate_profiles_acme_auth_mode_chk (000025) and the two on issuance_approval_requests (000027).  Status
-- defaults stay lowercase ('pending', 'offline') while certctl's Go code writes CamelCase.
--
-- audit_events is append-only at HEAD (000018): a BEFORE UPDATE OR DELETE row trigger raises check_violation
-- (SQLSTATE 23514) for every UPDATE or DELETE on it, whoever runs it (TRUNCATE is not affected: row triggers do
-- not fire for it).  Like the migration, this file also revokes UPDATE and DELETE on audit_events from a role
-- named certctl if one exists.
--
-- Not included (no loop of certctl_sched reads or writes them, and nothing here references them):
-- agent_group_members, certificate_revocations, policy_rules, policy_violations, endpoint_health_checks,
-- endpoint_health_history, crl_cache, crl_generation_events, ocsp_responders, ocsp_response_cache,
-- scep_probe_results, acme_*, intermediate_cas.
--
-- Idempotent (IF NOT EXISTS / OR REPLACE): loading it twice is fine.  It creates the HEAD schema in an empty
-- schema; it is not an upgrade script for a schema created by test/certctl_schema.sql (use certctl's migrations
-- for that).  Load it into the schema named by certctl_sched.certctl_schema (default public), e.g.
--   psql -v ON_ERROR_STOP=1 -d certctl -f test/certctl_schema_head.sql

CREATE TABLE IF NOT EXISTS teams (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	description TEXT,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_teams_name ON teams(name);

CREATE TABLE IF NOT EXISTS owners (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL,
	email VARCHAR(255) NOT NULL,
	team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_owners_email ON owners(email);
CREATE INDEX IF NOT EXISTS idx_owners_team_id ON owners(team_id);

-- 000003
CREATE TABLE IF NOT EXISTS certificate_profiles (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	description TEXT DEFAULT '',
	allowed_key_algorithms JSONB NOT NULL
		DEFAULT '[{"algorithm":"ECDSA","min_size":256},{"algorithm":"RSA","min_size":2048}]',
	max_ttl_seconds INT NOT NULL DEFAULT 0,
	allowed_ekus JSONB NOT NULL DEFAULT '["serverAuth"]',
	required_san_patterns JSONB NOT NULL DEFAULT '[]',
	spiffe_uri_pattern VARCHAR(512) DEFAULT '',
	allow_short_lived BOOLEAN NOT NULL DEFAULT false,
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	required_csr_attributes JSONB NOT NULL DEFAULT '[]',								-- 000022
	must_staple BOOLEAN NOT NULL DEFAULT false,											-- 000022
	acme_auth_mode TEXT NOT NULL DEFAULT 'trust_authenticated',							-- 000025
	requires_approval BOOLEAN NOT NULL DEFAULT false,									-- 000027
	CONSTRAINT certificate_profiles_acme_auth_mode_chk									-- 000025
		CHECK (acme_auth_mode IN ('trust_authenticated', 'challenge'))
);
CREATE INDEX IF NOT EXISTS idx_certificate_profiles_name ON certificate_profiles(name);
CREATE INDEX IF NOT EXISTS idx_certificate_profiles_enabled ON certificate_profiles(enabled);

-- 000004
CREATE TABLE IF NOT EXISTS agent_groups (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	description TEXT DEFAULT '',
	match_os VARCHAR(100) DEFAULT '',
	match_architecture VARCHAR(100) DEFAULT '',
	match_ip_cidr VARCHAR(45) DEFAULT '',
	match_version VARCHAR(50) DEFAULT '',
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_agent_groups_name ON agent_groups(name);
CREATE INDEX IF NOT EXISTS idx_agent_groups_enabled ON agent_groups(enabled);

CREATE TABLE IF NOT EXISTS renewal_policies (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	renewal_window_days INT NOT NULL,
	auto_renew BOOLEAN NOT NULL DEFAULT true,
	max_retries INT NOT NULL DEFAULT 3,
	retry_interval_seconds INT NOT NULL DEFAULT 60,		-- named retry_interval_minutes until 000017 (same values)
	alert_thresholds_days JSONB NOT NULL DEFAULT '[30, 14, 7, 0]',
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	certificate_profile_id TEXT REFERENCES certificate_profiles(id) ON DELETE SET NULL,	-- 000003
	agent_group_id TEXT REFERENCES agent_groups(id) ON DELETE SET NULL,					-- 000004
	-- 000026: {"<tier>": ["<channel>", ...]} and {"<threshold days>": "<tier>"}; '{}' = certctl's built-in defaults
	alert_channels JSONB NOT NULL DEFAULT '{}'::jsonb,									-- 000026
	alert_severity_map JSONB NOT NULL DEFAULT '{}'::jsonb								-- 000026
);
CREATE INDEX IF NOT EXISTS idx_renewal_policies_name ON renewal_policies(name);

CREATE TABLE IF NOT EXISTS issuers (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	type VARCHAR(255) NOT NULL,
	config JSONB,
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	encrypted_config BYTEA,																-- 000009
	last_tested_at TIMESTAMPTZ,															-- 000009
	test_status TEXT NOT NULL DEFAULT 'untested',										-- 000009
	source TEXT NOT NULL DEFAULT 'database',											-- 000009
	hierarchy_mode VARCHAR(20) NOT NULL DEFAULT 'single'								-- 000028
);
CREATE INDEX IF NOT EXISTS idx_issuers_name ON issuers(name);
CREATE INDEX IF NOT EXISTS idx_issuers_enabled ON issuers(enabled);

CREATE TABLE IF NOT EXISTS agents (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	hostname VARCHAR(255) NOT NULL,
	status VARCHAR(50) NOT NULL DEFAULT 'offline',
	last_heartbeat_at TIMESTAMPTZ,
	registered_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	api_key_hash VARCHAR(255) NOT NULL,
	os VARCHAR(100) DEFAULT '',															-- 000002
	architecture VARCHAR(100) DEFAULT '',												-- 000002
	ip_address VARCHAR(45) DEFAULT '',													-- 000002
	version VARCHAR(50) DEFAULT '',														-- 000002
	retired_at TIMESTAMPTZ,																-- 000015
	retired_reason TEXT																	-- 000015
);
CREATE INDEX IF NOT EXISTS idx_agents_status ON agents(status);
CREATE INDEX IF NOT EXISTS idx_agents_hostname ON agents(hostname);
CREATE INDEX IF NOT EXISTS idx_agents_last_heartbeat_at ON agents(last_heartbeat_at);
CREATE INDEX IF NOT EXISTS idx_agents_os ON agents(os);
CREATE INDEX IF NOT EXISTS idx_agents_architecture ON agents(architecture);
-- certctl's partial index uses a lowercase predicate that never matches the 'Online' its Go code writes
CREATE INDEX IF NOT EXISTS idx_agents_online_heartbeat ON agents(status, last_heartbeat_at) WHERE status = 'online';
CREATE INDEX IF NOT EXISTS idx_agents_retired_at ON agents(retired_at) WHERE retired_at IS NOT NULL;	-- 000015

CREATE TABLE IF NOT EXISTS managed_certificates (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	common_name VARCHAR(255) NOT NULL,
	sans TEXT[] DEFAULT ARRAY[]::TEXT[],
	environment VARCHAR(50),
	owner_id TEXT NOT NULL REFERENCES owners(id) ON DELETE RESTRICT,
	team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
	issuer_id TEXT NOT NULL REFERENCES issuers(id) ON DELETE RESTRICT,
	renewal_policy_id TEXT NOT NULL REFERENCES renewal_policies(id) ON DELETE RESTRICT,
	status VARCHAR(50) NOT NULL DEFAULT 'pending',
	expires_at TIMESTAMPTZ,
	tags JSONB NOT NULL DEFAULT '{}',
	last_renewal_at TIMESTAMPTZ,
	last_deployment_at TIMESTAMPTZ,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	certificate_profile_id TEXT REFERENCES certificate_profiles(id) ON DELETE SET NULL,	-- 000003
	revoked_at TIMESTAMPTZ,																-- 000005
	revocation_reason VARCHAR(50),														-- 000005
	source TEXT NOT NULL DEFAULT ''														-- 000023
);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_status ON managed_certificates(status);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_expires_at ON managed_certificates(expires_at);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_owner_id ON managed_certificates(owner_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_team_id ON managed_certificates(team_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_issuer_id ON managed_certificates(issuer_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_name ON managed_certificates(name);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_profile_id ON managed_certificates(certificate_profile_id);	-- 000003

CREATE TABLE IF NOT EXISTS deployment_targets (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL,
	type VARCHAR(255) NOT NULL,
	-- ON DELETE CASCADE until 000015, which re-created the constraint (same name) as RESTRICT
	agent_id TEXT NOT NULL CONSTRAINT deployment_targets_agent_id_fkey REFERENCES agents(id) ON DELETE RESTRICT,
	config JSONB,
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	encrypted_config BYTEA,																-- 000010
	last_tested_at TIMESTAMPTZ,															-- 000010
	test_status TEXT NOT NULL DEFAULT 'untested',										-- 000010
	source TEXT NOT NULL DEFAULT 'database',											-- 000010
	retired_at TIMESTAMPTZ,																-- 000015
	retired_reason TEXT																	-- 000015
);
CREATE INDEX IF NOT EXISTS idx_deployment_targets_agent_id ON deployment_targets(agent_id);
CREATE INDEX IF NOT EXISTS idx_deployment_targets_enabled ON deployment_targets(enabled);
CREATE INDEX IF NOT EXISTS idx_deployment_targets_name ON deployment_targets(name);
CREATE UNIQUE INDEX IF NOT EXISTS idx_deployment_targets_agent_name ON deployment_targets(agent_id, name);
CREATE INDEX IF NOT EXISTS idx_deployment_targets_retired_at ON deployment_targets(retired_at)		-- 000015
	WHERE retired_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS certificate_target_mappings (
	certificate_id TEXT NOT NULL REFERENCES managed_certificates(id) ON DELETE CASCADE,
	target_id TEXT NOT NULL REFERENCES deployment_targets(id) ON DELETE CASCADE,
	PRIMARY KEY (certificate_id, target_id)
);
CREATE INDEX IF NOT EXISTS idx_certificate_target_mappings_target_id ON certificate_target_mappings(target_id);

CREATE TABLE IF NOT EXISTS certificate_versions (
	id TEXT PRIMARY KEY,
	certificate_id TEXT NOT NULL REFERENCES managed_certificates(id) ON DELETE CASCADE,
	serial_number VARCHAR(255) NOT NULL,
	not_before TIMESTAMPTZ NOT NULL,
	not_after TIMESTAMPTZ NOT NULL,
	fingerprint_sha256 VARCHAR(255) NOT NULL UNIQUE,
	pem_chain TEXT NOT NULL,
	csr_pem TEXT,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	key_algorithm VARCHAR(50) DEFAULT '',												-- 000003
	key_size INT DEFAULT 0																-- 000003
);
CREATE INDEX IF NOT EXISTS idx_certificate_versions_certificate_id ON certificate_versions(certificate_id);
CREATE INDEX IF NOT EXISTS idx_certificate_versions_fingerprint ON certificate_versions(fingerprint_sha256);
CREATE INDEX IF NOT EXISTS idx_certificate_versions_cert_created ON certificate_versions(certificate_id, created_at DESC);

-- no new column since 000008, and still no unique constraint beyond the primary key
CREATE TABLE IF NOT EXISTS jobs (
	id TEXT PRIMARY KEY,
	type VARCHAR(255) NOT NULL,
	certificate_id TEXT REFERENCES managed_certificates(id) ON DELETE CASCADE,
	target_id TEXT REFERENCES deployment_targets(id) ON DELETE SET NULL,
	agent_id TEXT REFERENCES agents(id) ON DELETE SET NULL,
	status VARCHAR(50) NOT NULL DEFAULT 'pending',
	attempts INT NOT NULL DEFAULT 0,
	max_attempts INT NOT NULL DEFAULT 3,
	last_error TEXT,
	deployment_result JSONB,
	scheduled_at TIMESTAMPTZ,
	started_at TIMESTAMPTZ,
	completed_at TIMESTAMPTZ,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	verification_status TEXT DEFAULT 'pending',											-- 000008
	verified_at TIMESTAMPTZ,															-- 000008
	verification_fingerprint TEXT,														-- 000008
	verification_error TEXT																-- 000008
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS idx_jobs_certificate_id ON jobs(certificate_id);
CREATE INDEX IF NOT EXISTS idx_jobs_scheduled_at ON jobs(scheduled_at);
CREATE INDEX IF NOT EXISTS idx_jobs_agent_id ON jobs(agent_id);
CREATE INDEX IF NOT EXISTS idx_jobs_status_scheduled_at ON jobs(status, scheduled_at);
CREATE INDEX IF NOT EXISTS idx_jobs_verification_status ON jobs(verification_status);		-- 000008
CREATE INDEX IF NOT EXISTS idx_jobs_verified_at ON jobs(verified_at);						-- 000008

CREATE TABLE IF NOT EXISTS audit_events (
	id TEXT PRIMARY KEY,
	actor VARCHAR(255) NOT NULL,
	actor_type VARCHAR(50) NOT NULL,
	action VARCHAR(255) NOT NULL,
	resource_type VARCHAR(255) NOT NULL,
	resource_id VARCHAR(255) NOT NULL,
	details JSONB,
	timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_audit_events_resource_type_id ON audit_events(resource_type, resource_id);
CREATE INDEX IF NOT EXISTS idx_audit_events_actor ON audit_events(actor);
CREATE INDEX IF NOT EXISTS idx_audit_events_timestamp ON audit_events(timestamp);
CREATE INDEX IF NOT EXISTS idx_audit_events_action ON audit_events(action);
CREATE INDEX IF NOT EXISTS idx_audit_events_timestamp_desc ON audit_events(timestamp DESC);

-- 000018: audit_events is append-only.  Same function name, trigger name, message, SQLSTATE (check_violation)
-- and hint as certctl's migration.
CREATE OR REPLACE FUNCTION audit_events_block_modification()
RETURNS TRIGGER AS $$
BEGIN
	RAISE EXCEPTION 'audit_events is append-only (Bundle-6 / M-017 / HIPAA §164.312(b))'
		USING ERRCODE = 'check_violation',
			  HINT = 'Use a compliance superuser role for legitimate retention operations.';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER audit_events_worm_trigger
	BEFORE UPDATE OR DELETE ON audit_events
	FOR EACH ROW
	EXECUTE FUNCTION audit_events_block_modification();

DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'certctl') THEN
		REVOKE UPDATE, DELETE ON audit_events FROM certctl;
	END IF;
END $$;

CREATE TABLE IF NOT EXISTS notification_events (
	id TEXT PRIMARY KEY,
	type VARCHAR(255) NOT NULL,
	certificate_id TEXT REFERENCES managed_certificates(id) ON DELETE CASCADE,
	channel VARCHAR(255) NOT NULL,
	recipient VARCHAR(255) NOT NULL,
	message TEXT NOT NULL,
	sent_at TIMESTAMPTZ,
	status VARCHAR(50) NOT NULL DEFAULT 'pending',
	error TEXT,
	retry_count INTEGER NOT NULL DEFAULT 0,												-- 000016
	next_retry_at TIMESTAMPTZ,															-- 000016
	last_error TEXT,																	-- 000016
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()										-- 000017
);
CREATE INDEX IF NOT EXISTS idx_notification_events_certificate_id ON notification_events(certificate_id);
CREATE INDEX IF NOT EXISTS idx_notification_events_status ON notification_events(status);
CREATE INDEX IF NOT EXISTS idx_notification_events_type ON notification_events(type);
CREATE INDEX IF NOT EXISTS idx_notification_events_retry_sweep ON notification_events(next_retry_at)	-- 000016
	WHERE status = 'failed' AND next_retry_at IS NOT NULL;

-- 000006
CREATE TABLE IF NOT EXISTS discovery_scans (
	id TEXT PRIMARY KEY,
	agent_id TEXT NOT NULL REFERENCES agents(id),
	directories TEXT[] NOT NULL,
	certificates_found INTEGER NOT NULL DEFAULT 0,
	certificates_new INTEGER NOT NULL DEFAULT 0,
	errors_count INTEGER NOT NULL DEFAULT 0,
	scan_duration_ms INTEGER NOT NULL DEFAULT 0,
	started_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	completed_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS idx_discovery_scans_agent_id ON discovery_scans(agent_id);
CREATE INDEX IF NOT EXISTS idx_discovery_scans_started_at ON discovery_scans(started_at DESC);

-- 000006
CREATE TABLE IF NOT EXISTS discovered_certificates (
	id TEXT PRIMARY KEY,
	fingerprint_sha256 TEXT NOT NULL,
	common_name TEXT NOT NULL DEFAULT '',
	sans TEXT[] DEFAULT '{}',
	serial_number TEXT NOT NULL DEFAULT '',
	issuer_dn TEXT NOT NULL DEFAULT '',
	subject_dn TEXT NOT NULL DEFAULT '',
	not_before TIMESTAMPTZ,
	not_after TIMESTAMPTZ,
	key_algorithm TEXT NOT NULL DEFAULT '',
	key_size INTEGER NOT NULL DEFAULT 0,
	is_ca BOOLEAN NOT NULL DEFAULT FALSE,
	pem_data TEXT NOT NULL DEFAULT '',
	source_path TEXT NOT NULL DEFAULT '',
	source_format TEXT NOT NULL DEFAULT 'PEM',
	agent_id TEXT NOT NULL REFERENCES agents(id),
	discovery_scan_id TEXT REFERENCES discovery_scans(id),
	managed_certificate_id TEXT REFERENCES managed_certificates(id),
	status TEXT NOT NULL DEFAULT 'Unmanaged',
	first_seen_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	last_seen_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	dismissed_at TIMESTAMPTZ,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_discovered_certs_fingerprint_agent_path
	ON discovered_certificates(fingerprint_sha256, agent_id, source_path);
CREATE INDEX IF NOT EXISTS idx_discovered_certs_agent_id ON discovered_certificates(agent_id);
CREATE INDEX IF NOT EXISTS idx_discovered_certs_status ON discovered_certificates(status);
CREATE INDEX IF NOT EXISTS idx_discovered_certs_fingerprint ON discovered_certificates(fingerprint_sha256);
CREATE INDEX IF NOT EXISTS idx_discovered_certs_not_after ON discovered_certificates(not_after);
CREATE INDEX IF NOT EXISTS idx_discovered_certs_managed_id ON discovered_certificates(managed_certificate_id)
	WHERE managed_certificate_id IS NOT NULL;

-- 000007 (000011 added health_check_enabled and health_check_interval_seconds; 000017 dropped them again)
CREATE TABLE IF NOT EXISTS network_scan_targets (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL,
	cidrs TEXT[] NOT NULL DEFAULT '{}',
	ports INTEGER[] NOT NULL DEFAULT '{443}',
	enabled BOOLEAN NOT NULL DEFAULT TRUE,
	scan_interval_hours INTEGER NOT NULL DEFAULT 6,
	timeout_ms INTEGER NOT NULL DEFAULT 5000,
	last_scan_at TIMESTAMPTZ,
	last_scan_duration_ms INTEGER,
	last_scan_certs_found INTEGER,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_network_scan_targets_enabled ON network_scan_targets(enabled) WHERE enabled = TRUE;

-- 000027: one row per approval decision for a job that certctl put in 'AwaitingApproval'
CREATE TABLE IF NOT EXISTS issuance_approval_requests (
	id TEXT PRIMARY KEY,
	certificate_id TEXT NOT NULL REFERENCES managed_certificates(id) ON DELETE CASCADE,
	job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
	profile_id TEXT NOT NULL REFERENCES certificate_profiles(id) ON DELETE RESTRICT,
	requested_by TEXT NOT NULL,
	state VARCHAR(20) NOT NULL DEFAULT 'pending',
	decided_by TEXT,
	decided_at TIMESTAMPTZ,
	decision_note TEXT,
	metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	CONSTRAINT approval_state_check CHECK (
		state IN ('pending', 'approved', 'rejected', 'expired')
	),
	CONSTRAINT approval_decision_consistency CHECK (
		(state = 'pending' AND decided_by IS NULL AND decided_at IS NULL)
		OR (state IN ('approved', 'rejected', 'expired') AND decided_at IS NOT NULL)
	)
);
-- at most one pending request per job
CREATE UNIQUE INDEX IF NOT EXISTS idx_approval_pending_per_job ON issuance_approval_requests(job_id)
	WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS idx_approval_state ON issuance_approval_requests(state);
CREATE INDEX IF NOT EXISTS idx_approval_certificate ON issuance_approval_requests(certificate_id);
CREATE INDEX IF NOT EXISTS idx_approval_pending_age ON issuance_approval_requests(created_at)
	WHERE state = 'pending';

-- test/certctl_schema.sql
--
-- certctl's tables as of its migration 000008 (the subset certctl_sched's loops read or write, plus what they
-- reference), written for certctl_sched's tests, demo and benchmarks.  Column names, types, keys, foreign keys and
-- indexes follow certctl; like certctl's migrations it is idempotent (IF NOT EXISTS) and has no CHECK constraints
-- on status or type columns.  Status defaults are lowercase, as in certctl, while certctl's Go code writes
-- CamelCase literals: the loop bodies must cope with both.
--
-- Load it into the schema named by certctl_sched.certctl_schema (default public), e.g.
--   psql -d certctl -f test/certctl_schema.sql

CREATE TABLE IF NOT EXISTS teams (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	description TEXT,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

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
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_certificate_profiles_name ON certificate_profiles(name);
CREATE INDEX IF NOT EXISTS idx_certificate_profiles_enabled ON certificate_profiles(enabled);

-- 000004
CREATE TABLE IF NOT EXISTS agent_groups (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	description TEXT DEFAULT '',
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS renewal_policies (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	renewal_window_days INT NOT NULL,
	auto_renew BOOLEAN NOT NULL DEFAULT true,
	max_retries INT NOT NULL DEFAULT 3,
	retry_interval_minutes INT NOT NULL DEFAULT 60,
	alert_thresholds_days JSONB NOT NULL DEFAULT '[30, 14, 7, 0]',
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	certificate_profile_id TEXT REFERENCES certificate_profiles(id) ON DELETE SET NULL,	-- 000003
	agent_group_id TEXT REFERENCES agent_groups(id) ON DELETE SET NULL					-- 000004
);
CREATE INDEX IF NOT EXISTS idx_renewal_policies_name ON renewal_policies(name);

CREATE TABLE IF NOT EXISTS issuers (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	type VARCHAR(255) NOT NULL,
	config JSONB,
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_issuers_enabled ON issuers(enabled);

CREATE TABLE IF NOT EXISTS agents (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL UNIQUE,
	hostname VARCHAR(255) NOT NULL,
	status VARCHAR(50) NOT NULL DEFAULT 'offline',
	last_heartbeat_at TIMESTAMPTZ,
	registered_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	api_key_hash VARCHAR(255) NOT NULL,
	os VARCHAR(100) DEFAULT '',							-- 000002
	architecture VARCHAR(100) DEFAULT '',
	ip_address VARCHAR(45) DEFAULT '',
	version VARCHAR(50) DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idx_agents_status ON agents(status);
CREATE INDEX IF NOT EXISTS idx_agents_hostname ON agents(hostname);
CREATE INDEX IF NOT EXISTS idx_agents_last_heartbeat_at ON agents(last_heartbeat_at);
CREATE INDEX IF NOT EXISTS idx_agents_os ON agents(os);
CREATE INDEX IF NOT EXISTS idx_agents_architecture ON agents(architecture);
-- certctl's partial index uses a lowercase predicate that never matches the 'Online' its Go code writes
CREATE INDEX IF NOT EXISTS idx_agents_online_heartbeat ON agents(status, last_heartbeat_at) WHERE status = 'online';

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
	revocation_reason VARCHAR(50)
);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_status ON managed_certificates(status);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_expires_at ON managed_certificates(expires_at);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_owner_id ON managed_certificates(owner_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_team_id ON managed_certificates(team_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_issuer_id ON managed_certificates(issuer_id);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_name ON managed_certificates(name);
CREATE INDEX IF NOT EXISTS idx_managed_certificates_profile_id ON managed_certificates(certificate_profile_id);

CREATE TABLE IF NOT EXISTS deployment_targets (
	id TEXT PRIMARY KEY,
	name VARCHAR(255) NOT NULL,
	type VARCHAR(255) NOT NULL,
	agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
	config JSONB,
	enabled BOOLEAN NOT NULL DEFAULT true,
	created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
	updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_deployment_targets_agent_id ON deployment_targets(agent_id);
CREATE UNIQUE INDEX IF NOT EXISTS idx_deployment_targets_agent_name ON deployment_targets(agent_id, name);

CREATE TABLE IF NOT EXISTS certificate_target_mappings (
	certificate_id TEXT NOT NULL REFERENCES managed_certificates(id) ON DELETE CASCADE,
	target_id TEXT NOT NULL REFERENCES deployment_targets(id) ON DELETE CASCADE,
	PRIMARY KEY (certificate_id, target_id)
);

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
	key_algorithm VARCHAR(50) DEFAULT '',				-- 000003
	key_size INT DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_certificate_versions_certificate_id ON certificate_versions(certificate_id);

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
	verification_status TEXT DEFAULT 'pending',			-- 000008
	verified_at TIMESTAMPTZ,
	verification_fingerprint TEXT,
	verification_error TEXT
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS idx_jobs_certificate_id ON jobs(certificate_id);
CREATE INDEX IF NOT EXISTS idx_jobs_scheduled_at ON jobs(scheduled_at);
CREATE INDEX IF NOT EXISTS idx_jobs_agent_id ON jobs(agent_id);
CREATE INDEX IF NOT EXISTS idx_jobs_status_scheduled_at ON jobs(status, scheduled_at);
CREATE INDEX IF NOT EXISTS idx_jobs_verification_status ON jobs(verification_status);
CREATE INDEX IF NOT EXISTS idx_jobs_verified_at ON jobs(verified_at);

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

-- no created_at column at 000008 (certctl adds one in 000017)
CREATE TABLE IF NOT EXISTS notification_events (
	id TEXT PRIMARY KEY,
	type VARCHAR(255) NOT NULL,
	certificate_id TEXT REFERENCES managed_certificates(id) ON DELETE CASCADE,
	channel VARCHAR(255) NOT NULL,
	recipient VARCHAR(255) NOT NULL,
	message TEXT NOT NULL,
	sent_at TIMESTAMPTZ,
	status VARCHAR(50) NOT NULL DEFAULT 'pending',
	error TEXT
);
CREATE INDEX IF NOT EXISTS idx_notification_events_certificate_id ON notification_events(certificate_id);
CREATE INDEX IF NOT EXISTS idx_notification_events_status ON notification_events(status);
CREATE INDEX IF NOT EXISTS idx_notification_events_type ON notification_events(type);

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

-- 000007
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

-- network_scan: the SQL of the network scan loop, no network: endpoint expansion (CIDRs, ports, reserved addresses,
-- allowed networks), the claim of due targets (interval, bad rows, endpoint budget), and the recording of results on
-- both certctl schemas (foreign-key order, upsert semantics, deduplication, counts, audit details, targets cut short)
\set now '2026-11-28 12:00:00+00'
\set SHOW_CONTEXT never
CREATE SCHEMA ns_old;
CREATE SCHEMA ns_head;
SET search_path = ns_old;
\set ECHO none
\i test/certctl_schema.sql
SET search_path = ns_head;
\i test/certctl_schema_head.sql
\set ECHO all
RESET search_path;

-- the egress policy: reserved addresses, loopback only when allowed
SELECT a, certctl_sched._address_refusal(a::inet, false) AS refused, certctl_sched._address_refusal(a::inet, true) AS with_loopback
FROM unnest(ARRAY['10.1.2.3', '192.168.0.1', '127.0.0.1', '127.255.255.254', '::1', '0.0.0.0', '0.1.2.3', '::',
	'169.254.169.254', 'fe80::1', '224.0.0.1', '239.255.255.250', 'ff02::1', '255.255.255.255', '::ffff:127.0.0.1',
	'::ffff:10.0.0.1', '2001:db8::1']) AS a;

-- expansion: a plain address as is; a CIDR masked as Go does (10.0.0.1/30 is 10.0.0.0/30) without network and
-- broadcast when more than two addresses remain; /31 and /32 whole; IPv6 bracketed; wider than 12 host bits, or not
-- an address, an error of the entry; reserved addresses left out with a note; ports crossed
SELECT * FROM certctl_sched._scan_endpoints(ARRAY['10.0.0.5', '10.0.0.1/30', '10.0.1.0/31', '10.0.2.7/32',
	'2001:db8::/126', 'not-an-address', '10.0.0.0/19', '2001:db8::/115', '169.254.169.254', '127.0.0.0/30', NULL],
	ARRAY[443, 8443], false, '{}');
-- a /20: 4096 addresses, network and broadcast dropped; an IPv6 /116 likewise
SELECT count(*), min(address), max(address) FROM certctl_sched._scan_endpoints(ARRAY['10.8.0.0/20'], ARRAY[443], false, '{}');
SELECT count(*), min(address), max(address) FROM certctl_sched._scan_endpoints(ARRAY['2001:db8::/116'], ARRAY[443], false, '{}');
-- reserved addresses are filtered first, then the first and last of what remains dropped (as today's certctl does)
SELECT * FROM certctl_sched._scan_endpoints(ARRAY['127.0.0.0/29'], ARRAY[443], true, '{}');
-- certctl_sched.network_scan_allowed_networks: only addresses inside them (network and broadcast are the range's)
SELECT * FROM certctl_sched._scan_endpoints(ARRAY['10.0.0.0/29', '192.168.1.1'], ARRAY[443], false,
	'{10.0.0.0/30, 192.168.0.0/16}');
SELECT endpoint FROM certctl_sched._scan_endpoints('{10.0.0.0/24}', '{443, 443}', false,
	'{10.0.0.5/32, 10.0.0.6/32, 10.0.0.7/32}') WHERE endpoint IS NOT NULL;
-- an IPv4-mapped address is written as its IPv4 address
SELECT endpoint FROM certctl_sched._scan_endpoints('{::ffff:10.9.8.7}', '{443}', false, '{}');

-- targets (today's schema): due ones, one never scanned, one not due, bad rows
SET certctl_sched.certctl_schema = 'ns_head';
INSERT INTO ns_head.network_scan_targets (id, name, cidrs, ports, enabled, scan_interval_hours, timeout_ms, last_scan_at)
VALUES
	('t1', 'web', '{10.0.0.0/30, bogus}', '{443}', true, 6, 5000, NULL),
	('t2', 'due', '{10.0.1.1}', '{443, 8443}', true, 6, 3000, :'now'::timestamptz - interval '6 hours'),
	('t3', 'not due', '{10.0.2.1}', '{443}', true, 6, 5000, :'now'::timestamptz - interval '5 hours 59 minutes'),
	('t4', 'disabled', '{10.0.3.1}', '{443}', false, 6, 5000, NULL),
	('t5', 'bad port', '{10.0.4.1}', '{443, 70000}', true, 6, 5000, NULL),
	('t6', 'bad timeout', '{10.0.5.1}', '{443}', true, 6, 0, NULL),
	('t7', 'bad interval', '{10.0.6.1}', '{443}', true, 0, 5000, NULL),
	('t8', 'wide', '{10.0.0.0/16}', '{443}', true, 6, 5000, NULL),
	('t9', 'too many endpoints', '{10.1.0.0/20, 10.2.0.0/20}', ARRAY(SELECT 1000 + p FROM generate_series(1, 9) p), true, 6,
		5000, NULL);
BEGIN;
SELECT claimed, skipped, skipped_example, skipped_ids, done, jsonb_pretty(targets)
FROM certctl_sched._scan_claim(:'now', 100, NULL, NULL, false, '{}');
ROLLBACK;
SELECT certctl_sched._scan_size('{10.1.0.0/20, 10.2.0.0/20, bogus, 10.0.0.0/8}', '{1, 2, 2}') AS t9_size;
-- the endpoint budget: whole targets until it is reached (here after the first); targets a previous run cut short
-- come last; the run leaves out the targets it skipped
BEGIN;
SELECT claimed, done, (SELECT array_agg(t ->> 'id') FROM jsonb_array_elements(targets) t)
FROM certctl_sched._scan_claim(:'now', 1, NULL, NULL, false, '{}');
ROLLBACK;
BEGIN;
SELECT claimed, done, (SELECT array_agg(t ->> 'id') FROM jsonb_array_elements(targets) t)
FROM certctl_sched._scan_claim(:'now', 1, '{t5, t6, t7, t9}', '{t1}', false, '{}');
ROLLBACK;

-- recording: a scan row per target (before the certificates that refer to it), the certificates deduplicated (the
-- same certificate twice in one chain), the target's last scan, an audit event; certificates_new from the upserts
\set cert1 '{"endpoint": "10.0.0.1:443", "fingerprint_sha256": "aa11", "common_name": "web.example", "sans": ["web.example", "www.web.example"], "serial_number": "1f", "issuer_dn": "CN=CA", "subject_dn": "CN=web.example", "not_before": "2026-01-01 00:00:00+00", "not_after": "2027-01-01 00:00:00+00", "key_algorithm": "RSA", "key_size": 2048, "is_ca": false, "pem_data": "-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\\n"}'
\set cert2 '{"endpoint": "10.0.0.1:443", "fingerprint_sha256": "bb22", "common_name": "CA", "sans": null, "serial_number": "2", "issuer_dn": "CN=CA", "subject_dn": "CN=CA", "not_before": "2026-01-01 00:00:00+00", "not_after": "2036-01-01 00:00:00+00", "key_algorithm": "ECDSA", "key_size": 256, "is_ca": true, "pem_data": "x"}'
SELECT certctl_sched._scan_record(:'now', jsonb_build_array(
	jsonb_build_object('id', 't1', 'cidrs', '["10.0.0.0/30", "bogus"]'::jsonb, 'complete', true,
		'started_at', '2026-11-28 11:59:58+00', 'duration_ms', 1500, 'endpoints', 2, 'errors_count', 2,
		'errors', '["bogus: not an IP address or CIDR", {"endpoint": "10.0.0.2:443", "error": "could not connect: Connection refused"}]'::jsonb,
		'notes', '[]'::jsonb, 'certs', jsonb_build_array(:'cert1'::jsonb, :'cert2'::jsonb, :'cert2'::jsonb)),
	jsonb_build_object('id', 't2', 'cidrs', '["10.0.1.1"]'::jsonb, 'complete', false,
		'started_at', '2026-11-28 11:59:58+00', 'duration_ms', 2000, 'endpoints', 2, 'errors_count', 1,
		'errors', '[{"endpoint": "10.0.1.1:8443", "error": "not finished: the scan was stopped (run timeout or shutdown)"}]'::jsonb,
		'notes', '[]'::jsonb, 'certs', '[]'::jsonb)));
SELECT id, name, hostname, status FROM ns_head.agents;
SELECT agent_id, directories, certificates_found, certificates_new, errors_count, scan_duration_ms, started_at,
	completed_at FROM ns_head.discovery_scans ORDER BY directories;
SELECT fingerprint_sha256, common_name, sans, serial_number, subject_dn, key_algorithm, key_size, is_ca, source_path,
	source_format, agent_id, status, first_seen_at, last_seen_at, discovery_scan_id IS NOT NULL AS has_scan
FROM ns_head.discovered_certificates ORDER BY fingerprint_sha256;
-- a target cut short keeps its old last scan, so the next run scans it again
SELECT id, last_scan_at, last_scan_duration_ms, last_scan_certs_found FROM ns_head.network_scan_targets
WHERE id IN ('t1', 't2') ORDER BY id;
SELECT actor, actor_type, action, resource_type, details - 'errors' AS details, details -> 'errors' AS errors
FROM ns_head.audit_events ORDER BY details ->> 'target_id';

-- a rescan: the same certificates update only last_seen_at, discovery_scan_id and updated_at (never status or
-- first_seen_at, even of a row certctl's users marked Managed); a new one is new
UPDATE ns_head.discovered_certificates SET status = 'Managed' WHERE fingerprint_sha256 = 'aa11';
SELECT certctl_sched._scan_record(:'now'::timestamptz + interval '6 hours', jsonb_build_array(
	jsonb_build_object('id', 't1', 'cidrs', '["10.0.0.0/30"]'::jsonb, 'complete', true,
		'started_at', '2026-11-28 17:59:59+00', 'duration_ms', 900, 'endpoints', 2, 'errors_count', 0,
		'errors', '[]'::jsonb, 'notes', '[]'::jsonb,
		'certs', jsonb_build_array(:'cert1'::jsonb, jsonb_set(:'cert2'::jsonb, '{endpoint}', '"10.0.0.2:443"')))));
SELECT fingerprint_sha256, source_path, status, first_seen_at, last_seen_at,
	discovery_scan_id = (SELECT id FROM ns_head.discovery_scans ORDER BY started_at DESC LIMIT 1) AS latest_scan
FROM ns_head.discovered_certificates ORDER BY fingerprint_sha256, source_path;
SELECT certificates_found, certificates_new FROM ns_head.discovery_scans ORDER BY started_at DESC LIMIT 1;
-- nothing to record
SELECT certctl_sched._scan_record(:'now', '[]');

-- 4d59fd1's schema: the same, in the order its foreign keys need (certctl 4d59fd1 itself upserts the certificates
-- before their scan row and stores none)
SET certctl_sched.certctl_schema = 'ns_old';
SELECT certctl_sched._scan_record(:'now', jsonb_build_array(
	jsonb_build_object('id', 'o1', 'cidrs', '["10.0.0.1"]'::jsonb, 'complete', true, 'started_at', :'now',
		'duration_ms', 10, 'endpoints', 1, 'errors_count', 0, 'errors', '[]'::jsonb, 'notes', '[]'::jsonb,
		'certs', jsonb_build_array(:'cert1'::jsonb))));
SELECT count(*) AS scans, (SELECT count(*) FROM ns_old.discovered_certificates) AS certificates,
	(SELECT count(*) FROM ns_old.audit_events) AS audits
FROM ns_old.discovery_scans;
RESET certctl_sched.certctl_schema;

-- settings
SET certctl_sched.network_scan_allowed_networks = '10.0.0.0/8, 192.168.0.0/16, fd00::/8';
SHOW certctl_sched.network_scan_allowed_networks;
SET certctl_sched.network_scan_allowed_networks = '10.0.0.0/8, intranet';
SET certctl_sched.network_scan_allowed_networks = '10.0.0.0/8,,192.168.0.0/16 fd00::/8, ';
SHOW certctl_sched.network_scan_allowed_networks;
RESET certctl_sched.network_scan_allowed_networks;
ALTER SYSTEM SET certctl_sched.network_scan_concurrency = 0;
CREATE ROLE ns_user;
SET ROLE ns_user;
SET certctl_sched.network_scan_allowed_networks = '0.0.0.0/0';
RESET ROLE;
DROP ROLE ns_user;

SET client_min_messages = warning;
DROP SCHEMA ns_old CASCADE;
DROP SCHEMA ns_head CASCADE;
RESET client_min_messages;

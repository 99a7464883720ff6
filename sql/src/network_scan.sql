-- Network scan (certctl's NetworkScanService.ScanAllTargets): SQL decides, C probes.  A batch is:
--   1. _scan_claim(), with the rights of certctl's table owner: locks whole due targets, up to an endpoint budget,
--      and returns their endpoints (_scan_endpoints()) and the errors of their entries;
--   2. the TLS handshakes, concurrently, and the certificates' fields (scan.c, probe.c, x509.c);
--   3. _scan_record(), with the table owner's rights: the scan row of each target, the discovered certificates, the
--      targets' last scan, the audit events, set-based.
-- A target is due when it is enabled and its last scan is scan_interval_hours old (certctl rescans every target on
-- every run).  Targets whose ports, timeout or interval are unusable, or which have more than 65536 endpoints, are
-- claimed, left unchanged and reported (skipped).  Endpoints and the rules for them are in docs/network-scan.md.

-- Why the network loops may not connect to an address (NULL: they may): the egress policy of egress.c, in SQL.
-- IPv4-mapped IPv6 addresses are judged by their IPv4 address.
CREATE OR REPLACE FUNCTION certctl_sched._address_refusal(address inet, allow_loopback boolean)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE
	WHEN family(address) = 6 AND address <<= '::ffff:0.0.0.0/96'
		THEN certctl_sched._address_refusal(substr(host(address), 8)::inet, allow_loopback)
	WHEN address <<= '127.0.0.0/8' OR address = '::1'::inet
		THEN CASE WHEN allow_loopback THEN NULL ELSE 'loopback' END
	WHEN address <<= '0.0.0.0/8' OR address = '::'::inet THEN 'unspecified'
	WHEN address <<= '169.254.0.0/16' OR address <<= 'fe80::/10' THEN 'link-local'
	WHEN address <<= '224.0.0.0/4' OR address <<= 'ff00::/8' THEN 'multicast'
	WHEN address = '255.255.255.255'::inet THEN 'broadcast'
END
$$;

-- A cidrs entry as Go reads it: its network (a CIDR is masked, so that 10.0.0.1/24 is 10.0.0.0/24; a plain address is
-- itself) and its host bits; both NULL for an entry that is no address or CIDR.
CREATE OR REPLACE FUNCTION certctl_sched._scan_network(entry text, OUT net inet, OUT host_bits integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	net := network(entry::inet);
	host_bits := (CASE family(net) WHEN 4 THEN 32 ELSE 128 END) - masklen(net);
EXCEPTION WHEN invalid_text_representation OR invalid_parameter_value OR null_value_not_allowed THEN
	net := NULL;
	host_bits := NULL;
END
$$;

-- The endpoints of one target: each entry of cidrs (a CIDR, masked as Go does, so that 10.0.0.1/24 is 10.0.0.0/24;
-- or a plain address) expanded to its addresses — at most 12 host bits, IPv4 and IPv6 alike — without the addresses
-- the egress policy refuses or certctl_sched.network_scan_allowed_networks leaves out ("allowed": empty means
-- everything else), without the first and the last of a range of more than two addresses (network and broadcast, as Go
-- drops them; computed on the whole range, before any address is left out); crossed with the ports (each once):
-- "a.b.c.d:port", "[v6]:port".  An entry that cannot be used gives one row
-- with its error; the addresses left out give one row per entry and reason with a note.  Endpoints repeated by
-- overlapping entries are probed once.
CREATE OR REPLACE FUNCTION certctl_sched._scan_endpoints(cidrs text[], ports integer[], allow_loopback boolean,
	allowed inet[], OUT endpoint text, OUT address inet, OUT port integer, OUT error text, OUT note text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	entry text;
	net inet;
	host_bits integer;
BEGIN
	FOREACH entry IN ARRAY coalesce(cidrs, '{}') LOOP
		SELECT n.net, n.host_bits INTO net, host_bits FROM certctl_sched._scan_network(entry) n;
		IF net IS NULL THEN
			RETURN QUERY SELECT NULL::text, NULL::inet, NULL::integer,
				format('%s: not an IP address or CIDR', coalesce(entry, 'NULL')), NULL::text;
			CONTINUE;
		END IF;
		IF host_bits > 12 THEN
			RETURN QUERY SELECT NULL::text, NULL::inet, NULL::integer,
				format('%s: more than 4096 addresses (a /%s); at most 12 host bits (an IPv4 /20, an IPv6 /116) are scanned',
					entry, masklen(net)), NULL::text;
			CONTINUE;
		END IF;
		RETURN QUERY
		WITH a AS (
			-- a range of more than two addresses loses its first and last (network and broadcast)
			SELECT set_masklen(net + i, CASE family(net) WHEN 4 THEN 32 ELSE 128 END) AS a
			FROM generate_series(CASE WHEN host_bits > 1 THEN 1 ELSE 0 END::bigint,
				(2::bigint ^ host_bits)::bigint - CASE WHEN host_bits > 1 THEN 2 ELSE 1 END) AS i
		),
		judged AS (
			SELECT a.a, coalesce(certctl_sched._address_refusal(a.a, allow_loopback),
				CASE WHEN cardinality(allowed) > 0 AND NOT a.a <<= ANY (allowed)
					THEN 'outside certctl_sched.network_scan_allowed_networks' END) AS why
			FROM a
		)
		SELECT NULL::text, NULL::inet, NULL::integer, NULL::text,
			format('%s: %s address%s not scanned (%s)', entry, count(*), CASE WHEN count(*) > 1 THEN 'es' END, j.why)
		FROM judged j WHERE j.why IS NOT NULL GROUP BY j.why
		UNION ALL
		-- an IPv4-mapped IPv6 address is written as its IPv4 address, as Go writes it
		SELECT CASE WHEN family(j.a) = 4 THEN host(j.a)
					WHEN j.a <<= '::ffff:0.0.0.0/96' THEN substr(host(j.a), 8)
					ELSE '[' || host(j.a) || ']' END || ':' || p.port,
			j.a, p.port, NULL, NULL
		FROM judged j CROSS JOIN (SELECT DISTINCT u.port FROM unnest(ports) AS u(port)) AS p
		WHERE j.why IS NULL;
	END LOOP;
END
$$;

-- How many endpoints a target has at most: the addresses of its usable entries (before any is left out) times its
-- distinct ports.  The claim refuses targets over 65536 (16 IPv4 /20s on one port, a /20 on 16 ports).
CREATE OR REPLACE FUNCTION certctl_sched._scan_size(cidrs text[], ports integer[])
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (SELECT coalesce(sum(2::bigint ^ n.host_bits), 0)::bigint
			FROM unnest(cidrs) AS e(entry), certctl_sched._scan_network(e.entry) n WHERE n.host_bits <= 12)
		* (SELECT count(DISTINCT p) FROM unnest(ports) AS p);
END
$$;

-- Claims due targets, each locked for the batch (FOR UPDATE SKIP LOCKED: two runners never scan one target at once),
-- until their endpoints reach endpoint_budget (at least one target), and returns them as a JSON array: id, cidrs,
-- timeout_ms, endpoints [{e, a, p}] (interleaved by the caller), errors (its entries'), notes.  Targets in id order,
-- those a previous run cut short ("deferred", kept by the runner) last, so that one target too slow for a run never
-- keeps the others from being scanned; "exclude": the targets this run already skipped.  Targets that cannot be
-- scanned (bad ports, timeout or interval, more than 65536 endpoints) are claimed, left unchanged and reported
-- (skipped, skipped_ids).  done: no due target is left after these.
CREATE OR REPLACE FUNCTION certctl_sched._scan_claim(now timestamptz, endpoint_budget integer, exclude text[],
	deferred text[], allow_loopback boolean, allowed inet[], OUT claimed integer, OUT skipped integer,
	OUT skipped_example text, OUT skipped_ids text[], OUT done boolean, OUT targets jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, endpoint_budget, ARRAY['network_scan_targets', 'discovery_scans',
		'discovered_certificates', 'agents', 'audit_events']);
	c refcursor;
	t record;
	x record;
	total bigint := 0;
BEGIN
	claimed := 0;
	skipped := 0;
	skipped_ids := '{}';
	done := true;
	targets := '[]';
	OPEN c FOR EXECUTE format($q$
		SELECT t.id, t.cidrs, t.ports, t.timeout_ms,
			CASE
				WHEN t.ports IS NULL OR cardinality(t.ports) = 0 THEN 'it has no port'
				WHEN EXISTS (SELECT FROM unnest(t.ports) p WHERE p IS NULL OR p < 1 OR p > 65535)
					THEN format('port %%s is outside 1-65535',
						(SELECT coalesce(p::text, 'NULL') FROM unnest(t.ports) p WHERE p IS NULL OR p < 1 OR p > 65535 LIMIT 1))
				WHEN t.timeout_ms IS NULL OR t.timeout_ms < 1 OR t.timeout_ms > 600000
					THEN format('timeout_ms %%s is outside 1-600000', coalesce(t.timeout_ms::text, 'NULL'))
				WHEN t.scan_interval_hours IS NULL OR t.scan_interval_hours < 1
					THEN format('scan_interval_hours %%s is not positive', coalesce(t.scan_interval_hours::text, 'NULL'))
				WHEN certctl_sched._scan_size(t.cidrs, t.ports) > 65536
					THEN format('%%s endpoints, more than 65536', certctl_sched._scan_size(t.cidrs, t.ports))
			END AS bad
		FROM %1$I.network_scan_targets t
		WHERE t.enabled AND t.id <> ALL ($2)
			AND CASE WHEN t.last_scan_at IS NULL OR t.last_scan_at = '-infinity' THEN true
					 WHEN t.last_scan_at = 'infinity' THEN false
					 WHEN t.scan_interval_hours IS NULL OR t.scan_interval_hours < 1 THEN true
					 ELSE $1 - t.last_scan_at >= make_interval(hours => t.scan_interval_hours) END
		ORDER BY t.id = ANY ($3), t.id
		FOR UPDATE OF t SKIP LOCKED$q$, s) USING now, coalesce(exclude, '{}'), coalesce(deferred, '{}');
	LOOP
		IF total >= endpoint_budget THEN
			done := false;
			EXIT;
		END IF;
		FETCH c INTO t;
		EXIT WHEN NOT FOUND;
		claimed := claimed + 1;
		IF t.bad IS NOT NULL THEN
			skipped := skipped + 1;
			skipped_ids := skipped_ids || t.id;
			skipped_example := coalesce(skipped_example, format('target "%s" (%s)', t.id, t.bad));
			CONTINUE;
		END IF;
		SELECT coalesce(jsonb_agg(jsonb_build_object('e', e.endpoint, 'a', host(e.address), 'p', e.port)
					ORDER BY e.address, e.port) FILTER (WHERE e.endpoint IS NOT NULL), '[]') AS endpoints,
			coalesce(jsonb_agg(e.error) FILTER (WHERE e.error IS NOT NULL), '[]') AS errors,
			coalesce(jsonb_agg(e.note) FILTER (WHERE e.note IS NOT NULL), '[]') AS notes
		INTO x
		FROM (SELECT DISTINCT ON (coalesce(endpoint, error, note)) *
			  FROM certctl_sched._scan_endpoints(t.cidrs, t.ports, allow_loopback, allowed)) e;
		targets := targets || jsonb_build_array(jsonb_build_object('id', t.id, 'cidrs', to_jsonb(t.cidrs),
			'timeout_ms', t.timeout_ms, 'endpoints', x.endpoints, 'errors', x.errors, 'notes', x.notes));
		total := total + jsonb_array_length(x.endpoints);
	END LOOP;
	CLOSE c;
END
$body$;

-- Records the outcome of a batch ("results": per target, its id, cidrs, complete, started_at, duration_ms,
-- endpoints (probed), errors_count, errors (the first few: {endpoint, error}), notes, and certs: every certificate
-- every endpoint presented, as x509.c reads it), in certctl's shapes and in the order its foreign keys need: the
-- "server-scanner" agent if missing; one discovery_scans row per target; the discovered certificates, upserted on
-- (fingerprint_sha256, agent_id, source_path) and, for a row already there, only last_seen_at, discovery_scan_id and
-- updated_at changed, input deduplicated (a certificate repeated in a chain, overlapping targets); certificates_new;
-- the targets' last scan (complete targets only: a target the soft stop or SIGTERM cut short is scanned again next
-- run); one discovery_scan_completed audit event per scan.  Returns the number of targets recorded.
CREATE OR REPLACE FUNCTION certctl_sched._scan_record(now timestamptz, results jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, 1, ARRAY['network_scan_targets', 'discovery_scans',
		'discovered_certificates', 'agents', 'audit_events']);
	scans jsonb;
	news jsonb;
BEGIN
	IF jsonb_array_length(results) = 0 THEN
		RETURN 0;
	END IF;
	-- the sentinel agent certctl's server creates when its network scan is enabled
	EXECUTE format($q$
		INSERT INTO %I.agents (id, name, hostname, status, registered_at, api_key_hash, os, architecture, ip_address,
			version)
		VALUES ('server-scanner', 'Network Scanner (Server-Side)', '', 'Online', $1, '', '', '', '', '')
		ON CONFLICT DO NOTHING$q$, s)
	USING now;
	-- one scan row per target
	SELECT jsonb_object_agg(r.id, 'dscan-' || gen_random_uuid()) INTO scans
	FROM jsonb_to_recordset(results) AS r(id text);
	EXECUTE format($q$
		INSERT INTO %I.discovery_scans (id, agent_id, directories, certificates_found, certificates_new, errors_count,
			scan_duration_ms, started_at, completed_at)
		SELECT $2 ->> r.id, 'server-scanner', coalesce(r.cidrs, '{}'), coalesce(jsonb_array_length(r.certs), 0), 0,
			r.errors_count, least(r.duration_ms, 2147483647)::integer, r.started_at,
			r.started_at + make_interval(secs => r.duration_ms / 1000.0)
		FROM jsonb_to_recordset($1) AS r(id text, cidrs text[], certs jsonb, errors_count integer, duration_ms bigint,
			started_at timestamptz)$q$, s)
	USING results, scans;
	-- the certificates, then how many were new per scan
	EXECUTE format($q$
		WITH c AS (
			SELECT DISTINCT ON (c.fingerprint_sha256, c.endpoint) c.*, $2 ->> r.id AS scan_id
			FROM jsonb_to_recordset($1) AS r(id text, certs jsonb)
			CROSS JOIN LATERAL jsonb_to_recordset(r.certs) AS c(endpoint text, fingerprint_sha256 text,
				common_name text, sans text[], serial_number text, issuer_dn text, subject_dn text,
				not_before timestamptz, not_after timestamptz, key_algorithm text, key_size integer, is_ca boolean,
				pem_data text)
			ORDER BY c.fingerprint_sha256, c.endpoint, r.id
		),
		up AS (
			INSERT INTO %I.discovered_certificates AS d (id, fingerprint_sha256, common_name, sans, serial_number,
				issuer_dn, subject_dn, not_before, not_after, key_algorithm, key_size, is_ca, pem_data, source_path,
				source_format, agent_id, discovery_scan_id, status, first_seen_at, last_seen_at, created_at,
				updated_at)
			SELECT 'dcert-' || gen_random_uuid(), c.fingerprint_sha256, c.common_name, c.sans, c.serial_number,
				c.issuer_dn, c.subject_dn, c.not_before, c.not_after, c.key_algorithm, c.key_size, c.is_ca,
				c.pem_data, c.endpoint, 'network', 'server-scanner', c.scan_id, 'Unmanaged', $3, $3, $3, $3
			FROM c
			ON CONFLICT (fingerprint_sha256, agent_id, source_path) DO UPDATE
				SET last_seen_at = excluded.last_seen_at, discovery_scan_id = excluded.discovery_scan_id,
					updated_at = excluded.updated_at
			RETURNING d.discovery_scan_id, (d.xmax = 0) AS is_new
		)
		SELECT coalesce(jsonb_object_agg(n.discovery_scan_id, n.new), '{}')
		FROM (SELECT up.discovery_scan_id, count(*) FILTER (WHERE up.is_new) AS new FROM up
			  GROUP BY up.discovery_scan_id) n$q$, s)
	INTO news
	USING results, scans, now;
	EXECUTE format($q$
		UPDATE %I.discovery_scans d SET certificates_new = (n.value)::integer
		FROM jsonb_each_text($1) AS n WHERE d.id = n.key$q$, s)
	USING news;
	-- the targets' last scan (complete ones), and one audit event per scan
	EXECUTE format($q$
		WITH t AS (
			UPDATE %1$I.network_scan_targets t
			SET last_scan_at = $3, last_scan_duration_ms = least(r.duration_ms, 2147483647)::integer,
				last_scan_certs_found = coalesce(jsonb_array_length(r.certs), 0), updated_at = $3
			FROM jsonb_to_recordset($1) AS r(id text, complete boolean, certs jsonb, duration_ms bigint)
			WHERE t.id = r.id AND r.complete
		)
		INSERT INTO %1$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
		SELECT 'audit-' || gen_random_uuid(), 'server-scanner', 'System', 'discovery_scan_completed', 'discovery_scan',
			$2 ->> r.id,
			jsonb_build_object('agent_id', 'server-scanner', 'directories', coalesce(r.cidrs, '[]'),
				'certificates_found', coalesce(jsonb_array_length(r.certs), 0),
				'certificates_new', coalesce(($4 ->> ($2 ->> r.id))::integer, 0),
				'errors_count', r.errors_count,
				-- certctl_sched's additions
				'target_id', r.id, 'endpoints', r.endpoints, 'complete', r.complete, 'errors', coalesce(r.errors, '[]'),
				'notes', coalesce(r.notes, '[]')),
			$3
		FROM jsonb_to_recordset($1) AS r(id text, cidrs jsonb, complete boolean, certs jsonb, errors_count integer,
			endpoints integer, errors jsonb, notes jsonb)$q$, s)
	USING results, scans, now, news;
	RETURN jsonb_array_length(results);
END
$body$;

-- The targets a run cut short (the soft stop, SIGTERM) since their last complete scan, per certctl schema: later
-- runs claim them after the others.  Forgets the targets now complete, keeps those now cut short, and returns the
-- deferred targets as they were before the call (with empty arrays: as they are).  Called by the runner with the
-- extension owner's rights.
CREATE OR REPLACE FUNCTION certctl_sched._scan_deferred(certctl_schema text, complete text[], cut_short text[],
	now timestamptz)
RETURNS text[]
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
WITH gone AS (
	DELETE FROM certctl_sched.scan_deferrals d
	WHERE d.certctl_schema = _scan_deferred.certctl_schema AND d.target_id = ANY (complete)
),
added AS (
	INSERT INTO certctl_sched.scan_deferrals AS d (certctl_schema, target_id, deferred_at)
	SELECT _scan_deferred.certctl_schema, u.id, now FROM unnest(cut_short) AS u(id)
	ON CONFLICT (certctl_schema, target_id) DO UPDATE SET deferred_at = excluded.deferred_at
)
SELECT coalesce(array_agg(d.target_id ORDER BY d.target_id), '{}') FROM certctl_sched.scan_deferrals d
WHERE d.certctl_schema = _scan_deferred.certctl_schema
	AND d.target_id <> ALL (complete) AND d.target_id <> ALL (cut_short)
$$;

-- Short-lived certificate expiry (certctl's RenewalService.ExpireShortLivedCertificates), for one batch.
--
-- Active or Expiring certificates at or past expires_at whose profile is short-lived (allow_short_lived and
-- 0 < max_ttl_seconds < 3600; the profile's enabled flag is not consulted, as in certctl) become Expired, with one
-- short_lived_cert_expired audit each.  A certificate expiring at -infinity is claimed but skipped (counted in
-- skipped, left unchanged).
--
-- Concurrency: the batch is claimed with FOR NO KEY UPDATE SKIP LOCKED, and the update re-checks the status and
-- expiry against the latest row version, so a concurrent renewal (new expires_at) or revocation wins, and two runners
-- never both expire (and audit) the same certificate.
CREATE OR REPLACE FUNCTION certctl_sched._short_lived_expiry_batch(now timestamptz, batch_size integer, after text,
	threshold interval, OUT claimed integer, OUT acted integer, OUT last_key text, OUT skipped integer,
	OUT skipped_example text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, batch_size, ARRAY['managed_certificates', 'certificate_profiles',
		'audit_events']);
	claimed_ids text[];
	bad text[];
BEGIN
	skipped := 0;
	-- 1. claim a batch of expired short-lived certificates
	SELECT w.ids, w.info INTO claimed_ids, bad
	FROM certctl_sched._claim_windows(s, 'managed_certificates', format($q$
		SELECT array_agg(b.id ORDER BY b.id), array_agg(b.bad ORDER BY b.id)
		FROM (
			SELECT c.id,
				-- an infinite expiry has no time to record: skipped (counted, left unchanged)
				CASE WHEN NOT isfinite(c.expires_at) THEN 'expires_at is -infinity' END AS bad
			FROM %1$I.managed_certificates c
			JOIN %1$I.certificate_profiles p ON p.id = c.certificate_profile_id
			WHERE lower(c.status) IN ('active', 'expiring')
				AND c.expires_at <= $1
				AND p.allow_short_lived AND p.max_ttl_seconds > 0 AND p.max_ttl_seconds < 3600
				AND c.id > $3 AND c.id <= $4
				AND ($5::text[] IS NULL OR c.id = ANY ($5::text[]))
			ORDER BY c.id
			LIMIT $2
			FOR NO KEY UPDATE OF c SKIP LOCKED
		) b$q$, s), now, batch_size, after, NULL, NULL) w;
	claimed := coalesce(cardinality(claimed_ids), 0);
	last_key := claimed_ids[claimed];
	acted := 0;
	IF claimed = 0 THEN
		RETURN;
	END IF;
	SELECT count(*), min('certificate "' || k.id || '" (' || k.why || ')')
	INTO skipped, skipped_example
	FROM unnest(claimed_ids, bad) AS k(id, why)
	WHERE k.why IS NOT NULL;

	-- 2. expire them, re-checked against their latest version, with one audit each
	EXECUTE format($q$
		WITH x AS (
			-- the keys as one array condition, not a join the planner could turn into a rescan of them for every
			-- candidate certificate
			UPDATE %1$I.managed_certificates u
			SET status = 'Expired', updated_at = $1
			WHERE u.id = ANY ($2::text[])
				AND lower(u.status) IN ('active', 'expiring')
				AND u.expires_at <= $1
			RETURNING u.id, u.certificate_profile_id, u.expires_at
		),
		a AS (
			INSERT INTO %1$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details, timestamp)
			SELECT 'audit-' || gen_random_uuid(), 'system', 'System', 'short_lived_cert_expired', 'certificate', x.id,
				-- expired_at as Go marshals a time.Time (RFC 3339, fraction without trailing zeros), in UTC
				jsonb_build_object('profile_id', x.certificate_profile_id,
					'expired_at', to_char(x.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
						|| coalesce('.' || nullif(rtrim(to_char(x.expires_at AT TIME ZONE 'UTC', 'US'), '0'), ''), '')
						|| 'Z'),
				$1
			FROM x
		)
		SELECT count(*) FROM x$q$, s)
	INTO acted
	USING now, ARRAY(SELECT k.id FROM unnest(claimed_ids, bad) AS k(id, why) WHERE k.why IS NULL);
END
$body$;

-- Short-lived expiry for one batch from the start of the table: the certificates expired.
CREATE OR REPLACE FUNCTION certctl_sched.expire_short_lived_certificates(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT acted FROM certctl_sched._short_lived_expiry_batch(now, batch_size, NULL, NULL)
$$;

-- Job processor (certctl's JobService.ProcessPendingJobs), agent key-generation mode, for one batch of jobs.
--
-- Claims due Pending jobs (scheduled_at null or not after now) of type Renewal, Issuance or Deployment, in primary-key
-- order.  Renewal and Issuance: a missing certificate or issuer, or a disabled issuer, fails the job
-- with certctl's error text; otherwise the job becomes AwaitingCSR (attempts counted, started_at set) for the agent to
-- submit a CSR, the certificate becomes RenewalInProgress (unless it is Revoked or Archived: unlike certctl, never
-- resurrect those) and renewal_awaiting_csr is audited.  Deployment: a missing certificate, target or agent fails the
-- job; the target's agent (not jobs.agent_id, as in certctl) fails it with a DeploymentFailure notification and a
-- deployment_job_failed audit when its last heartbeat is more than 5 minutes old, or, with today's certctl's rules and
-- schema (agents.retired_at), when it is retired; otherwise the job gets its target's agent_id and stays Pending, where that agent's work
-- poll finds it (certctl moves it to Running, out of the agents' reach), with one deployment_job_dispatched audit.  A
-- dispatched job is claimed again only if its agent goes offline.  Failed jobs keep attempts and completed_at as they
-- were, as in certctl.  A renewal job whose attempts is already the largest integer is claimed but skipped (counted
-- in skipped, left Pending).  Validation and unknown types are never claimed: they are counted in one notice per run (by its
-- last, short batch).
-- Each claimed job leaves the claimable set.
--
-- Concurrency: the claim is FOR UPDATE SKIP LOCKED, so concurrent runners never process the same job; job updates
-- also require the job to be still pending.  The certificate update waits for a concurrent writer of the row and
-- then re-checks its condition against the latest version, so a concurrent revocation is never overwritten.
CREATE OR REPLACE FUNCTION certctl_sched._job_processor_batch(now timestamptz, batch_size integer, after text,
	threshold interval, OUT claimed integer, OUT acted integer, OUT last_key text, OUT skipped integer,
	OUT skipped_example text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, batch_size, ARRAY['jobs', 'managed_certificates', 'issuers',
		'deployment_targets', 'agents', 'owners', 'notification_events', 'audit_events']);
	f record := certctl_sched._certctl_features(s);
	-- how certctl's status index spells Pending (NULL: no index; then lower(status) over a walk of the keys)
	spellings text[] := certctl_sched._status_spellings(s, 'jobs', ARRAY['pending']);
	-- a due job this loop handles, besides being Pending (t: the job)
	due text := format($q$(t.scheduled_at IS NULL OR t.scheduled_at <= $1)
		AND (lower(t.type) IN ('renewal', 'issuance')
			OR (lower(t.type) = 'deployment'
				AND (t.agent_id IS NULL
					OR EXISTS (SELECT FROM %1$I.agents a
							   WHERE a.id = t.agent_id AND a.last_heartbeat_at < $1 - interval '5 minutes'))))$q$, s);
	claimed_ids text[];
	bad text[];
	waiting bigint;
	waiting_types text;
BEGIN
	skipped := 0;
	-- 1. claim a batch of due jobs this loop handles
	SELECT w.ids, w.info INTO claimed_ids, bad
	FROM certctl_sched._claim_windows(s, 'jobs', format($q$
			SELECT array_agg(b.id ORDER BY b.id), array_agg(b.bad ORDER BY b.id)
			FROM (
				SELECT t.id,
					-- a renewal job whose attempts cannot be counted up is skipped (counted, left Pending)
					CASE WHEN lower(t.type) IN ('renewal', 'issuance') AND t.attempts >= 2147483647
						THEN 'attempts is 2147483647' END AS bad
				FROM %1$I.jobs t
				WHERE lower(t.status) = 'pending' AND %2$s
					AND t.id > $3 AND t.id <= $4
					AND ($5::text[] IS NULL OR t.id = ANY ($5::text[]))
				ORDER BY t.id
				LIMIT $2
				FOR UPDATE OF t SKIP LOCKED
			) b$q$, s, due), now, batch_size, after, spellings, due) w;
	claimed := coalesce(cardinality(claimed_ids), 0);
	last_key := claimed_ids[claimed];
	acted := 0;
	SELECT count(*), min('job "' || k.id || '" (' || k.why || ')')
	INTO skipped, skipped_example
	FROM unnest(claimed_ids, bad) AS k(id, why)
	WHERE k.why IS NOT NULL;

	IF claimed > 0 THEN
		-- 2. decide each job's outcome and apply it: job, certificate, notification and audit in one statement
		EXECUTE format($q$
			WITH x0 AS MATERIALIZED (
				SELECT j.id, j.certificate_id, j.target_id, t.name AS target_name, a.id AS agent_id,
					lower(j.type) IN ('renewal', 'issuance') AS renewal,
					c.common_name,
					coalesce(nullif(o.email, ''), c.owner_id) AS recipient,
					CASE
						WHEN j.certificate_id IS NULL THEN 'certificate fetch failed: job has no certificate_id'
						WHEN c.id IS NULL THEN 'certificate fetch failed: certificate ' || j.certificate_id || ' not found'
						WHEN lower(j.type) IN ('renewal', 'issuance') THEN
							CASE
								WHEN c.issuer_id = '' THEN 'certificate has no issuer assigned'
								WHEN i.id IS NULL OR NOT i.enabled THEN 'issuer connector not found for ' || c.issuer_id
							END
						WHEN j.target_id IS NULL THEN 'target_id not found in job'
						WHEN t.id IS NULL THEN 'target fetch failed: target ' || j.target_id || ' not found'
						WHEN a.id IS NULL THEN 'agent fetch failed: agent ' || t.agent_id || ' not found'
						-- today's certctl fails a deployment to a retired agent (migration 000015)
						WHEN %2$s THEN 'assigned agent is retired'
						WHEN a.last_heartbeat_at < $1 - interval '5 minutes' THEN 'agent is offline'
					END AS error
				FROM unnest($3::text[], $4::text[]) AS k(id, bad)
				-- one primary-key probe per claimed job, whatever the planner makes of the table's size
				CROSS JOIN LATERAL (SELECT * FROM %1$I.jobs j WHERE j.id = k.id OFFSET 0) j
				LEFT JOIN %1$I.managed_certificates c ON c.id = j.certificate_id
				LEFT JOIN %1$I.issuers i ON i.id = c.issuer_id
				LEFT JOIN %1$I.deployment_targets t ON t.id = j.target_id
				-- the target's agent, as certctl checks it (not jobs.agent_id)
				LEFT JOIN %1$I.agents a ON a.id = t.agent_id
				LEFT JOIN %1$I.owners o ON o.id = c.owner_id
				WHERE lower(j.status) = 'pending' AND k.bad IS NULL
			),
			-- a deployment failed for its agent's state also notifies (certctl's DeploymentFailure) with this reason
			x AS (
				SELECT x0.*, CASE x0.error WHEN 'agent is offline' THEN 'agent offline'
									WHEN 'assigned agent is retired' THEN 'agent retired' END AS reason
				FROM x0
			),
			uj AS (
				UPDATE %1$I.jobs u
				SET status = CASE
						WHEN x.error IS NOT NULL THEN 'Failed'
						WHEN x.renewal THEN 'AwaitingCSR'
						ELSE u.status
					END,
					last_error = CASE
						WHEN x.error IS NOT NULL THEN x.error
						WHEN x.renewal THEN NULL
						ELSE u.last_error
					END,
					attempts = u.attempts + CASE WHEN x.error IS NULL AND x.renewal THEN 1 ELSE 0 END,
					started_at = CASE WHEN x.error IS NULL AND x.renewal THEN $1 ELSE u.started_at END,
					agent_id = CASE WHEN x.error IS NULL AND NOT x.renewal THEN x.agent_id ELSE u.agent_id END
				FROM x
				WHERE u.id = x.id AND lower(u.status) = 'pending'
			),
			uc AS (
				UPDATE %1$I.managed_certificates u
				SET status = 'RenewalInProgress', updated_at = $1
				FROM x
				WHERE x.renewal AND x.error IS NULL
					AND u.id = x.certificate_id
					-- re-checked against the latest row version: a concurrent revocation or archival wins
					AND lower(u.status) NOT IN ('renewalinprogress', 'revoked', 'archived')
			),
			n AS (
				INSERT INTO %1$I.notification_events (id, type, certificate_id, channel, recipient, message, sent_at,
					status %3$s)
				SELECT 'notif-' || gen_random_uuid(), 'DeploymentFailure', x.certificate_id, 'Email', x.recipient,
					'The certificate for ' || x.common_name || ' failed to deploy to ' || x.target_name
						|| E'.\n\nError: ' || x.reason || E'\n\nPlease investigate.',
					NULL, 'pending' %4$s
				FROM x WHERE x.reason IS NOT NULL
			),
			au AS (
				INSERT INTO %1$I.audit_events (id, actor, actor_type, action, resource_type, resource_id, details,
					timestamp)
				SELECT 'audit-' || gen_random_uuid(), 'system', 'System', v.action, 'certificate', x.certificate_id,
					v.details, $1
				FROM x
				CROSS JOIN LATERAL (
					SELECT 'renewal_awaiting_csr' AS action,
						jsonb_build_object('job_id', x.id, 'keygen_mode', 'agent') AS details
					WHERE x.renewal AND x.error IS NULL
					UNION ALL
					SELECT 'deployment_job_failed',
						jsonb_build_object('job_id', x.id, 'reason', x.reason, 'target_id', x.target_id)
							|| CASE WHEN x.reason = 'agent retired' THEN jsonb_build_object('agent_id', x.agent_id)
								ELSE '{}' END
					WHERE x.reason IS NOT NULL
					UNION ALL
					SELECT 'deployment_job_dispatched',
						jsonb_build_object('job_id', x.id, 'target_id', x.target_id, 'agent_id', x.agent_id)
					WHERE NOT x.renewal AND x.error IS NULL
				) v
			)
			SELECT count(*) FROM x$q$, s,
			CASE WHEN f.agent_retired AND f.head THEN 'a.retired_at IS NOT NULL' ELSE 'false' END,
			CASE WHEN f.notification_created_at THEN ', created_at' ELSE '' END,
			CASE WHEN f.notification_created_at THEN ', $1' ELSE '' END)
		INTO acted
		USING now, batch_size, claimed_ids, bad;
	END IF;

	-- 3. due jobs no loop handles stay Pending (as in certctl), reported rather than re-errored on every tick; counted
	-- once per run, by its last (short) batch
	IF claimed >= batch_size THEN
		RETURN;
	END IF;
	EXECUTE format($q$
		SELECT sum(n), string_agg(format('%%s (%%s)', type, n), ', ' ORDER BY type)
		FROM (
			SELECT j.type, count(*) AS n
			FROM %1$I.jobs j
			WHERE lower(j.status) = 'pending' AND %2$s
				AND (j.scheduled_at IS NULL OR j.scheduled_at <= $1)
				AND lower(j.type) NOT IN ('renewal', 'issuance', 'deployment')
			GROUP BY j.type
		) w$q$, s, CASE WHEN spellings IS NULL THEN 'true' ELSE 'j.status::text = ANY ($2)' END)
	INTO waiting, waiting_types
	USING now, spellings;
	IF waiting > 0 THEN
		RAISE NOTICE '% pending jobs have a type the job processor does not handle', waiting
			USING DETAIL = format('Job types: %s.', waiting_types),
				HINT = 'Validation jobs and jobs of unknown types stay Pending, as in certctl.';
	END IF;

END
$body$;

-- The job processor for one batch from the start of the table: the jobs claimed (see _job_processor_batch).
CREATE OR REPLACE FUNCTION certctl_sched.process_pending_jobs(now timestamptz, batch_size integer)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT claimed FROM certctl_sched._job_processor_batch(now, batch_size, NULL, NULL)
$$;


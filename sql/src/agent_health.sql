-- Agent health check (certctl's AgentService.MarkStaleAgentsOffline), for one batch of agents.
--
-- Online agents whose last heartbeat is older than threshold (certctl uses the loop's interval, 2 minutes by
-- default) become Offline; only the status column is written.  Agents without a heartbeat are left alone, and so are
-- retired agents when the agents table has certctl's later retired_at column.
--
-- Concurrency: the batch is claimed with FOR NO KEY UPDATE SKIP LOCKED, then updated by a statement that re-checks
-- the status and heartbeat against the latest row version: an agent whose heartbeat is being written is skipped, and
-- one whose heartbeat committed after the claim's snapshot is dropped; a concurrent heartbeat always wins.
CREATE OR REPLACE FUNCTION certctl_sched._agent_health_batch(now timestamptz, batch_size integer, after text,
	threshold interval, OUT claimed integer, OUT acted integer, OUT last_key text, OUT skipped integer,
	OUT skipped_example text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
@BODY_SETTINGS@
AS $body$
DECLARE
	s text := certctl_sched._check_args(now, batch_size, ARRAY['agents']);
	-- certctl's migration 000015 adds agents.retired_at; older schemas have no retired agents
	not_retired text := CASE WHEN (certctl_sched._certctl_features(s)).agent_retired
		THEN 'AND a.retired_at IS NULL' ELSE '' END;
	claimed_ids text[];
BEGIN
	skipped := 0;
	threshold := coalesce(threshold, interval '2 minutes');
	IF threshold <= interval '0' THEN
		RAISE EXCEPTION 'threshold must be a positive interval'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('threshold is %s.', threshold);
	END IF;

	-- 1. claim a batch of stale online agents
	SELECT w.ids INTO claimed_ids
	FROM certctl_sched._claim_windows(s, 'agents', format($q$
		SELECT array_agg(b.id ORDER BY b.id), NULL::text[]
		FROM (
			SELECT a.id
			FROM %1$I.agents a
			WHERE lower(a.status) = 'online'
				AND a.last_heartbeat_at < $1 - %3$L::interval
				%2$s
				AND a.id > $3 AND a.id <= $4
				AND ($5::text[] IS NULL OR a.id = ANY ($5::text[]))
			ORDER BY a.id
			LIMIT $2
			FOR NO KEY UPDATE OF a SKIP LOCKED
		) b$q$, s, not_retired, threshold), now, batch_size, after, NULL, NULL) w;
	claimed := coalesce(cardinality(claimed_ids), 0);
	last_key := claimed_ids[claimed];
	acted := 0;
	IF claimed = 0 THEN
		RETURN;
	END IF;

	-- 2. mark them offline, re-checked against their latest version
	EXECUTE format($q$
		WITH marked AS (
			-- the claimed keys as one array condition, not a join the planner could turn into a rescan of them
			-- for every online agent
			UPDATE %1$I.agents u
			SET status = 'Offline'
			WHERE u.id = ANY ($2::text[])
				AND lower(u.status) = 'online'
				AND u.last_heartbeat_at < $1 - $3
			RETURNING u.id
		)
		SELECT count(*) FROM marked$q$, s)
	INTO acted
	USING now, claimed_ids, threshold;
END
$body$;

-- The agent health check for one batch from the start of the table: the agents marked offline.
CREATE OR REPLACE FUNCTION certctl_sched.mark_stale_agents_offline(now timestamptz, batch_size integer,
	threshold interval DEFAULT interval '2 minutes')
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF threshold IS NULL OR threshold <= interval '0' THEN
		RAISE EXCEPTION 'threshold must be a positive interval'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('threshold is %s.', coalesce(threshold::text, 'null'));
	END IF;
	RETURN (SELECT acted FROM certctl_sched._agent_health_batch(now, batch_size, NULL, threshold));
END
$$;

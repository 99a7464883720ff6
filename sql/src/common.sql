--
-- Loop bodies: certctl's database-side scheduler work, one batch per call
--
-- Each loop has an internal body, certctl_sched._<loop>_batch(now, batch_size, after, threshold), that the runners
-- (the workers, run_loop() and run()) call batch after batch, and a documented two-argument form that calls it for
-- one batch from the start of the table.  A body takes the run's time ("now", the tick, so that runs and tests are
-- deterministic), a batch size and "after", the last key the previous batch of the run claimed (NULL for the first),
-- does at most one batch of work in the caller's transaction, and returns:
--   claimed          the rows it claimed (at most batch_size; fewer means it reached the end of the table),
--   acted            the rows it changed,
--   last_key         the last key it claimed, where the next batch resumes,
--   skipped          claimed rows it cannot process (bad data), left unchanged and reported by the runner,
--   skipped_example  one of them, and why.
-- Only rows that need a change the body can make are claimed, in primary-key order, one window of keys at a time:
-- a run reads each row once, whatever the planner estimates, and its cost grows linearly with the table; or, for the
-- job processor and the notifications loop, among the few candidates certctl's status index finds (_claim_windows).
--
-- Rights: the runners call the bodies with the rights of the role owning certctl's tables, in a security-restricted
-- operation; anyone may call them, with their own rights.
--
-- Concurrency: the bodies require READ COMMITTED.  Rows are claimed with SKIP LOCKED, so concurrent runners split
-- the work instead of queueing behind each other, and the row lock is held until the caller's transaction ends.
-- Every PL/pgSQL statement takes a fresh snapshot, so the statements after a claim see whatever a concurrent runner
-- committed before we got the lock; every state change is conditional on the state that was read (never a full-row
-- rewrite), so a concurrent revocation, renewal or heartbeat wins over the loop.
--
-- Plans: a body's statements read one batch of rows, or one window of primary keys, and reach every other row by an
-- index probe.  The bodies run with enable_hashjoin, enable_mergejoin, enable_material and enable_bitmapscan off (the
-- Makefile's BODY_SETTINGS, written into each), so that the planner never trades those probes for a scan of a whole table
-- or of a whole secondary index (a bitmap of every pending job or stale agent, ANDed with the window), which its cost
-- model prefers for a few thousand random probes into tables of 10^4 to 10^5 rows: a scan per batch would make a run
-- quadratic in the table.  And with jit off: every statement is planned for one execution, for which JIT compilation
-- costs more than it saves.
--
-- certctl's tables are reached by dynamic SQL in the schema named by certctl_sched.certctl_schema.  certctl's Go
-- code writes CamelCase status literals while its column defaults and seed data are lowercase: statuses and types
-- are read case-insensitively and written as certctl's CamelCase literals.  New rows get certctl's ID prefixes
-- followed by a random UUID, unique across processes (certctl's own IDs are nanosecond timestamps).
--

-- Common prologue of the loop bodies: validates the arguments and the transaction's isolation level, checks that the
-- named certctl tables exist, and returns the (unquoted) name of the schema that holds them.
CREATE OR REPLACE FUNCTION certctl_sched._check_args(now timestamptz, batch_size integer, tables text[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	certctl_schema text := coalesce(nullif(current_setting('certctl_sched.certctl_schema', true), ''), 'public');
	tbl text;
BEGIN
	IF now IS NULL OR NOT isfinite(now) THEN
		RAISE EXCEPTION 'now must be a finite timestamp'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('now is %s.', coalesce(now::text, 'null'));
	END IF;
	IF batch_size IS NULL OR batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be at least 1'
			USING ERRCODE = 'invalid_parameter_value',
				DETAIL = format('batch_size is %s.', coalesce(batch_size::text, 'null'));
	END IF;
	-- the claim-then-recheck pattern relies on each statement seeing what concurrent runners committed before it
	IF current_setting('transaction_isolation') <> 'read committed' THEN
		RAISE EXCEPTION 'certctl_sched loop bodies must run in a READ COMMITTED transaction'
			USING ERRCODE = 'invalid_transaction_state',
				DETAIL = format('The transaction isolation level is %s.', upper(current_setting('transaction_isolation'))),
				HINT = 'Call the loop body in a READ COMMITTED transaction, e.g. through certctl_sched.run_loop().';
	END IF;
	FOREACH tbl IN ARRAY tables LOOP
		IF to_regclass(format('%I.%I', certctl_schema, tbl)) IS NULL THEN
			RAISE EXCEPTION 'certctl table "%.%" does not exist', certctl_schema, tbl
				USING ERRCODE = 'undefined_table',
					HINT = 'Set certctl_sched.certctl_schema to the schema that holds certctl''s tables.';
		END IF;
	END LOOP;
	RETURN certctl_schema;
END
$$;

-- The alert thresholds of a renewal policy (renewal_policies.alert_thresholds_days), as certctl's
-- EffectiveAlertThresholds reads them: a non-empty JSON array of integers is used as is (duplicates removed), an empty
-- array or JSON null means the defaults 30, 14, 7 and 0 days.  Returns NULL for anything else (malformed), for which
-- the caller also uses the defaults and warns.
CREATE OR REPLACE FUNCTION certctl_sched._alert_thresholds(thresholds jsonb)
RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE
	WHEN thresholds IS NULL OR jsonb_typeof(thresholds) = 'null' THEN '{30,14,7,0}'::bigint[]
	WHEN jsonb_typeof(thresholds) <> 'array' THEN NULL
	WHEN jsonb_array_length(thresholds) = 0 THEN '{30,14,7,0}'::bigint[]
	-- integers only, as Go's json.Unmarshal into []int: no fractions, strings or exponents; 18 digits fit int64
	WHEN EXISTS (SELECT FROM jsonb_array_elements(thresholds) AS e
				 WHERE jsonb_typeof(e) <> 'number' OR e::text !~ '^-?[0-9]{1,18}$') THEN NULL
	ELSE ARRAY(SELECT DISTINCT e::text::bigint FROM jsonb_array_elements(thresholds) AS e ORDER BY 1 DESC)
END
$$;

-- The upper end of the next window of primary keys of a certctl table: the largest of the next `size` ids after
-- `after`, or NULL past the end.
CREATE OR REPLACE FUNCTION certctl_sched._key_window(certctl_schema text, tbl text, after text, size integer)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	hi text;
BEGIN
	EXECUTE format('SELECT max(id) FROM (SELECT id FROM %I.%I WHERE id > $1 ORDER BY id LIMIT $2) w', certctl_schema, tbl)
	INTO hi
	USING after, size;
	RETURN hi;
END
$$;

-- The spellings of the status column of certctl table tbl that, lowercased, are among `wanted` (lowercase), found by
-- a loose scan of an index whose first column is status (certctl has one on jobs and notification_events): one index
-- probe per distinct status, whatever the table's size.  NULL when there is no such index (valid, not partial, with
-- the column's default ordering and its collation, a deterministic one): the caller then finds its rows by walking
-- key windows (_claim_windows), as it would without it.
CREATE OR REPLACE FUNCTION certctl_sched._status_spellings(certctl_schema text, tbl text, wanted text[])
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	spellings text[];
BEGIN
	IF NOT EXISTS (
		SELECT FROM pg_index i
			JOIN pg_class c ON c.oid = i.indrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
			JOIN pg_class ic ON ic.oid = i.indexrelid
			JOIN pg_am am ON am.oid = ic.relam
			JOIN pg_opclass opc ON opc.oid = i.indclass[0]
			JOIN pg_collation coll ON coll.oid = a.attcollation
		WHERE n.nspname = certctl_schema AND c.relname = tbl AND a.attname = 'status'
			AND a.atttypid IN ('text'::regtype, 'varchar'::regtype) AND am.amname = 'btree'
			-- an index the scans below can use: the column's own ordering and collation, every row
			AND opc.opcdefault AND i.indcollation[0] = a.attcollation AND coll.collisdeterministic
			AND i.indisvalid AND i.indpred IS NULL) THEN
		RETURN NULL;
	END IF;
	EXECUTE format($q$
		WITH RECURSIVE v(status) AS (
			SELECT min(t.status::text) FROM %1$I.%2$I t
			UNION ALL
			SELECT (SELECT min(t.status::text) FROM %1$I.%2$I t WHERE t.status::text > v.status)
			FROM v WHERE v.status IS NOT NULL
		)
		SELECT coalesce(array_agg(v.status), '{}') FROM v WHERE lower(v.status) = ANY ($1)$q$, certctl_schema, tbl)
	INTO spellings
	USING wanted;
	RETURN spellings;
END
$$;

-- Claims up to batch_size rows of certctl table tbl whose primary key sorts after `after` (NULL: from the start).
-- claim is a query that locks what it claims among the keys in ($3, $4] (lower exclusive, upper inclusive) and, when
-- $5 is not NULL, among the keys in $5 only; it takes $1 now and $2 the rows still wanted, and returns one row: the
-- claimed keys in key order (text[]) and, optionally, one text of information per key.  Returns them all.
--   With `spellings` (from _status_spellings; NULL: none), the candidates — rows whose status is one of them and
-- that pass `candidate` (a condition on the table aliased t, which may use $1 now; NULL: none), e.g. the claim's own
-- conditions without its locks — are looked up first through the status index.  When there are at most ten batches
-- of them (at most 100,000), the claim runs once on exactly those after `after`, so that a run does not read the
-- rows no loop will claim again: certctl keeps every job and notification it ever made.  They are counted (up to one
-- more than that) on a run's first batch, and on later batches when the planner expects few rows with those
-- statuses: within a backlog, where the walk finds its rows densely, a batch costs what it did.  Otherwise, and
-- without spellings, the claim scans one window of keys at a time, so that each statement reads a bounded key range
-- in key order whatever the planner thinks of its selectivity.  Either way the same rows are claimed, but for a row
-- whose state changes during the batch, which the next run takes.
CREATE OR REPLACE FUNCTION certctl_sched._claim_windows(certctl_schema text, tbl text, claim text, now timestamptz,
	batch_size integer, after text, spellings text[], candidate text, OUT ids text[], OUT info text[])
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lo text := coalesce(after, '');
	hi text;
	most integer := least(batch_size, 10000) * 10;
	candidates_of text;
	plan json;
	n bigint;
	candidates text[];
	more_ids text[];
	more_info text[];
BEGIN
	IF spellings IS NOT NULL THEN
		candidates_of := format('FROM %I.%I t WHERE t.status::text = ANY ($2) AND (%s)', certctl_schema, tbl,
			coalesce(candidate, 'true'));
		IF after IS NOT NULL THEN
			EXECUTE format('EXPLAIN (FORMAT JSON) SELECT FROM %I.%I t WHERE t.status::text = ANY ($1)',
				certctl_schema, tbl) INTO plan USING spellings;
		END IF;
		IF after IS NULL OR (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8 <= most THEN
			-- the candidates, up to one more than the limit; if not more, the keys after `after` are all of them
			EXECUTE format('SELECT count(*), array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id > $3)
				FROM (SELECT t.id %s LIMIT $4) c', candidates_of) INTO n, candidates
			USING now, spellings, lo, most + 1;
			IF n <= most THEN
				IF candidates IS NOT NULL THEN
					EXECUTE claim INTO ids, info
					USING now, batch_size, lo, candidates[cardinality(candidates)], candidates;
				END IF;
				RETURN;
			END IF;
		END IF;
	END IF;
	LOOP
		hi := certctl_sched._key_window(certctl_schema, tbl, lo, batch_size * 10);
		EXIT WHEN hi IS NULL;
		EXECUTE claim INTO more_ids, more_info USING now, batch_size - coalesce(cardinality(ids), 0), lo, hi,
			NULL::text[];
		ids := ids || more_ids;
		info := info || more_info;
		EXIT WHEN coalesce(cardinality(ids), 0) >= batch_size;
		lo := hi;
	END LOOP;
END
$$;

-- What certctl's schema in front of the loops has, detected column by column (so that certctl versions between those
-- certctl_sched is tested with work too), and whether today's certctl rules apply where the schema has no marker:
-- certctl_sched.certctl_version, or with 'auto' (the default) when the schema has a column of a migration after
-- 000014 (agents.retired_at, notification_events.retry_count or created_at, renewal_policies.retry_interval_seconds
-- or alert_channels).  One catalog lookup per call: the bodies call it once per batch, never per row.
CREATE OR REPLACE FUNCTION certctl_sched._certctl_features(certctl_schema text,
	OUT head boolean,					-- today's certctl's rules apply (renewal skip list, retired agents)
	OUT agent_retired boolean,			-- agents.retired_at (migration 000015)
	OUT notification_retries boolean,	-- notification_events.retry_count, next_retry_at, last_error (000016)
	OUT notification_created_at boolean,	-- notification_events.created_at (000017)
	OUT alert_matrix boolean)			-- renewal_policies.alert_channels and alert_severity_map (000026)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH cols AS (
	SELECT c.relname || '.' || a.attname AS col
	FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace
	WHERE s.nspname = certctl_schema AND c.relname IN ('agents', 'notification_events', 'renewal_policies')
		AND a.attnum > 0 AND NOT a.attisdropped
)
SELECT CASE coalesce(current_setting('certctl_sched.certctl_version', true), 'auto')
			WHEN 'head' THEN true
			WHEN '4d59fd1' THEN false
			ELSE EXISTS (SELECT FROM cols WHERE col IN ('agents.retired_at', 'notification_events.retry_count',
				'notification_events.created_at', 'renewal_policies.retry_interval_seconds',
				'renewal_policies.alert_channels'))
		END,
	EXISTS (SELECT FROM cols WHERE col = 'agents.retired_at'),
	(SELECT count(*) = 3 FROM cols WHERE col IN ('notification_events.retry_count', 'notification_events.next_retry_at',
		'notification_events.last_error')),
	EXISTS (SELECT FROM cols WHERE col = 'notification_events.created_at'),
	(SELECT count(*) = 2 FROM cols WHERE col IN ('renewal_policies.alert_channels', 'renewal_policies.alert_severity_map'))
$$;

-- The alerts a renewal policy routes for each of its thresholds, as today's certctl resolves them from the policy's
-- alert_channels and alert_severity_map (migration 000026), one row per threshold and channel:
--   tier: alert_severity_map[threshold] (keys read as certctl reads them: leading spaces and a sign allowed, trailing
--     characters ignored), else the default 30 informational, 14 and 7 warning, 0 critical, else informational; a
--     tier outside informational, warning and critical is informational;  the map is ignored when a value is not a
--     string;
--   channels: alert_channels[tier] when alert_channels is a non-empty object of lists of strings, else Email for
--     every tier; a listed channel is an alert (kind 'alert', each channel once) if it is one of certctl's channels,
--     else kind 'invalid'; a tier without channels gives one row of kind 'no_channels'.
-- Without the matrix (certctl 4d59fd1's schema, matrix false): one Email alert per threshold, with no tier.
CREATE OR REPLACE FUNCTION certctl_sched._alert_routes(thresholds bigint[], channels jsonb, severity_map jsonb,
	matrix boolean, OUT threshold bigint, OUT tier text, OUT channel text, OUT kind text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH m(channel_matrix) AS (
	SELECT CASE
		WHEN jsonb_typeof(channels) = 'object' AND channels <> '{}'
			AND NOT EXISTS (SELECT FROM jsonb_each(channels) AS e
							WHERE jsonb_typeof(e.value) NOT IN ('array', 'null')
								OR (jsonb_typeof(e.value) = 'array'
									AND EXISTS (SELECT FROM jsonb_array_elements(e.value) AS x
												WHERE jsonb_typeof(x) <> 'string')))
			THEN channels
		ELSE '{"informational": ["Email"], "warning": ["Email"], "critical": ["Email"]}'
	END
),
s(t, tier, key) AS (
	SELECT substring(e.key FROM '^\s*([+-]?[0-9]{1,18})')::bigint, e.value #>> '{}', e.key
	FROM jsonb_each(CASE WHEN jsonb_typeof(severity_map) = 'object'
							AND NOT EXISTS (SELECT FROM jsonb_each(severity_map) AS v WHERE jsonb_typeof(v.value) <> 'string')
						THEN severity_map END) AS e
	WHERE e.key ~ '^\s*[+-]?[0-9]'
),
t(threshold, tier) AS (
	SELECT th.t,
		coalesce((SELECT s.tier FROM s WHERE s.t = th.t ORDER BY s.key LIMIT 1),
			CASE th.t WHEN 30 THEN 'informational' WHEN 14 THEN 'warning' WHEN 7 THEN 'warning' WHEN 0 THEN 'critical' END,
			'informational')
	FROM unnest(thresholds) AS th(t)
),
routes AS (
	SELECT t.threshold, CASE WHEN t.tier IN ('informational', 'warning', 'critical') THEN t.tier ELSE 'informational' END AS tier
	FROM t
)
SELECT r.threshold, NULL, 'Email', 'alert' FROM unnest(thresholds) AS r(threshold) WHERE NOT _alert_routes.matrix
UNION ALL
SELECT DISTINCT r.threshold, r.tier, c.channel,
	CASE WHEN c.channel IN ('Email', 'Webhook', 'Slack', 'Teams', 'PagerDuty', 'OpsGenie') THEN 'alert' ELSE 'invalid' END
FROM routes AS r, m, jsonb_array_elements_text(coalesce(m.channel_matrix -> r.tier, '[]')) AS c(channel)
WHERE _alert_routes.matrix AND jsonb_typeof(m.channel_matrix -> r.tier) = 'array'
UNION ALL
SELECT r.threshold, r.tier, NULL, 'no_channels'
FROM routes AS r, m
WHERE _alert_routes.matrix
	AND coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(m.channel_matrix -> r.tier) = 'array'
										THEN m.channel_matrix -> r.tier END), 0) = 0
$$;

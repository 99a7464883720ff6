-- bench/floor.sql: the write floor of a loop run, i.e. what writing the run's rows costs with no logic at all.
-- Run right after the run, in its database, with psql variables xid (txid_current() just before the run) and writes
-- (the tables the loop writes, e.g. 'ins:notification_events ins:audit_events upd:managed_certificates').  Copies the
-- rows the run inserted (under new ids) and rewrites the rows it updated (status changed, so not a HOT update, as the
-- run's updates), one bare INSERT ... SELECT or UPDATE per table, in a transaction that is rolled back; prints the
-- milliseconds spent in those statements (copying the rows aside beforehand is not counted).
SELECT set_config('floor.xid', :'xid', false), set_config('floor.writes', :'writes', false) \gset
BEGIN;
SET LOCAL enable_hashjoin = off;	-- rewrite the updated rows through their primary key, as the run does
SET LOCAL enable_mergejoin = off;
DO $$
DECLARE
	w text;
	op text;
	tbl text;
	t0 timestamptz;
	ms float8 := 0;
BEGIN
	FOREACH w IN ARRAY string_to_array(current_setting('floor.writes'), ' ') LOOP
		op := split_part(w, ':', 1);
		tbl := split_part(w, ':', 2);
		EXECUTE format('CREATE TEMP TABLE %I AS SELECT * FROM %I WHERE xmin::text::bigint >= %s',
			'f_' || tbl, tbl, current_setting('floor.xid'));
		IF op = 'ins' THEN
			EXECUTE format('UPDATE %I SET id = id || %L', 'f_' || tbl, '-floor');
			t0 := clock_timestamp();
			EXECUTE format('INSERT INTO %I SELECT * FROM %I', tbl, 'f_' || tbl);
		ELSE
			EXECUTE format('CREATE INDEX ON %I (id)', 'f_' || tbl);
			EXECUTE format('ANALYZE %I', 'f_' || tbl);
			t0 := clock_timestamp();
			EXECUTE format('UPDATE %I t SET status = t.status || %L FROM %I f WHERE t.id = f.id', tbl, '-', 'f_' || tbl);
		END IF;
		ms := ms + extract(epoch FROM clock_timestamp() - t0) * 1000;
	END LOOP;
	PERFORM set_config('floor.ms', ms::text, false);
END
$$;
SELECT round(current_setting('floor.ms')::numeric, 1);
ROLLBACK;

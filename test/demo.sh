#!/usr/bin/env bash
# test/demo.sh: the demo: a throwaway server in .demo/ with certctl data, each loop body run once, what changed
#
# Usage: test/demo.sh [--keep]    --keep leaves the server running (on success) and prints how to connect.
# The server listens only on a Unix socket in .demo/ (port 54329); it is stopped on any exit or interrupt.
set -euo pipefail
# shellcheck source=test/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

DEMO_DIR="$REPO_ROOT/.demo"
PGDATA_DIR="$DEMO_DIR/data"
PORT=54329
BATCH=100
KEEP=0
OK=0
USER_NAME=""

# psql on the demo server, database $1, remaining arguments passed on.
demo_psql() {
	local db="$1"
	shift
	psql -X -q -v ON_ERROR_STOP=1 -P pager=off -h "$DEMO_DIR" -p "$PORT" -U postgres -d "$db" "$@"
}

# Stop the demo server if one runs from $PGDATA_DIR (fast, then immediate if that fails).
stop_server() {
	[ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
	run_as "$USER_NAME" pg_ctl -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 ||
		run_as "$USER_NAME" pg_ctl -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
}

# On exit: keep the server only for a successful --keep run; otherwise stop it, with its log's tail on failure.
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
	if [ "$OK" -eq 1 ] && [ "$KEEP" -eq 1 ]; then
		local as=""
		[ "$USER_NAME" = "$(id -un)" ] || as="runuser -u $USER_NAME -- "
		cat <<-EOF

		demo server left running; connect with:
		  psql -h $DEMO_DIR -p $PORT -U postgres certctl
		its scheduler workers are idle (certctl_sched.enabled = off); to let them run:
		  ALTER SYSTEM SET certctl_sched.enabled = on; SELECT pg_reload_conf();
		stop it with:
		  ${as}$(command -v pg_ctl) -D $PGDATA_DIR stop
		EOF
		return
	fi
	if [ "$OK" -ne 1 ] && [ -f "$DEMO_DIR/server.log" ]; then
		echo "demo.sh: failed; last lines of $DEMO_DIR/server.log:" >&2
		tail -n 20 "$DEMO_DIR/server.log" >&2
	fi
	[ -z "$USER_NAME" ] || stop_server
	[ "$OK" -eq 1 ] && echo "demo.sh: done, server stopped" || echo "demo.sh: FAILED, server stopped" >&2
}

# Create the cluster in .demo/ (owned by the server user) with database certctl, and start it with the library
# preloaded (only then: the workers connect to certctl_sched.database when the server starts).
start_server() {
	stop_server
	rm -rf "$DEMO_DIR"
	mkdir -p "$DEMO_DIR"
	[ "$(id -u)" -ne 0 ] || chown "$USER_NAME": "$DEMO_DIR"
	run_as "$USER_NAME" test -w "$DEMO_DIR" || die "$USER_NAME cannot write to $DEMO_DIR (move the repo where it can)"
	[ ${#DEMO_DIR} -lt 90 ] || die "path too long for a Unix socket: $DEMO_DIR"
	run_as "$USER_NAME" initdb -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
	cat >>"$PGDATA_DIR/postgresql.conf" <<-EOF
		# test/demo.sh
		port = $PORT
		listen_addresses = ''
		unix_socket_directories = '$DEMO_DIR'
	EOF
	run_as "$USER_NAME" pg_ctl -D "$PGDATA_DIR" -l "$DEMO_DIR/server.log" -w -t 60 start >/dev/null
	demo_psql postgres -c 'CREATE DATABASE certctl'
	cat >>"$PGDATA_DIR/postgresql.conf" <<-EOF
		shared_preload_libraries = 'certctl_sched'
		certctl_sched.database = 'certctl'
		# the demo calls the loop bodies itself: the workers stay idle
		certctl_sched.enabled = off
	EOF
	run_as "$USER_NAME" pg_ctl -D "$PGDATA_DIR" -l "$DEMO_DIR/server.log" -w -t 60 restart >/dev/null
	say "server running on $DEMO_DIR port $PORT"
}

# Fill database certctl with certctl's schema, 300 certificates of fixture data and the extension.
load_certctl() {
	demo_psql certctl -f "$REPO_ROOT/test/certctl_schema.sql"
	demo_psql certctl -v certs=300 -v quiet=1 -f "$REPO_ROOT/test/certctl_data.sql"
	demo_psql certctl -c 'CREATE EXTENSION certctl_sched'
}

# Run each loop body in batches of $BATCH (one transaction each) until a batch comes back short, and after each one
# show what it changed; then the totals.  The views compare with snapshots taken before each body and at the start.
run_loops() {
	demo_psql certctl -v batch="$BATCH" <<-'EOF'
		SET client_min_messages = warning;
		\pset footer off
		CREATE TEMP TABLE start_certs AS SELECT id, status FROM managed_certificates;
		CREATE TEMP TABLE start_jobs AS SELECT id, type, status FROM jobs;
		CREATE TEMP TABLE start_audit AS SELECT id FROM audit_events;
		CREATE TEMP TABLE snap_certs AS SELECT id, status FROM managed_certificates;
		CREATE TEMP TABLE snap_jobs AS SELECT id, type, status FROM jobs;
		CREATE TEMP TABLE snap_agents AS SELECT id, status FROM agents;
		CREATE TEMP TABLE snap_notifs AS SELECT id FROM notification_events;
		CREATE TEMP TABLE last_run (loop_body text, batches int, rows_handled int);

		-- Takes the snapshots the views compare with.
		CREATE FUNCTION pg_temp.snapshot() RETURNS void LANGUAGE sql AS $$
			TRUNCATE snap_certs, snap_jobs, snap_agents, snap_notifs, last_run;
			INSERT INTO snap_certs SELECT id, status FROM managed_certificates;
			INSERT INTO snap_jobs SELECT id, type, status FROM jobs;
			INSERT INTO snap_agents SELECT id, status FROM agents;
			INSERT INTO snap_notifs SELECT id FROM notification_events;
		$$;

		-- Calls certctl_sched.<body>(now(), batch) until it handles less than a batch, committing each batch.
		CREATE PROCEDURE pg_temp.run_body(body text, batch int) LANGUAGE plpgsql AS $$
		DECLARE
			n int;
			batches int := 0;
			total int := 0;
		BEGIN
			LOOP
				EXECUTE format('SELECT certctl_sched.%I(now(), $1)', body) INTO n USING batch;
				COMMIT;
				batches := batches + 1;
				total := total + n;
				EXIT WHEN n < batch;
				IF batches >= 1000 THEN
					RAISE EXCEPTION '% handled a full batch 1000 times in a row', body;
				END IF;
			END LOOP;
			INSERT INTO last_run VALUES (body, batches, total);
		END
		$$;

		CREATE TEMP VIEW cert_changes AS
		SELECT s.status AS was, c.status AS now, count(*) AS certificates
		FROM managed_certificates c JOIN snap_certs s USING (id)
		WHERE c.status IS DISTINCT FROM s.status
		GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2;
		CREATE TEMP VIEW cert_change_sample AS	-- two of each kind of change
		SELECT id, common_name, was, now, expires_in, profile
		FROM (SELECT c.id, c.common_name, s.status AS was, c.status AS now, c.expires_at,
					 date_trunc('minute', c.expires_at - now()) AS expires_in, c.certificate_profile_id AS profile,
					 row_number() OVER (PARTITION BY s.status, c.status ORDER BY c.expires_at) AS n
			  FROM managed_certificates c JOIN snap_certs s USING (id)
			  WHERE c.status IS DISTINCT FROM s.status) x
		WHERE n <= 2
		ORDER BY now, was, expires_at LIMIT 10;
		CREATE TEMP VIEW new_alerts AS
		SELECT type, channel, status, count(*) AS alerts
		FROM notification_events WHERE id NOT IN (SELECT id FROM snap_notifs)
		GROUP BY 1, 2, 3 ORDER BY 4 DESC;
		CREATE TEMP VIEW new_alert_sample AS
		SELECT certificate_id, recipient, replace(message, E'\n\n', ' / ') AS message
		FROM notification_events WHERE id NOT IN (SELECT id FROM snap_notifs) AND type = 'ExpirationWarning'
		ORDER BY length(certificate_id), certificate_id, message LIMIT 6;
		CREATE TEMP VIEW job_changes AS
		SELECT j.type, coalesce(s.status, '(new)') AS was, j.status AS now, count(*) AS jobs,
			   min(j.last_error) AS an_error
		FROM jobs j LEFT JOIN snap_jobs s USING (id)
		WHERE s.id IS NULL OR j.status IS DISTINCT FROM s.status
		GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
		CREATE TEMP VIEW agent_changes AS
		SELECT a.id, a.hostname, s.status AS was, a.status AS now,
			   date_trunc('second', now() - a.last_heartbeat_at) AS heartbeat_age
		FROM agents a JOIN snap_agents s USING (id)
		WHERE a.status IS DISTINCT FROM s.status
		ORDER BY heartbeat_age;

		\echo
		\echo '=== 1. expire_short_lived_certificates: short-lived certificates past their expiry become Expired'
		SELECT pg_temp.snapshot() \g /dev/null
		CALL pg_temp.run_body('expire_short_lived_certificates', :batch);
		TABLE last_run;
		TABLE cert_changes;
		TABLE cert_change_sample;

		\echo '=== 2. check_expiring_certificates: status transitions, threshold alerts, renewal jobs'
		SELECT pg_temp.snapshot() \g /dev/null
		CALL pg_temp.run_body('check_expiring_certificates', :batch);
		TABLE last_run;
		TABLE cert_changes;
		TABLE cert_change_sample;
		TABLE new_alerts;
		TABLE new_alert_sample;
		TABLE job_changes;

		\echo '=== 3. process_pending_jobs: renewal/issuance jobs to AwaitingCSR, deployment jobs dispatched or failed'
		SELECT pg_temp.snapshot() \g /dev/null
		CALL pg_temp.run_body('process_pending_jobs', :batch);
		TABLE last_run;
		TABLE job_changes;
		TABLE new_alerts;

		\echo '=== 4. mark_stale_agents_offline: Online agents with a heartbeat older than 2 minutes become Offline'
		SELECT pg_temp.snapshot() \g /dev/null
		CALL pg_temp.run_body('mark_stale_agents_offline', :batch);
		TABLE last_run;
		TABLE agent_changes;

		\echo '=== Totals: certificates by status'
		SELECT status, coalesce(b.n, 0) AS before, coalesce(a.n, 0) AS after, coalesce(a.n, 0) - coalesce(b.n, 0) AS change
		FROM (SELECT status, count(*) AS n FROM start_certs GROUP BY status) b
		FULL JOIN (SELECT status, count(*) AS n FROM managed_certificates GROUP BY status) a USING (status)
		ORDER BY status;
		\echo '=== Totals: jobs by type and status (changed ones)'
		SELECT type, status, coalesce(b.n, 0) AS before, coalesce(a.n, 0) AS after,
			   coalesce(a.n, 0) - coalesce(b.n, 0) AS change
		FROM (SELECT type, status, count(*) AS n FROM start_jobs GROUP BY 1, 2) b
		FULL JOIN (SELECT type, status, count(*) AS n FROM jobs GROUP BY 1, 2) a USING (type, status)
		WHERE coalesce(a.n, 0) <> coalesce(b.n, 0)
		ORDER BY type, status;
		\echo '=== Totals: audit events written'
		SELECT action, count(*) AS events
		FROM audit_events WHERE id NOT IN (SELECT id FROM start_audit)
		GROUP BY 1 ORDER BY 2 DESC, 1;

		\echo '=== The scheduler workers (idle in the demo: certctl_sched.enabled = off)'
		SELECT backend_type, state, wait_event FROM pg_stat_activity
		WHERE backend_type LIKE 'certctl_sched%' ORDER BY backend_type;
	EOF
}

main() {
	[ "${1:-}" != "--keep" ] || KEEP=1
	[ $# -le $KEEP ] || die "usage: test/demo.sh [--keep]"
	trap finish EXIT
	trap 'exit 130' INT TERM
	install_deps
	setup_path
	USER_NAME="$(server_user)"
	build_install "$REPO_ROOT"
	start_server
	load_certctl
	run_loops
	OK=1
}

main "$@"

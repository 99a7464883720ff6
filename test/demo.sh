#!/usr/bin/env bash
# test/demo.sh: the demo: a throwaway server in .demo/ with certctl data and the scheduler workers, what they changed
#
# Usage: test/demo.sh [--keep]    --keep leaves the server running (on success) and prints how to connect.
# The server listens only on a Unix socket in .demo/ (port 54329); it is stopped on any exit or interrupt.  Two
# receivers on loopback take the alerts: a webhook receiver (test/sinks/http_sink.py) and an SMTP server
# (test/sinks/smtp_sink.py); TLS servers on 127.0.5.x (test/sinks/tls_servers.py, certificates made by
# test/sinks/make_certs.sh) are there for the network scan to discover.  They stop with the demo.
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
SINK_PIDS=()

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
		its scheduler workers keep running; look at them with:
		  SELECT * FROM certctl_sched.loops;
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
	stop_sinks
	[ "$OK" -eq 1 ] && echo "demo.sh: done, server stopped" || echo "demo.sh: FAILED, server stopped" >&2
}

# Start the alert receivers on loopback, each writing the port it listens on to .demo/<name>.port and one JSON line
# per request or message to .demo/<name>.log.
start_sinks() {
	local name
	/usr/bin/python3 "$REPO_ROOT/test/sinks/http_sink.py" --host 127.0.0.1 --port 0 --ready "$DEMO_DIR/http.port" \
		--log "$DEMO_DIR/http.log" >"$DEMO_DIR/http.out" 2>&1 &
	SINK_PIDS+=($!)
	/usr/bin/python3 "$REPO_ROOT/test/sinks/smtp_sink.py" --host 127.0.0.1 --port 0 --mode plain \
		--ready "$DEMO_DIR/smtp.port" --log "$DEMO_DIR/smtp.log" >"$DEMO_DIR/smtp.out" 2>&1 &
	SINK_PIDS+=($!)
	sh "$REPO_ROOT/test/sinks/make_certs.sh" "$DEMO_DIR/certs"
	cat >"$DEMO_DIR/tls.json" <<-EOF
		[{"host": "127.0.5.2", "port": 0, "group": "demo", "kind": "tls", "cert": "certs/rsa.pem", "key": "certs/rsa.key"},
		 {"host": "127.0.5.3", "port": 0, "group": "demo", "kind": "tls", "cert": "certs/ec.pem", "key": "certs/ec.key"},
		 {"host": "127.0.5.4", "port": 0, "group": "demo", "kind": "tls", "cert": "certs/chain.pem", "key": "certs/chain.key"},
		 {"host": "127.0.5.5", "port": 0, "group": "demo", "kind": "tls", "cert": "certs/expired.pem", "key": "certs/expired.key"},
		 {"host": "127.0.5.6", "port": 0, "group": "demo", "kind": "silent"}]
	EOF
	/usr/bin/python3 "$REPO_ROOT/test/sinks/tls_servers.py" --config "$DEMO_DIR/tls.json" --ready "$DEMO_DIR/tls.ready" \
		>"$DEMO_DIR/tls.out" 2>&1 &
	SINK_PIDS+=($!)
	for _ in $(seq 100); do [ -s "$DEMO_DIR/tls.ready" ] && break; sleep 0.1; done
	[ -s "$DEMO_DIR/tls.ready" ] || die "the TLS servers did not start: $(cat "$DEMO_DIR/tls.out")"
	/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["port"])' "$DEMO_DIR/tls.ready" \
		>"$DEMO_DIR/tls.port"
	for name in http smtp; do
		for _ in $(seq 100); do [ -s "$DEMO_DIR/$name.port" ] && break; sleep 0.1; done
		[ -s "$DEMO_DIR/$name.port" ] || die "the $name receiver did not start: $(cat "$DEMO_DIR/$name.out")"
	done
	say "alert receivers: http://127.0.0.1:$(head -1 "$DEMO_DIR/http.port"), smtp://127.0.0.1:$(head -1 "$DEMO_DIR/smtp.port");" \
		"TLS servers on 127.0.5.2-6 port $(cat "$DEMO_DIR/tls.port")"
}

# Stop the alert receivers.
stop_sinks() {
	local pid
	for pid in "${SINK_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${SINK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	SINK_PIDS=()
}

# Print what the receivers got: requests per channel, one webhook request, one mail.
show_deliveries() {
	echo
	echo '=== What the receivers got (webhook receiver and SMTP server on loopback)'
	/usr/bin/python3 - "$DEMO_DIR/http.log" "$DEMO_DIR/smtp.log" <<-'EOF'
		import collections, json, sys
		http = [json.loads(l) for l in open(sys.argv[1])] if __import__("os").path.exists(sys.argv[1]) else []
		smtp = [json.loads(l) for l in open(sys.argv[2])] if __import__("os").path.exists(sys.argv[2]) else []
		per = collections.Counter(r["query"].replace("channel=", "") for r in http)
		for channel, n in sorted(per.items()):
		    print(f"  {channel:<10} {n:>4} HTTP requests")
		print(f"  {'Email':<10} {len(smtp):>4} messages")
		hook = next((r for r in http if r["query"] == "channel=Webhook"), None)
		if hook:
		    print("\n  a webhook request: POST", hook["path"])
		    for h in ("content-type", "idempotency-key", "x-signature"):
		        print(f"    {h}: {hook['headers'].get(h)}")
		    print("    " + hook["body"])
		if smtp:
		    print("\n  a mail, to", ", ".join(smtp[0]["rcpt_tos"]) + ":")
		    for line in smtp[0]["message"].split("\r\n")[:12]:
		        print("    " + line)
	EOF
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
		# demo intervals: every loop acts within seconds (renewal runs at start, then hourly)
		certctl_sched.job_processor_interval = '2s'
		certctl_sched.agent_health_interval = '5s'
		certctl_sched.short_lived_expiry_interval = '3s'
		certctl_sched.notifications_interval = '2s'
		certctl_sched.batch_size = 100
		# the alert receivers run on loopback, which the loops may not reach unless allowed
		certctl_sched.allow_loopback = on
	EOF
	run_as "$USER_NAME" pg_ctl -D "$PGDATA_DIR" -l "$DEMO_DIR/server.log" -w -t 60 restart >/dev/null
	say "server running on $DEMO_DIR port $PORT"
}

# Fill database certctl with today's certctl schema and 300 certificates of fixture data (the workers wait for the
# extension).
load_certctl() {
	demo_psql certctl -f "$REPO_ROOT/test/certctl_schema_head.sql"
	demo_psql certctl -v certs=300 -v quiet=1 -f "$REPO_ROOT/test/certctl_data.sql"
}

# Snapshot certctl's tables, CREATE EXTENSION (which starts the workers' loops), wait until every enabled loop has run
# (the job processor twice, so that it also dispatches the renewal check's new jobs), then show what changed.
run_loops() {
	demo_psql certctl -v http="http://127.0.0.1:$(head -1 "$DEMO_DIR/http.port")/r/200" \
		-v smtp="smtp://127.0.0.1:$(head -1 "$DEMO_DIR/smtp.port")" -v tls_port="$(cat "$DEMO_DIR/tls.port")" <<-'EOF'
		SET client_min_messages = warning;
		\pset footer off
		CREATE TEMP TABLE snap_certs AS SELECT id, status FROM managed_certificates;
		CREATE TEMP TABLE snap_jobs AS SELECT id, type, status FROM jobs;
		CREATE TEMP TABLE snap_agents AS SELECT id, status FROM agents;
		CREATE TEMP TABLE snap_notifs AS SELECT id FROM notification_events;
		CREATE TEMP TABLE snap_audit AS SELECT id FROM audit_events;

		\echo
		\echo '=== The scheduler workers, one per implemented loop, waiting for CREATE EXTENSION'
		SELECT backend_type, application_name, wait_event_type, wait_event FROM pg_stat_activity
		WHERE backend_type LIKE 'certctl_sched%' ORDER BY backend_type;

		\echo '=== CREATE EXTENSION certctl_sched, with its notification channels pointing at the receivers: the loops start'
		BEGIN;
		CREATE EXTENSION certctl_sched;
		INSERT INTO certctl_sched.notification_channels (channel, endpoint, secret, options)
		SELECT c, :'http' || '?channel=' || c, s, '{}' FROM (VALUES ('Slack', NULL), ('Teams', NULL),
			('PagerDuty', 'demo-routing-key'), ('OpsGenie', 'demo-api-key'), ('Webhook', 'demo-signing-key')) v(c, s);
		INSERT INTO certctl_sched.notification_channels (channel, endpoint, options)
		VALUES ('Email', :'smtp', '{"from": "certctl@example.com", "tls": "none"}');
		INSERT INTO network_scan_targets (id, name, cidrs, ports, timeout_ms)
		VALUES ('nst-demo', 'demo TLS servers', '{127.0.5.0/29}', ARRAY[:'tls_port'::integer, 443], 1000);
		COMMIT;
		DO $$
		BEGIN
			FOR i IN 1 .. 300 LOOP
				EXIT WHEN (SELECT bool_and(runs >= CASE loop WHEN 'job_processor' THEN 2 WHEN 'notifications' THEN 2 ELSE 1 END)
						   FROM certctl_sched.loops WHERE interval IS NOT NULL)
					  AND NOT EXISTS (SELECT FROM notification_events WHERE status = 'pending'
									  AND lower(channel) IN (SELECT lower(channel) FROM certctl_sched.notification_channels));
				PERFORM pg_sleep(0.1);
			END LOOP;
		END $$;
		SELECT loop, pid, state, interval, last_result, last_rows, runs, next_run - now() AS next_run_in
		FROM certctl_sched.loops ORDER BY loop;

		\echo '=== Certificates whose status changed (renewal check and short-lived expiry)'
		SELECT s.status AS was, c.status AS now, count(*) AS certificates
		FROM managed_certificates c JOIN snap_certs s USING (id)
		WHERE c.status IS DISTINCT FROM s.status
		GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2;
		SELECT id, common_name, was, now, expires_in, profile
		FROM (SELECT c.id, c.common_name, s.status AS was, c.status AS now, c.expires_at,
					 date_trunc('minute', c.expires_at - now()) AS expires_in, c.certificate_profile_id AS profile,
					 row_number() OVER (PARTITION BY s.status, c.status ORDER BY c.expires_at) AS n
			  FROM managed_certificates c JOIN snap_certs s USING (id)
			  WHERE c.status IS DISTINCT FROM s.status) x
		WHERE n <= 2
		ORDER BY now, was, expires_at LIMIT 10;

		\echo '=== Alerts raised (renewal check thresholds, deployment failures) and delivered (notifications loop)'
		SELECT type, channel, status, count(*) AS alerts
		FROM notification_events WHERE id NOT IN (SELECT id FROM snap_notifs)
		GROUP BY 1, 2, 3 ORDER BY 4 DESC, 2;
		\echo '=== Every notification by status: the fixture''s old ones are delivered too (Webhook, Email)'
		SELECT channel, status, count(*) AS notifications FROM notification_events GROUP BY 1, 2 ORDER BY 1, 2;
		SELECT certificate_id, recipient, replace(message, E'\n\n', ' / ') AS message
		FROM notification_events WHERE id NOT IN (SELECT id FROM snap_notifs) AND type = 'ExpirationWarning'
		ORDER BY length(certificate_id), certificate_id, message LIMIT 6;

		\echo '=== Jobs created or changed (renewal check creates, job processor dispatches)'
		SELECT j.type, coalesce(s.status, '(new)') AS was, j.status AS now, count(*) AS jobs,
			   count(*) FILTER (WHERE j.agent_id IS NOT NULL AND s.id IS NOT NULL) AS with_agent,
			   min(j.last_error) AS an_error
		FROM jobs j LEFT JOIN snap_jobs s USING (id)
		WHERE s.id IS NULL OR j.status IS DISTINCT FROM s.status OR j.agent_id IS NOT NULL
		GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;

		\echo '=== Agents marked offline (agent health: Online with a heartbeat older than the 5 s interval)'
		SELECT a.id, a.hostname, s.status AS was, a.status AS now,
			   date_trunc('second', now() - a.last_heartbeat_at) AS heartbeat_age
		FROM agents a JOIN snap_agents s USING (id)
		WHERE a.status IS DISTINCT FROM s.status
		ORDER BY heartbeat_age LIMIT 10;

		\echo '=== Certificates the network scan discovered (127.0.5.0/29 on two ports: four TLS servers, a silent one)'
		SELECT source_path, common_name, serial_number, key_algorithm || ' ' || key_size AS key, is_ca,
			   not_after::date, subject_dn, issuer_dn
		FROM discovered_certificates ORDER BY source_path, is_ca;
		SELECT certificates_found, certificates_new, errors_count, scan_duration_ms,
			   (SELECT details -> 'errors' -> 0 ->> 'error' FROM audit_events WHERE resource_id = s.id) AS an_error
		FROM discovery_scans s;

		\echo '=== Audit events written'
		SELECT action, count(*) AS events
		FROM audit_events WHERE id NOT IN (SELECT id FROM snap_audit)
		GROUP BY 1 ORDER BY 2 DESC, 1;

		\echo '=== Run history'
		SELECT id, loop, trigger, to_char(scheduled_at, 'HH24:MI:SS.MS') AS tick,
			   round(extract(epoch FROM finished_at - started_at) * 1000, 1) AS ms, status, rows
		FROM certctl_sched.run_history ORDER BY id;

		\echo '=== An operator run under the same lock: SELECT * FROM certctl_sched.run_loop('agent_health')'
		SELECT * FROM certctl_sched.run_loop('agent_health');
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
	start_sinks
	load_certctl
	run_loops
	show_deliveries
	OK=1
}

main "$@"

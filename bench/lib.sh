# bench/lib.sh: helpers for bench/run (sourced): throwaway clusters, timing, statistics, the results file
source "$(dirname "${BASH_SOURCE[0]}")/../test/setup.sh"

NOW="2026-11-28 12:00:00+00"	# every fixture time is relative to this; the loops run at this time too
declare -A PORT_OF=()			# cluster name -> port

# Create cluster $1 on port $2 in $BENCH_DIR/$1 (Unix socket only), postgresql.conf lines from stdin appended.
new_cluster() {
	local name="$1" port="$2" dir="$BENCH_DIR/$1"
	PORT_OF[$name]=$port
	run_as "$USER_NAME" initdb -D "$dir" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
	{
		echo "port = $port"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$BENCH_DIR'"
		echo "shared_buffers = 512MB"
		echo "max_wal_size = 4GB"
		echo "log_min_messages = warning"
		cat
	} >>"$dir/postgresql.conf"
}

start_cluster() { run_as "$USER_NAME" pg_ctl -D "$BENCH_DIR/$1" -l "$BENCH_DIR/$1.log" -w -t 120 start >/dev/null; }

# Stop cluster $1 if it runs (fast, then immediate).
stop_cluster() {
	[ -f "$BENCH_DIR/$1/postmaster.pid" ] || return 0
	run_as "$USER_NAME" pg_ctl -D "$BENCH_DIR/$1" -m fast -w -t 120 stop >/dev/null 2>&1 ||
		run_as "$USER_NAME" pg_ctl -D "$BENCH_DIR/$1" -m immediate -w stop >/dev/null 2>&1 || true
}

stop_all() { local c; for c in "${!PORT_OF[@]}"; do stop_cluster "$c"; done; }

# psql on cluster $1, database $2, remaining arguments passed on; unaligned, tuples only.
q() {
	local c="$1" db="$2"
	shift 2
	psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -p "${PORT_OF[$c]}" -U postgres -d "$db" "$@"
}

postmaster_pid() { head -1 "$BENCH_DIR/$1/postmaster.pid"; }

# Load the certctl fixture (N certificates, N agents, N jobs) into a new database $2 of cluster $1.
load_fixture() {
	local c="$1" db="$2" n="$3"
	q "$c" postgres -c "CREATE DATABASE $db"
	q "$c" "$db" -c 'SET client_min_messages = warning' -f "$REPO_ROOT/test/certctl_schema.sql"
	q "$c" "$db" -v certs="$n" -v agents="$n" -v jobs="$n" -v now="'$NOW'" -v quiet=1 \
		-f "$REPO_ROOT/test/certctl_data.sql"
	q "$c" "$db" -c 'VACUUM ANALYZE'
}

# Wait (up to 60 s) until the SQL query $3 on cluster $1, database $2, returns 't'.
wait_for() {
	local i
	for ((i = 0; i < 600; i++)); do
		[ "$(q "$1" "$2" -c "$3")" = t ] && return 0
		sleep 0.1
	done
	die "timed out waiting for: $3"
}

# Seconds since the epoch, with nanoseconds.
now_s() { date +%s.%N; }

# Read numbers on stdin; print "median min max" (%.*g, 3 significant digits unless $1 says otherwise).
stats() {
	sort -g | awk -v p="${1:-3}" '{ v[NR] = $1 } END {
		if (NR == 0) { print "n/a n/a n/a"; exit }
		m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%.*g %.*g %.*g\n", p, m, p, v[1], p, v[NR] }'
}

# Record one table row: figure, metric, unit, our numbers (stdin of stats: file $4), baseline name, baseline file $6,
# note.  Ratio = baseline median / our median.
RESULTS=""
row() {
	local fig="$1" metric="$2" unit="$3" ours="$4" bname="$5" base="$6" note="${7:-}"
	local o b r
	read -r om omin omax < <(stats <"$ours")
	o="$om ($omin–$omax) $unit"
	if [ -n "$base" ] && [ -s "$base" ]; then
		read -r bm bmin bmax < <(stats <"$base")
		b="$bm ($bmin–$bmax) $unit"
		r=$(awk -v a="$bm" -v b="$om" 'BEGIN { if (b + 0 == 0) print "∞"; else printf "%.3g", a / b }')
	else
		b="—"; r="—"
	fi
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$fig" "$metric" "$o" "$bname" "$b" "$r" "$note" >>"$RESULTS"
	say "fig $fig: $metric: ours $o; $bname $b; ratio $r"
}
# A table row with values given directly (no repetitions to summarise).
row_text() { printf '| %s |\n' "$(IFS='|'; echo "$*" | sed 's/|/ | /g')" >>"$RESULTS"; say "fig $1: $2: $3 vs $5"; }

# Run command $2... (which makes process $1 exit) and print the milliseconds until process $1 has exited, observed
# through a pidfd (exact, no polling interval).
ms_until_exit() {
	python3 - "$@" <<-'PY'
		import os, select, subprocess, sys, time
		fd = os.pidfd_open(int(sys.argv[1]))
		t0 = time.monotonic()
		subprocess.run(sys.argv[2:], check=True, stdout=subprocess.DEVNULL)
		select.select([fd], [], [])
		print("%.1f" % ((time.monotonic() - t0) * 1000))
	PY
}

# /proc figures of process $1: "voluntary_ctxt_switches cpu_ms rss_kb pss_kb"
proc_sample() {
	local tck; tck=$(getconf CLK_TCK)
	awk -v t="$tck" '{ printf "%d ", ($14 + $15) * 1000 / t }' "/proc/$1/stat" >/tmp/.cpu.$$
	echo "$(awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$1/status") $(cat /tmp/.cpu.$$)$(awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } END { print r, p }' "/proc/$1/smaps_rollup")"
	rm -f /tmp/.cpu.$$
}

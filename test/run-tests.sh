#!/usr/bin/env bash
# test/run-tests.sh: the test command: install deps, build+install, run `make installcheck` (pg_regress, isolation, TAP)
#
# Usage: test/run-tests.sh [TEST...]   with no argument, every suite; otherwise only the named tests: a pg_regress test
# (api), an isolation spec (jobs_concurrent) or a TAP file (test/t/003_lock.pl), e.g. test/run-tests.sh api test/t/003_lock.pl
#
# As root the suites run as an unprivileged user (see server_user in test/setup.sh) in a private copy of the tree
# under /tmp; otherwise in place.  CI=1 adds -Werror.  TEST_TIMEOUT (seconds, default 3600) bounds the suites.
set -euo pipefail
# shellcheck source=test/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

export PG_CFLAGS="-Wall -Wextra -Wno-unused-parameter${CI:+ -Werror}${PG_CFLAGS:+ $PG_CFLAGS}"
START=$SECONDS
TREE="$REPO_ROOT"
USER_NAME=""
STATUS=1

# Copy the repo without .git, .demo and build or test outputs into a new directory under /tmp; print its path.
private_copy() {
	local dir
	dir="$(mktemp -d /tmp/certctl_sched-test.XXXXXX)"
	tar -C "$REPO_ROOT" --exclude=./.git --exclude=./.demo -cf - . | tar -C "$dir" -xf -
	make -s -C "$dir" PG_CONFIG="$PG_CONFIG" clean >/dev/null
	echo "$dir"
}

# Print the regression diffs and the tail of each TAP log found under $TREE.
show_failures() {
	local f
	while IFS= read -r f; do
		printf '\n===== %s\n' "${f#"$TREE"/}"
		head -n 400 "$f"
	done < <(find "$TREE" -name regression.diffs -size +0 | sort)
	for f in "$TREE"/tmp_check/log/*; do
		[ -f "$f" ] || continue
		printf '\n===== %s (last 40 lines)\n' "${f#"$TREE"/}"
		tail -n 40 "$f"
	done
}

# On exit: stop any server a test left behind in the tree, drop the private copy if all passed, print the verdict.
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
	local pidfile
	if [ -n "$USER_NAME" ]; then
		while IFS= read -r pidfile; do
			run_as "$USER_NAME" pg_ctl -D "$(dirname "$pidfile")" stop -m immediate >/dev/null 2>&1 || true
		done < <(find "$TREE" -name postmaster.pid 2>/dev/null)
	fi
	if [ "$STATUS" -eq 0 ]; then
		[ "$TREE" = "$REPO_ROOT" ] || rm -rf "$TREE"
		echo "run-tests.sh: PASS: all suites passed ($((SECONDS - START)) s)"
	else
		[ "$TREE" = "$REPO_ROOT" ] || echo "run-tests.sh: test tree kept for inspection: $TREE"
		echo "run-tests.sh: FAIL ($((SECONDS - START)) s)"
	fi
}

# Print the make variables that restrict installcheck to the tests named in "$@" (nothing for all tests).
test_selection() {
	[ $# -gt 0 ] || return 0
	local t regress=() iso=() tap=()
	for t in "$@"; do
		if [ -f "$REPO_ROOT/sql/$t.sql" ]; then regress+=("$t")
		elif [ -f "$REPO_ROOT/test/specs/$t.spec" ]; then iso+=("$t")
		elif [ -f "$REPO_ROOT/${t#./}" ] && [[ "$t" == *.pl ]]; then tap+=("${t#./}")
		else die "no such test: $t (a name from sql/, test/specs/ or a test/t/*.pl file)"
		fi
	done
	# every pg_regress test assumes 00_extension (CREATE EXTENSION) ran first
	[ ${#regress[@]} -eq 0 ] || [ "${regress[0]}" = 00_extension ] || regress=(00_extension "${regress[@]}")
	printf '%s\n' "REGRESS=${regress[*]}" "ISOLATION=${iso[*]}" "PROVE_TESTS=${tap[*]}"
	[ ${#tap[@]} -gt 0 ] || echo "TAP_TESTS="
}

main() {
	local selection=() vars
	vars="$(test_selection "$@")" || exit 1
	[ -z "$vars" ] || mapfile -t selection <<<"$vars"
	trap finish EXIT
	trap 'exit 130' INT TERM
	install_deps
	setup_path
	USER_NAME="$(server_user)"
	if [ "$(id -u)" -eq 0 ]; then
		TREE="$(private_copy)"
		build_install "$TREE"
		chown -R "$USER_NAME": "$TREE"
	else
		build_install "$REPO_ROOT"
	fi
	say "running make installcheck as $USER_NAME in $TREE"
	local rc=0
	run_as "$USER_NAME" timeout -k 30 "${TEST_TIMEOUT:-3600}" \
		make -C "$TREE" PG_CONFIG="$PG_CONFIG" "${selection[@]}" installcheck </dev/null || rc=$?
	if [ "$rc" -eq 0 ]; then
		STATUS=0
	else
		show_failures
		[ "$rc" -ne 124 ] || say "the suites did not finish within TEST_TIMEOUT=${TEST_TIMEOUT:-3600} s"
	fi
	exit "$STATUS"
}

main "$@"

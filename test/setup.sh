# test/setup.sh: shared helpers (sourced): install missing packages, build+install the extension, pick a server user
# shellcheck shell=bash
# Sourced by test/run-tests.sh and test/demo.sh, which set -euo pipefail.  Defines REPO_ROOT and PG_CONFIG.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR=15
# libcurl and OpenSSL (headers) for the network loops; openssl and Python's aiosmtpd for the tests' receivers
PACKAGES=("postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" libipc-run-perl make gcc
	libcurl4-openssl-dev libssl-dev openssl python3 python3-aiosmtpd)

# Print a progress line on stderr.
say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# Print an error and exit.
die() { say "error: $*"; exit 1; }

# Install the Debian packages that are missing (apt-get update only then); as non-root, fail naming them.
install_deps() {
	local pkg missing=()
	for pkg in "${PACKAGES[@]}"; do
		[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = 'install ok installed' ] || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "missing packages (install them as root): ${missing[*]}"
	say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq </dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

# Point PG_CONFIG at PostgreSQL $PG_MAJOR's pg_config and put its bindir (initdb, pg_ctl, psql) first in PATH.
setup_path() {
	if [ -z "${PG_CONFIG:-}" ]; then
		PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
		[ -x "$PG_CONFIG" ] || PG_CONFIG=pg_config
	fi
	export PG_CONFIG
	PATH="$("$PG_CONFIG" --bindir):$PATH"
	export PATH
}

# Build and install the extension from directory $1 (default: the repo); PG_CFLAGS passes through to PGXS.
build_install() {
	local dir="${1:-$REPO_ROOT}"
	say "building in $dir (PG_CFLAGS=${PG_CFLAGS:-})"
	make -s -C "$dir" PG_CONFIG="$PG_CONFIG" PG_CFLAGS="${PG_CFLAGS:-}"
	if [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
		make -s -C "$dir" PG_CONFIG="$PG_CONFIG" install
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo -n make -s -C "$dir" PG_CONFIG="$PG_CONFIG" install
	else
		die "cannot write to $("$PG_CONFIG" --pkglibdir): run as root to install the extension"
	fi
}

# Print the user that runs servers: as root, 'postgres' (created by postgresql-common) or else a new system user
# 'certctl_sched' (initdb and postgres refuse to run as root); otherwise the current user.
server_user() {
	if [ "$(id -u)" -ne 0 ]; then
		id -un
	elif id postgres >/dev/null 2>&1; then
		echo postgres
	else
		id certctl_sched >/dev/null 2>&1 ||
			useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin certctl_sched
		echo certctl_sched
	fi
}

# Run a command as user $1 (directly when that is the current user), keeping PATH and PG_CONFIG.
run_as() {
	local user="$1"
	shift
	if [ "$user" = "$(id -un)" ]; then
		"$@"
	else
		runuser -u "$user" -- env PATH="$PATH" PG_CONFIG="$PG_CONFIG" "$@"
	fi
}

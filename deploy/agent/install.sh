#!/usr/bin/env bash
# Install, upgrade or remove the school-monitor agent from a source checkout, on a
# school's Raspberry Pi or PC (Raspberry Pi OS or Debian 12, arm64 or amd64).
# The Debian package is the usual way (README: "Install at a school"); this is
# for a machine without it, or for a development build. Run as root:
#
#   sudo bash deploy/agent/install.sh --bundle /media/usb/KZ-ALM-0001   # install or upgrade
#   sudo bash deploy/agent/install.sh                                   # no bundle: edit the config after
#   sudo bash deploy/agent/install.sh --uninstall [--purge]
#
# It installs the agent into its own virtual environment in /opt/school-agent,
# with the pinned, hash-checked dependencies of deploy/requirements.lock (from
# PyPI), and the systemd unit school-agent.service; then school-agent-setup
# (beside this script, and in the package) creates the user school-agent, the
# config (from the ministry's provisioning bundle, or the commented sample),
# the state directory, and starts the unit. Running it again upgrades the agent
# in place and keeps the config and the outbox (/var/lib/school-agent).
# --uninstall removes the program and the unit but keeps the config (it holds
# the school's credentials) and the data; --purge removes those and the user
# too. --root DIR installs into DIR instead of / (tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
root=/
bundle=""
action=install
purge=0

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) bundle=$2; shift 2 ;;
        --source) source_dir=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo bash $0 ...)" >&2; exit 2; }
root=${root%/}
prefix=$root                       # "" for a real install
venv=$prefix/opt/school-agent
unit=$prefix/etc/systemd/system/school-agent.service
live_systemd=0
[ -z "$prefix" ] && [ -d /run/systemd/system ] && live_systemd=1

step() { printf '== %s\n' "$*"; }
setup=("$here/school-agent-setup" --root "${root:-/}" --sample "$source_dir/agent/agent.sample.toml")

if [ "$action" = uninstall ]; then
    purge_flag=()
    [ "$purge" -eq 1 ] && purge_flag=(--purge)
    "${setup[@]}" --remove "${purge_flag[@]}"
    step "removing the program and the unit"
    rm -rf "$venv" "$unit" "$prefix/usr/local/bin/school-agent"
    [ "$live_systemd" -eq 1 ] && systemctl daemon-reload
    exit 0
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "install.sh: Python 3.11 or newer is needed (Debian 12 / Raspberry Pi OS bookworm)" >&2
    exit 2
}
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    step "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

step "the agent in $venv (dependencies pinned by deploy/requirements.lock)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" --require-hashes -r "$source_dir/deploy/requirements.lock"
"${pip[@]}" --no-deps --upgrade "$source_dir"
"$venv/bin/school-agent" --version
install -d "$prefix/usr/local/bin"
ln -sfn /opt/school-agent/bin/school-agent "$prefix/usr/local/bin/school-agent"

step "systemd unit"
install -D -m 0644 "$here/school-agent.service" "$unit"

bundle_flag=()
[ -n "$bundle" ] && bundle_flag=(--bundle "$bundle")
"${setup[@]}" "${bundle_flag[@]}"

#!/usr/bin/env bash
# Install, upgrade or remove the school-monitor agent on a school's Raspberry Pi
# or PC (Raspberry Pi OS or Debian 12, arm64 or amd64). Run as root:
#
#   sudo bash deploy/agent/install.sh --bundle /media/usb/KZ-ALM-0001   # install or upgrade
#   sudo bash deploy/agent/install.sh                                   # no bundle: edit the config after
#   sudo bash deploy/agent/install.sh --uninstall [--purge]
#
# It creates the system user school-agent, installs the agent into its own
# virtual environment in /opt/school-agent, writes /etc/school-agent/agent.toml
# (from the ministry's provisioning bundle, or the commented sample), and
# installs and starts the systemd unit school-agent.service. Running it again
# upgrades the agent in place and keeps the config and the outbox
# (/var/lib/school-agent). --uninstall removes the program and the unit but keeps
# the config (it holds the school's credentials) and the data; --purge removes
# those and the user too. --root DIR installs into DIR instead of / (tests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
root=/
bundle=""
action=install
purge=0
user=school-agent

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
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
etc=$prefix/etc/school-agent
state=$prefix/var/lib/school-agent
unit=$prefix/etc/systemd/system/school-agent.service
dropins=$prefix/etc/systemd/system/school-agent.service.d
live_systemd=0
[ -z "$prefix" ] && [ -d /run/systemd/system ] && live_systemd=1

step() { printf '== %s\n' "$*"; }

ids() {  # uid and gid of the user, as the target root's passwd and group say
    uid=$(awk -F: -v u="$user" '$1 == u {print $3}' "$prefix/etc/passwd")
    gid=$(awk -F: -v u="$user" '$1 == u {print $3}' "$prefix/etc/group")
}

if [ "$action" = uninstall ]; then
    if [ "$live_systemd" -eq 1 ]; then
        systemctl disable --now school-agent.service 2>/dev/null || true
    fi
    step "removing the program and the unit"
    rm -rf "$venv" "$unit" "$dropins" "$prefix/usr/local/bin/school-agent"
    [ "$live_systemd" -eq 1 ] && systemctl daemon-reload
    if [ "$purge" -eq 1 ]; then
        step "removing the config, the data (outbox) and the user"
        rm -rf "$etc" "$state"
        if grep -q "^$user:" "$prefix/etc/passwd" 2>/dev/null; then
            if [ -z "$prefix" ]; then userdel "$user"; else userdel --prefix "$prefix" "$user"; fi
        fi
    else
        echo "kept $etc (credentials) and $state (outbox, agent id); --purge removes them"
    fi
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

step "system user $user"
if ! grep -q "^$user:" "$prefix/etc/passwd"; then
    if [ -z "$prefix" ]; then
        useradd --system --home-dir /var/lib/school-agent --no-create-home \
            --shell /usr/sbin/nologin "$user"
    else
        useradd --prefix "$prefix" --system --home-dir /var/lib/school-agent \
            --no-create-home --shell /usr/sbin/nologin "$user"
    fi
fi
ids

step "the agent in $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade "$source_dir"
"$venv/bin/school-agent" --version
install -d "$prefix/usr/local/bin"
ln -sfn /opt/school-agent/bin/school-agent "$prefix/usr/local/bin/school-agent"

step "configuration in $etc"
install -d -m 0750 -o 0 -g "$gid" "$etc"
if [ -n "$bundle" ]; then
    [ -f "$bundle/agent.toml" ] || { echo "install.sh: no agent.toml in $bundle" >&2; exit 2; }
    if [ -f "$etc/agent.toml" ] && ! cmp -s "$bundle/agent.toml" "$etc/agent.toml"; then
        echo "kept the existing $etc/agent.toml (the bundle's differs; copy it by hand to replace)"
    else
        install -m 0640 -o 0 -g "$gid" "$bundle/agent.toml" "$etc/agent.toml"
    fi
    [ -f "$bundle/ca.pem" ] && install -m 0644 -o 0 -g 0 "$bundle/ca.pem" "$etc/ca.pem"
elif [ ! -f "$etc/agent.toml" ]; then
    install -m 0640 -o 0 -g "$gid" "$source_dir/agent/agent.sample.toml" "$etc/agent.toml"
    echo "wrote the commented sample: set school_id and mqtt.url in $etc/agent.toml"
fi

step "data (outbox) in $state"
install -d -m 0750 -o "$uid" -g "$gid" "$state"

step "systemd unit"
install -D -m 0644 "$here/school-agent.service" "$unit"
rm -rf "$dropins"
if grep -Eq '^[[:space:]]*check[[:space:]]*=[[:space:]]*"icmp"' "$etc/agent.toml" \
    && ! awk -v g="$gid" '{exit !($1 <= g && g <= $2)}' /proc/sys/net/ipv4/ping_group_range; then
    install -D -m 0644 /dev/stdin "$dropins/icmp.conf" <<'EOF'
# Written by install.sh: a device is checked over ICMP, and this system does not
# allow unprivileged ping for the agent's group.
[Service]
CapabilityBoundingSet=CAP_NET_RAW
AmbientCapabilities=CAP_NET_RAW
EOF
    echo "ICMP checks: the unit gets CAP_NET_RAW ($dropins/icmp.conf)"
fi

if [ "$live_systemd" -eq 1 ]; then
    systemctl daemon-reload
    systemctl enable school-agent.service
    if grep -q 'KZ-EXAMPLE-0001' "$etc/agent.toml"; then
        echo "not started: edit $etc/agent.toml, then: systemctl restart school-agent"
    else
        systemctl restart school-agent.service
        echo "started; follow it with: journalctl -u school-agent -f"
    fi
else
    echo "installed into ${prefix:-/} (systemd not running there: nothing started)"
fi

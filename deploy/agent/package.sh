#!/usr/bin/env bash
# Build the agent's Debian package, or the ministry's signed apt repository.
#
#   bash deploy/agent/package.sh build --arch arm64              # dist/school-agent_<v>_arm64.deb
#   bash deploy/agent/package.sh build --arch amd64 --revision 2 # dist/school-agent_<v>-2_amd64.deb
#   bash deploy/agent/package.sh repo --key-dir DIR --out DIR dist/*.deb
#
# build: a self-contained package for Debian 12 and Raspberry Pi OS (bookworm,
# 64-bit). It carries its own Python libraries in /opt/school-agent/lib, the
# exact versions and hashes of deploy/requirements.lock, as wheels for the
# target's CPU fetched with pip's platform options; it needs only the system's
# python3.11, and nothing is fetched when it is installed. The build fails if a
# compiled file is not for the target's CPU. Options: --arch amd64|arm64
# (default: this machine's), --version V (default: pyproject.toml's),
# --revision N (default 1; raise it to publish a rebuild), --out DIR (dist).
#
# repo: an apt repository the ministry serves over HTTP(S): pool/, dists/stable/
# with Packages, Release, Release.gpg and InRelease signed by the GPG key in
# --key-dir (a GNUPGHOME; one is made, with a new key, when it holds none),
# and school-monitor-archive.asc, the public key the schools trust.
# Options: --out DIR (default: dist/apt), --key-dir DIR (required),
# --suite NAME (default: stable; a pilot suite for staged rollouts).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
lock=$repo_root/deploy/requirements.lock
python=${PYTHON:-python3}

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "package.sh: $*" >&2; exit 1; }
step() { printf '== %s\n' "$*"; }
# pip, without its notes on configured package indexes that are absent here.
quiet_pip() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

# -- build ------------------------------------------------------------------

build() {
    local arch="" version="" revision=1 out="$repo_root/dist"
    while [ $# -gt 0 ]; do
        case "$1" in
            --arch) arch=$2; shift 2 ;;
            --version) version=$2; shift 2 ;;
            --revision) revision=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) fail "unknown option $1 (see --help)" ;;
        esac
    done
    [ -n "$arch" ] || arch=$(dpkg --print-architecture)
    local machine
    case "$arch" in
        amd64) machine=x86_64 ;;
        arm64) machine=aarch64 ;;
        *) fail "--arch must be amd64 or arm64, not $arch" ;;
    esac
    [ -n "$version" ] || version=$("$python" -c \
        'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' \
        "$repo_root/pyproject.toml")
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || fail "build with Python 3.11, the target's (PYTHON=python3.11): its bytecode is shipped"
    local full="$version-$revision"
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    local stage=$work/root wheels=$work/wheels
    local platforms=(--platform "manylinux2014_$machine")
    for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_$machine"); done
    local target=(--only-binary=:all: --python-version 3.11 --implementation cp "${platforms[@]}")
    local pip=(quiet_pip "$python" -m pip --disable-pip-version-check --quiet)

    step "wheels for $arch ($machine), as deploy/requirements.lock pins and hashes them"
    "${pip[@]}" download --require-hashes -r "$lock" "${target[@]}" --dest "$wheels" \
        || fail "pip could not fetch a locked wheel for $machine (PyPI reachable? pip config list)"
    # (from a copy: setuptools would leave build/ in the checkout)
    mkdir "$work/src"
    cp -r "$repo_root"/{pyproject.toml,README.md,agent,collector} "$work/src/"
    find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
    "${pip[@]}" wheel --no-deps --wheel-dir "$wheels/project" "$work/src" \
        || fail "building the project's own wheel failed (see above)"

    step "the libraries in /opt/school-agent/lib"
    local lib=$stage/opt/school-agent/lib
    "${pip[@]}" install --no-index --find-links "$wheels" --require-hashes -r "$lock" \
        "${target[@]}" --target "$lib" --no-compile
    rm -rf "$lib/bin"  # console scripts for the build's Python: the launcher replaces them
    "${pip[@]}" install --no-index --no-deps "${target[@]}" --target "$lib" --no-compile \
        "$wheels"/project/*.whl
    rm -rf "$lib/bin"
    "$python" "$here/package_check.py" elf "$lib" "$machine"
    "$python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$lib"

    step "launcher, unit, setup and sample config"
    install -D -m 0755 /dev/stdin "$stage/opt/school-agent/bin/school-agent" <<'EOF'
#!/usr/bin/python3.11 -IS
# The school-monitor agent, with its own libraries (the school-agent package).
import sys

sys.path[:0] = ["/opt/school-agent/lib"]
from agent.cli import main  # noqa: E402

sys.exit(main())
EOF
    install -d "$stage/usr/bin"
    ln -s /opt/school-agent/bin/school-agent "$stage/usr/bin/school-agent"
    install -D -m 0644 "$here/school-agent.service" "$stage/lib/systemd/system/school-agent.service"
    install -D -m 0755 "$here/school-agent-setup" "$stage/usr/sbin/school-agent-setup"
    install -D -m 0644 "$repo_root/agent/agent.sample.toml" \
        "$stage/usr/share/school-agent/agent.sample.toml"
    install -D -m 0644 /dev/stdin "$stage/etc/apt/apt.conf.d/51school-agent-upgrades" <<'EOF'
// From the school-agent package: unattended-upgrades may install new versions
// of the agent from the ministry's apt repository (its Release says
// Origin: school-monitor). Nothing happens until that repository is added
// (README: "Fleet operations").
Unattended-Upgrade::Origins-Pattern { "origin=school-monitor"; };
EOF
    install -D -m 0644 /dev/stdin "$stage/usr/share/doc/school-agent/copyright" <<'EOF'
school-monitor agent, Apache-2.0. Bundled Python libraries keep their own
licences (their *.dist-info folders in /opt/school-agent/lib).
EOF

    step "package metadata and maintainer scripts"
    install -d "$stage/DEBIAN"
    echo /etc/apt/apt.conf.d/51school-agent-upgrades > "$stage/DEBIAN/conffiles"
    cat > "$stage/DEBIAN/control" <<EOF
Package: school-agent
Version: $full
Architecture: $arch
Maintainer: school-monitor <school-monitor@invalid.example>
Depends: python3.11, passwd
Recommends: systemd
Section: net
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Homepage: https://github.com/school-monitor/school-monitor
Description: school-monitor agent: school internet speed and safety devices
 Measures the school's internet against the national standard, checks that
 panic buttons, turnstiles and the police-centre link are alive, and
 publishes the results over MQTT through a durable outbox. Carries its own
 Python libraries; needs only python3.11.
EOF
    install -m 0755 /dev/stdin "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Create the user, the config (kept on upgrade), the outbox's directory; start the agent.
set -e
if [ "$1" = configure ]; then
    /usr/sbin/school-agent-setup
fi
EOF
    install -m 0755 /dev/stdin "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Stop the agent before its files change; on removal also disable it. The outbox
# is on disk: what it holds is sent after the upgrade.
set -e
case "$1" in
    remove|deconfigure) /usr/sbin/school-agent-setup --remove ;;
    upgrade) if [ -d /run/systemd/system ]; then systemctl stop school-agent.service || true; fi ;;
esac
EOF
    install -m 0755 /dev/stdin "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# purge: the config (the school's credentials), the outbox and the user go too.
set -e
case "$1" in
    remove) if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi ;;
    purge)
        rm -rf /etc/school-agent /var/lib/school-agent \
            /etc/systemd/system/school-agent.service.d
        if getent passwd school-agent >/dev/null; then userdel school-agent; fi
        ;;
esac
EOF
    "$python" "$here/package_check.py" lock "$lib" "$lock" > "$stage/usr/share/doc/school-agent/libraries"

    mkdir -p "$out"
    local deb=$out/school-agent_${full}_$arch.deb
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    step "built $deb ($(du -h "$deb" | cut -f1))"
}

# -- repo -------------------------------------------------------------------

repo() {
    local out="$repo_root/dist/apt" keys="" suite=stable debs=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out=$2; shift 2 ;;
            --key-dir) keys=$2; shift 2 ;;
            --suite) suite=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            -*) fail "unknown option $1 (see --help)" ;;
            *) debs+=("$1"); shift ;;
        esac
    done
    [ -n "$keys" ] || fail "--key-dir DIR is required: the GPG home that holds the archive key"
    [ "${#debs[@]}" -gt 0 ] || fail "name the .deb files to publish"
    command -v apt-ftparchive >/dev/null || fail "apt-ftparchive is missing: apt-get install apt-utils"
    export GNUPGHOME=$keys
    install -d -m 0700 "$keys"
    if ! gpg --batch --list-secret-keys 2>/dev/null | grep -q sec; then
        step "a new archive key in $keys (keep it offline; its public half goes to the schools)"
        gpg --batch --quiet --passphrase '' --quick-gen-key \
            "school-monitor archive <archive@school-monitor.invalid>" ed25519 sign 5y
    fi
    step "pool and indexes in $out (suite $suite)"
    install -d "$out/pool/main" "$out/dists/$suite/main"
    cp "${debs[@]}" "$out/pool/main/"
    local arches
    arches=$(cd "$out/pool/main" && ls ./*.deb | sed -E 's/.*_([a-z0-9]+)\.deb$/\1/' | sort -u)
    for arch in $arches; do
        local index=$out/dists/$suite/main/binary-$arch
        install -d "$index"
        (cd "$out" && apt-ftparchive --arch "$arch" packages pool/main) > "$index/Packages"
        gzip -9kf "$index/Packages"
    done
    (cd "$out/dists/$suite" && apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=school-monitor \
        -o APT::FTPArchive::Release::Label=school-monitor \
        -o APT::FTPArchive::Release::Suite="$suite" \
        -o APT::FTPArchive::Release::Codename="$suite" \
        -o APT::FTPArchive::Release::Architectures="$(echo "$arches" | tr '\n' ' ')" \
        -o APT::FTPArchive::Release::Components=main \
        release .) > "$out/dists/$suite/Release.tmp"
    mv "$out/dists/$suite/Release.tmp" "$out/dists/$suite/Release"
    rm -f "$out/dists/$suite/Release.gpg" "$out/dists/$suite/InRelease"
    gpg --batch --yes --armor --detach-sign -o "$out/dists/$suite/Release.gpg" "$out/dists/$suite/Release"
    gpg --batch --yes --clearsign -o "$out/dists/$suite/InRelease" "$out/dists/$suite/Release"
    gpg --batch --armor --export > "$out/school-monitor-archive.asc"
    step "signed; schools trust $out/school-monitor-archive.asc"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    repo) shift; repo "$@" ;;
    -h|--help|"") usage ;;
    *) fail "unknown command $1: build or repo (see --help)" ;;
esac

#!/usr/bin/env bash
# bootstrap-base.sh: build a Debian bookworm base image without any registry; idempotent.
#
#   docker/bootstrap-base.sh [TAG]     # default TAG: the `ARG BASE=` default of docker/Dockerfile.cpu
#
# No image registry is reachable on this project's machines (only PyPI and the Debian mirrors),
# so `FROM debian:bookworm-slim` cannot be pulled. Instead: debootstrap a minbase bookworm root
# file system with python3, python3-venv and ca-certificates, and `docker import` it.
# Skips everything when TAG already exists. Needs root and a running engine (ensure-engine.sh).
# About a minute on 2 cores.
#
# Environment: DEBIAN_MIRROR (default: the mirror this machine's apt uses, from /etc/apt/sources.list,
#              sources.list.d/*.list and sources.list.d/*.sources; see debian-mirror.sh),
#              DEBIAN_SECURITY_MIRROR (default: likewise, its security suite; none found: left out).
# No host is written here: a machine that reaches only its own mirror bootstraps from that one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=debian-mirror.sh
. "$HERE/debian-mirror.sh"
say() { echo "bootstrap-base: $*" >&2; }
die() { echo "bootstrap-base: ERROR: $*" >&2; exit 1; }

default_tag() { sed -n 's/^ARG BASE=\(.*\)$/\1/p' "$HERE/Dockerfile.cpu" | head -n 1; }
TAG=${1:-$(default_tag)}
[ -n "$TAG" ] || die "no tag given and no 'ARG BASE=' default found in $HERE/Dockerfile.cpu"
SUITE=bookworm

docker image inspect "$TAG" >/dev/null 2>&1 && { say "$TAG exists; nothing to do"; exit 0; }
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
docker info >/dev/null 2>&1 || die "no Docker engine answers (run docker/ensure-engine.sh first)"

# One bootstrap at a time (two test sessions, or make -j).
exec 9>/tmp/prunebench-bootstrap-base.lock
flock 9
docker image inspect "$TAG" >/dev/null 2>&1 && { say "$TAG exists (built concurrently)"; exit 0; }

if [ -n "${DEBIAN_MIRROR:-}" ]; then
    MIRROR=$DEBIAN_MIRROR
else
    is_debian || die "this machine is not Debian (/etc/os-release), so its apt mirror has no $SUITE: set DEBIAN_MIRROR"
    MIRROR=$(debian_mirror) \
        || die "no http(s) or file 'deb' source in /etc/apt/sources.list or sources.list.d/: set DEBIAN_MIRROR"
fi
# Without a security source here, the image goes without one (said below), rather than guessing a host.
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(debian_security_mirror || true)}

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null 2>&1 || say "warning: apt-get update reported errors (continuing)"
    apt-get install -y -q --no-install-recommends debootstrap debian-archive-keyring >/dev/null \
        || die "apt-get install debootstrap failed"
fi

ROOT=$(mktemp -d /var/tmp/prunebench-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

say "debootstrap --variant=minbase $SUITE from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1; then
    tail -n 5 "$ROOT.log" >&2
    die "debootstrap failed (log: $ROOT.log)"
fi
rm -f "$ROOT.log"

# Full apt sources (debootstrap writes only the main suite), so that Dockerfiles can apt-get.
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
EOF
if [ -n "$SECURITY_MIRROR" ]; then
    echo "deb $SECURITY_MIRROR $SUITE-security main" >>"$ROOT/etc/apt/sources.list"
else
    say "warning: no security mirror in this machine's apt sources (set DEBIAN_SECURITY_MIRROR): the image has none"
fi
# Same slimming as the official debian:*-slim images; the engine manages these files itself.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/root/.cache
: >"$ROOT/etc/resolv.conf"; : >"$ROOT/etc/hostname"
echo 'APT::Install-Recommends "false";' >"$ROOT/etc/apt/apt.conf.d/90-no-recommends"

say "docker import -> $TAG"
tar --numeric-owner --xattrs -C "$ROOT" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ) org.opencontainers.image.description=debootstrap-minbase-$SUITE+python3" \
    - "$TAG" >/dev/null
docker run --rm "$TAG" python3 -c 'import ensurepip, ssl, venv' \
    || die "imported image $TAG lacks a working python3 with venv/ensurepip"
say "built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"

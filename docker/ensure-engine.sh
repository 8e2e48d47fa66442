#!/usr/bin/env bash
# ensure-engine.sh: make sure a Docker engine answers `docker info`; idempotent.
#
#   docker/ensure-engine.sh            # exit 0 when an engine answers (installing/starting one if needed)
#
# When no engine answers and we are root on a Debian machine without systemd (this project's
# sandboxes and CI), it installs Debian's `docker.io` (apt-get update first) and starts `dockerd`
# in the background (own session, log file), then waits until it answers. On failure it prints
# ONE line starting with "ensure-engine: ERROR:" on stderr and exits non-zero.
#
# Environment:
#   PRUNEBENCH_DOCKERD_LOG   dockerd log file            (default /var/log/prunebench-dockerd.log)
#   PRUNEBENCH_DOCKERD_WAIT  seconds to wait for dockerd (default 90)
#   PRUNEBENCH_NO_INSTALL=1  never install or start anything; only check
#
# Sandbox notes (see docker/README.md, "Pitfalls"):
#   * no systemd: the package's postinst cannot start the service, so we start dockerd ourselves,
#     detached with setsid so it outlives the calling shell / pytest process;
#   * a statically linked Docker 28 CLI may already sit in /usr/local/bin and shadow Debian's 20.10
#     client; it talks to the 20.10 daemon through API-version negotiation, so both work;
#   * iptables: Debian defaults to the nft backend; if dockerd cannot program it we switch to
#     iptables-legacy and retry, because containers (and `docker build` RUN steps) need the
#     NAT'ed bridge to reach PyPI / the Debian mirror;
#   * storage: overlay2 on the ext4 root works; if the overlay probe fails we fall back to vfs.
set -uo pipefail

LOG=${PRUNEBENCH_DOCKERD_LOG:-/var/log/prunebench-dockerd.log}
WAIT=${PRUNEBENCH_DOCKERD_WAIT:-90}
DATA_ROOT=/var/lib/docker

say() { echo "ensure-engine: $*" >&2; }
die() { echo "ensure-engine: ERROR: $*" >&2; exit 1; }

engine_up() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 20 docker info >/dev/null 2>&1
}

if engine_up; then
    say "engine answers ($(docker version --format 'server {{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
fi

[ "${PRUNEBENCH_NO_INSTALL:-0}" = 1 ] && die "no Docker engine answers 'docker info' (PRUNEBENCH_NO_INSTALL=1: not installing)"
if [ "$(id -u)" != 0 ]; then
    sock=${DOCKER_HOST:-unix:///var/run/docker.sock}; sock=${sock#unix://}
    if [ -S "$sock" ] && [ ! -w "$sock" ]; then
        die "a Docker engine runs but $(id -un) may not use $sock (join the 'docker' group, or run as root)"
    fi
    die "no Docker engine answers 'docker info' and not root: start one (or run as root to install docker.io)"
fi

# ---------------------------------------------------------------- install ---
if ! command -v dockerd >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "no Docker engine and no apt-get to install docker.io"
    say "installing Debian's docker.io (apt-get update + install)"
    export DEBIAN_FRONTEND=noninteractive
    # A third-party source that is unreachable makes `apt-get update` exit non-zero although the
    # Debian indexes were fetched: keep going and let the install decide.
    apt-get update -q >/dev/null 2>&1 || say "warning: apt-get update reported errors (continuing)"
    # --no-install-recommends: skips git, pigz, apparmor, ... (none needed); iptables + containerd +
    # runc + tini come in as dependencies of docker.io.
    if ! apt-get install -y -q --no-install-recommends docker.io iptables ca-certificates >/tmp/ensure-engine-apt.log 2>&1; then
        die "apt-get install docker.io failed (see /tmp/ensure-engine-apt.log)"
    fi
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"
command -v docker >/dev/null 2>&1 || die "docker client not found after installing docker.io"

# ------------------------------------------------------------ start dockerd ---
dockerd_pid() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_engine() { # $1 = pid of the dockerd we started (or "")
    local i
    for ((i = 0; i < WAIT; i++)); do
        engine_up && return 0
        if [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null; then return 1; fi
        sleep 1
    done
    return 1
}

overlay_ok() { # can this kernel + filesystem mount overlayfs under the data root?
    local d
    mkdir -p "$DATA_ROOT" || return 1
    d=$(mktemp -d "$DATA_ROOT/.overlay-probe.XXXXXX") || return 1
    mkdir -p "$d/l" "$d/u" "$d/w" "$d/m"
    if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
        umount "$d/m"; rm -rf "$d"; return 0
    fi
    rm -rf "$d"; return 1
}

start_dockerd() { # args: extra dockerd flags; sets STARTED_PID
    : >>"$LOG" || die "cannot write dockerd log $LOG"
    echo "=== $(date -Is) ensure-engine: dockerd $*" >>"$LOG"
    # setsid + nohup + </dev/null: the daemon must not die with the caller's process group.
    setsid nohup dockerd "$@" >>"$LOG" 2>&1 </dev/null &
    STARTED_PID=$!
}

# Another dockerd may still be coming up (e.g. two callers at once): wait for it first.
if pid=$(dockerd_pid); then
    say "dockerd (pid $pid) is running but not answering yet; waiting"
    wait_engine "$pid" && { say "engine answers"; exit 0; }
    die "dockerd (pid $pid) runs but 'docker info' does not answer after ${WAIT}s (log: $LOG)"
fi

FLAGS=()
if [ ! -s /etc/docker/daemon.json ] || ! grep -q storage-driver /etc/docker/daemon.json; then
    if overlay_ok; then FLAGS+=(--storage-driver=overlay2)
    else say "warning: overlayfs cannot be mounted here; using the slow vfs storage driver"; FLAGS+=(--storage-driver=vfs); fi
fi

say "starting dockerd ${FLAGS[*]} (log: $LOG)"
start_dockerd "${FLAGS[@]}"
if wait_engine "$STARTED_PID"; then say "engine answers"; exit 0; fi

# dockerd died or hangs. The usual cause in VMs/containers: the nft iptables backend.
if kill -0 "$STARTED_PID" 2>/dev/null; then kill "$STARTED_PID" 2>/dev/null; sleep 3; fi
if grep -qiE 'iptables|nf_tables|nat chain|bridge' <(tail -n 40 "$LOG") \
        && command -v iptables-legacy >/dev/null 2>&1 \
        && ! readlink -f "$(command -v iptables)" | grep -q legacy; then
    say "dockerd failed on iptables (nft backend); retrying with iptables-legacy"
    update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null 2>&1
    update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1
    start_dockerd "${FLAGS[@]}"
    if wait_engine "$STARTED_PID"; then say "engine answers (iptables-legacy)"; exit 0; fi
fi

last=$(grep -iE 'level=(fatal|error)|failed' "$LOG" | tail -n 1 | cut -c1-300)
die "dockerd did not answer within ${WAIT}s (log: $LOG)${last:+; last error: $last}"

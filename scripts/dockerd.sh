#!/usr/bin/env bash
# Starts, stops or reports on the Docker engine the tests use, and makes sure conntrack accounting is on.
#
# Usage: sudo scripts/dockerd.sh start|stop|status
#   start   if no engine answers, start dockerd in the background (log: $SCOPE_DOCKERD_LOG, default
#           /var/log/scope-dockerd.log) and wait until `docker info` works (timeout
#           $SCOPE_DOCKERD_TIMEOUT seconds, default 60). An engine that already answers is left alone.
#   stop    stop dockerd only if this script started it (its pid is in $SCOPE_STATE_DIR/dockerd.pid).
#   status  say whether an engine answers and whether this script owns it; exit 0 only if it answers.
# Note: dockerd sets the iptables FORWARD policy to DROP; test bridges need their own ACCEPT rule.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR="${SCOPE_STATE_DIR:-/run/scope-test}"
PIDFILE="$STATE_DIR/dockerd.pid"
LOG="${SCOPE_DOCKERD_LOG:-/var/log/scope-dockerd.log}"
TIMEOUT="${SCOPE_DOCKERD_TIMEOUT:-60}"

# Prints the pid of the dockerd this script started, if it is still running.
owned_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == dockerd ]] || return 1
    printf '%s\n' "$pid"
}

# conntrack: the probe reads flows (with byte/packet counters) from the kernel's connection tracker.
enable_conntrack() {
    if command -v modprobe >/dev/null 2>&1; then
        modprobe nf_conntrack 2>/dev/null || true # may be built in, or modules may be unavailable
    fi
    local acct=/proc/sys/net/netfilter/nf_conntrack_acct
    if [[ -e "$acct" ]]; then
        if [[ "$(cat "$acct")" != 1 ]]; then
            echo 1 >"$acct" 2>/dev/null || warn "could not enable conntrack accounting ($acct)"
        fi
        log "conntrack: accounting $( [[ "$(cat "$acct")" == 1 ]] && echo on || echo OFF)"
    else
        warn "conntrack: $acct missing; the kernel has no nf_conntrack (conntrack tests will fail)"
    fi
}

# dockerd needs cgroups; a bare VM may boot without any cgroup filesystem mounted. Mount the same layout
# these machines normally come with (one cgroup v1 hierarchy per controller), or cgroup2 if v1 is unknown.
ensure_cgroups() {
    if grep -qE '^[^ ]+ /sys/fs/cgroup(/[^ ]*)? cgroup2? ' /proc/mounts; then
        return 0
    fi
    log "no cgroup filesystem mounted; mounting cgroups at /sys/fs/cgroup"
    mkdir -p /sys/fs/cgroup
    local controllers
    controllers="$(awk 'NR > 1 && $4 == 1 { print $1 }' /proc/cgroups 2>/dev/null || true)"
    if grep -qw cgroup /proc/filesystems && [[ -n "$controllers" ]]; then
        mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup || die "could not mount tmpfs at /sys/fs/cgroup"
        local sub
        for sub in $controllers; do
            mkdir -p "/sys/fs/cgroup/$sub"
            mount -t cgroup -o "$sub" cgroup "/sys/fs/cgroup/$sub" || warn "could not mount cgroup $sub"
        done
    else
        mount -t cgroup2 cgroup2 /sys/fs/cgroup || die "could not mount cgroup2 at /sys/fs/cgroup"
    fi
}

cmd_start() {
    [[ "$(id -u)" -eq 0 ]] || die "start needs root (sudo scripts/dockerd.sh start)"
    enable_conntrack
    if docker_answers; then
        if owned_pid >/dev/null; then
            log "dockerd already running (started by this script, pid $(owned_pid))"
        else
            log "a Docker engine already answers; using it and leaving it alone"
        fi
        return 0
    fi
    [[ -z "${DOCKER_HOST:-}" ]] || die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd"
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found: run scripts/install-deps.sh first"
    command -v docker >/dev/null 2>&1 || die "docker CLI not found: run scripts/install-deps.sh first"

    local pid
    if pid="$(owned_pid)"; then
        log "dockerd (pid $pid, started earlier by this script) does not answer yet; waiting for it"
    else
        ensure_cgroups
        mkdir -p "$STATE_DIR" "$(dirname "$LOG")"
        log "starting dockerd (log: $LOG)"
        printf '\n==== %s scripts/dockerd.sh start ====\n' "$(date -Is)" >>"$LOG"
        # setsid: its own session, so a Ctrl-C aimed at the test run does not kill it before the trap.
        setsid dockerd >>"$LOG" 2>&1 </dev/null &
        pid=$!
        printf '%s\n' "$pid" >"$PIDFILE"
    fi

    local deadline=$((SECONDS + TIMEOUT))
    until docker_answers; do
        if [[ ! -d "/proc/$pid" ]]; then
            rm -f "$PIDFILE"
            tail -n 30 "$LOG" >&2 || true
            die "dockerd exited during startup; last lines of $LOG are above"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$LOG" >&2 || true
            kill -TERM "$pid" 2>/dev/null || true
            rm -f "$PIDFILE"
            die "dockerd did not answer within ${TIMEOUT}s (see $LOG; last lines above)"
        fi
        sleep 0.5
    done
    log "dockerd ready (pid $pid, server $(docker version --format '{{.Server.Version}}'))"
}

cmd_stop() {
    local pid
    if ! pid="$(owned_pid)"; then
        rm -f "$PIDFILE"
        log "no dockerd started by this script is running; nothing to stop"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "stop needs root (sudo scripts/dockerd.sh stop)"
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while [[ -d "/proc/$pid" ]] && ((SECONDS < deadline)); do sleep 0.2; done
    if [[ -d "/proc/$pid" ]]; then
        warn "dockerd (pid $pid) ignored SIGTERM for 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    log "dockerd stopped"
}

cmd_status() {
    local pid owner="not started by this script"
    if pid="$(owned_pid)"; then owner="started by this script, pid $pid"; fi
    if docker_answers; then
        log "Docker engine answers (server $(docker version --format '{{.Server.Version}}'); $owner)"
        return 0
    fi
    log "no Docker engine answers ($owner)"
    return 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac

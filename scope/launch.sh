#!/usr/bin/env bash
# Runs scope on this host in one container named `weavescope`: a probe and an app (UI and API on :4040,
# report bus on :4030), privileged and in the host's network, PID and cgroup namespaces, with the Docker
# socket mounted, so that the probe sees every process, connection and container of the host. (Where the
# engine cannot grant every capability, as in some sandboxed VMs, --privileged cannot start; the container
# then gets every capability it can, unconfined, instead.)
#
# The same commands, once scope is installed (scripts/run.sh, or pip install): `scope launch`, `scope stop`
# (scope runs this script, which the package carries; ./launch.sh is a link to it).
#
# Usage:
#   ./launch.sh launch [SCOPE_FLAG ...] [PEER ...]
#       Start the container. PEERs are further apps the probe publishes to (host, ip, host:port; default
#       port 4030), e.g. the other hosts of a cluster; flags go to `scope` (./launch.sh launch --help).
#       Builds the image first (scripts/build-image.sh) when it is missing.
#   ./launch.sh launch --service-token=TOKEN --service-host=HOST[:PORT] --service-key=KEY [PROBE_FLAG ...]
#       Run a probe only (`scope probe`), feeding the multi-tenant service (`scope app --multitenant`) at
#       HOST with the probe token TOKEN, encrypted and pinning the service's KEY (`scope tenants add`
#       prints all three). No UI on this host. SCOPE_SERVICE_TOKEN=TOKEN in the environment does the same
#       as --service-token=TOKEN without showing the token in `ps`; either way it reaches the container
#       in its environment, never on a command line.
#   ./launch.sh stop
#       Stop and remove the container.
#   ./launch.sh help
#
# Env:
#   SCOPE_*            every other SCOPE_ variable is passed into the container, where scope reads its flags
#                      from them: SCOPE_LISTEN=127.0.0.1:4040, SCOPE_BUS, SCOPE_LOG_LEVEL, SCOPE_PEERS, ...
#                      (SCOPE_HOSTNAME defaults to this host's name). SCOPE_AUTH_TOKEN: the token the UI
#                      and API ask for; made up here (and printed) when the UI listens beyond loopback and
#                      neither it, --auth-token nor --no-auth is given. Every value, the token above all,
#                      goes into the container by the environment, never on a command line `ps` shows.
#   SCOPE_IMAGE        image to run (default scope-local/scope:latest)
#   SCOPE_DOCKER_ARGS  extra `docker run` arguments, split on spaces (e.g. "--label team=ops")
#   SCOPE_LAUNCH_AS    the command to name in messages (default: this script's path; `scope` sets `scope`)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${SCOPE_IMAGE:-scope-local/scope:latest}"
# The name is part of the contract: the app hides containers named weave* (scope's own) unless asked.
CONTAINER_NAME=weavescope
DOCKER_SOCKET=/var/run/docker.sock
# Variables of this script (and of the build and test scripts), not scope flags: kept out of the container.
LAUNCH_VARIABLES=(SCOPE_IMAGE SCOPE_DOCKER_ARGS SCOPE_REPO_ROOT SCOPE_BASE_IMAGE SCOPE_DEBIAN_MIRROR SCOPE_PYTHON
    SCOPE_LAUNCH_AS SCOPE_VENV)
SELF="${SCOPE_LAUNCH_AS:-$0}"

# Linux capabilities by number (capability.h), to name those this machine cannot grant.
CAPABILITIES=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
    NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
    SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
    AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
    PERFMON BPF CHECKPOINT_RESTORE)

log() { printf '[launch.sh] %s\n' "$*" >&2; }
die() {
    printf '[launch.sh] ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

require_docker() {
    command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
        die "no Docker engine answers (is dockerd running, and may this user use it? try sudo)"
}

# State of the container: running, exited, restarting, ...; empty when there is none.
container_state() {
    docker container inspect --format '{{.State.Status}}' "$CONTAINER_NAME" 2>/dev/null || true
}

# Succeeds when the engine's API is at least MAJOR.MINOR (e.g. 1.41: --cgroupns, Docker 20.10).
engine_api_at_least() {
    local have
    have="$(docker version --format '{{.Server.APIVersion}}' 2>/dev/null || echo 0.0)"
    [[ "$(printf '%s\n%s\n' "$1" "$have" | sort -V | head -n 1)" == "$1" ]]
}

# Capabilities missing from the local engine's bounding set, one name a line (usually none). A sandboxed
# machine may run dockerd without some (CAP_SYS_RESOURCE, say); --privileged asks for them all and then
# fails with "unable to apply caps: operation not permitted".
missing_capabilities() {
    case "${DOCKER_HOST:-unix://}" in unix://*) ;; *) return 0 ;; esac # a remote engine: cannot tell
    local pid bounding last bit
    pid="$(pgrep -o -x dockerd 2>/dev/null || true)"
    bounding="$(awk '/^CapBnd:/ { print $2 }' "/proc/${pid:-self}/status" 2>/dev/null || true)"
    [[ "$bounding" =~ ^[0-9a-fA-F]+$ ]] || return 0
    last="$(cat /proc/sys/kernel/cap_last_cap 2>/dev/null || echo 40)"
    for ((bit = 0; bit <= last && bit < ${#CAPABILITIES[@]}; bit++)); do
        if ((((16#$bounding >> bit) & 1) == 0)); then printf '%s\n' "${CAPABILITIES[bit]}"; fi
    done
}

# The privileges of the container: --privileged, or where the engine cannot grant some capability, the
# nearest it can: every other capability, no seccomp or AppArmor confinement, /proc and /sys unmasked.
privilege_args() {
    local missing=()
    mapfile -t missing < <(missing_capabilities)
    if [[ ${#missing[@]} -eq 0 ]]; then
        printf '%s\n' --privileged
        return
    fi
    log "this engine cannot grant ${missing[*]}, so --privileged would fail; running with every other capability instead"
    printf '%s\n' --cap-add=ALL
    printf -- '--cap-drop=%s\n' "${missing[@]}"
    printf '%s\n' --security-opt=seccomp=unconfined --security-opt=apparmor=unconfined \
        --security-opt=systempaths=unconfined
}

host_name() {
    hostname 2>/dev/null || cat /proc/sys/kernel/hostname
}

# The host part of where the UI listens (SCOPE_LISTEN or --listen), as given: "0.0.0.0" for all.
listen_host() {
    local listen="${SCOPE_LISTEN:-0.0.0.0:4040}"
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --listen=*) listen="${1#--listen=}" ;;
        --listen) [[ $# -lt 2 ]] || listen="$2" ;;
        esac
        shift
    done
    case "$listen" in
    \[*) listen="${listen#[}" listen="${listen%%]*}" ;; # [v6]:port or [v6]
    *:*:*) ;;                                           # a bare IPv6 address
    *:*) listen="${listen%:*}" ;;                       # host:port
    esac
    printf '%s\n' "$listen"
}

# The token the UI will ask for: given (SCOPE_AUTH_TOKEN, --auth-token), none (--no-auth, or the UI on
# loopback alone), or made up here, so that it stays the same when the container restarts.
ui_token() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --no-auth | --no-auth=on) return 0 ;;
        --auth-token=*) printf '%s\n' "${1#--auth-token=}"; return 0 ;;
        --auth-token) printf '%s\n' "${2:-}"; return 0 ;;
        esac
        shift
    done
    if [[ -n "${SCOPE_AUTH_TOKEN:-}" ]]; then
        printf '%s\n' "$SCOPE_AUTH_TOKEN"
        return 0
    fi
    case "${SCOPE_NO_AUTH:-off}" in on | true | yes | 1) return 0 ;; esac
    case "$(listen_host "$@")" in 127.* | ::1 | localhost) return 0 ;; esac
    head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
    printf '\n'
}

# Where the UI listens, "HOST PORT", from SCOPE_LISTEN or a --listen flag given to launch.
ui_address() {
    local listen="${SCOPE_LISTEN:-0.0.0.0:4040}"
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --listen=*) listen="${1#--listen=}" ;;
        --listen) [[ $# -lt 2 ]] || listen="$2" ;;
        esac
        shift
    done
    local host="${listen%:*}" port="${listen##*:}"
    if [[ "$listen" != *:* ]]; then
        host="$listen"
        port=4040
    fi
    host="${host#[}"
    host="${host%]}"
    case "$host" in "" | 0.0.0.0 | "*" | ::) host=127.0.0.1 ;; esac
    printf '%s %s\n' "$host" "$port"
}

ensure_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    local build="$SCRIPT_DIR/scripts/build-image.sh"
    [[ -f "$build" ]] || die "image $IMAGE not found, and there is no scripts/build-image.sh beside this script to \
build it: build it in a checkout of scope with scripts/build-image.sh, or set SCOPE_IMAGE to an image you have"
    log "image $IMAGE not found; building it with scripts/build-image.sh"
    SCOPE_IMAGE="$IMAGE" bash "$build" || die "building $IMAGE failed"
}

prepare_container() { # the image ready, no container in the way; RUN_ARGS: what every launch runs it with
    [[ -S "$DOCKER_SOCKET" ]] || die "$DOCKER_SOCKET is not a socket: the probe reads the engine through it"
    case "$(container_state)" in
    "") ;;
    running | restarting | paused)
        die "scope is already running (container $CONTAINER_NAME); stop it first with: $SELF stop"
        ;;
    *)
        log "removing the stopped container $CONTAINER_NAME left from an earlier launch"
        docker rm -f "$CONTAINER_NAME" >/dev/null
        ;;
    esac
    ensure_image

    RUN_ARGS=(
        --detach
        --name "$CONTAINER_NAME"
        --net=host
        --pid=host
        --restart=unless-stopped
        -v "$DOCKER_SOCKET:$DOCKER_SOCKET"
        -v /sys/fs/cgroup:/sys/fs/cgroup:ro
        -e "SCOPE_HOSTNAME=${SCOPE_HOSTNAME:-$(host_name)}"
    )
    local privileges
    mapfile -t privileges < <(privilege_args)
    RUN_ARGS+=("${privileges[@]}")
    # The host's cgroup namespace, so that container cgroup paths read the same inside and out.
    if engine_api_at_least 1.41; then RUN_ARGS+=(--cgroupns=host); fi
    local name skip
    while read -r name; do
        [[ "$name" != SCOPE_HOSTNAME ]] || continue
        for skip in "${LAUNCH_VARIABLES[@]}"; do [[ "$name" != "$skip" ]] || continue 2; done
        # By name only: docker takes the value from this script's environment, so no argv shows it.
        RUN_ARGS+=(-e "$name")
    done < <(compgen -e | grep -E '^SCOPE_[A-Za-z0-9_]+$' || true)
    if [[ -n "${SCOPE_DOCKER_ARGS:-}" ]]; then
        local extra
        read -r -a extra <<<"$SCOPE_DOCKER_ARGS"
        RUN_ARGS+=("${extra[@]}")
    fi
}

launch_local() { # launch_local ARGS...: probe and app in one container; ARGS go to scope
    require_docker
    local arg
    for arg in "$@"; do
        if [[ "$arg" == -h || "$arg" == --help || "$arg" == --version ]]; then
            ensure_image
            docker run --rm "$IMAGE" "$@"
            return
        fi
    done
    prepare_container
    local run_args=("${RUN_ARGS[@]}")
    # The token goes into the container by the environment, never as a flag: scope's arguments and
    # `docker run`'s are command lines, which `ps` shows to every user of the host.
    local token
    token="$(ui_token "$@")"
    local scope_args=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --auth-token=*) ;;
        --auth-token) shift ;;
        *) scope_args+=("$1") ;;
        esac
        shift
    done
    set -- ${scope_args[@]+"${scope_args[@]}"}
    if [[ -n "$token" && -z "${SCOPE_AUTH_TOKEN:-}" ]]; then
        # By name alone, like the other SCOPE_ variables: docker takes the value from this environment.
        export SCOPE_AUTH_TOKEN="$token"
        run_args+=(-e SCOPE_AUTH_TOKEN)
    fi

    local host port state restarts deadline=$((SECONDS + 20))
    read -r host port < <(ui_address "$@")
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
        die "something already listens on $host:$port: stop it, or pick another address (SCOPE_LISTEN=HOST:PORT)"
    fi

    docker run "${run_args[@]}" "$IMAGE" "$@" >/dev/null || die "docker run failed"
    # Wait for the UI's port; a bad flag or a port already taken ends scope at once, which is better
    # reported here than left as a container restarting in a loop.
    while true; do
        state="$(container_state)"
        restarts="$(docker container inspect --format '{{.RestartCount}}' "$CONTAINER_NAME" 2>/dev/null || echo 0)"
        if [[ "$state" != running || "$restarts" != 0 ]]; then
            docker logs --tail 30 "$CONTAINER_NAME" 2>&1 | sed 's/^/    /' >&2 || true
            docker rm -f "$CONTAINER_NAME" >/dev/null 2>&1 || true
            die "scope exited right after starting; its last lines are above"
        fi
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            break
        fi
        if ((SECONDS >= deadline)); then
            log "scope is starting in container $CONTAINER_NAME but does not answer on $host:$port yet"
            log "see: docker logs $CONTAINER_NAME"
            return 0
        fi
        sleep 0.2
    done
    [[ "$host" != *:* ]] || host="[$host]"
    [[ "$host" != 127.0.0.1 ]] || host=localhost
    log "scope is running in container $CONTAINER_NAME ($IMAGE)"
    log "UI and API: http://$host:$port/"
    if [[ -n "$token" ]]; then
        log "they ask for a token; log in at: http://$host:$port/?token=$token"
        log "(from other hosts, use this host's address; programs send: Authorization: Bearer $token)"
    fi
}

launch_service() { # launch_service TOKEN ARGS...: a probe only, publishing to the multi-tenant service
    local token="$1" arg host="" key=""
    shift
    for arg in "$@"; do
        case "$arg" in
        --service-host=*) host="${arg#*=}" ;;
        --service-key=*) key="${arg#*=}" ;;
        --service-host | --service-key) die "give $arg as $arg=VALUE" ;;
        -*) ;;
        *) die "a probe of the service publishes to the service alone: no PEER ($arg) with --service-token" ;;
        esac
    done
    host="${host:-${SCOPE_SERVICE_HOST:-}}"
    key="${key:-${SCOPE_SERVICE_KEY:-}}"
    [[ -n "$host" ]] || die "--service-token needs --service-host=HOST[:PORT]: the service's bus address"
    [[ "$key" =~ ^[0-9a-fA-F]{64}$ ]] ||
        die "--service-token needs --service-key=KEY: the service_key (64 hex digits) 'scope tenants add' printed"
    require_docker
    export SCOPE_SERVICE_TOKEN="$token"
    prepare_container
    docker run "${RUN_ARGS[@]}" "$IMAGE" probe "$@" >/dev/null || die "docker run failed"
    # A bad flag ends the probe at once: better said here than left as a container restarting in a loop.
    sleep 3
    if [[ "$(container_state)" != running ||
        "$(docker container inspect --format '{{.RestartCount}}' "$CONTAINER_NAME" 2>/dev/null || echo 0)" != 0 ]]; then
        docker logs --tail 30 "$CONTAINER_NAME" 2>&1 | sed 's/^/    /' >&2 || true
        docker rm -f "$CONTAINER_NAME" >/dev/null 2>&1 || true
        die "the probe exited right after starting; its last lines are above"
    fi
    log "a scope probe is running in container $CONTAINER_NAME ($IMAGE), feeding the service at $host"
    log "its map is in the service's UI; see how it connects with: docker logs $CONTAINER_NAME"
}

cmd_launch() {
    local args=() token="" with_token=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --service-token=*)
            token="${1#*=}"
            with_token=1
            ;;
        --service-token)
            [[ $# -ge 2 ]] || die "--service-token needs a value: --service-token=TOKEN"
            token="$2"
            with_token=1
            shift
            ;;
        *) args+=("$1") ;;
        esac
        shift
    done
    if [[ $with_token -eq 0 && -n "${SCOPE_SERVICE_TOKEN:-}" ]]; then
        # The token from the environment: no command line (ps) ever shows it.
        token="$SCOPE_SERVICE_TOKEN"
        with_token=1
    fi
    if [[ $with_token -eq 1 ]]; then
        [[ -n "$token" ]] || die "--service-token needs a value: --service-token=TOKEN"
        launch_service "$token" "${args[@]}"
    else
        launch_local "${args[@]}"
    fi
}

cmd_stop() {
    require_docker
    if [[ -z "$(container_state)" ]]; then
        log "scope is not running (no container $CONTAINER_NAME)"
        return 0
    fi
    # docker stop first (SIGTERM: scope stops its probe and app cleanly), then remove the container.
    docker stop --time 15 "$CONTAINER_NAME" >/dev/null 2>&1 || true
    docker rm -f "$CONTAINER_NAME" >/dev/null 2>&1 || true
    [[ -z "$(container_state)" ]] || die "could not remove container $CONTAINER_NAME"
    log "scope stopped (container $CONTAINER_NAME removed)"
}

command="${1:-}"
[[ $# -eq 0 ]] || shift
case "$command" in
launch) cmd_launch "$@" ;;
stop) cmd_stop ;;
help | -h | --help) usage ;;
"")
    usage >&2
    exit 2
    ;;
*)
    printf '[launch.sh] ERROR: unknown command %s\n\n' "'$command'" >&2
    usage >&2
    exit 2
    ;;
esac

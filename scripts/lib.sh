# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it; it defines functions only.

SCOPE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SCOPE_REPO_ROOT

# The script's own name, for message prefixes.
SCOPE_SCRIPT_NAME="$(basename "${0:-scope}")"

log() { printf '[%s] %s\n' "$SCOPE_SCRIPT_NAME" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$SCOPE_SCRIPT_NAME" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$SCOPE_SCRIPT_NAME" "$*" >&2
    exit 1
}

# Runs "$@" as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "needs root to run: $* (run this script with sudo)"
    fi
}

# Succeeds when a Docker engine answers within a few seconds.
docker_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

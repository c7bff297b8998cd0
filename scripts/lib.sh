# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it; it defines functions and a few variables only.

SCOPE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SCOPE_REPO_ROOT

# The project's own virtual environment: scope and its tools are installed here, never into the operating
# system's Python (Debian's is "externally managed", PEP 668, and refuses a system-wide pip install).
SCOPE_VENV="${SCOPE_VENV:-$SCOPE_REPO_ROOT/.venv}"
# What scripts/run.sh and scripts/install-deps.sh install into it (pip arguments, run in the repo root).
# shellcheck disable=SC2034 # used by the scripts that source this file
SCOPE_RUN_INSTALL=(-e .)
# shellcheck disable=SC2034
SCOPE_TEST_INSTALL=(-e '.[test]' tox)

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
        die "needs root to run: $* (run this script as root)"
    fi
}

# Succeeds when a Docker engine answers within a few seconds.
docker_answers() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------------------
# Phases: each step of a script says what it does and how long it took; print_phases sums them up.

SCOPE_PHASES=()
now_ms() { date +%s%3N; }
since() { # since START_MS: elapsed seconds with one decimal
    local ms=$(($(now_ms) - $1))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
phase() { # phase NAME CMD...: runs CMD, logs its duration, records "NAME  seconds  status" in SCOPE_PHASES
    local name="$1" start rc=0 took status=ok
    shift
    start="$(now_ms)"
    log "---- $name"
    "$@" || rc=$?
    took="$(since "$start")"
    [[ $rc -eq 0 ]] || status="FAILED (exit $rc)"
    SCOPE_PHASES+=("$(printf '%-14s %8ss  %s' "$name" "$took" "$status")")
    log "---- $name: $status, ${took}s"
    return "$rc"
}
print_phases() { # print_phases [INDENT]: one line per phase run so far
    local line
    for line in "${SCOPE_PHASES[@]}"; do printf '%s%s\n' "${1:-}" "$line"; done
}

# ---------------------------------------------------------------------------------------------------------
# Debian packages.

debian_missing() { # debian_missing PKG...: the packages that are not installed, one a line
    local pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || printf '%s\n' "$pkg"
    done
}

apt_install() { # apt_install PKG...: apt-get install those of PKG that are missing (as root)
    command -v apt-get >/dev/null 2>&1 || die "not a Debian system (no apt-get): install $* by hand"
    local missing
    mapfile -t missing < <(debian_missing "$@")
    [[ ${#missing[@]} -gt 0 ]] || return 0
    log "apt-get install ${missing[*]}"
    # Keep package scripts from starting services (docker, dnsmasq) while we install: the tests start
    # exactly what they need themselves. Only add the policy file if nobody else put one there.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
                --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
    } || rc=$?
    if [[ $added_policy -eq 1 ]]; then as_root rm -f "$policy"; fi
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
    mapfile -t missing < <(debian_missing "$@")
    [[ ${#missing[@]} -eq 0 ]] || die "still missing after apt-get install: ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------------------
# The virtual environment.

base_python() { # prints the interpreter the venv is made from, after checking that it runs and is 3.11+
    # The operating system's own python3 by default, whatever comes first on PATH (a pyenv shim, say): it is
    # the one a stock machine has, and the one whose version the container image (Debian bookworm) matches.
    local python="${SCOPE_PYTHON:-}"
    if [[ -z "$python" ]]; then
        if [[ -x /usr/bin/python3 ]]; then python=/usr/bin/python3; else python="$(command -v python3 || true)"; fi
    fi
    [[ -n "$python" ]] || die "no python3 found (Python 3.11 or newer is needed; Debian: apt-get install python3)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$python does not run or is older than 3.11 (set SCOPE_PYTHON to a Python 3.11 or newer)"
    printf '%s\n' "$python"
}

venv_works() { # the venv's python runs and has pip
    "$SCOPE_VENV/bin/python" -c 'import pip' >/dev/null 2>&1
}

# Debian ships venv's ensurepip (and the pip wheel it installs) apart from python3, in python3.X-venv.
venv_debian_packages() { # venv_debian_packages PYTHON: the packages `PYTHON -m venv` needs, one a line
    printf 'python3-venv\n'
    "$1" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])'
}

ensure_venv() { # creates $SCOPE_VENV with the base interpreter unless a working one is there
    if [[ -f "$SCOPE_VENV" && ! -L "$SCOPE_VENV" ]] && grep -qE '^\.tox/' "$SCOPE_VENV" 2>/dev/null; then
        # tox (4.3x and later) writes a PEP 832 redirect file named .venv pointing at one of its environments
        # when no .venv exists; this project's .venv is a real environment, so the redirect goes.
        log "removing $SCOPE_VENV, a redirect file tox wrote (it pointed at $(head -n 1 "$SCOPE_VENV"))"
        rm -f "$SCOPE_VENV"
    fi
    [[ ! -e "$SCOPE_VENV" || -d "$SCOPE_VENV" ]] ||
        die "$SCOPE_VENV exists and is not a directory: remove it, or set SCOPE_VENV to another place"
    if venv_works; then
        log "virtual environment $SCOPE_VENV present ($("$SCOPE_VENV/bin/python" -c 'import sys
print("Python %d.%d.%d, made from %s" % (*sys.version_info[:3], sys._base_executable))'))"
        return 0
    fi
    local python version
    python="$(base_python)"
    version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    if command -v dpkg-query >/dev/null 2>&1 && [[ "$python" == /usr/bin/* ]]; then
        local needed
        mapfile -t needed < <(venv_debian_packages "$python")
        apt_install "${needed[@]}"
    fi
    log "creating virtual environment $SCOPE_VENV with $python (Python $version)"
    rm -rf "$SCOPE_VENV" # a half-made one, from an interrupted run or an interpreter that went away
    if ! "$python" -m venv "$SCOPE_VENV"; then
        rm -rf "$SCOPE_VENV"
        die "$python -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    venv_works || die "the new virtual environment $SCOPE_VENV has no working pip"
}

# A stamp in the venv says which pip install last succeeded there; it changes with the checkout's place,
# the venv's interpreter, pyproject.toml and the install's arguments.
install_stamp() { # install_stamp PIP_ARGS...
    {
        printf '%s\n' "$SCOPE_REPO_ROOT" "$*"
        "$SCOPE_VENV/bin/python" -c 'import sys; print(sys.version)'
        cat "$SCOPE_REPO_ROOT/pyproject.toml"
    } | sha256sum | cut -c1-16
}
install_current() { # install_current PIP_ARGS...: succeeds when this install already succeeded in the venv
    [[ "${SCOPE_FORCE_INSTALL:-0}" != 1 ]] || return 1
    grep -qxF "$(install_stamp "$@")" "$SCOPE_VENV/.scope-installed" 2>/dev/null || return 1
    # The editable install still points at this checkout (-I: not at the scope.egg-info in the work tree).
    "$SCOPE_VENV/bin/python" -I -c 'import sys, scope; sys.exit(not scope.__file__.startswith(sys.argv[1] + "/"))' \
        "$SCOPE_REPO_ROOT" >/dev/null 2>&1
}

venv_install() { # venv_install PIP_ARGS...: pip install into the venv (from the repo root), unless current
    if install_current "$@"; then
        log "pip install $* into $SCOPE_VENV: current, skipping"
        return 0
    fi
    log "pip install $* into $SCOPE_VENV"
    local pip_log rc=0
    pip_log="$(mktemp /tmp/scope-pip.XXXXXX)"
    # pip's own output only when it fails: it is long, and this machine's pip configuration adds warnings.
    (cd "$SCOPE_REPO_ROOT" && "$SCOPE_VENV/bin/python" -m pip install --disable-pip-version-check "$@") \
        >"$pip_log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 30 "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install $* failed (exit $rc; pip's last lines above)"
    fi
    rm -f "$pip_log"
    install_stamp "$@" >>"$SCOPE_VENV/.scope-installed"
}

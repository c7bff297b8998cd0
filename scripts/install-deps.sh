#!/usr/bin/env bash
# Installs what scope and its test suite need on a Debian bookworm machine: Debian packages (Docker engine,
# conntrack, dnsmasq, busybox, Chromium, ...) and the project itself with its test extras, plus tox.
# Idempotent and fast when everything is already there: apt is skipped when every package is installed,
# pip is skipped when pyproject.toml has not changed since the last successful install.
#
# Usage: sudo scripts/install-deps.sh
# Env:   SCOPE_FORCE_INSTALL=1  reinstall the Python side even if the stamp says it is current.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

# dnsmasq-base, not dnsmasq: it ships only the binary, no system service that would grab port 53.
# By hand, the same is: apt-get install docker.io conntrack dnsmasq-base busybox-static iproute2 iptables chromium
#   procps ca-certificates fonts-dejavu-core fonts-liberation util-linux debootstrap
DEBIAN_PACKAGES=(
    docker.io
    conntrack
    dnsmasq-base
    busybox-static
    iproute2
    iptables
    chromium
    procps
    ca-certificates
    fonts-dejavu-core
    fonts-liberation
    util-linux
    debootstrap
)

missing_packages() {
    local pkg status
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || printf '%s\n' "$pkg"
    done
}

install_debian_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages: all ${#DEBIAN_PACKAGES[@]} present, skipping apt"
        return 0
    fi
    log "Debian packages missing: ${missing[*]}"
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
            as_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Use-Pty=0 "${missing[@]}"
    } || rc=$?
    if [[ $added_policy -eq 1 ]]; then as_root rm -f "$policy"; fi
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
    mapfile -t missing < <(missing_packages)
    [[ ${#missing[@]} -eq 0 ]] || die "still missing after apt-get install: ${missing[*]}"
    log "Debian packages installed"
}

python_stamp() {
    # Changes whenever the project's dependencies, the checkout location or the interpreter change.
    {
        printf '%s\n' "$SCOPE_REPO_ROOT"
        python3 -c 'import sys; print(sys.executable, sys.version)'
        cat pyproject.toml
    } | sha256sum | cut -c1-16
}

python_install_current() {
    # The stamp matches, the editable install still points at this checkout (-I: not at the scope.egg-info
    # that the build leaves in the work tree), and tox is there.
    [[ -f "$1" ]] || return 1
    python3 -I - "$SCOPE_REPO_ROOT" <<'PY' >/dev/null 2>&1 || return 1
import json, sys
from importlib.metadata import distribution
from importlib.util import find_spec
dist = distribution("scope")
url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
sys.exit(0 if url.rstrip("/") == "file://" + sys.argv[1].rstrip("/") and find_spec("tox") else 1)
PY
}

install_python_packages() {
    local stamp_dir="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/scope"
    local stamp
    stamp="$stamp_dir/install-deps.$(python_stamp)"
    if [[ "${SCOPE_FORCE_INSTALL:-0}" != 1 ]] && python_install_current "$stamp"; then
        log "Python packages: scope[test] and tox current, skipping pip"
        return 0
    fi
    log "Python packages: pip install -e '.[test]' tox"
    local pip_flags=(--quiet --disable-pip-version-check)
    if [[ "$(id -u)" -eq 0 ]]; then pip_flags+=(--root-user-action=ignore); fi
    python3 -m pip install "${pip_flags[@]}" -e '.[test]' tox ||
        die "pip install of the project with its test extras failed"
    mkdir -p "$stamp_dir"
    rm -f "$stamp_dir"/install-deps.*
    : >"$stamp"
    log "Python packages installed"
}

command -v python3 >/dev/null 2>&1 || die "python3 is required (3.11 or newer)"
install_debian_packages
install_python_packages

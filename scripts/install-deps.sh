#!/usr/bin/env bash
# Installs what scope and its test suite need on a Debian bookworm machine: Debian packages (Docker engine,
# conntrack, dnsmasq, busybox, Chromium, python3-venv, ...), then the project's virtual environment .venv
# (made with the operating system's python3, see scripts/lib.sh) holding the project itself, editable, with
# its test extras, and tox. Nothing goes into the system's Python.
# Idempotent and fast when everything is already there: apt is skipped when every package is installed,
# pip is skipped when pyproject.toml has not changed since the last successful install into .venv.
#
# Usage: scripts/install-deps.sh          (as root, or with sudo available)
# Env:   SCOPE_FORCE_INSTALL=1  reinstall the Python side even if the stamp says it is current
#        SCOPE_PYTHON=PATH      the interpreter .venv is made from (default /usr/bin/python3)
#        SCOPE_VENV=DIR         where the virtual environment lives (default .venv in the checkout)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

# dnsmasq-base, not dnsmasq: it ships only the binary, no system service that would grab port 53.
# redis-server: the replicas' tests start their own on a free loopback port (apt_install keeps the service off).
# By hand, the same is: apt-get install docker.io conntrack dnsmasq-base busybox-static iproute2 iptables chromium
#   procps ca-certificates fonts-dejavu-core fonts-liberation util-linux debootstrap python3 python3-venv redis-server
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
    python3
    python3-venv
    redis-server
)

install_debian_packages() {
    local missing
    mapfile -t missing < <(debian_missing "${DEBIAN_PACKAGES[@]}")
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages: all ${#DEBIAN_PACKAGES[@]} present, skipping apt"
        return 0
    fi
    log "Debian packages missing: ${missing[*]}"
    apt_install "${missing[@]}"
    log "Debian packages installed"
}

phase debian-packages install_debian_packages
phase venv ensure_venv
phase pip venv_install "${SCOPE_TEST_INSTALL[@]}"

#!/usr/bin/env bash
# Runs scope on this host: makes the project's virtual environment .venv with the operating system's python3
# (installing Debian's python3-venv when missing), installs the package there (editable, from this checkout),
# then starts its `scope` command: a probe and an app, UI on http://localhost:4040. Arguments go to `scope`
# (`scripts/run.sh launch` is `scope launch`). Installs are skipped when current, so later runs start at once.
# It does not install Docker or start dockerd: scope reports on whatever engine is there.
#
# Usage: scripts/run.sh [SCOPE_ARGS...]      (as root: the probe reads every process's sockets)
#        scripts/run.sh --version            install, then print scope's version
# Env:   SCOPE_PYTHON=PATH  the interpreter .venv is made from (default /usr/bin/python3)
#        SCOPE_VENV=DIR     where the virtual environment lives (default .venv in the checkout)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

T0="$(now_ms)"
install_scope() {
    # The test install (scripts/install-deps.sh) holds everything this one does.
    if install_current "${SCOPE_TEST_INSTALL[@]}"; then
        log "pip install ${SCOPE_TEST_INSTALL[*]} into $SCOPE_VENV: current, skipping"
    else
        venv_install "${SCOPE_RUN_INSTALL[@]}"
    fi
}
phase venv ensure_venv
phase pip install_scope
SCOPE_BIN="$SCOPE_VENV/bin/scope"
[[ -x "$SCOPE_BIN" ]] || die "the scope command was not installed in $SCOPE_VENV (see pyproject.toml [project.scripts])"
log "ready in $(since "$T0")s; running $SCOPE_BIN $*"
exec "$SCOPE_BIN" "$@"

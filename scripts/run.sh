#!/usr/bin/env bash
# Runs scope on this host: installs the Python package (editable, from this checkout), then starts the
# `scope` command (a probe and an app; UI on http://localhost:4040). Arguments go to `scope`.
# It does not install Docker or start dockerd: scope reports on whatever engine is there.
#
# Usage: sudo scripts/run.sh [SCOPE_ARGS...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

command -v python3 >/dev/null 2>&1 || die "python3 (3.11 or newer) is required"
pip_flags=(--quiet --disable-pip-version-check)
if [[ "$(id -u)" -eq 0 ]]; then pip_flags+=(--root-user-action=ignore); fi
python3 -m pip install "${pip_flags[@]}" -e . || die "pip install -e . failed"

# The console script lands in this interpreter's scripts folder, which need not be on PATH (pyenv shims).
SCOPE_BIN="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/scope"
[[ -x "$SCOPE_BIN" ]] || SCOPE_BIN="$(command -v scope || true)"
[[ -n "$SCOPE_BIN" ]] || die "the scope command was not installed (see pyproject.toml [project.scripts])"
exec "$SCOPE_BIN" "$@"

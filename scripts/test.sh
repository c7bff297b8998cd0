#!/usr/bin/env bash
# THE test command: installs what the tests need (Debian packages, and the project with its test tools in
# its own virtual environment .venv: scripts/install-deps.sh), starts a Docker engine if none answers, builds
# the test images, then runs tox from .venv (ruff check, ruff format --check, mypy, pytest). Exits non-zero if
# anything failed, including a pytest run that collected no tests (exit 5). A dockerd it started is stopped
# at the end. Each phase's duration is printed as it ends and again in the summary.
#
# Usage: scripts/test.sh [PYTEST_ARGS...]     as root; e.g. scripts/test.sh tests/test_fixtures.py -x
# Env:   SCOPE_TOX_ENVS=lint,type,py311   which tox environments to run (default: all)
#        SCOPE_KEEP_DOCKERD=1             leave a dockerd this run started running
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

[[ "$(id -u)" -eq 0 ]] || die "the tests need root (network namespaces, dockerd, conntrack): run $0 as root"

ARTIFACTS="$SCOPE_REPO_ROOT/artifacts"
TOX_JSON="$ARTIFACTS/tox-result.json"
JUNIT="$ARTIFACTS/junit.xml"
mkdir -p "$ARTIFACTS"
rm -f "$TOX_JSON" "$JUNIT"

T0="$(now_ms)"

STARTED_DOCKERD=0
summary() {
    local rc=$?
    set +e
    if [[ $STARTED_DOCKERD -eq 1 && "${SCOPE_KEEP_DOCKERD:-0}" != 1 ]]; then
        bash scripts/dockerd.sh stop
    fi
    echo
    echo "==================================== summary ===================================="
    print_phases "  "
    # The summary's scripts need only the standard library: the venv's python, or any python3 before it exists.
    local python=python3
    if [[ -x "$SCOPE_VENV/bin/python" ]]; then python="$SCOPE_VENV/bin/python"; fi
    if [[ -f "$TOX_JSON" ]]; then
        "$python" - "$TOX_JSON" <<'PY'
import json, sys
envs = json.load(open(sys.argv[1])).get("testenvs", {})
for name, env in envs.items():
    if name.startswith(".") or "result" not in env:
        continue
    result = env["result"]
    codes = [c["retcode"] for c in env.get("test", []) if c.get("retcode")]
    note = "ok" if result.get("success") else f"FAILED (exit {codes[0] if codes else result.get('exit_code')})"
    if 5 in codes and name.startswith("py"):
        note += ": pytest collected no tests, which counts as a failure"
    print(f"  tox {name:<10} {result.get('duration', 0):7.1f}s  {note}")
PY
    fi
    printf '  %-14s %8ss\n' total "$(since "$T0")"
    if [[ $rc -eq 0 ]]; then echo "RESULT: all checks passed"; else echo "RESULT: FAILED (exit $rc)"; fi
    if [[ -f "$JUNIT" ]]; then
        # Last line in the form CI reads: "pytest: N passed, N failed, N skipped".
        "$python" - "$JUNIT" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"pytest: {passed} passed, {failed} failed, {total['skipped']} skipped")
PY
    fi
    exit "$rc"
}
trap summary EXIT
trap 'exit 130' INT TERM

phase install-deps bash scripts/install-deps.sh
if ! docker_answers; then STARTED_DOCKERD=1; fi
phase dockerd bash scripts/dockerd.sh start
phase test-images bash scripts/test-images.sh
phase tox "$SCOPE_VENV/bin/python" -m tox run -e "${SCOPE_TOX_ENVS:-lint,type,py311}" --result-json "$TOX_JSON" \
    -- --junitxml="$JUNIT" "$@"

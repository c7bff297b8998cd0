#!/usr/bin/env bash
# Builds the scope container image (probe and app in one; ./launch.sh runs it) without any registry:
#   1. the base image, a Debian bookworm rootfs with python3 made by debootstrap and loaded with
#      `docker import` (skipped when it exists with the current BASE_VERSION label; the slow step, minutes);
#   2. a wheelhouse built on the host in .wheelhouse/: the dependencies (kept until pyproject's dependency
#      list changes) and the scope wheel, built from a clean copy of the sources. pip inside `docker build`
#      cannot reach the index, so the Dockerfile installs these with --no-index;
#   3. `docker build` of the Dockerfile (context: the repo root, cut down to the wheels by .dockerignore).
# Idempotent and fast: when the image already carries the hash of the current sources and base image, it
# stops after hashing (about a second).
#
# Usage: sudo scripts/build-image.sh [--force]      (--force: rebuild the scope image even if current)
# Env:   SCOPE_IMAGE          image to build (default scope-local/scope:latest; also tagged :<version>)
#        SCOPE_BASE_IMAGE     base image (default scope-local/debian-python:bookworm)
#        SCOPE_DEBIAN_MIRROR  mirror for debootstrap (default: this host's apt source, else deb.debian.org)
#        SCOPE_PYTHON         host interpreter that builds the wheels (default python3; must match the
#                             image's Python minor version, 3.11 on bookworm)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCOPE_REPO_ROOT"

IMAGE="${SCOPE_IMAGE:-scope-local/scope:latest}"
BASE_IMAGE="${SCOPE_BASE_IMAGE:-scope-local/debian-python:bookworm}"
PYTHON="${SCOPE_PYTHON:-python3}"
SUITE=bookworm
BASE_PACKAGES=(python3 python3-venv ca-certificates conntrack iproute2 procps)
# Bump when the base rootfs recipe below changes, so existing machines rebuild it.
BASE_VERSION=1
BASE_STAMP="$BASE_VERSION-$(printf '%s ' "$SUITE" "${BASE_PACKAGES[@]}" | sha256sum | cut -c1-12)"
BASE_LABEL=scope.base.version
BASE_PYTHON_LABEL=scope.base.python
SOURCE_LABEL=scope.image.source
WHEELHOUSE="$SCOPE_REPO_ROOT/.wheelhouse"
FORCE=0

case "${1:-}" in
"") ;;
--force) FORCE=1 ;;
-h | --help)
    sed -n '2,/^set -euo/p' scripts/build-image.sh | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
*) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

docker_answers || die "no Docker engine answers: start one first (sudo scripts/dockerd.sh start)"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set SCOPE_PYTHON to a Python 3.11)"
# The legacy builder: it needs no buildx plugin, and the engine here (20.10) has it whatever the client.
export DOCKER_BUILDKIT=0

now_ms() { date +%s%3N; }
T0="$(now_ms)"
elapsed() { # seconds since T0, one decimal
    local ms=$(($(now_ms) - T0))
    printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

image_label() { # image_label IMAGE LABEL: the label's value, empty when the image or label is missing
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# Concurrent builds (two test sessions) would race on .wheelhouse/ and the tags: one at a time.
LOCK=/tmp/scope-build-image.lock
exec 9>"$LOCK"
flock -w 1200 9 || die "could not get $LOCK within 1200s (another build-image.sh is running)"

# ---------------------------------------------------------------------------------------------------------
# 1. Base image: debootstrap'ed Debian with python3, conntrack, iproute2, procps.

debian_mirror() {
    if [[ -n "${SCOPE_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$SCOPE_DEBIAN_MIRROR"
        return
    fi
    local found
    # The host's own Debian archive (deb822 "URIs:" or one-line "deb URI suite"), not its -security one.
    found="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list \
        2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ' || true)"
    printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

remove_rootfs() { # remove_rootfs DIR
    # debootstrap leaves /proc mounted in the target (even on success): unmount everything under it first,
    # deepest first, so that removing the tree can never reach into the host's filesystems.
    local mounts mnt
    mounts="$(awk -v root="$1" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r)"
    for mnt in $mounts; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || warn "could not unmount $mnt"
    done
    rm -rf --one-file-system "$1" "$1.log"
}

ROOTFS=""
cleanup_rootfs() {
    [[ -n "$ROOTFS" && -d "$ROOTFS" ]] || return 0
    remove_rootfs "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT
trap 'exit 130' INT TERM

build_base_image() {
    # Leftovers of a build that was killed outright (its debootstrap kept the lock until it ended).
    local stale
    for stale in /var/tmp/scope-rootfs.*; do
        if [[ -d "$stale" ]]; then
            log "removing $stale, left by an interrupted build"
            remove_rootfs "$stale"
        fi
    done
    command -v debootstrap >/dev/null 2>&1 ||
        die "debootstrap not found: run scripts/install-deps.sh (Debian package debootstrap)"
    [[ "$(id -u)" -eq 0 ]] || die "building the base image needs root (debootstrap): sudo $0"
    local mirror packages start
    mirror="$(debian_mirror)"
    packages="$(
        IFS=,
        printf '%s' "${BASE_PACKAGES[*]}"
    )"
    start="$(now_ms)"
    # /var/tmp: on disk (a tmpfs /tmp may be small or noexec) and cleaned by the EXIT trap.
    ROOTFS="$(mktemp -d /var/tmp/scope-rootfs.XXXXXX)"
    log "building base image $BASE_IMAGE: debootstrap $SUITE from $mirror with $packages (takes minutes)"
    local debootstrap_log="$ROOTFS.log"
    if ! debootstrap --variant=minbase --include="$packages" "$SUITE" "$ROOTFS" "$mirror" \
        >"$debootstrap_log" 2>&1; then
        tail -n 30 "$debootstrap_log" >&2 || true
        die "debootstrap failed (last lines above); mirror $mirror (set SCOPE_DEBIAN_MIRROR to change it)"
    fi
    local python_version
    python_version="$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
        die "python3 does not run in the new rootfs"
    # Slim it: nothing here is needed at run time (apt lists come back with apt-get update).
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
    log "rootfs ready after $((($(now_ms) - start) / 1000))s (python $python_version); importing it"
    local old_id
    old_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)"
    # /proc, /sys and /dev are the engine's to fill at run time.
    tar -C "$ROOTFS" --numeric-owner --one-file-system --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
        -cf - . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'WORKDIR /' \
            --change 'CMD ["bash"]' \
            --change "LABEL $BASE_LABEL=$BASE_STAMP" \
            --change "LABEL $BASE_PYTHON_LABEL=$python_version" \
            --message "scope base image: debootstrap $SUITE --variant=minbase with $packages" \
            - "$BASE_IMAGE" >/dev/null
    cleanup_rootfs
    [[ "$(image_label "$BASE_IMAGE" "$BASE_LABEL")" == "$BASE_STAMP" ]] || die "docker import did not produce $BASE_IMAGE"
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    log "built $BASE_IMAGE in $((($(now_ms) - start) / 1000))s"
}

if [[ "$(image_label "$BASE_IMAGE" "$BASE_LABEL")" == "$BASE_STAMP" ]]; then
    log "base image $BASE_IMAGE present (version $BASE_VERSION)"
else
    build_base_image
fi
BASE_ID="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"
IMAGE_PYTHON="$(image_label "$BASE_IMAGE" "$BASE_PYTHON_LABEL")"
HOST_PYTHON="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# Binary wheels (pyzmq, msgpack, psutil, ...) are tagged for one CPython minor version.
[[ "$HOST_PYTHON" == "$IMAGE_PYTHON" ]] ||
    die "$PYTHON is Python $HOST_PYTHON but the image has $IMAGE_PYTHON: set SCOPE_PYTHON to a python$IMAGE_PYTHON"

# ---------------------------------------------------------------------------------------------------------
# 2. Is the image current? It is when it carries the hash of everything that goes into it.

# The folders the wheel is made of, from pyproject.toml ([tool.setuptools] packages and package-dir).
mapfile -t PACKAGE_DIRS < <("$PYTHON" - <<'PY'
import tomllib
from pathlib import Path

setuptools = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
package_dir = setuptools.get("package-dir", {})
print("\n".join(sorted({package_dir.get(p.split(".")[0], p.split(".")[0]) for p in setuptools["packages"]})))
PY
)
[[ ${#PACKAGE_DIRS[@]} -gt 0 ]] || die "no packages found in pyproject.toml [tool.setuptools]"

source_hash() {
    {
        printf 'base %s\n' "$BASE_ID"
        find "${PACKAGE_DIRS[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
        sha256sum pyproject.toml README.md Dockerfile .dockerignore scripts/build-image.sh
    } | sha256sum | cut -c1-16
}

VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
SOURCE_HASH="$(source_hash)"
VERSION_TAG="${IMAGE%:*}:$VERSION"
if [[ $FORCE -eq 0 && "$(image_label "$IMAGE" "$SOURCE_LABEL")" == "$SOURCE_HASH" ]]; then
    docker image tag "$IMAGE" "$VERSION_TAG"
    log "$IMAGE is current (sources $SOURCE_HASH), skipping the build ($(elapsed))"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# 3. Wheelhouse: dependencies (cached by their list) and the scope wheel (always fresh).

PIP_LOG="$(mktemp /tmp/scope-pip.XXXXXX)"
trap 'cleanup_rootfs; rm -f "$PIP_LOG"' EXIT
pip_quietly() { # pip_quietly WHAT ARGS...: runs pip, showing its output only when it fails
    local what="$1"
    shift
    if ! "$PYTHON" -m pip --disable-pip-version-check "$@" >"$PIP_LOG" 2>&1; then
        tail -n 30 "$PIP_LOG" >&2 || true
        die "$what failed (pip's last lines above)"
    fi
}

mapfile -t DEPENDENCIES < <("$PYTHON" -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
mapfile -t BUILD_REQUIRES < <("$PYTHON" -c '
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')

deps_stamp() {
    printf '%s\n' "$HOST_PYTHON" "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_platform())')" \
        "${DEPENDENCIES[@]}" "--" "${BUILD_REQUIRES[@]}" | sha256sum | cut -c1-16
}

mkdir -p "$WHEELHOUSE"
STAMP="$(deps_stamp)"
BACKEND="$WHEELHOUSE/backend" # a venv with the build backend (setuptools, wheel)
if [[ "$(cat "$WHEELHOUSE/deps.stamp" 2>/dev/null || true)" == "$STAMP" ]] &&
    compgen -G "$WHEELHOUSE/deps/*.whl" >/dev/null && "$BACKEND/bin/python" -c '' 2>/dev/null; then
    log "wheelhouse: dependencies current"
else
    log "wheelhouse: fetching dependency wheels (${DEPENDENCIES[*]}) and the build backend"
    rm -rf "$WHEELHOUSE/deps" "$WHEELHOUSE/build" "$BACKEND" "$WHEELHOUSE/deps.stamp"
    pip_quietly "pip wheel of the dependencies" wheel -w "$WHEELHOUSE/deps" "${DEPENDENCIES[@]}"
    # The build backend in a venv of its own, so that the scope wheel then builds offline and without pip's
    # build isolation (which would set up a fresh environment each time: seconds instead of a second).
    pip_quietly "pip wheel of the build backend" wheel -w "$WHEELHOUSE/build" "${BUILD_REQUIRES[@]}"
    "$PYTHON" -m venv "$BACKEND" || die "could not create a venv with $PYTHON -m venv"
    PYTHON="$BACKEND/bin/python" pip_quietly "installing the build backend" install --no-index \
        --find-links "$WHEELHOUSE/build" "${BUILD_REQUIRES[@]}"
    printf '%s\n' "$STAMP" >"$WHEELHOUSE/deps.stamp"
fi
# Wheels that only fit another interpreter or platform would fail inside the build; say so here instead.
for wheel in "$WHEELHOUSE"/deps/*.whl; do
    tags="$(basename "$wheel" .whl | rev | cut -d- -f1-3 | rev)"
    case "$tags" in
    py3-none-any | py2.py3-none-any | cp"${HOST_PYTHON/./}"-* | cp3*-abi3-*) ;;
    *) die "wheel $(basename "$wheel") does not fit CPython $HOST_PYTHON on Linux (tags $tags)" ;;
    esac
done

# The scope wheel, from a clean copy: building in the work tree would reuse a stale build/ folder (whose
# deleted modules would end up in the wheel) and race with anyone else building there.
SRC="$(mktemp -d /tmp/scope-wheel-src.XXXXXX)"
trap 'cleanup_rootfs; rm -f "$PIP_LOG"; rm -rf "$SRC"' EXIT
tar --exclude=__pycache__ --exclude='*.py[co]' -cf - pyproject.toml README.md "${PACKAGE_DIRS[@]}" | tar -C "$SRC" -xf -
rm -rf "$WHEELHOUSE/scope"
PYTHON="$BACKEND/bin/python" pip_quietly "building the scope wheel" wheel --no-deps --no-index \
    --no-build-isolation -w "$WHEELHOUSE/scope" "$SRC"
log "wheelhouse: built $(basename "$WHEELHOUSE"/scope/*.whl) ($(elapsed) so far)"

# ---------------------------------------------------------------------------------------------------------
# 4. The image.

log "docker build $IMAGE (sources $SOURCE_HASH)"
OLD_ID="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
BUILD_LOG="$(mktemp /tmp/scope-docker-build.XXXXXX)"
trap 'cleanup_rootfs; rm -f "$PIP_LOG" "$BUILD_LOG"; rm -rf "$SRC"' EXIT
if ! docker build \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "$SOURCE_LABEL=$SOURCE_HASH" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.title=scope" \
    -t "$IMAGE" -t "$VERSION_TAG" \
    -f Dockerfile . >"$BUILD_LOG" 2>&1; then
    tail -n 40 "$BUILD_LOG" >&2 || true
    die "docker build failed (last lines above)"
fi
[[ "$(image_label "$IMAGE" "$SOURCE_LABEL")" == "$SOURCE_HASH" ]] || die "docker build did not produce $IMAGE"
context="$(grep -ao 'Sending build context to Docker daemon *[0-9.]*[kMG]*B' "$BUILD_LOG" | tail -n 1 | awk '{ print $NF }')"
NEW_ID="$(docker image inspect --format '{{.Id}}' "$IMAGE")"
# The previous build is now untagged; drop it unless a container still uses it (its layers stay cached).
if [[ -n "$OLD_ID" && "$OLD_ID" != "$NEW_ID" ]]; then
    docker image rm "$OLD_ID" >/dev/null 2>&1 || true
fi
log "built $IMAGE and $VERSION_TAG (context ${context:-?}, $(docker image inspect --format '{{.Size}}' "$IMAGE" |
    awk '{ printf "%d MB", $1 / 1e6 }'), total $(elapsed))"

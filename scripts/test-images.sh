#!/usr/bin/env bash
# Builds the container images the tests run, without any registry: Docker Hub is out of reach, so the
# image is a rootfs holding the static busybox from Debian's busybox-static, loaded with `docker import`.
# Idempotent: skips an image that already exists with the current IMAGE_VERSION label.
#
# Usage: sudo scripts/test-images.sh        (needs a running engine: scripts/dockerd.sh start)
# Env:   SCOPE_TEST_IMAGE  image name (default scope-test/busybox:latest)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE="${SCOPE_TEST_IMAGE:-scope-test/busybox:latest}"
# Bump when the rootfs below changes, so existing machines rebuild.
IMAGE_VERSION=1
VERSION_LABEL=scope.test.image-version

docker_answers || die "no Docker engine answers: run scripts/dockerd.sh start first"

current_version() {
    docker image inspect --format "{{ index .Config.Labels \"$VERSION_LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

# Concurrent test sessions may both find the image missing; let one build it.
LOCK=/tmp/scope-test-images.lock
exec 9>"$LOCK"
flock -w 120 9 || die "could not get $LOCK within 120s"

if [[ "$(current_version)" == "$IMAGE_VERSION" ]]; then
    log "$IMAGE present (version $IMAGE_VERSION), skipping"
    exit 0
fi

BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [[ -x "$candidate" ]]; then
        BUSYBOX="$candidate"
        break
    fi
done
[[ -n "$BUSYBOX" ]] || die "busybox not found: run scripts/install-deps.sh (package busybox-static)"
# A dynamically linked busybox would not run in an empty rootfs.
ldd_out="$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)"
if ! grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
    die "$BUSYBOX is not statically linked: install busybox-static (scripts/install-deps.sh)"
fi

ROOTFS="$(mktemp -d /tmp/scope-test-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

log "building $IMAGE from $BUSYBOX"
mkdir -p "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,www,proc,sys,dev,var/run}
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
# One symlink per applet, at the path busybox itself expects (--list-full), so sh, httpd, wget, nc, sleep,
# cat, echo, ls, ps, top, ... all exist.
count=0
while read -r applet; do
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    mkdir -p "$ROOTFS/$(dirname "$applet")"
    ln -sf /bin/busybox "$ROOTFS/$applet"
    count=$((count + 1))
done < <("$BUSYBOX" --list-full)
for required in sh httpd wget nc sleep cat echo ls ps top netstat; do
    found=0
    for dir in bin sbin usr/bin usr/sbin; do
        if [[ -L "$ROOTFS/$dir/$required" ]]; then found=1; fi
    done
    [[ $found -eq 1 ]] || die "$BUSYBOX has no applet '$required' (needed by the tests)"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
printf 'scope test page\n' >"$ROOTFS/www/index.html"

old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
tar -C "$ROOTFS" --numeric-owner -cf - . |
    docker import \
        --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'WORKDIR /' \
        --change 'CMD ["sh"]' \
        --change "LABEL $VERSION_LABEL=$IMAGE_VERSION" \
        --message "scope test image: static busybox with $count applets" \
        - "$IMAGE" >/dev/null
[[ "$(current_version)" == "$IMAGE_VERSION" ]] || die "docker import did not produce $IMAGE"
# The previous build is now untagged; drop it unless a container still uses it.
if [[ -n "$old_id" && "$old_id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi
log "built $IMAGE ($count applets)"

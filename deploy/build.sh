#!/usr/bin/env bash
# make images: build Detour's container image localhost/detour:dev, idempotently, saying what
# it did.
#   1. the base rootfs, once: debootstrap --variant=minbase bookworm (with python3, python3-venv,
#      iptables, iproute2), cached as build/deploy/detour-base.tar, imported as
#      localhost/detour-base (skipped when DETOUR_BASE_IMAGE names another base image)
#   2. wheels of the project and its dependencies, built on the host with the venv's pip (the
#      same Debian /usr/bin/python3 3.11 as the image), into build/deploy/context/wheels
#   3. podman build -f deploy/Containerfile build/deploy/context -> localhost/detour:dev
# Environment: DETOUR_BASE_IMAGE (default localhost/detour-base), DETOUR_IMAGE (default
# localhost/detour:dev), DETOUR_DEBIAN_MIRROR (default: the bookworm mirror apt uses here).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf 'images: %s\n' "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

export CONTAINERS_CONF=$repo/deploy/containers.conf
BASE_IMAGE=${DETOUR_BASE_IMAGE:-localhost/detour-base}
IMAGE=${DETOUR_IMAGE:-localhost/detour:dev}
LOCAL_BASE=localhost/detour-base
BASE_PACKAGES=python3,python3-venv,iptables,iproute2
cache=$repo/build/deploy
context=$cache/context
start=$SECONDS

[[ $EUID -eq 0 ]] || die "needs root (rootful podman, debootstrap): run 'sudo make images'"
for tool in podman debootstrap runc; do
  command -v "$tool" >/dev/null || die "$tool is missing: run 'make setup'"
done
[[ -x .venv/bin/python ]] || die ".venv is missing: run 'make setup'"
mkdir -p "$cache" "$context"

# shellcheck source=scripts/debian-mirror.sh
source scripts/debian-mirror.sh  # cwd is the repo root (cd above)

# 1. the base image
if [[ $BASE_IMAGE == "$LOCAL_BASE" ]]; then
  tarball=$cache/detour-base.tar
  stamp=$cache/detour-base.packages
  if [[ -f $tarball && -f $stamp && $(cat "$stamp") == "$BASE_PACKAGES" ]]; then
    say "base rootfs: cached ($tarball)"
  else
    mirror=${DETOUR_DEBIAN_MIRROR:-$(debian_mirror)}
    [[ -n $mirror ]] || die "no bookworm mirror in /etc/apt/sources.list{,.d}: set DETOUR_DEBIAN_MIRROR"
    rootfs=$cache/rootfs.tmp
    rm -rf "$rootfs" "$tarball" "$stamp"
    say "base rootfs: debootstrap --variant=minbase --include=$BASE_PACKAGES bookworm from $mirror"
    t=$SECONDS
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" \
      > "$cache/debootstrap.log" 2>&1 || die "debootstrap failed: see $cache/debootstrap.log"
    # Nothing of the host's apt caches in the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball" .
    rm -rf "$rootfs"
    printf '%s\n' "$BASE_PACKAGES" > "$stamp"
    say "base rootfs: built in $((SECONDS - t)) s ($(du -h "$tarball" | cut -f1))"
  fi
  # Import again only when the tarball is newer than what was imported.
  imported=$cache/detour-base.imported
  current=$(podman image inspect --format '{{.Id}}' "$LOCAL_BASE" 2>/dev/null || true)
  if [[ -n $current && -f $imported && $(cat "$imported") == "$current" && ! $tarball -nt $imported ]]; then
    say "base image: $LOCAL_BASE present (${current:0:12})"
  else
    id=$(podman import --quiet --change 'CMD ["/bin/bash"]' "$tarball" "$LOCAL_BASE")
    podman image inspect --format '{{.Id}}' "$LOCAL_BASE" > "$imported"
    id=${id#sha256:}
    say "base image: imported $tarball as $LOCAL_BASE (${id:0:12})"
  fi
  build_network=none   # everything the build needs is in the base and the context
else
  say "base image: $BASE_IMAGE (given by DETOUR_BASE_IMAGE; podman pulls it if needed)"
  build_network=host   # apt-get in the build reaches the mirror; no podman bridge is created
fi

# 2. wheels: the project (rebuilt every time, it is small) and its dependencies (kept).
wheels=$context/wheels
mkdir -p "$wheels"
rm -f "$wheels"/detour-*.whl
t=$SECONDS
export SOURCE_DATE_EPOCH=315532800   # reproducible zip timestamps: an unchanged tree, the same wheel
pip=(.venv/bin/python -m pip --disable-pip-version-check)
quiet_pip() {  # the machine's pip.conf names find-links folders that may not exist
  local status=0
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || status=$?
  return "$status"
}
# Without build isolation when the venv has setuptools and wheel (fast, offline), else with.
quiet_pip "${pip[@]}" wheel --quiet --no-deps --no-build-isolation --wheel-dir "$wheels" . \
  || quiet_pip "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$wheels" . \
  || die "pip wheel of the project failed"
rm -rf build/lib build/bdist.* 2>/dev/null || true
if "${pip[@]}" wheel --quiet --no-index --find-links "$wheels" --wheel-dir "$wheels" \
     "$(ls "$wheels"/detour-*.whl)" >/dev/null 2>&1; then
  say "wheels: dependencies cached in $wheels; project wheel rebuilt ($((SECONDS - t)) s)"
else
  quiet_pip "${pip[@]}" wheel --quiet --find-links "$wheels" --wheel-dir "$wheels" "$(ls "$wheels"/detour-*.whl)" \
    || die "pip wheel of the dependencies failed (needs PyPI once)"
  say "wheels: built the dependencies from PyPI into $wheels ($((SECONDS - t)) s)"
fi
cp deploy/entrypoint.sh "$context/entrypoint.sh"

# 3. the image (podman's layer cache makes an unchanged rebuild a no-op)
t=$SECONDS
before=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --quiet --network "$build_network" --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -f deploy/Containerfile -t "$IMAGE" "$context" > "$cache/build.log" 2>&1 \
  || { cat "$cache/build.log" >&2; die "podman build failed"; }
after=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ $before == "$after" ]]; then
  say "image: $IMAGE unchanged (${after:0:12}, $((SECONDS - t)) s)"
else
  say "image: built $IMAGE (${after:0:12}) from $BASE_IMAGE in $((SECONDS - t)) s"
fi
say "done in $((SECONDS - start)) s"

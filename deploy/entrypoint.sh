#!/bin/sh
# The image's entrypoint: "init" (detour-init apply, then validate) or "sidecar" (detour-proxy).
# Every interception option comes from DETOUR_* variables (README's option table); any further
# arguments are passed to detour-init / detour-proxy unchanged.
set -eu
PATH=/opt/detour/bin:$PATH
role=${1:-sidecar}
[ $# -gt 0 ] && shift

case $role in
init)
    # apply is idempotent; a non-zero exit (2: bad input or missing CAP_NET_ADMIN, nothing
    # touched; 1: failed and rolled back) ends the container with that code.
    detour-init apply "$@"
    exec detour-init validate "$@"
    ;;
sidecar)
    if [ "$(id -u)" = 0 ]; then
        # Started as root (e.g. podman run --user 0): bind, then drop to the proxy's uid/gid,
        # which init never captures.
        exec detour-proxy --run-as 1337:1337 "$@"
    fi
    exec detour-proxy "$@"
    ;;
*)
    echo "detour-entrypoint: unknown role '$role' (expected: init or sidecar)" >&2
    exit 2
    ;;
esac

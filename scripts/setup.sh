#!/usr/bin/env bash
# make setup: install what Detour needs on a Debian 12 machine, idempotently, saying what it did.
#   - Debian packages (only those missing), podman & debootstrap for deploy/ among them
#   - kernel header links for bcc, only when /lib/modules/$(uname -r)/build is missing
#   - .venv from Debian's /usr/bin/python3 with --system-site-packages (sees bcc; runnable by
#     uid 1337, which cannot read an interpreter under /root), with the project editable + dev
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

PACKAGES=(
  iptables nftables iproute2 conntrack curl procps
  python3 python3-venv python3-pip
  # mypyc's compile of the HTTP/1.1 path (scripts/build_native.py): a C compiler, Python.h
  gcc python3-dev
  python3-bpfcc libbpfcc linux-headers-amd64 bpftool
  dnsutils
  # detour-proxy --allocator jemalloc (memory given back after a burst of connections)
  libjemalloc2
  # HTTP/2 tests: h2load (100 concurrent streams) and nghttp (frames, GOAWAY on drain)
  nghttp2-client
  # deploy/ (make images, tests/e2e/deploy): rootful podman without a registry. runc because
  # crun refuses this machine's cgroups v1+v2 hybrid; debootstrap builds the base image.
  podman debootstrap runc crun uidmap slirp4netns fuse-overlayfs util-linux
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || die "Debian packages missing (${missing[*]}) and not root: run 'sudo make setup'"
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages: all present"
fi

# bcc compiles BPF C against the running kernel's headers. This kernel has no package of its
# own; Debian's generic headers work for the cgroup/sockops programs once linked in place.
kernel=$(uname -r)
moddir=/lib/modules/$kernel
if [[ -e $moddir/build ]]; then
  say "kernel headers: $moddir/build present"
else
  [[ $EUID -eq 0 ]] || die "$moddir/build is missing and not root: run 'sudo make setup'"
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $arch_dir && -n $common_dir ]] || die "linux-headers-amd64 is installed but /usr/src has no headers"
  mkdir -p "$moddir"
  ln -sfn "$arch_dir" "$moddir/build"
  ln -sfn "$common_dir" "$moddir/source"
  say "kernel headers: linked $moddir/build -> $arch_dir and $moddir/source -> $common_dir"
fi

venv=.venv
if [[ -x $venv/bin/python ]] && [[ $(readlink -f $venv/bin/python) == /usr/bin/python3* ]] \
   && grep -q "include-system-site-packages = true" $venv/pyvenv.cfg 2>/dev/null; then
  say "virtualenv: $venv present"
else
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  say "virtualenv: created $venv from /usr/bin/python3 (--system-site-packages, sees bcc)"
fi

stamp=$venv/.detour-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  say "installing the project (editable) with its dev extras into $venv"
  $venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  $venv/bin/python -c "import iptc, pyroute2" || die "the venv cannot import its dependencies"
  touch "$stamp"
else
  say "project: installed in $venv (pyproject.toml unchanged)"
fi
# The sidecar runs as uid 1337, which cannot write __pycache__ here: without bytecode on disk
# every start compiles the sources again, slower and ~1 MiB more resident (the compiler's
# garbage). An editable install does not compile; pip's wheel installs and the image do.
$venv/bin/python -m compileall -q -j 0 init proxy interceptor detour_common ca >/dev/null \
  || die "byte-compiling init, proxy, interceptor, detour_common and ca failed"
say "bytecode: init, proxy, interceptor, detour_common and ca compiled (stale files only)"
# The HTTP/1.1 path's hot modules compiled with mypyc (proxy/native.py): rebuilt only when a
# source changed; the sidecar runs the Python source if this build is missing or stale.
$venv/bin/python scripts/build_native.py || die "mypyc could not compile the HTTP/1.1 path"
$venv/bin/python -c "import bcc" 2>/dev/null || die "the venv cannot import Debian's bcc (python3-bpfcc)"
say "ready"

#!/usr/bin/env bash
# make test-vm: the whole mesh in a real VM, as a user would run it — offline, under TCG.
#
#   1. host     apt-get install vagrant, vagrant-libvirt, libvirt, qemu, ... (only what is missing)
#   2. libvirt  start virtlogd/libvirtd without systemd if they are not running; define and
#               start the storage pool "detour" (build/vagrant/pool) if it is not there
#   3. box      vagrant/build-box.sh --with-setup: Debian 12 with everything `make setup`
#               installs (cached in build/vagrant/; rebuilt when setup's packages or
#               pyproject.toml change); added to VAGRANT_HOME=build/vagrant/vagrant.d when new
#   4. up       vagrant up (libvirt, TCG, isolated network: the VM cannot reach anything but
#               the host), which runs the `setup` provisioner: `make setup` inside, offline
#   5. demo     vagrant provision --provision-with demo   (make demo in the VM)
#   6. e2e      vagrant provision --provision-with e2e    (make test-e2e in the VM: the lab's
#               end-to-end suite with iptables interception, CI=true so nothing skips)
#   7. down     vagrant destroy -f; stop the daemons, pool and network this script started
#
# Prints the time of each stage. Exit status: the first failing stage's. Run as root.
# DETOUR_VM_KEEP=1 leaves the VM running (and the daemons) for a look: `vagrant ssh` with the
# environment printed at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf 'test-vm: %s\n' "$*"; }
die() { printf 'test-vm: error: %s\n' "$*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (apt-get, libvirt, debootstrap)"

state=$repo/build/vagrant
pool=detour
export VAGRANT_HOME=$state/vagrant.d
export VAGRANT_DOTFILE_PATH=$state/dot-vagrant-test-vm
export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_CWD=$repo/vagrant
export DETOUR_VM_BOX=local/bookworm-setup
export DETOUR_VM_TCG=1 DETOUR_VM_ISOLATED=1 DETOUR_VM_POOL=$pool
export DETOUR_VM_NAME=detour-test-vm
export DETOUR_VM_MEMORY=${DETOUR_VM_MEMORY:-3072} DETOUR_VM_CPUS=${DETOUR_VM_CPUS:-2}
domain=${DETOUR_VM_NAME}_default
network=detour-isolated  # the Vagrantfile's name for the isolated management network

declare -a stage_names=() stage_seconds=()
stage_start=0
begin() { stage_start=$SECONDS; say "== $1"; stage_names+=("$1"); }
end() { stage_seconds+=($((SECONDS - stage_start))); }
summary() {
  local i
  say "stage times:"
  for i in "${!stage_seconds[@]}"; do
    printf '  %-8s %5d s\n' "${stage_names[$i]}" "${stage_seconds[$i]}"
  done
}

# Removes the libvirt domain $domain whatever state it is in, and says so. Its volumes may be
# gone already (a clean checkout has no build/vagrant/pool contents), it may have a managed
# save or NVRAM, and a libvirtd that has just started may still be reconnecting to it: each
# way of undefining it is tried, for up to 10 s. Fails only if the domain is still defined.
remove_domain() {
  local attempt
  virsh dominfo "$domain" >/dev/null 2>&1 || return 0
  for attempt in $(seq 10); do
    virsh destroy "$domain" >/dev/null 2>&1 || true
    virsh undefine "$domain" --remove-all-storage >/dev/null 2>&1 \
      || virsh undefine "$domain" --managed-save --snapshots-metadata --nvram >/dev/null 2>&1 \
      || virsh undefine "$domain" >/dev/null 2>&1 || true
    if ! virsh dominfo "$domain" >/dev/null 2>&1; then
      say "removed the libvirt domain $domain, which vagrant did not know about"
      return 0
    fi
    sleep 1
  done
  printf 'test-vm: the domain %s is still defined after %d tries: %s\n' "$domain" "$attempt" \
    "$(virsh undefine "$domain" 2>&1 | tr '\n' ' ')" >&2
  return 1
}

started_daemons=()
defined_pool=0
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  ((${#stage_seconds[@]} < ${#stage_names[@]})) && end  # the stage that failed
  if [[ ${DETOUR_VM_KEEP:-} == 1 ]]; then
    say "DETOUR_VM_KEEP=1: the VM $domain stays up; vagrant destroy -f with the same environment"
    summary
    exit "$rc"
  fi
  begin down
  vagrant destroy -f >/dev/null 2>&1
  remove_domain  # when vagrant lost track of it
  if virsh net-info "$network" >/dev/null 2>&1; then
    virsh net-destroy "$network" >/dev/null 2>&1
    virsh net-undefine "$network" >/dev/null 2>&1
  fi
  if ((defined_pool)); then
    virsh pool-destroy "$pool" >/dev/null 2>&1
    virsh pool-undefine "$pool" >/dev/null 2>&1
  fi
  for daemon in "${started_daemons[@]}"; do
    [[ -f /run/$daemon.pid ]] && kill "$(cat "/run/$daemon.pid")" 2>/dev/null
  done
  end
  say "left: $(virsh list --all --name 2>/dev/null | grep -c . || true) libvirt domains," \
      "stopped what this run started (${started_daemons[*]:-no daemons}$( ((defined_pool)) && echo ", pool $pool"))"
  summary
  if ((rc == 0)); then say "passed"; else say "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT

say "environment: VAGRANT_HOME=$VAGRANT_HOME VAGRANT_DOTFILE_PATH=$VAGRANT_DOTFILE_PATH" \
    "VAGRANT_CWD=$VAGRANT_CWD DETOUR_VM_BOX=$DETOUR_VM_BOX DETOUR_VM_TCG=1 DETOUR_VM_ISOLATED=1" \
    "DETOUR_VM_POOL=$pool DETOUR_VM_NAME=$DETOUR_VM_NAME DETOUR_VM_MEMORY=$DETOUR_VM_MEMORY" \
    "DETOUR_VM_CPUS=$DETOUR_VM_CPUS"

# 1. host packages
begin host
# With their recommends, as seen working here (qemu-block-extra, swtpm, ...; 191 s fresh).
packages=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86
          qemu-utils dnsmasq-base debootstrap e2fsprogs rsync)
missing=()
for p in "${packages[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  say "packages present"
fi
end

# 2. libvirt daemons, storage pool
begin libvirt
for daemon in virtlogd libvirtd; do
  if ! pgrep -x "$daemon" >/dev/null; then
    "$daemon" -d
    started_daemons+=("$daemon")
  fi
done
for _ in $(seq 100); do virsh version >/dev/null 2>&1 && break; sleep 0.2; done
virsh version >/dev/null 2>&1 || die "libvirtd does not answer (virsh version)"
# libvirt keeps a defined pool across runs (/etc/libvirt/storage): one left by a run of another
# checkout, or by DETOUR_VM_KEEP=1, points at a folder that may be gone. Ours lives here.
# On a fresh host there is no pool: pool-dumpxml fails, and under pipefail that must not end
# the script (it did, silently, in CI).
pool_path=$(virsh pool-dumpxml "$pool" 2>/dev/null | sed -n 's:.*<path>\(.*\)</path>.*:\1:p' || true)
if [[ -n $pool_path && $pool_path != "$state/pool" ]]; then
  virsh pool-destroy "$pool" >/dev/null 2>&1 || true
  virsh pool-undefine "$pool" >/dev/null
  say "pool $pool pointed at $pool_path (another checkout's): redefined at $state/pool"
fi
mkdir -p "$state/pool"  # also when the pool is defined but build/ was removed since
if ! virsh pool-info "$pool" >/dev/null 2>&1; then
  virsh pool-define-as "$pool" dir --target "$state/pool" >/dev/null
  defined_pool=1
fi
[[ $(virsh pool-info "$pool") == *running* ]] || virsh pool-start "$pool" >/dev/null
say "daemons started here: ${started_daemons[*]:-none}; pool $pool ($state/pool)"
# A VM left by an interrupted run (its definition survives a reboot in /etc/libvirt/qemu) would
# make `vagrant up` fail on the name.
vagrant destroy -f >/dev/null 2>&1 || true
remove_domain || die "could not remove the domain $domain left by an earlier run (virsh undefine $domain)"
# Its network too: vagrant-libvirt creates it afresh, with this run's settings.
if virsh net-info "$network" >/dev/null 2>&1; then
  virsh net-destroy "$network" >/dev/null 2>&1 || true
  virsh net-undefine "$network" >/dev/null 2>&1 || die "could not remove the network $network left by an earlier run"
  say "removed the network $network left by an earlier run"
fi
end

# 3. the offline box
begin box
bash vagrant/build-box.sh --with-setup
boxfile=$state/with-setup/local-bookworm-setup.box
added=$VAGRANT_HOME/boxes/local-VAGRANTSLASH-bookworm-setup/0/libvirt/box.img
if [[ ! -f $added || $boxfile -nt $added ]]; then
  vagrant box add --force --name "$DETOUR_VM_BOX" "$boxfile" >/dev/null
  # vagrant-libvirt uploads a box into the pool once, by name: drop an older upload of it.
  virsh pool-refresh "$pool" >/dev/null
  for volume in $(virsh vol-list "$pool" | awk 'NR > 2 && $1 ~ /^local-VAGRANTSLASH-bookworm-setup_/ {print $1}'); do
    virsh vol-delete --pool "$pool" "$volume" >/dev/null
    say "removed the previous upload $volume from pool $pool"
  done
  say "box $DETOUR_VM_BOX added"
else
  say "box $DETOUR_VM_BOX already added"
fi
end

# 4. up (runs the `setup` provisioner: make setup, offline)
begin up
vagrant up --provider=libvirt
end

# 5. make demo in the VM
begin demo
vagrant provision --provision-with demo
end

# 6. the lab's end-to-end suite in the VM
begin e2e
vagrant provision --provision-with e2e
end

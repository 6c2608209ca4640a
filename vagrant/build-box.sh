#!/usr/bin/env bash
# vagrant/build-box.sh: build the offline Vagrant box local/bookworm for the libvirt provider,
# without any box registry, idempotently, saying what it did. Run as root.
#
#   1. rootfs   debootstrap bookworm (minbase + a kernel, systemd, ssh, sudo, rsync, python3,
#               iptables, ...) from the Debian mirror apt uses here, into build/vagrant/rootfs
#               (kept; redone only when the package list changes)
#   2. config   hostname, fstab, NIC mgmt0 by DHCP, user vagrant (sudo without password, Vagrant's
#               public insecure key, replaced by vagrant at the first `vagrant up`)
#   3. image    an unpartitioned ext4 filesystem (no boot loader: libvirt boots the box's kernel
#               and initrd directly), converted to compressed qcow2
#   4. box      build/vagrant/local-bookworm.box = metadata.json + Vagrantfile (kernel, initrd,
#               cmd_line, TCG) + box.img + vmlinuz + initrd.img
#   5. add      only with --add: `vagrant box add --force --name local/bookworm` (VAGRANT_HOME
#               is honoured)
#
# Variables: DETOUR_DEBIAN_MIRROR (default: the bookworm mirror in /etc/apt/sources.list{,.d}),
# --with-setup: a second box, local/bookworm-setup (build/vagrant/with-setup/), that also
# carries everything `make setup` installs (scripts/setup.sh's Debian packages, and the Python
# dependencies as wheels in /opt/detour-wheels with an /etc/pip.conf pointing pip there), so
# that `make setup` works in a VM without any network.
#
# DETOUR_VM_DISK_GB (size of the root filesystem, default 8), DETOUR_VM_EXTRA_PACKAGES
# (more Debian packages for the rootfs, comma-separated, installed with apt-get in the rootfs
# after debootstrap), DETOUR_VM_PUBKEY (default: the
# insecure public key shipped with the vagrant package).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'build-box: %s\n' "$*"; }
die() { printf 'build-box: error: %s\n' "$*" >&2; exit 1; }

add=0
with_setup=0
for arg in "$@"; do
  case $arg in
    --add) add=1 ;;
    --with-setup) with_setup=1 ;;
    *) die "unknown argument $arg (--add, --with-setup)" ;;
  esac
done
if ((with_setup)); then
  out=build/vagrant/with-setup
  box_name=local/bookworm-setup
  boxfile=$out/local-bookworm-setup.box
else
  out=build/vagrant
  box_name=local/bookworm
  boxfile=$out/local-bookworm.box
fi
rootfs=$out/rootfs
boxdir=$out/box
disk_gb=${DETOUR_VM_DISK_GB:-8}

PACKAGES=linux-image-amd64,systemd-sysv,udev,openssh-server,sudo,rsync,make,ca-certificates
PACKAGES+=,python3,python3-venv,iptables,iproute2,ifupdown,isc-dhcp-client,procps,kmod
# Installed afterwards with apt-get in the rootfs (debootstrap does not resolve virtual
# packages, e.g. podman's container-network-stack), space-separated.
extra=${DETOUR_VM_EXTRA_PACKAGES:-}
APT_PACKAGES=${extra//,/ }
if ((with_setup)); then
  # Everything scripts/setup.sh would apt-get install (its PACKAGES array, read from the file).
  setup_packages=$(sed -n '/^PACKAGES=(/,/^)/p' scripts/setup.sh | sed 's/#.*//' | bash -c 'eval "$(cat)"; echo "${PACKAGES[*]}"')
  [[ -n $setup_packages ]] || die "could not read PACKAGES from scripts/setup.sh"
  APT_PACKAGES+=" $setup_packages"
fi
APT_PACKAGES=$(echo $APT_PACKAGES)  # squeeze blanks
want=$PACKAGES
[[ -n $APT_PACKAGES ]] && want+="|$APT_PACKAGES"

[[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot, mkfs)"
for tool in debootstrap qemu-img mkfs.ext4 chroot tar; do
  command -v "$tool" >/dev/null || die "the $tool command is missing (apt-get install debootstrap qemu-utils e2fsprogs)"
done

pubkey=${DETOUR_VM_PUBKEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1 || true)}
[[ -n $pubkey && -r $pubkey ]] || die "Vagrant's insecure public key not found: install vagrant or set DETOUR_VM_PUBKEY"

# shellcheck source=scripts/debian-mirror.sh
source scripts/debian-mirror.sh  # cwd is the repo root (cd above)

mkdir -p "$out" "$boxdir"

# 1. rootfs
stamp=$out/rootfs.packages
if [[ -d $rootfs && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  say "rootfs: cached ($rootfs)"
else
  mirror=${DETOUR_DEBIAN_MIRROR:-$(debian_mirror)}
  [[ -n $mirror ]] || die "no bookworm mirror in /etc/apt/sources.list{,.d}: set DETOUR_DEBIAN_MIRROR"
  rm -rf "$rootfs" "$stamp" "$out/rootfs.tmp"
  t=$SECONDS
  plain=build/vagrant
  if ((with_setup)) && [[ -d $plain/rootfs && $(cat "$plain/rootfs.packages" 2>/dev/null) == "$PACKAGES" ]]; then
    cp -a "$plain/rootfs" "$out/rootfs.tmp"
    say "rootfs: copied from $plain/rootfs (same base packages)"
  else
    say "rootfs: debootstrap --variant=minbase --include=$PACKAGES bookworm from $mirror"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$out/rootfs.tmp" "$mirror" \
      > "$out/debootstrap.log" 2>&1 || die "debootstrap failed: see $out/debootstrap.log"
  fi
  if [[ -n $APT_PACKAGES ]]; then
    say "rootfs: apt-get install --no-install-recommends $APT_PACKAGES"
    mount -t proc proc "$out/rootfs.tmp/proc"
    trap 'umount "$out/rootfs.tmp/proc" 2>/dev/null || true' EXIT
    { chroot "$out/rootfs.tmp" apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive chroot "$out/rootfs.tmp" \
           apt-get install -y -qq --no-install-recommends $APT_PACKAGES; } > "$out/apt.log" 2>&1 \
      || die "apt-get in the rootfs failed: see $out/apt.log"
    umount "$out/rootfs.tmp/proc"
    trap - EXIT
    chroot "$out/rootfs.tmp" apt-get clean
  fi
  rm -rf "$out/rootfs.tmp"/var/cache/apt/archives/*.deb
  mv "$out/rootfs.tmp" "$rootfs"
  printf '%s' "$want" > "$stamp"
  say "rootfs: done in $((SECONDS - t)) s ($(du -sh "$rootfs" | cut -f1))"
fi

# 2. configuration (cheap; rewritten every time, so an edit here takes effect)
changed=0
put() {  # put FILE CONTENT: write only when different
  local file=$rootfs$1
  if [[ ! -f $file || $(cat "$file") != "$2" ]]; then
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$2" > "$file"
    changed=1
  fi
}
put /etc/hostname "detour-vm"
put /etc/hosts "127.0.0.1 localhost
127.0.1.1 detour-vm
::1 localhost ip6-localhost ip6-loopback"
put /etc/fstab "/dev/vda / ext4 defaults,errors=remount-ro 0 1"
put /etc/network/interfaces "auto lo
iface lo inet loopback

allow-hotplug mgmt0
iface mgmt0 inet dhcp"
# The VM's own NIC is named mgmt0, not eth0: Detour's lab (tests/support, make demo) creates
# veths named eth0 in the root namespace before moving them into pods.
put /etc/systemd/network/10-detour-mgmt.link "[Match]
Driver=virtio_net

[Link]
Name=mgmt0"
put /etc/sudoers.d/vagrant "vagrant ALL=(ALL) NOPASSWD: ALL"
chmod 440 "$rootfs/etc/sudoers.d/vagrant"
put /etc/ssh/sshd_config.d/vagrant.conf "UseDNS no"
if ! chroot "$rootfs" id vagrant >/dev/null 2>&1; then
  chroot "$rootfs" useradd --create-home --shell /bin/bash vagrant
  changed=1
fi
put /home/vagrant/.ssh/authorized_keys "$(cat "$pubkey")"
chroot "$rootfs" sh -c 'chown -R vagrant:vagrant /home/vagrant/.ssh && chmod 700 /home/vagrant/.ssh && chmod 600 /home/vagrant/.ssh/authorized_keys'
if ((changed)); then say "config: written (hostname detour-vm, mgmt0 dhcp, user vagrant)"; else say "config: unchanged"; fi

# 2b. --with-setup: the Python dependencies as wheels (built here, where PyPI is reachable,
# with the host's Debian python3 3.11, the same as the VM's) and a pip.conf that makes pip in
# the VM use only them, so `make setup` in an isolated VM finds everything it installs.
if ((with_setup)); then
  pip=.venv/bin/python
  [[ -x $pip ]] || die "--with-setup needs the host's .venv (run make setup first)"
  wheels=$out/wheels
  mkdir -p "$wheels"
  t=$SECONDS
  if [[ -f $wheels/.pyproject.toml && -z $(cmp -s pyproject.toml "$wheels/.pyproject.toml" || echo diff) ]]; then
    how="cached, pyproject.toml unchanged"
  else
    # pyproject.toml's build requirements, dependencies and dev extras (not the project itself:
    # the VM installs it editable from /detour).
    mapfile -t reqs < <("$pip" -c 'import tomllib
d = tomllib.load(open("pyproject.toml", "rb"))
p = d["project"]
print("\n".join(d["build-system"]["requires"] + ["wheel"] + p["dependencies"]
                + [r for extra in p.get("optional-dependencies", {}).values() for r in extra]))')
    "$pip" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" "${reqs[@]}" \
      > "$out/pip.log" 2>&1 || die "pip wheel failed (needs PyPI once): see $out/pip.log"
    cp pyproject.toml "$wheels/.pyproject.toml"
    how="built in $((SECONDS - t)) s"
  fi
  if ! diff -rq --exclude=.pyproject.toml "$wheels" "$rootfs/opt/detour-wheels" >/dev/null 2>&1; then
    rm -rf "$rootfs/opt/detour-wheels"
    cp -r "$wheels" "$rootfs/opt/detour-wheels"
    rm -f "$rootfs/opt/detour-wheels/.pyproject.toml"
    changed=1
  fi
  put /etc/pip.conf "[global]
no-index = true
find-links = /opt/detour-wheels"
  say "wheels: $(ls "$wheels" | wc -l) in /opt/detour-wheels ($how), pip in the VM offline"
fi

# 3. image
kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)
[[ -f $kernel && -f $initrd ]] || die "no kernel/initrd in $rootfs/boot"
if [[ -f $boxdir/box.img && -f $out/image.stamp && ! $stamp -nt $out/image.stamp ]] && ((changed == 0)) \
   && [[ $(cat "$out/image.stamp") == "$disk_gb" ]]; then
  say "image: cached ($boxdir/box.img)"
else
  t=$SECONDS
  rm -f "$out/root.raw"
  mkfs.ext4 -q -F -L root -d "$rootfs" "$out/root.raw" "${disk_gb}G" >/dev/null
  qemu-img convert -c -O qcow2 "$out/root.raw" "$boxdir/box.img"
  rm -f "$out/root.raw"
  cp "$kernel" "$boxdir/vmlinuz"
  cp "$initrd" "$boxdir/initrd.img"
  printf '%s' "$disk_gb" > "$out/image.stamp"
  say "image: ext4 ${disk_gb} GiB -> qcow2 $(du -h "$boxdir/box.img" | cut -f1) in $((SECONDS - t)) s (kernel $(basename "$kernel"))"
fi

# 4. box
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$disk_gb" > "$boxdir/metadata.json.new"
cat > "$boxdir/Vagrantfile.new" <<'EOF'
# Box Vagrantfile of local/bookworm (made by vagrant/build-box.sh): no boot loader in the
# image, libvirt boots this kernel and initrd directly; TCG (plain QEMU, no KVM).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
    lv.cpu_mode = "custom"
    lv.cpu_model = "qemu64"
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "console=ttyS0 root=/dev/vda rw"
  end
end
EOF
for f in metadata.json Vagrantfile; do
  if cmp -s "$boxdir/$f.new" "$boxdir/$f"; then rm "$boxdir/$f.new"; else mv "$boxdir/$f.new" "$boxdir/$f"; fi
done
newest=$(ls -t "$boxdir"/* | head -n 1)
if [[ -f $boxfile && ! $newest -nt $boxfile ]]; then
  say "box: cached ($boxfile)"
else
  t=$SECONDS
  tar -C "$boxdir" -czf "$boxfile.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img
  mv "$boxfile.tmp" "$boxfile"
  say "box: $boxfile ($(du -h "$boxfile" | cut -f1)) in $((SECONDS - t)) s"
fi

# 5. add
if ((add)); then
  command -v vagrant >/dev/null || die "--add needs vagrant (apt-get install vagrant vagrant-libvirt)"
  vagrant box add --force --name "$box_name" "$boxfile" >/dev/null
  say "added: vagrant box $box_name (VAGRANT_HOME=${VAGRANT_HOME:-~/.vagrant.d})"
else
  say "to use it: vagrant box add --force --name $box_name $boxfile   (or run with --add)"
fi

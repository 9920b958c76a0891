#!/bin/bash
# Builds the lab guest: a Debian 6.1 kernel (unpacked, never installed) and a tiny busybox
# initramfs whose /init is lab/guest-init.sh, plus the host's iperf3 and ethtool with the shared
# libraries ldd finds for them. Used by the QEMU tests (crate integration-tests) and
# scripts/demo.sh.
#
# Output (default <project>/build/guest, override with ACCELNET_GUEST_DIR):
#   vmlinuz, initramfs.cpio.gz
# Env: ACCELNET_GUEST_DIR  output directory
#      KVER / KPKG_VERSION  guest kernel ABI and pinned package version (6.1.0-50-amd64 / 6.1.176-1)
#      BUSYBOX              a STATIC busybox (default /bin/busybox from busybox-static)
# A test that needs more binaries in a guest (e.g. accelnet itself) appends its own archive
# to a copy of this image: Lab::add_binaries in tests/src/lab.rs.
# Idempotent: the .deb is downloaded and unpacked once; the initramfs is rebuilt only when
# guest-init.sh, busybox, a tool or its libraries, or this script changed (FORCE=1 rebuilds anyway).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # ethtool, depmod
LAB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$LAB")
OUT=${ACCELNET_GUEST_DIR:-$ROOT/build/guest}
KVER=${KVER:-6.1.0-50-amd64}
KPKG_VERSION=${KPKG_VERSION:-6.1.176-1}
KPKG=linux-image-${KVER}-unsigned
BUSYBOX=${BUSYBOX:-/bin/busybox}
# Modules the guest needs (=m in Debian's config); their load order comes from modules.dep.
MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         failover net_failover virtio_net e1000 e1000e)
# Modules shipped in the image but loaded only on request, by the kernel command line flag
# lab.modules=igb,igbvf,vfio-pci,vfio_iommu_type1 (guest-init.sh loads them after the lab NIC
# is configured, so the default eth0 naming never changes). For each, the image holds
# /lib/modules/opt/<name>.order: the module and its dependencies in load order.
# SR-IOV lab (tests/tests/qemu_sriov_igb.rs): QEMU's igb PF (igb) and its VFs (igbvf),
# vfio-pci to hand a VF to user space; the IOMMU (intel_iommu) is built into the kernel.
OPT_MODULES=(igb igbvf vfio vfio_iommu_type1 vfio-pci)
# Dynamically linked host tools copied into the guest at their host paths (/usr/bin, /usr/sbin:
# first in the guest's PATH), with every library `ldd` lists, at the path ldd resolved it to.
TOOLS=(iperf3 ethtool)

die() { echo "build-guest: $*" >&2; exit 1; }
for t in dpkg-deb depmod cpio gzip ldd "${TOOLS[@]}"; do command -v "$t" >/dev/null || die "missing $t (run scripts/install-deps.sh)"; done
[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
if command -v file >/dev/null && file -L "$BUSYBOX" | grep -q 'dynamically linked'; then
  die "$BUSYBOX is dynamically linked: install busybox-static"
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
KDIR=$OUT/kernel
DEB=$OUT/${KPKG}_${KPKG_VERSION}_amd64.deb
MODROOT=$KDIR/lib/modules/$KVER

# 1. The pinned kernel package, downloaded and unpacked once.
if [ ! -f "$KDIR/.unpacked-$KPKG_VERSION" ]; then
  if [ ! -f "$DEB" ]; then
    # apt's _apt user cannot write into root-owned dirs: download in a scratch dir it owns
    tmp=$(mktemp -d); chmod 777 "$tmp"
    (cd "$tmp" && apt-get download -q "$KPKG=$KPKG_VERSION") \
      || { rm -rf "$tmp"; die "apt-get download $KPKG=$KPKG_VERSION failed (apt-get update?)"; }
    mv "$tmp"/*.deb "$DEB"; rm -rf "$tmp"
  fi
  rm -rf "$KDIR"; mkdir -p "$KDIR"
  dpkg-deb -x "$DEB" "$KDIR"
  # The package ships no modules.dep (postinst runs depmod): generate it inside the unpacked tree.
  depmod -b "$KDIR" "$KVER"
  touch "$KDIR/.unpacked-$KPKG_VERSION"
fi
[ -f "$MODROOT/modules.dep" ] || depmod -b "$KDIR" "$KVER"
cp -u "$KDIR/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# 2. The tools and their shared libraries (ldd: `name => /path (addr)` or `/path (addr)`).
TOOL_FILES=()
for t in "${TOOLS[@]}"; do
  bin=$(command -v "$t") || die "no executable $t"
  TOOL_FILES+=("$bin")
  if ! libs=$(ldd "$bin" 2>&1); then
    grep -q 'not a dynamic executable' <<< "$libs" || die "ldd $bin: $libs"
    continue   # static: nothing else to copy
  fi
  if grep -q 'not found' <<< "$libs"; then die "$bin: missing libraries: $libs"; fi
  mapfile -t -O "${#TOOL_FILES[@]}" TOOL_FILES \
    < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<< "$libs")
done
mapfile -t TOOL_FILES < <(printf '%s\n' "${TOOL_FILES[@]}" | sort -u)

# 3. Initramfs, rebuilt only if an input is newer than it.
INITRD=$OUT/initramfs.cpio.gz
stale=${FORCE:-}
for f in "$LAB/guest-init.sh" "$BUSYBOX" "${BASH_SOURCE[0]}" "$KDIR/.unpacked-$KPKG_VERSION" "${TOOL_FILES[@]}"; do
  if [ "$f" -nt "$INITRD" ]; then stale=1; fi
done
if [ -n "$stale" ] || [ ! -f "$INITRD" ]; then
  # Load order: depth-first over modules.dep (a module's deps are listed last-loaded-first).
  declare -A DEP=() PATHOF=() SEEN=()
  while IFS= read -r line; do
    mod=${line%%:*}; deps=${line#*:}
    name=$(basename "$mod"); name=${name%%.ko*}
    PATHOF[$name]=$mod; DEP[$name]=$deps
  done < "$MODROOT/modules.dep"
  ORDER=()
  visit() {
    local n=$1 d i arr
    [ -n "${SEEN[$n]:-}" ] && return 0
    SEEN[$n]=1
    [ -n "${PATHOF[$n]:-}" ] || die "module $n not in $MODROOT/modules.dep"
    read -ra arr <<< "${DEP[$n]}"
    for ((i=${#arr[@]}-1; i>=0; i--)); do d=$(basename "${arr[i]}"); visit "${d%%.ko*}"; done
    ORDER+=("$n")
  }
  for m in "${MODULES[@]}"; do visit "$m"; done
  # Each optional module's closure in load order (deps first), from a fresh walk; default
  # modules are left out of it (loaded already).
  declare -A INBASE=()
  for n in "${ORDER[@]}"; do INBASE[$n]=1; done
  declare -A OPT_ORDER=()
  for m in "${OPT_MODULES[@]}"; do
    saved=("${ORDER[@]}"); ORDER=(); SEEN=()
    visit "$m"
    list=()
    for n in "${ORDER[@]}"; do [ -n "${INBASE[$n]:-}" ] || list+=("$n"); done
    OPT_ORDER[$m]="${list[*]}"
    ORDER=("${saved[@]}")
  done

  R=$OUT/initramfs
  rm -rf "$R"; mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,etc,root,lib/modules}
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
  : > "$R/lib/modules/load-order"
  for n in "${ORDER[@]}"; do
    f=${PATHOF[$n]}; base=$(basename "$f")
    cp "$MODROOT/$f" "$R/lib/modules/$base"
    echo "$base" >> "$R/lib/modules/load-order"
  done
  mkdir -p "$R/lib/modules/opt"
  for m in "${OPT_MODULES[@]}"; do
    : > "$R/lib/modules/opt/$m.order"
    for n in ${OPT_ORDER[$m]}; do
      f=${PATHOF[$n]}; base=$(basename "$f")
      cp "$MODROOT/$f" "$R/lib/modules/$base"
      echo "$base" >> "$R/lib/modules/opt/$m.order"
    done
  done
  for f in "${TOOL_FILES[@]}"; do
    mkdir -p "$R$(dirname "$f")"
    cp -L "$f" "$R$f"   # the file itself, not a symlink into the host's tree
  done
  cp "$LAB/guest-init.sh" "$R/init"; chmod 755 "$R/init"
  (cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > "$INITRD.tmp")
  mv "$INITRD.tmp" "$INITRD"
  echo "build-guest: modules (load order): ${ORDER[*]}"
  for m in "${OPT_MODULES[@]}"; do echo "build-guest: on request (lab.modules=$m): ${OPT_ORDER[$m]}"; done
  echo "build-guest: tools: ${TOOL_FILES[*]}"
  echo "build-guest: initramfs $(du -k "$INITRD" | cut -f1) KiB compressed, $(du -sk "$R" | cut -f1) KiB unpacked"
fi
echo "kernel: $OUT/vmlinuz"
echo "initrd: $INITRD"

#!/bin/bash
# Installs everything accelnet needs on a fresh Debian 12 (bookworm) machine, as root:
#   * Rust build deps (the toolchain itself comes from rustup; installed if cargo is missing)
#   * QEMU 10 from bookworm-backports (7.2 in bookworm crashes with vhost-user + MSI-X under TCG)
#   * busybox-static, iperf3, ethtool and the Debian guest kernel package for the lab guests
#   * DPDK (dpdk-testpmd, virtio-user / vhost PMDs) and OVS-DPDK for the tests and benchmarks
# Idempotent: a second run only checks.  usage: scripts/install-deps.sh [--no-bench]
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "install-deps: must run as root (apt, netns, hugepages)" >&2; exit 1; }

# QEMU 10 lives in bookworm-backports, reached through the system's own Debian mirror.
BPO=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -f "$BPO" ]; then
  MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$MIRROR" ] || MIRROR=$(grep -hoE '^deb +(https?://[^ ]+/debian)/? +bookworm ' /etc/apt/sources.list 2>/dev/null | awk '{print $2; exit}')
  [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
  cat > "$BPO" <<EOT
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
  NEED_UPDATE=1
fi

PKGS=(busybox-static bc python3 iproute2 gcc pkg-config ca-certificates curl xz-utils cpio kmod
      dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-net-tap23 librte-mempool-ring23
      openvswitch-switch-dpdk procps gawk coreutils tcpdump iperf3 ethtool)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
qemu_ok() { qemu-system-x86_64 --version 2>/dev/null | grep -qE 'version (1[0-9])\.'; }
if [ ${#missing[@]} -gt 0 ] || ! qemu_ok || [ -n "${NEED_UPDATE:-}" ]; then
  # OVS must never start its system service here: we run it from a private directory.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; RM_POLICY=1
  fi
  timeout 900 apt-get update -q
  [ ${#missing[@]} -gt 0 ] && timeout 1800 apt-get install -y -q --no-install-recommends "${missing[@]}"
  qemu_ok || timeout 1800 apt-get install -y -q --no-install-recommends -t bookworm-backports \
      qemu-system-x86 qemu-system-common qemu-system-data seabios
  [ -n "${RM_POLICY:-}" ] && rm -f /usr/sbin/policy-rc.d
fi
update-alternatives --set ovs-vswitchd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk >/dev/null
qemu_ok || { echo "install-deps: QEMU >= 10 not installed" >&2; exit 1; }

if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
fi
echo "install-deps: ok: $(qemu-system-x86_64 --version | head -1); dpdk $(dpkg-query -W -f='${Version}' dpdk); busybox $(dpkg-query -W -f='${Version}' busybox-static)"

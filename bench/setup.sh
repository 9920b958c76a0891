#!/bin/bash
# One-time setup of the packet-rate harness (Debian 12, root).
#   bench/setup.sh             install packages, reserve $HUGEPAGES x 2 MiB hugepages, mount hugetlbfs
#   bench/setup.sh --teardown  release the hugepages (nr_hugepages=0), unmount what setup mounted
# Packages come from the project's scripts/install-deps.sh (idempotent; BENCH_DEPS=apt installs only the
# harness's own packages instead). No service is started: run-ovs-dpdk.sh runs OVS from a private dir.
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
STATE=$RUN_DIR/setup.state
mkdir -p "$RUN_DIR"
[ "$(id -u)" = 0 ] || { echo "setup.sh: must run as root (apt, hugepages)" >&2; exit 1; }

if [ "${1:-}" = --teardown ]; then
    echo 0 > /proc/sys/vm/nr_hugepages
    if grep -q "^mounted_by_setup=1" "$STATE" 2>/dev/null; then
        umount "$HUGE_MNT" && echo "unmounted $HUGE_MNT"
    fi
    if grep -q "^created_by_setup=1" "$STATE" 2>/dev/null; then
        rmdir "$HUGE_MNT" 2>/dev/null
    fi
    rm -f "$STATE"
    grep -E "HugePages_(Total|Free)" /proc/meminfo
    exit 0
fi
[ $# -eq 0 ] || { echo "usage: bench/setup.sh [--teardown]" >&2; exit 2; }

PKGS=(dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
      openvswitch-switch-dpdk gcc coreutils gawk procps util-linux)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "${BENCH_DEPS:-project}" = apt ]; then
        export DEBIAN_FRONTEND=noninteractive
        # OVS must never start its system service: block service starts while apt runs
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; rm_policy=1
        fi
        timeout 900 apt-get update -q
        timeout 1800 apt-get install -y -q --no-install-recommends "${missing[@]}"
        rc=$?
        [ -n "${rm_policy:-}" ] && rm -f /usr/sbin/policy-rc.d
        [ $rc = 0 ] || { echo "setup.sh: apt-get install failed" >&2; exit 1; }
    else
        "$ROOT/scripts/install-deps.sh" || { echo "setup.sh: scripts/install-deps.sh failed" >&2; exit 1; }
    fi
fi
update-alternatives --set ovs-vswitchd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk > /dev/null
echo "dpdk: $(dpkg-query -W -f='${Version}' dpdk)  openvswitch-switch-dpdk: $(dpkg-query -W -f='${Version}' openvswitch-switch-dpdk)"

# Hugepages: 2 MiB pages (1 GiB pages are not needed).
echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages
got=$(cat /proc/sys/vm/nr_hugepages)
echo "nr_hugepages: asked $HUGEPAGES, got $got"
if [ "$got" -le 0 ]; then
    echo "setup.sh: hugepages cannot be reserved on this kernel; run without them:" \
         "GEN_MEM='--no-huge -m 512' DUT_MEM='--no-huge -m 512' (testpmd) / OVS_NOHUGE=1 (OVS)" >&2
    exit 1
fi
if ! grep -q " $HUGE_MNT hugetlbfs" /proc/mounts; then
    if [ ! -d "$HUGE_MNT" ]; then mkdir -p "$HUGE_MNT" && echo "created_by_setup=1" >> "$STATE"; fi
    mount -t hugetlbfs -o pagesize=2M nodev "$HUGE_MNT" && echo "mounted_by_setup=1" >> "$STATE"
fi
grep hugetlbfs /proc/mounts
grep -E "HugePages_(Total|Free)|Hugepagesize" /proc/meminfo

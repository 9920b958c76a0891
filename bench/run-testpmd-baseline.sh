#!/bin/bash
# Reference DUT (ceiling): dpdk-testpmd with two vhost PMD ports in io forward mode (port 0 <-> port 1).
# No lookup, no header touch: the near-ideal vhost-user "switch" (DPDK vhost: 2 copies per frame).
#   bench/run-testpmd-baseline.sh                  # DUT owns the sockets (vhost-user server), generator = client
#   GEN_ROLE=server bench/run-testpmd-baseline.sh  # DUT is vhost-user client (client=1), generator listens
# Pinning: DUT forwarding lcore = CPU $DUT_CPU (1), its main lcore = CPU $DUT_MAIN_CPU (0, sleeps);
#          generator forwarding lcore = CPU 0, generator main lcore = CPU 1 (idle command line).
# 4-port mode (NPORTS=4, bench/compare-4port.sh): four vhost ports, paired topology 0 <-> 1, 2 <-> 3.
#   DUT_CPUS="1 0": one forwarding lcore per listed CPU (default: $DUT_CPU only); with two, testpmd gives
#   the first lcore pair A's streams (ports 0, 1) and the second pair B's (ports 2, 3).
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"
DUT_MEM=${DUT_MEM:-"--in-memory"}
cl=""; [ "$GEN_ROLE" = server ] && cl=",client=1"
read -r -a socks <<< "$(dut_socks)"
vdevs=""
for i in "${!socks[@]}"; do vdevs+=" --vdev net_vhost$i,iface=${socks[$i]},queues=1$cl"; done
read -r -a fcpus <<< "${DUT_CPUS:-$DUT_CPU}"
if [ ${#fcpus[@]} = 1 ]; then
    lcores="-l $DUT_MAIN_CPU,${fcpus[0]} --main-lcore $DUT_MAIN_CPU"
else
    # lcore 0 = main (sleeps) on $DUT_MAIN_CPU, lcores 1.. = forwarding, one per CPU (may share a CPU with main)
    lcores="--lcores 0@$DUT_MAIN_CPU"
    for i in "${!fcpus[@]}"; do lcores+=",$((i + 1))@${fcpus[$i]}"; done
    lcores+=" --main-lcore 0"
fi
export DUT_NAME=${DUT_NAME:-testpmd-vhost-io}
export DUT_TASKSET=""     # EAL pins its own lcores
export DUT_CMD="dpdk-testpmd $lcores --file-prefix $DUT_PREFIX $DUT_MEM --no-pci$vdevs \
 -- --nb-cores=${#fcpus[@]} --forward-mode=io --auto-start --stats-period=3600 --total-num-mbufs=32768 --record-burst-stats"
exec "$BENCH_DIR/run-dut.sh"

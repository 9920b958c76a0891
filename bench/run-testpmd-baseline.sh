#!/bin/bash
# Reference DUT (ceiling): dpdk-testpmd with two vhost PMD ports in io forward mode (port 0 <-> port 1).
# No lookup, no header touch: the near-ideal vhost-user "switch" (DPDK vhost: 2 copies per frame).
#   bench/run-testpmd-baseline.sh                  # DUT owns the sockets (vhost-user server), generator = client
#   GEN_ROLE=server bench/run-testpmd-baseline.sh  # DUT is vhost-user client (client=1), generator listens
# Pinning: DUT forwarding lcore = CPU $DUT_CPU (1), its main lcore = CPU $DUT_MAIN_CPU (0, sleeps);
#          generator forwarding lcore = CPU 0, generator main lcore = CPU 1 (idle command line).
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
DUT_MEM=${DUT_MEM:-"--in-memory"}
cl=""; [ "$GEN_ROLE" = server ] && cl=",client=1"
export DUT_NAME=${DUT_NAME:-testpmd-vhost-io}
export DUT_TASKSET=""     # EAL pins its own lcores
export DUT_CMD="dpdk-testpmd -l $DUT_MAIN_CPU,$DUT_CPU --main-lcore $DUT_MAIN_CPU --file-prefix $DUT_PREFIX $DUT_MEM --no-pci \
 --vdev net_vhost0,iface=$SOCK0,queues=1$cl --vdev net_vhost1,iface=$SOCK1,queues=1$cl \
 -- --nb-cores=1 --forward-mode=io --auto-start --stats-period=3600 --total-num-mbufs=32768 --record-burst-stats"
exec "$BENCH_DIR/run-dut.sh"

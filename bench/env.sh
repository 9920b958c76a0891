# shellcheck shell=bash
# Defaults of accelnet's packet-rate harness (bench/). Sourced by every script.
# Every value can be overridden from the environment, e.g. SIZES=64 RUNS=3 bench/run-testpmd-baseline.sh
BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
ROOT=${ROOT:-$(cd "$BENCH_DIR/.." && pwd)}      # the accelnet workspace
RUN_DIR=${RUN_DIR:-$BENCH_DIR/run}              # sockets, OVS db, probe binary (gitignored)
RES_DIR=${RES_DIR:-$BENCH_DIR/results}          # CSV results (committed); logs/ below it is gitignored

# Traffic
SIZES=${SIZES:-"64 1518"}    # frame length in bytes as carried over virtio (Ethernet frame without FCS)
RUNS=${RUNS:-5}              # repetitions per size in the single-DUT scripts (median reported)
DURATION=${DURATION:-10}     # measurement window, seconds
WARMUP=${WARMUP:-3}          # seconds of traffic before the window opens
TXFIRST=${TXFIRST:-32}       # bursts of 32 frames injected per port into the closed loop (io/macswap)
GEN_FWD=${GEN_FWD:-io}       # io (closed loop, default) | macswap (loop topology) | flowgen (open loop)

# Generator = DPDK testpmd acting as the two guests' virtio-net drivers (virtio-user PMD, no copies)
GEN_LCORES=${GEN_LCORES:-0,1}  # EAL lcores of the generator
GEN_MAIN=${GEN_MAIN:-1}        # main lcore (only runs the command line; idle)
                               # => forwarding lcore = the other one = CPU 0
# virtio-user with hugepages needs --single-file-segments: without it the memory table has more than
# the 8 regions vhost-user allows ("Too many memory regions") and the run passes 0 pps.
GEN_MEM=${GEN_MEM:-"--in-memory --single-file-segments"}
GEN_QSIZE=${GEN_QSIZE:-1024}   # virtqueue size offered by the generator ("guest")
GEN_MBUFS=${GEN_MBUFS:-16384}
GEN_MAC0=${GEN_MAC0:-02:00:00:00:00:01}
GEN_MAC1=${GEN_MAC1:-02:00:00:00:00:02}

# DPDK --file-prefix of every DPDK process we start (their /var/run/dpdk/<prefix> is removed after runs)
GEN_PREFIX=${GEN_PREFIX:-accelnet-bench-gen}
DUT_PREFIX=${DUT_PREFIX:-accelnet-bench-dut}
OVS_PREFIX=${OVS_PREFIX:-accelnet-bench-ovs}

# Socket paths of the device under test (DUT). Override to point at any vhost-user switch.
SOCK0=${SOCK0:-$RUN_DIR/vhu0.sock}
SOCK1=${SOCK1:-$RUN_DIR/vhu1.sock}
# GEN_ROLE=client: the DUT owns (listens on) the sockets, the generator connects (accelnet, OVS dpdkvhostuser).
# GEN_ROLE=server: the generator listens (virtio-user server=1), the DUT connects (OVS dpdkvhostuserclient).
GEN_ROLE=${GEN_ROLE:-client}

# DUT placement: the DUT forwards on CPU $DUT_CPU, the generator on CPU 0
DUT_CPU=${DUT_CPU:-1}
DUT_MAIN_CPU=${DUT_MAIN_CPU:-0}   # DPDK main lcore / OVS non-PMD threads (mostly asleep)

HUGEPAGES=${HUGEPAGES:-1024}       # 2 MiB pages reserved by setup.sh
HUGE_MNT=${HUGE_MNT:-/dev/hugepages}

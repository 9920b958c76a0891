#!/bin/bash
# accelnet vs the reference DUTs: builds the release binary, then runs one interleaved comparison
# (bench/run-compare.sh) of testpmd io-fwd, OVS-DPDK NORMAL and `accelnet switch run` on identical
# traffic, and prints medians [min-max] and accelnet's same-round ratios vs OVS-DPDK NORMAL and testpmd.
#   bench/setup.sh && bench/compare-accelnet.sh && bench/setup.sh --teardown
#   ROUNDS=5 SIZES="64 1518" QUIET_WAIT_MAX=30 bench/compare-accelnet.sh    # (the defaults)
# Run it on a quiet machine: it busy-polls both CPUs for ~ROUNDS x 2.5 minutes.
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

export ROUNDS=${ROUNDS:-5}
export SIZES=${SIZES:-"64 1518"}
export QUIET_WAIT_MAX=${QUIET_WAIT_MAX:-30}   # wait up to 30 s for the host-lost probe to read <= QUIET_MAX_LOST
export CSV=${CSV:-$RES_DIR/compare-accelnet-$(date +%Y%m%d-%H%M%S).csv}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ACCELNET=$TARGET_DIR/release/accelnet

check_hugepages
log "building accelnet (release)"
(cd "$ROOT" && cargo build --release -p accelnet) || die "cargo build --release -p accelnet failed"
[ -x "$ACCELNET" ] || die "$ACCELNET not found after the build"

# The switch listens on both sockets (GEN_ROLE=client) and forwards them by MAC learning. run-dut.sh
# confines it to CPU $DUT_CPU with taskset; --cpu pins its forwarding thread there too.
export DUTS="testpmd ovs-normal custom"
export DUT_NAME=accelnet GEN_ROLE=client
export DUT_CMD="$ACCELNET switch run --vhost-user-server $SOCK0 --vhost-user-server $SOCK1 --cpu $DUT_CPU"
log "DUT_CMD: $DUT_CMD"
"$BENCH_DIR/run-compare.sh"
rc=$?

echo
summarize_ratios "$CSV" ovs-dpdk-normal | awk 'NR == 1 || $1 == "accelnet"'
echo
summarize_ratios "$CSV" testpmd-vhost-io | awk 'NR == 1 || $1 == "accelnet"'
echo "== results: $CSV (commit it); logs: $LOG_DIR"
exit $rc

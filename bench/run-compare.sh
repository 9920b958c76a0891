#!/bin/bash
# Interleaved side-by-side comparison on identical traffic. Each round runs every DUT once per size
# (each DUT restarted every round, order A B C A B C ...), so machine noise hits all DUTs alike. The
# report gives medians [min-max] over rounds and same-round ratios against the first DUT in DUTS.
#   DUTS="testpmd ovs-normal ovs-flows" ROUNDS=5 bench/run-compare.sh
#   DUTS="testpmd ovs-normal custom" DUT_NAME=myswitch DUT_CMD="..." GEN_ROLE=client bench/run-compare.sh
# DUT tokens: testpmd | testpmd-nohuge | ovs-normal | ovs-flows | ovs-normal-server | ovs-flows-server |
#             ovs-normal-nohuge | custom (run-dut.sh with DUT_NAME/DUT_CMD/GEN_ROLE)
#   -nohuge: generator and DUT both with --no-huge (slower; only for hosts without hugepages)
#   -server: OVS dpdkvhostuser ports, i.e. OVS owns the sockets (default OVS ports: dpdkvhostuserclient)
# Bench-wide knobs (env.sh): SIZES DURATION WARMUP GEN_FWD QUIET_WAIT_MAX QUIET_MAX_LOST; CSV = output file.
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"
DUTS=${DUTS:-"testpmd ovs-normal ovs-flows"}
ROUNDS=${ROUNDS:-5}
CSV=${CSV:-$RES_DIR/compare-$(date +%Y%m%d-%H%M%S).csv}
csv_init "$CSV"
export CSV SIZES DURATION WARMUP GEN_FWD QUIET_WAIT_MAX QUIET_MAX_LOST
# The custom DUT's role must not leak into the reference DUTs (OVS sets its own, testpmd follows env.sh).
CUSTOM_GEN_ROLE=$GEN_ROLE
base_name=""
for r in $(seq 1 "$ROUNDS"); do
    log "=== round $r/$ROUNDS"
    for d in $DUTS; do
        common=(RUNS=1 "RUN_OFFSET=$((r - 1))")
        case $d in
            testpmd)            n=testpmd-vhost-io
                                env "${common[@]}" DUT_NAME=$n GEN_ROLE=client "$BENCH_DIR/run-testpmd-baseline.sh" > /dev/null ;;
            testpmd-nohuge)     n=testpmd-vhost-io-nohuge
                                env "${common[@]}" DUT_NAME=$n GEN_ROLE=client GEN_MEM="--no-huge -m 512" DUT_MEM="--no-huge -m 512" \
                                    "$BENCH_DIR/run-testpmd-baseline.sh" > /dev/null ;;
            ovs-normal-nohuge)  n=ovs-dpdk-normal-nohuge
                                env "${common[@]}" DUT_NAME=$n OVS_MODE=normal OVS_NOHUGE=1 GEN_MEM="--no-huge -m 512" \
                                    "$BENCH_DIR/run-ovs-dpdk.sh" > /dev/null ;;
            ovs-normal|ovs-flows)
                                n=ovs-dpdk-${d#ovs-}
                                env "${common[@]}" DUT_NAME="$n" OVS_MODE="${d#ovs-}" "$BENCH_DIR/run-ovs-dpdk.sh" > /dev/null ;;
            ovs-*-server)       m=${d#ovs-}; m=${m%-server}; n=ovs-dpdk-$m-server
                                env "${common[@]}" DUT_NAME="$n" OVS_MODE="$m" OVS_PORT_TYPE=dpdkvhostuser "$BENCH_DIR/run-ovs-dpdk.sh" > /dev/null ;;
            custom)             n=${DUT_NAME:?set DUT_NAME and DUT_CMD for the custom DUT}
                                env "${common[@]}" GEN_ROLE="$CUSTOM_GEN_ROLE" "$BENCH_DIR/run-dut.sh" > /dev/null ;;
            *) die "unknown DUT token $d" ;;
        esac
        rc=$?
        [ $rc = 0 ] || log "WARNING: DUT $n failed in round $r (rc=$rc); see $LOG_DIR"
        [ -n "$base_name" ] || base_name=$n
    done
done
echo "== $CSV"
summarize "$CSV"
echo "-- clean runs only (host_lost_pct <= $QUIET_MAX_LOST):"
summarize "$CSV" clean
echo
summarize_ratios "$CSV" "$base_name"

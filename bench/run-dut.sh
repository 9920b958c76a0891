#!/bin/bash
# Generic runner: put any vhost-user switch in the "switch under test" (DUT) slot.
#
#   DUT_NAME=accelnet GEN_ROLE=client \
#   DUT_CMD="$PWD/target/release/accelnet switch run --vhost-user-server $PWD/bench/run/vhu0.sock \
#            --vhost-user-server $PWD/bench/run/vhu1.sock --cpu 1" bench/run-dut.sh
#
# DUT_CMD   one command line (exec'ed, so TERM reaches it); it must forward frames between the
#           vhost-user sockets $SOCK0 and $SOCK1 in both directions (MAC learning or a fixed 0<->1 patch).
# GEN_ROLE  client (default): the DUT listens on $SOCK0/$SOCK1 (vhost-user server sockets, like accelnet
#           or OVS dpdkvhostuser); the script waits for them to appear.
#           server: the generator listens and the DUT connects as vhost-user client (like OVS
#           dpdkvhostuserclient); the DUT must retry connecting until the sockets exist.
# DUT_TASKSET  CPU list the DUT process is confined to (default $DUT_CPU; empty = no taskset, for
#           DPDK apps that pin themselves with -l).
# NPORTS    2 (default) or 4: with 4 the DUT must also serve $SOCK2/$SOCK3 and keep the two pairs
#           0 <-> 1 and 2 <-> 3 apart (bench/compare-4port.sh).
# Extra:    SIZES RUNS RUN_OFFSET DURATION WARMUP GEN_FWD CSV GEN_HOOK_START GEN_HOOK_END DUT_INFO_FILE
#           (see env.sh / lib.sh)
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

DUT_NAME=${DUT_NAME:-custom}
DUT_CMD=${DUT_CMD:?set DUT_CMD to the command that starts the switch under test}
DUT_TASKSET=${DUT_TASKSET-$DUT_CPU}
CSV=${CSV:-$RES_DIR/$DUT_NAME.csv}
csv_init "$CSV"
case " $GEN_MEM " in *" --no-huge "*) ;; *) check_hugepages ;; esac

read -r -a sizes <<< "$SIZES"
DUT_TMO=${DUT_TMO:-$(( ${#sizes[@]} * RUNS * (DURATION + WARMUP + 40) + 120 ))}

read -r -a socks <<< "$(dut_socks)"
[ "$GEN_ROLE" = client ] && rm -f "${socks[@]}"
trap 'stop_bg "dut-$DUT_NAME"' EXIT INT TERM
if [ -n "$DUT_TASKSET" ]; then
    start_bg "dut-$DUT_NAME" "$DUT_TMO" taskset -c "$DUT_TASKSET" bash -c "exec $DUT_CMD"
else
    start_bg "dut-$DUT_NAME" "$DUT_TMO" bash -c "exec $DUT_CMD"
fi
if [ "$GEN_ROLE" = client ]; then
    wait_for_sockets "${DUT_STARTUP_MAX:-30}" "${socks[@]}" \
        || die "DUT did not create ${socks[*]} (see $LOG_DIR/dut-$DUT_NAME.log)"
else
    sleep "${DUT_STARTUP:-2}"
fi
kill -0 "$(cat "$RUN_DIR/dut-$DUT_NAME.pid")" 2>/dev/null || die "DUT exited early (see $LOG_DIR/dut-$DUT_NAME.log)"

run_all_sizes "$DUT_NAME" "$CSV" "${sizes[@]}"
stop_bg "dut-$DUT_NAME"
trap - EXIT INT TERM
rm -rf "/var/run/dpdk/$DUT_PREFIX"     # EAL runtime dir of the testpmd baseline (our prefix only)
echo "== $CSV"
summarize "$CSV"
echo "-- clean runs only (host_lost_pct <= $QUIET_MAX_LOST):"
summarize "$CSV" clean

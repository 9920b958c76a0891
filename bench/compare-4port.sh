#!/bin/bash
# 4-port mode: does accelnet scale from one forwarding thread to two? Two independent closed loops run at
# once through one DUT with four vhost-user ports: one generator testpmd with four virtio-user ports,
# pair A = ports 0 <-> 1 ($SOCK0/$SOCK1, MACs ..:01/..:02), pair B = ports 2 <-> 3 ($SOCK2/$SOCK3,
# MACs ..:03/..:04). Interleaved rounds (as bench/run-compare.sh) of, by default:
#   testpmd      testpmd-vhost-io-4p        testpmd io-fwd, 4 net_vhost ports, 1 forwarding lcore (ceiling)
#   ovs-1pmd     ovs-dpdk-normal-4p-1pmd    OVS-DPDK NORMAL, 4 dpdkvhostuserclient ports, 1 PMD thread
#   ovs-2pmd     ovs-dpdk-normal-4p-2pmd    the same with 2 PMD threads (rx queues pinned: pair A / pair B)
#   accelnet-1t  accelnet-4p-1t             accelnet switch run, 4 ports, 1 forwarding thread
#   accelnet-2t  accelnet-4p-2t             the same with 2 forwarding threads, thread 0 = pair A, 1 = pair B
# optional tokens:
#   testpmd-2c   testpmd-vhost-io-4p-2c     testpmd with 2 forwarding lcores (lcore 1 = pair A, 2 = pair B)
#   accelnet-2t-cross  accelnet-4p-2t-cross 2 threads, each polls one port of each pair (t0: vhu0 vhu2)
# In the switches (OVS, accelnet) pair A is access VLAN 10 and pair B VLAN 20: two L2 domains, so the
# first frames of a pair (destination not learnt yet) are not flooded into the other pair, whose closed
# loop would echo them back from the wrong port (MAC moves, duplicate frames circulating for ever).
#
#   bench/setup.sh && bench/compare-4port.sh && bench/setup.sh --teardown
#   ROUNDS=5 SIZES="64 1518" QUIET_WAIT_MAX=30 bench/compare-4port.sh      # (the defaults)
#   DUTS="accelnet-1t accelnet-2t accelnet-2t-cross" ROUNDS=3 bench/compare-4port.sh
# CPU layout (knobs in brackets):
#   generator: one forwarding lcore on CPU 0 for all four ports [GEN_LCORES=0,1 GEN_MAIN=1 GEN_NB_CORES=1]
#   1-thread DUTs: CPU 1 [DUT_CPU]; DPDK main / OVS non-PMD threads on CPU 0 [DUT_MAIN_CPU]
#   2-thread DUTs: CPUs "1 0" on a 2-CPU machine, "1 2" with 3 or more [DUT_CPUS2]; first CPU = pair A
# On 2 CPUs the second DUT thread shares CPU 0 with the busy-polling generator: the 2-thread numbers then
# measure that sharing, not scaling (see bench/README.md, "4-port mode"). dut_info gives each busy DUT
# thread's CPU share over the window (thr_cpu=..., accelnet and testpmd) or each PMD's (OVS).
set -u
# 4-port defaults, set before env.sh (the environment still overrides them)
export NPORTS=4
export GEN_MBUFS=${GEN_MBUFS:-32768}   # four ports' rings and in-flight frames (16384 serves two)
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

export ROUNDS=${ROUNDS:-5}
export SIZES=${SIZES:-"64 1518"}
export QUIET_WAIT_MAX=${QUIET_WAIT_MAX:-30}
export CSV=${CSV:-$RES_DIR/compare-4port-$(date +%Y%m%d-%H%M%S).csv}
export SOCK2 SOCK3 GEN_NB_CORES GEN_MBUFS DURATION WARMUP GEN_FWD QUIET_MAX_LOST
DUTS=${DUTS:-"testpmd ovs-1pmd ovs-2pmd accelnet-1t accelnet-2t"}
NCPU=$(nproc)
if [ "$NCPU" -ge 3 ]; then DUT_CPUS2=${DUT_CPUS2:-"$DUT_CPU 2"}; else DUT_CPUS2=${DUT_CPUS2:-"$DUT_CPU 0"}; fi
read -r -a c2 <<< "$DUT_CPUS2"
[ ${#c2[@]} = 2 ] && [ "${c2[0]}" != "${c2[1]}" ] || die "DUT_CPUS2 must name two different CPUs (got '$DUT_CPUS2')"
for c in "$DUT_CPU" "${c2[@]}"; do [ "$c" -lt "$NCPU" ] || die "CPU $c does not exist ($NCPU CPUs)"; done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
ACCELNET=$TARGET_DIR/release/accelnet

check_hugepages
case " $DUTS " in *" accelnet"*)
    log "building accelnet (release)"
    (cd "$ROOT" && cargo build --release -p accelnet) || die "cargo build --release -p accelnet failed"
    [ -x "$ACCELNET" ] || die "$ACCELNET not found after the build" ;;
esac

log "CPU layout ($NCPU CPUs): generator lcores $GEN_LCORES (main $GEN_MAIN, $GEN_NB_CORES forwarding);" \
    "1-thread DUTs on CPU $DUT_CPU; 2-thread DUTs on CPUs ${c2[0]} (pair A) and ${c2[1]} (pair B)"
for c in "$DUT_CPU" "${c2[@]}"; do   # the generator's forwarding CPUs = GEN_LCORES without GEN_MAIN
    case ",$GEN_LCORES," in *",$c,"*) [ "$c" = "$GEN_MAIN" ] ||
        log "NOTE: DUT CPU $c is also a generator forwarding CPU: DUT runs using it measure CPU sharing" \
            "with a busy-polling generator, not the DUT's scaling" ;;
    esac
done

# accelnet: ports are numbered in config order and port i's queue pair 0 is polled by thread i % threads
# (vswitch: Port::thread_for, owner = id % nthreads). Pair A = vhu0 + vhu1 in VLAN 10, pair B = vhu2 +
# vhu3 in VLAN 20. Order vhu0 vhu2 vhu1 vhu3 gives thread 0 both ports of pair A and thread 1 both of
# pair B ("pair-local": every frame is taken and delivered by one thread); order vhu0 vhu1 vhu2 vhu3
# gives each thread one port of each pair ("cross": each thread delivers into rings the other polls).
# With one thread the order does not matter.
accel_config() {   # accel_config FILE SOCK...
    local f=$1 s; shift
    echo "# bench/compare-4port.sh: pair A = vhu0 <-> vhu1 (VLAN 10), pair B = vhu2 <-> vhu3 (VLAN 20)" > "$f"
    for s in "$@"; do
        case $s in "$SOCK0"|"$SOCK1") v=10 ;; *) v=20 ;; esac
        printf '[[port]]\nsocket = "%s"\nvlan = %d\n' "$s" "$v" >> "$f"
    done
}
accel_config "$RUN_DIR/accelnet-4p.toml" "$SOCK0" "$SOCK1" "$SOCK2" "$SOCK3"
accel_config "$RUN_DIR/accelnet-4p-pairlocal.toml" "$SOCK0" "$SOCK2" "$SOCK1" "$SOCK3"

# dut_info of accelnet and testpmd: the layout, and each busy thread's CPU share over the window
INFO=$RUN_DIR/dut-info-4p.txt
thr_hooks() {   # thr_hooks DUT_NAME LAYOUT_TEXT : GEN_HOOK_START= and GEN_HOOK_END= for env
    local pidf=$RUN_DIR/dut-$1.pid mark=$RUN_DIR/thr-mark.txt src=". '$BENCH_DIR/env.sh'; . '$BENCH_DIR/lib.sh'"
    echo "GEN_HOOK_START=$src; dut_threads_mark '$pidf' '$mark'"
    echo "GEN_HOOK_END=$src; echo \"$2 \$(dut_threads_cpu '$pidf' '$mark')\" > '$INFO'"
}

csv_init "$CSV"
for r in $(seq 1 "$ROUNDS"); do
    log "=== round $r/$ROUNDS"
    for d in $DUTS; do
        common=(RUNS=1 "RUN_OFFSET=$((r - 1))" NPORTS=4)
        case $d in
            testpmd|testpmd-2c)
                if [ "$d" = testpmd ]; then n=testpmd-vhost-io-4p; cpus=$DUT_CPU; else n=testpmd-vhost-io-4p-2c; cpus=$DUT_CPUS2; fi
                mapfile -t hooks < <(thr_hooks "$n" "lcores_cpu=${cpus// //}")
                env "${common[@]}" DUT_NAME=$n GEN_ROLE=client DUT_CPUS="$cpus" DUT_INFO_FILE="$INFO" "${hooks[@]}" \
                    "$BENCH_DIR/run-testpmd-baseline.sh" > /dev/null ;;
            ovs-1pmd|ovs-2pmd)
                if [ "$d" = ovs-1pmd ]; then n=ovs-dpdk-normal-4p-1pmd; cpus=$DUT_CPU; aff=""
                else n=ovs-dpdk-normal-4p-2pmd; cpus=$DUT_CPUS2; aff="${c2[0]} ${c2[0]} ${c2[1]} ${c2[1]}"; fi
                env "${common[@]}" DUT_NAME=$n OVS_MODE=normal DUT_CPUS="$cpus" OVS_PORT_TAGS="10 10 20 20" \
                    OVS_RXQ_AFFINITY="$aff" "$BENCH_DIR/run-ovs-dpdk.sh" > /dev/null ;;
            accelnet-1t|accelnet-2t|accelnet-2t-cross)
                case $d in
                    accelnet-1t)  n=accelnet-4p-1t; conf=accelnet-4p.toml; cpus=$DUT_CPU
                                  layout="t0=vhu0+vhu1+vhu2+vhu3" ;;
                    accelnet-2t)  n=accelnet-4p-2t; conf=accelnet-4p-pairlocal.toml; cpus=$DUT_CPUS2
                                  layout="t0=vhu0+vhu1 t1=vhu2+vhu3" ;;
                    *)            n=accelnet-4p-2t-cross; conf=accelnet-4p.toml; cpus=$DUT_CPUS2
                                  layout="t0=vhu0+vhu2 t1=vhu1+vhu3" ;;
                esac
                cpu_flags=""; for c in $cpus; do cpu_flags+=" --cpu $c"; done
                mapfile -t hooks < <(thr_hooks "$n" "fwd_cpu=${cpus// //} $layout")
                env "${common[@]}" DUT_NAME=$n GEN_ROLE=client DUT_TASKSET="${cpus// /,}" DUT_INFO_FILE="$INFO" "${hooks[@]}" \
                    DUT_CMD="$ACCELNET switch run --config $RUN_DIR/$conf$cpu_flags" "$BENCH_DIR/run-dut.sh" > /dev/null ;;
            *) die "unknown DUT token $d (testpmd testpmd-2c ovs-1pmd ovs-2pmd accelnet-1t accelnet-2t accelnet-2t-cross)" ;;
        esac
        rc=$?
        [ $rc = 0 ] || log "WARNING: DUT $n failed in round $r (rc=$rc); see $LOG_DIR"
    done
done

echo "== $CSV"
summarize "$CSV"
echo "-- clean runs only (host_lost_pct <= $QUIET_MAX_LOST):"
summarize "$CSV" clean
echo
echo "-- pair balance: pair B's share of the aggregate (rx_pps_p2 + rx_pps_p3) / agg, median [min-max]"
tail -n +2 "$CSV" | awk -F, '$9 > 0 { print $2 "|" $4, ($16 + $17) / ($9 * 1e6) }' | sort -k1,1 -k2,2g | awk '
    function flush() { if (!cnt) return; split(key, k, "|")
        printf "%-28s %5s %3d %6.3f [%.3f-%.3f]\n", k[1], k[2], cnt, (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2, v[1], v[cnt] }
    $1 != key { flush(); key = $1; cnt = 0 }
    { cnt++; v[cnt] = $2 }
    END { flush() }'
echo
echo "-- same-round ratios, median [min-max] over rounds"
printf "%-54s %5s %3s %10s %10s %10s\n" "ratio" size n ratio_med ratio_min ratio_max
ratio() {   # ratio NUM_DUT DEN_DUT
    summarize_ratios "$CSV" "$2" | awk -v a="$1" -v b="$2" '$1 == a { printf "%-54s %5s %3s %10s %10s %10s\n", a " / " b, $2, $3, $4, $5, $6 }'
}
ratio accelnet-4p-2t accelnet-4p-1t                       # accelnet's scaling
ratio accelnet-4p-2t-cross accelnet-4p-1t
ratio accelnet-4p-2t-cross accelnet-4p-2t
ratio ovs-dpdk-normal-4p-2pmd ovs-dpdk-normal-4p-1pmd     # OVS's scaling
ratio testpmd-vhost-io-4p-2c testpmd-vhost-io-4p
ratio accelnet-4p-1t ovs-dpdk-normal-4p-1pmd              # accelnet vs OVS, same thread count
ratio accelnet-4p-2t ovs-dpdk-normal-4p-2pmd
ratio accelnet-4p-1t testpmd-vhost-io-4p
ratio accelnet-4p-2t testpmd-vhost-io-4p-2c
echo "== results: $CSV (commit it); logs: $LOG_DIR"

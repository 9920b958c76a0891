# Shared functions of accelnet's packet-rate harness. Source after env.sh.
# shellcheck shell=bash

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

LOG_DIR=${LOG_DIR:-$RES_DIR/logs}
mkdir -p "$RUN_DIR" "$RES_DIR" "$LOG_DIR"

CSV_HEADER="ts,dut,gen_fwd,size,run,window_s,rx_pps_p0,rx_pps_p1,agg_mpps,agg_gbps,gen_tx_dropped,gen_rx_empty_pct,steal_pct,host_lost_pct,dut_info"
# 4-port mode (NPORTS=4): the same 15 columns (agg_mpps = all four ports) plus ports 2 and 3 at the end.
CSV_HEADER4="$CSV_HEADER,rx_pps_p2,rx_pps_p3"

# Ports per run: 2 (one generator pair, the default) or 4 (two independent pairs, bench/compare-4port.sh).
# Pair A = generator ports 0 <-> 1 on $SOCK0/$SOCK1, pair B = ports 2 <-> 3 on $SOCK2/$SOCK3.
NPORTS=${NPORTS:-2}
case $NPORTS in 2|4) ;; *) die "NPORTS must be 2 or 4" ;; esac
SOCK2=${SOCK2:-$RUN_DIR/vhu2.sock}
SOCK3=${SOCK3:-$RUN_DIR/vhu3.sock}
GEN_MAC2=${GEN_MAC2:-02:00:00:00:00:03}
GEN_MAC3=${GEN_MAC3:-02:00:00:00:00:04}
GEN_NB_CORES=${GEN_NB_CORES:-1}   # generator forwarding lcores (the first non-main lcores of GEN_LCORES)
# dut_socks : the DUT's socket paths, one per port, in port order.
dut_socks() {
    if [ "$NPORTS" = 4 ]; then echo "$SOCK0 $SOCK1 $SOCK2 $SOCK3"; else echo "$SOCK0 $SOCK1"; fi
}

check_hugepages() {
    local free
    free=$(awk '/HugePages_Free/{print $2}' /proc/meminfo)
    [ "${free:-0}" -gt 0 ] || die "no free hugepages (run bench/setup.sh first)"
    grep -q hugetlbfs /proc/mounts || die "hugetlbfs not mounted (run bench/setup.sh first)"
}

# start_bg NAME TIMEOUT_S CMD... : run CMD under `timeout` in the background.
# The PID of the `timeout` wrapper is written to $RUN_DIR/NAME.pid (timeout relays TERM/INT to CMD).
start_bg() {
    local name=$1 tmo=$2; shift 2
    timeout -k 10 "$tmo" "$@" > "$LOG_DIR/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN_DIR/$name.pid"
    log "started $name (pid $!, bounded by timeout ${tmo}s), log $LOG_DIR/$name.log"
}

# stop_bg NAME : TERM the process we started (by its recorded PID), KILL after 10 s.
stop_bg() {
    local name=$1 pidf="$RUN_DIR/$1.pid" pid
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "$name still alive, KILL $pid"; kill -KILL "$pid" 2>/dev/null; }
        wait "$pid" 2>/dev/null
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidf"
}

# wait_for_sockets TIMEOUT_S PATH... : wait until every PATH is a unix socket.
wait_for_sockets() {
    local tmo=$1 p ok; shift
    for _ in $(seq 1 $((tmo * 10))); do
        ok=1
        for p in "$@"; do [ -S "$p" ] || ok=0; done
        [ $ok = 1 ] && return 0
        sleep 0.1
    done
    return 1
}

# Hidden-steal probe: % of wall time a spinning thread on CPU $1 did not run (host preemption is NOT
# visible in /proc/stat steal on this VM). Used before/after every window on the generator CPU.
PROBE_CPU=${PROBE_CPU:-0}
QUIET_MAX_LOST=${QUIET_MAX_LOST:-10}   # a run is "clean" if host_lost_pct <= this
QUIET_WAIT_MAX=${QUIET_WAIT_MAX:-0}    # seconds to wait for a quiet host before each run (0 = don't wait)
host_lost() {
    [ -x "$RUN_DIR/tscgap" ] || gcc -O2 -o "$RUN_DIR/tscgap" "$BENCH_DIR/memcpy/tscgap.c" || { echo NA; return; }
    timeout 10 taskset -c "${1:-$PROBE_CPU}" "$RUN_DIR/tscgap" "${2:-1}" | sed -n 's/^lost=\([0-9.]*\)%.*/\1/p'
}
wait_quiet() {
    local t0=$SECONDS l
    while :; do
        l=$(host_lost "$PROBE_CPU" 1); echo "$l"
        [ "$QUIET_WAIT_MAX" -gt 0 ] || return
        awk -v l="$l" -v m="$QUIET_MAX_LOST" 'BEGIN{exit !(l != "NA" && l <= m)}' && return
        [ $((SECONDS - t0)) -ge "$QUIET_WAIT_MAX" ] && return
        sleep 2
    done
}

# gen_run DUT_NAME SIZE RUN_INDEX CSV
# Starts the generator (testpmd, two virtio-user ports = the two "guests") against $SOCK0/$SOCK1,
# injects traffic, measures a $DURATION-second window and appends one CSV row.
# NPORTS=4: four virtio-user ports (the four "guests") on $SOCK0..$SOCK3 in one testpmd; the default
#   paired port topology makes two independent closed loops, pair A = ports 0 <-> 1 and pair B = ports
#   2 <-> 3 (each pair's frames only carry that pair's two MACs). GEN_NB_CORES forwarding lcores
#   (default 1; with 2, testpmd gives lcore 1 pair A's streams and lcore 2 pair B's).
#  GEN_FWD=io      : closed loop. tx_first injects TXFIRST*32 pkts per port; the generator forwards
#                    whatever arrives on port 1 back into port 0 unchanged (and 1<-0), so every packet
#                    always enters the DUT on the same port with the same MACs (MAC learning is stable).
#  GEN_FWD=macswap : closed loop, --port-topology=loop: each "guest" swaps MACs and reflects.
#  GEN_FWD=flowgen : open loop, generator sends new UDP packets on both ports and drops what it receives.
# Optional hooks (shell strings) run at window start/end: GEN_HOOK_START, GEN_HOOK_END.
# If DUT_INFO_FILE is set, its first line after the run goes into the dut_info column.
gen_run() {
    local dut=$1 size=$2 run=$3 csv=$4
    local glog="$LOG_DIR/gen-$dut-$GEN_FWD-$size-$run.log"
    local srv="" start_cmd topo=() eth_peers mem_args
    [ "$GEN_ROLE" = server ] && srv=",server=1"
    case $GEN_FWD in
        io)      start_cmd="start tx_first $TXFIRST" ;;
        macswap) start_cmd="start tx_first $TXFIRST"; topo=(--port-topology=loop) ;;
        flowgen) start_cmd="start" ;;
        *) die "GEN_FWD must be io|macswap|flowgen" ;;
    esac
    # tx_first / flowgen packets: src = own port MAC, dst = the other guest's MAC
    eth_peers=("--eth-peer=0,$GEN_MAC1" "--eth-peer=1,$GEN_MAC0")
    local vdevs=(--vdev "net_virtio_user0,path=$SOCK0,queues=1,queue_size=$GEN_QSIZE,mac=$GEN_MAC0$srv"
                 --vdev "net_virtio_user1,path=$SOCK1,queues=1,queue_size=$GEN_QSIZE,mac=$GEN_MAC1$srv")
    if [ "$NPORTS" = 4 ]; then
        eth_peers+=("--eth-peer=2,$GEN_MAC3" "--eth-peer=3,$GEN_MAC2")
        vdevs+=(--vdev "net_virtio_user2,path=$SOCK2,queues=1,queue_size=$GEN_QSIZE,mac=$GEN_MAC2$srv"
                --vdev "net_virtio_user3,path=$SOCK3,queues=1,queue_size=$GEN_QSIZE,mac=$GEN_MAC3$srv")
    fi
    read -r -a mem_args <<< "$GEN_MEM"
    local startup_max=${GEN_STARTUP_MAX:-30}
    local tmo=$((startup_max + WARMUP + DURATION + 30))
    # shellcheck disable=SC2046  # socket paths have no spaces (bench/run/...)
    if [ "$GEN_ROLE" = server ]; then rm -f $(dut_socks); fi
    [ -n "${DUT_INFO_FILE:-}" ] && rm -f "$DUT_INFO_FILE"
    local lost0 lost1
    lost0=$(wait_quiet | tail -1)
    : > "$glog"
    # shellcheck disable=SC2094  # the feeder reads the log testpmd appends to, by design
    (
        # wait until testpmd has configured its ports (in server role this happens once the DUT connected)
        for _ in $(seq 1 $((startup_max * 10))); do
            grep -q "Checking link statuses" "$glog" 2>/dev/null && break; sleep 0.1
        done
        sleep 1
        echo "$start_cmd"
        sleep "$WARMUP"
        echo "show port stats all"          # baseline for "Throughput (since last show)"
        echo "clear fwd stats all"
        [ -n "${GEN_HOOK_START:-}" ] && bash -c "$GEN_HOOK_START" > /dev/null 2>&1
        grep '^cpu ' /proc/stat > "$glog.stat0"
        sleep "$DURATION"
        grep '^cpu ' /proc/stat > "$glog.stat1"
        echo "show port stats all"          # Rx-pps over exactly the window (TSC-timed by testpmd)
        [ -n "${GEN_HOOK_END:-}" ] && bash -c "$GEN_HOOK_END" > /dev/null 2>&1
        echo "show fwd stats all"
        sleep 0.5
        echo "stop"
        sleep 0.5
        echo "quit"
        sleep 3
    ) | timeout -k 5 "$tmo" stdbuf -oL dpdk-testpmd -l "$GEN_LCORES" --main-lcore "$GEN_MAIN" \
            --file-prefix "$GEN_PREFIX" "${mem_args[@]}" --no-pci --log-level=user1,7 "${vdevs[@]}" \
            -- -i --nb-cores="$GEN_NB_CORES" --forward-mode="$GEN_FWD" "${topo[@]}" --total-num-mbufs="$GEN_MBUFS" \
            --rxd="$GEN_QSIZE" --txd="$GEN_QSIZE" --txpkts="$size" "${eth_peers[@]}" --record-burst-stats \
            >> "$glog" 2>&1
    local rc=$?
    rm -rf "/var/run/dpdk/$GEN_PREFIX"     # EAL runtime dir of our own prefix
    lost1=$(host_lost "$PROBE_CPU" 1)
    local info="" steal
    # steal time of the whole VM over the window, in % of 2 CPUs (noise indicator)
    steal=$(cat "$glog.stat0" "$glog.stat1" 2>/dev/null | awk '{t=0; for(i=2;i<=NF;i++) t+=$i; st[NR]=$9; tt[NR]=t} END{ if (NR==2 && tt[2]>tt[1]) printf "%.1f", 100*(st[2]-st[1])/(tt[2]-tt[1]); else printf "NA"}')
    rm -f "$glog.stat0" "$glog.stat1"
    [ -n "${DUT_INFO_FILE:-}" ] && [ -f "$DUT_INFO_FILE" ] && info=$(head -1 "$DUT_INFO_FILE")
    # Parse: last NPORTS Rx-pps values = ports 0..NPORTS-1 over the window; first accumulated block after clear.
    awk -v np="$NPORTS" -v dut="$dut" -v fwd="$GEN_FWD" -v size="$size" -v run="$run" -v win="$DURATION" \
        -v info="$info" -v steal="$steal" -v lost="$(awk -v a="$lost0" -v b="$lost1" 'BEGIN{ if (a == "" || b == "" || a == "NA" || b == "NA") print "NA"; else printf "%.1f", (a + b) / 2 }')" -v rc="$rc" -v ts="$(date +%Y-%m-%dT%H:%M:%S)" '
        /Rx-pps:/ { n++; pps[n] = $2 }
        /Accumulated forward statistics/ && !acc { acc = 1 }
        acc == 1 && /TX-dropped: *[0-9]/ && txd == "" { match($0, /TX-dropped: *[0-9]+/); txd = substr($0, RSTART, RLENGTH); sub(/TX-dropped: */, "", txd) }
        /RX-bursts :/ && nb < np { nb++; e = 0; if (match($0, /[0-9]+% of 0 pkts/)) { e = substr($0, RSTART, RLENGTH); sub(/%.*/, "", e) } emp += e }
        END {
            failed = (n < 2 * np || rc != 0 && rc != 141)
            agg = 0
            for (i = 0; i < np; i++) { p[i] = failed ? 0 : pps[n - np + 1 + i]; agg += p[i] }
            if (failed) note = "FAILED(rc=" rc ")"
            printf "%s,%s,%s,%d,%d,%d,%d,%d,%.3f,%.3f,%s,%s,%s,%s,%s", ts, dut, fwd, size, run, win, p[0], p[1],
                agg / 1e6, agg * size * 8 / 1e9, (txd == "" ? "NA" : txd), (nb ? emp / nb : "NA"), steal, lost, info note
            if (np == 4) printf ",%d,%d", p[2], p[3]
            printf "\n"
        }' "$glog" | tee -a "$csv"
}

# summarize CSV [clean] : median / min / max of aggregate Mpps and Gbit/s per (dut, gen_fwd, size).
# With "clean", only runs whose host_lost_pct <= QUIET_MAX_LOST are counted.
summarize() {
    local csv=$1 clean=${2:-}
    printf "%-26s %-7s %5s %3s %9s %9s %9s %9s %7s %6s\n" dut gen_fwd size n Mpps_med Mpps_min Mpps_max Gbps_med empty% lost%
    tail -n +2 "$csv" | awk -F, -v clean="$clean" -v m="$QUIET_MAX_LOST" '$9 > 0 && (clean == "" || ($14 != "NA" && $14 <= m)) {print $2 "|" $3 "|" $4, $9, $12, $14}' \
      | sort -k1,1 -k2,2g | awk '
        function flush() {
            if (!cnt) return
            split(key, k, "|")
            md = (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
            printf "%-26s %-7s %5s %3d %9.3f %9.3f %9.3f %9.3f %7.1f %6.1f\n", k[1], k[2], k[3], cnt, md, v[1], v[cnt], md * k[3] * 8 / 1000, esum / cnt, lsum / cnt
        }
        $1 != key { flush(); key = $1; cnt = 0; esum = 0; lsum = 0 }
        { cnt++; v[cnt] = $2; esum += $3; lsum += $4 }
        END { flush() }'
}

csv_init() {
    local h=$CSV_HEADER
    [ "$NPORTS" = 4 ] && h=$CSV_HEADER4
    [ -s "$1" ] || echo "$h" > "$1"
}

# print_last_row CSV : the row gen_run appended last, readable, on stderr.
print_last_row() {
    tail -1 "$1" | awk -F, '{pp = $7 " + " $8; if (NF >= 17) pp = "A " $7 " + " $8 " | B " $16 " + " $17
        printf "  %s size=%s run=%s: %s Mpps (%s pps)  %s Gbit/s  gen_rx_empty=%s%% gen_tx_drop=%s host_lost=%s%% %s\n", $2, $4, $5, $9, pp, $10, $12, $11, $14, $15}' >&2
}

# run_all_sizes DUT_NAME CSV SIZE... : RUNS generator runs per size against the running DUT,
# each appended to CSV and printed.
run_all_sizes() {
    local dut=$1 csv=$2 size run; shift 2
    for size in "$@"; do
        for run in $(seq 1 "$RUNS"); do
            gen_run "$dut" "$size" "$(( ${RUN_OFFSET:-0} + run ))" "$csv" > /dev/null
            print_last_row "$csv"
        done
    done
}

# CPU share of each DUT thread over the window (used by bench/compare-4port.sh through GEN_HOOK_START/END).
# dut_threads_mark PIDFILE OUT: the time, then "tid name ticks" (utime + stime) for every thread of the DUT
# process, i.e. the child of the `timeout` wrapper whose pid start_bg recorded in PIDFILE.
dut_threads_mark() {
    local p t
    p=$(pgrep -P "$(cat "$1" 2>/dev/null)" 2>/dev/null | head -1)
    {
        date +%s.%N
        [ -n "$p" ] && for t in /proc/"$p"/task/*; do
            echo "${t##*/} $(tr -d ' ,' < "$t/comm") $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat")"
        done
    } > "$2" 2>/dev/null
}
# dut_threads_cpu PIDFILE MARK: "thr_cpu=name:NN%/..." for the threads (by tid) that used >= 5 % of a CPU
# since dut_threads_mark wrote MARK.
dut_threads_cpu() {
    dut_threads_mark "$1" "$2.end"
    awk -v hz="$(getconf CLK_TCK)" 'FNR == 1 { if (NR == 1) t0 = $1; else t1 = $1; next }
        NR == FNR { s[$1] = $3; next }
        { if ($1 in s) { pct = 100 * ($3 - s[$1]) / hz / (t1 - t0); if (pct >= 5) printf "%d %s:%.0f%%\n", $1, $2, pct } }' \
        "$2" "$2.end" 2>/dev/null | sort -n | awk '{ o = o (NR > 1 ? "/" : "") $2 } END { print "thr_cpu=" o }'
    rm -f "$2" "$2.end"
}

# summarize_ratios CSV BASELINE_DUT : per round (run index) and size, Mpps(dut)/Mpps(baseline);
# median/min/max of those same-round ratios per (dut, size).
summarize_ratios() {
    local csv=$1 base=$2
    printf "%-28s %5s %3s %10s %10s %10s   (vs %s, same round)\n" dut size n ratio_med ratio_min ratio_max "$base"
    tail -n +2 "$csv" | awk -F, -v base="$base" '$9 > 0 { v[$2 "|" $4 "|" $5] = $9; d[$2] = 1; s[$4] = 1; r[$5] = 1 }
        END { for (x in d) if (x != base) for (y in s) for (z in r) {
                  b = v[base "|" y "|" z]; o = v[x "|" y "|" z]
                  if (b > 0 && o > 0) print x "|" y, o / b } }' | sort -k1,1 -k2,2g | awk '
        function flush() {
            if (!cnt) return
            split(key, k, "|")
            m = (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
            printf "%-28s %5s %3d %10.3f %10.3f %10.3f\n", k[1], k[2], cnt, m, v[1], v[cnt]
        }
        $1 != key { flush(); key = $1; cnt = 0 }
        { cnt++; v[cnt] = $2 }
        END { flush() }'
}

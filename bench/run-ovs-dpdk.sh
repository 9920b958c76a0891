#!/bin/bash
# Reference DUT: Open vSwitch 3.1 with DPDK 22.11 (Debian openvswitch-switch-dpdk), userspace
# (netdev) datapath, one PMD thread, two vhost-user ports.
#   OVS_PORT_TYPE=dpdkvhostuserclient (default): OVS connects to $SOCK0/$SOCK1 (vhost-server-path),
#                 the generator listens (virtio-user server=1)  -> GEN_ROLE=server
#   OVS_PORT_TYPE=dpdkvhostuser: OVS listens on $OVS_DIR/vhu0, $OVS_DIR/vhu1 -> generator connects (client)
#   OVS_MODE=normal (default): MAC-learning bridge (NORMAL action)
#   OVS_MODE=flows: two OpenFlow rules, in_port=1 -> output:2 and in_port=2 -> output:1
# Pinning: PMD thread on CPU $DUT_CPU (pmd-cpu-mask), DPDK main/non-PMD threads on CPU $DUT_MAIN_CPU
#          (dpdk-lcore-mask); generator forwarding lcore on CPU 0.
# OVS runs from a private database/run dir ($RUN_DIR/ovs); no system service is touched.
# 4-port mode (NPORTS=4, bench/compare-4port.sh): ports vhu0..vhu3 (ofport 1..4) on $SOCK0..$SOCK3, and
#   DUT_CPUS="1 0"           one PMD thread per listed CPU (pmd-cpu-mask; default $DUT_CPU only)
#   OVS_PORT_TAGS="10 10 20 20"  access VLAN (tag) of each port, so the two pairs are separate L2 domains
#   OVS_RXQ_AFFINITY="1 1 0 0"   pmd-rxq-affinity: the CPU whose PMD polls each port's rx queue
#   flows mode: in_port=1 <-> 2 and 3 <-> 4. With several PMDs dut_info lists each PMD's busy share.
set -u
# shellcheck source=env.sh
. "$(dirname "$0")/env.sh"
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

OVS_MODE=${OVS_MODE:-normal}
OVS_PORT_TYPE=${OVS_PORT_TYPE:-dpdkvhostuserclient}
OVS_SOCKET_MEM=${OVS_SOCKET_MEM:-512}
OVS_NOHUGE=${OVS_NOHUGE:-0}   # 1: OVS EAL with --no-huge -m ${OVS_NOHUGE_MB:-2048} --legacy-mem (4 KiB pages), no dpdk-socket-mem
OVS_DIR=$RUN_DIR/ovs
DUT_NAME=${DUT_NAME:-ovs-dpdk-$OVS_MODE}
CSV=${CSV:-$RES_DIR/$DUT_NAME.csv}
command -v ovs-vswitchd > /dev/null || die "openvswitch-switch-dpdk not installed (bench/setup.sh)"
readlink -f "$(command -v ovs-vswitchd)" | grep -q dpdk || die "ovs-vswitchd is not the DPDK build: update-alternatives --set ovs-vswitchd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
[ "$OVS_NOHUGE" = 1 ] || check_hugepages
csv_init "$CSV"

export OVS_RUNDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR
DB="unix:$OVS_DIR/db.sock"
VSCTL="ovs-vsctl --db=$DB --timeout=30"
APPCTL="ovs-appctl -t $OVS_DIR/ovs-vswitchd.ctl"
read -r -a sizes <<< "$SIZES"
read -r -a socks <<< "$(dut_socks)"
read -r -a pmd_cpus <<< "${DUT_CPUS:-$DUT_CPU}"
read -r -a tags <<< "${OVS_PORT_TAGS:-}"
read -r -a affinity <<< "${OVS_RXQ_AFFINITY:-}"
pmd_mask=0
for c in "${pmd_cpus[@]}"; do pmd_mask=$((pmd_mask | (1 << c))); done
TMO=$(( ${#sizes[@]} * RUNS * (DURATION + WARMUP + 40) + 180 ))

cleanup() {
    [ -S "$OVS_DIR/ovs-vswitchd.ctl" ] && cp "$OVS_DIR/ovs-vswitchd.log" "$LOG_DIR/ovs-vswitchd-$DUT_NAME.log" 2>/dev/null
    stop_bg ovs-vswitchd
    stop_bg ovsdb-server
    rm -rf "/var/run/dpdk/$OVS_PREFIX"     # EAL runtime dir of our own prefix
}
trap cleanup EXIT INT TERM

rm -rf "$OVS_DIR"; mkdir -p "$OVS_DIR"
ovsdb-tool create "$OVS_DIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema || die "ovsdb-tool create failed"
start_bg ovsdb-server "$TMO" ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
    --unixctl="$OVS_DIR/ovsdb-server.ctl" --pidfile="$OVS_DIR/ovsdb-server.pid" --log-file="$OVS_DIR/ovsdb-server.log"
wait_for_sockets 20 "$OVS_DIR/db.sock" || die "ovsdb-server did not start"
$VSCTL --no-wait init
if [ "$OVS_NOHUGE" = 1 ]; then mem=(); extra="--no-pci --file-prefix=$OVS_PREFIX --no-huge -m ${OVS_NOHUGE_MB:-2048} --legacy-mem"  # OVS adds --in-memory unless --legacy-mem is given; EAL rejects --no-huge with --in-memory
else mem=(other_config:dpdk-socket-mem="$OVS_SOCKET_MEM"); extra="--no-pci --file-prefix=$OVS_PREFIX"; fi
$VSCTL --no-wait set Open_vSwitch . other_config:dpdk-init=true \
    other_config:dpdk-lcore-mask="$(printf 0x%x $((1 << DUT_MAIN_CPU)))" \
    other_config:pmd-cpu-mask="$(printf 0x%x $pmd_mask)" \
    "${mem[@]}" "other_config:dpdk-extra=$extra"
start_bg ovs-vswitchd "$TMO" ovs-vswitchd "$DB" --unixctl="$OVS_DIR/ovs-vswitchd.ctl" \
    --pidfile="$OVS_DIR/ovs-vswitchd.pid" --log-file="$OVS_DIR/ovs-vswitchd.log"
for _ in $(seq 1 300); do
    [ "$($VSCTL get Open_vSwitch . dpdk_initialized 2>/dev/null)" = true ] && break; sleep 0.1
done
[ "$($VSCTL get Open_vSwitch . dpdk_initialized 2>/dev/null)" = true ] || { tail -30 "$OVS_DIR/ovs-vswitchd.log" >&2; die "OVS DPDK init failed"; }
log "OVS: $($VSCTL get Open_vSwitch . dpdk_version)"

$VSCTL add-br br0 -- set bridge br0 datapath_type=netdev
if [ "$OVS_PORT_TYPE" = dpdkvhostuserclient ]; then GEN_ROLE=server; else GEN_ROLE=client; fi
for i in "${!socks[@]}"; do
    port_opts=()
    [ -n "${tags[$i]:-}" ] && port_opts+=(-- set Port "vhu$i" tag="${tags[$i]}")
    [ -n "${affinity[$i]:-}" ] && port_opts+=(-- set Interface "vhu$i" other_config:pmd-rxq-affinity="0:${affinity[$i]}")
    if [ "$OVS_PORT_TYPE" = dpdkvhostuserclient ]; then
        $VSCTL add-port br0 "vhu$i" -- set Interface "vhu$i" type=dpdkvhostuserclient \
            options:vhost-server-path="${socks[$i]}" ofport_request=$((i + 1)) "${port_opts[@]}"
    else
        $VSCTL add-port br0 "vhu$i" -- set Interface "vhu$i" type=dpdkvhostuser ofport_request=$((i + 1)) "${port_opts[@]}"
        socks[i]=$OVS_DIR/vhu$i
    fi
done
SOCK0=${socks[0]}; SOCK1=${socks[1]}
[ "$NPORTS" = 4 ] && { SOCK2=${socks[2]}; SOCK3=${socks[3]}; }
if [ "$OVS_PORT_TYPE" != dpdkvhostuserclient ]; then
    wait_for_sockets 20 "${socks[@]}" || die "OVS did not create ${socks[*]}"
fi
if [ "$OVS_MODE" = flows ]; then
    ovs-ofctl del-flows br0
    for ((i = 1; i <= ${#socks[@]}; i += 2)); do
        ovs-ofctl add-flow br0 "in_port=$i,actions=output:$((i + 1))"
        ovs-ofctl add-flow br0 "in_port=$((i + 1)),actions=output:$i"
    done
fi
ovs-ofctl dump-flows br0 --no-stats >&2
export GEN_ROLE SOCK0 SOCK1 SOCK2 SOCK3
# DUT-side metrics over the same window: PMD busy share and processing cycles per packet
export DUT_INFO_FILE=$OVS_DIR/pmd-info.txt
export GEN_HOOK_START="$APPCTL dpif-netdev/pmd-stats-clear"
export GEN_HOOK_END="$APPCTL dpif-netdev/pmd-stats-show | awk '/main thread/{exit} /processing cycles:/{b=\$4; gsub(/[()]/, \"\", b)} /avg processing cycles per packet:/{c=\$6} /emc hits:/{e=\$3} /simple match hits:/{sm=\$4} /megaflow hits:/{m=\$3} /packets received:/{r=\$3} END{if (r==0) r=1; printf \"pmd_busy=%s cyc/pkt=%s hits(emc/simple/megaflow)=%.0f/%.0f/%.0f%%\", b, c, 100*e/r, 100*sm/r, 100*m/r}' > $DUT_INFO_FILE"
if [ ${#pmd_cpus[@]} -gt 1 ]; then
    # Several PMDs: busy share, cycles per packet and share of the received packets of each PMD (by core),
    # hit shares over all of them; the rx queue placement goes to the log directory once per run.
    export GEN_HOOK_START="$GEN_HOOK_START; $APPCTL dpif-netdev/pmd-rxq-show > $LOG_DIR/ovs-rxq-$DUT_NAME.txt"
    export GEN_HOOK_END="$APPCTL dpif-netdev/pmd-stats-show | awk '/main thread/{exit} /^pmd thread/{k++; core[k]=\$NF; sub(/:\$/, \"\", core[k])} /processing cycles:/{b[k]=\$4; gsub(/[()]/, \"\", b[k])} /avg processing cycles per packet:/{c[k]=\$6} /emc hits:/{e+=\$3} /simple match hits:/{sm+=\$4} /megaflow hits:/{m+=\$3} /packets received:/{pr[k]=\$3; r+=\$3} END{if (r==0) r=1; for (i=1; i<=k; i++) {cs=cs (i>1?\"/\":\"\") core[i]; bs=bs (i>1?\"/\":\"\") b[i]; cc=cc (i>1?\"/\":\"\") c[i]; ps=ps (i>1?\"/\":\"\") sprintf(\"%.0f%%\", 100*pr[i]/r)}; printf \"pmd_core=%s pmd_busy=%s cyc/pkt=%s pkt_share=%s hits(emc/simple/megaflow)=%.0f/%.0f/%.0f%%\", cs, bs, cc, ps, 100*e/r, 100*sm/r, 100*m/r}' > $DUT_INFO_FILE"
fi

run_all_sizes "$DUT_NAME" "$CSV" "${sizes[@]}"
ifaces=(); for i in "${!socks[@]}"; do ifaces+=("vhu$i"); done
$VSCTL --columns=name,statistics list Interface "${ifaces[@]}" > "$LOG_DIR/ovs-if-stats-$DUT_NAME.txt" 2>&1
cleanup
trap - EXIT INT TERM
echo "== $CSV"
summarize "$CSV"
echo "-- clean runs only (host_lost_pct <= $QUIET_MAX_LOST):"
summarize "$CSV" clean

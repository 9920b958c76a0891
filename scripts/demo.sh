#!/bin/bash
# accelnet demo, in two parts, both on a private "wire" network namespace (bridge br0, 10.99.0.1).
#
# Part 1: two QEMU (TCG) guests talk through the accelnet vhost-user switch, which also has an
# uplink into the wire.
#
#   vm1 10.99.0.2 --vm1.sock--+
#                             +-- accelnet switch -- uplink andemo0 (veth) == wire netns br0 10.99.0.1
#   vm2 10.99.0.3 --vm2.sock--+
#
# vm1 pings vm2 and the wire; the wire pings vm2; then the switch's ports, FDB and counters are
# shown through its control socket and its Prometheus endpoint; then the switch is killed with
# SIGKILL and started again, and the wire pings vm2 once more (QEMU reconnects, the guest keeps
# running). Part 1's guests and switch are then stopped.
#
# Part 2: the failover pair, as the product does it, with accelnet's CLI only. An "SR-IOV host"
# (netns accelnet-demo-host) on the same wire, laid out like tests/tests/qemu_vm_launch.rs:
#
#   wire br0 == andemo1 ~~ uplink0 --[esw0]-- vf0tap: VF stand-in (QEMU e1000e, failover primary)
#                                      |
#                                      +-- pf0 ~~ pfup0: uplink of a second `accelnet switch run`
#                                                        `- port andemo (vhost-user virtio-net,
#                                                           failover standby)
#
# esw0, a Linux bridge, plays the PF's embedded switch. `accelnet vm launch andemo ... --vf-standin
# vf0tap` starts VM andemo (10.99.0.4, 2 vCPUs) with the pair; the guest's net_failover bonds them.
# The wire pings it over the direct path (the switch port carries ~nothing), then a 100/s ping
# runs from the wire while `accelnet vm disable andemo` moves the guest to the synthetic path (the
# switch port's counters rise) and `accelnet vm enable andemo` moves it back; the ping's losses
# over each change and the host-side timings (`--json`) are printed; then `accelnet vm stop`.
# Exits 0 only if every part-1 ping got its replies, the pair came up, and the guest answered
# the wire on its direct path, after the disable and after the enable (a few pings lost during
# a path change are printed, not fatal).
#
# usage (root, Debian 12): scripts/demo.sh
# env:  DEMO_RUN=/tmp/accelnet-demo   sockets, logs and the VM store (kept after the run)
#       SKIP_DEPS=1                   skip scripts/install-deps.sh (already run)
#       COUNT=5                       pings per check
# Everything the demo creates (switches, guests, the VM, netns, veth, tap) is removed on exit,
# even on ^C.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${DEMO_RUN:-/tmp/accelnet-demo}
COUNT=${COUNT:-5}
NS=accelnet-demo
VETH=andemo0                      # root-namespace end of the veth: the switch's uplink
WIRE_IP=10.99.0.1
VM1_IP=10.99.0.2 VM2_IP=10.99.0.3
HOST=accelnet-demo-host           # part 2: the "SR-IOV host"
HOST_PEER=andemo1                 # wire end of its uplink0 veth
VM=andemo VM_IP=10.99.0.4 VM_MAC=52:54:00:99:00:04
T0=$(date +%s.%N)

say() { printf '\n\033[1m[%6.1fs] %s\033[0m\n' "$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{print t1 - t0}')" "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (netns, veth, QEMU, AF_PACKET)"

PIDS=() PROBE_PID='' VM_PID='' VM_UP=''
# `accelnet vm ...` on the host, its state under $RUN (nothing in /var/lib or /run).
VM_PATHS=(--store "$RUN/vms.redb" --pool-dir "$RUN/pool" --run-dir "$RUN/vms")
vm() { ip netns exec "$HOST" "$ACCELNET" vm "$@" "${VM_PATHS[@]}"; }
kill_vm_pid() { # QEMU runs in its own process group: kill it by its recorded pid, if still ours
  [ -n "$VM_PID" ] && grep -qF "$RUN/vms/" "/proc/$VM_PID/cmdline" 2>/dev/null || return 0
  kill -9 "$VM_PID"
  for _ in $(seq 50); do [ -e "/proc/$VM_PID" ] || break; sleep 0.1; done
}
cleanup() {
  local rc=$?
  set +e
  [ -n "$PROBE_PID" ] && { kill "$PROBE_PID"; wait "$PROBE_PID"; } 2>/dev/null
  if [ -n "$VM_UP" ]; then vm stop "$VM" --grace 5 >/dev/null 2>&1; kill_vm_pid; fi
  # Our own processes only, by recorded pid: guests first, then the switch (SIGTERM = clean stop).
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  ip link del "$VETH" 2>/dev/null
  ip netns del "$HOST" 2>/dev/null    # with it uplink0 (and its wire end), esw0, pf0~pfup0, vf0tap
  ip netns del "$NS" 2>/dev/null
  rm -f "$RUN"/*.sock
  [ $rc = 0 ] && say "demo OK (logs in $RUN)" || echo "demo FAILED (rc $rc); logs in $RUN" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Dependencies, guest image, switch binary.
if [ -z "${SKIP_DEPS:-}" ]; then
  say "installing dependencies (scripts/install-deps.sh)"
  "$ROOT/scripts/install-deps.sh"
fi
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
say "building the guest kernel + initramfs (lab/build-guest.sh)"
"$ROOT/lab/build-guest.sh"
GUEST=${ACCELNET_GUEST_DIR:-$ROOT/build/guest}
say "building accelnet (cargo build --release -p accelnet)"
(cd "$ROOT" && cargo build --release -p accelnet)
ACCELNET=$ROOT/target/release/accelnet

# 2. The wire: netns with bridge br0 = 10.99.0.1/24 (fixed MAC), veth into the root netns.
say "creating the wire: netns $NS (br0 $WIRE_IP/24), uplink $VETH"
# Leftovers of an interrupted run: its VM (by the store's record), netns, veth, state.
if [ -f "$RUN/vms.redb" ]; then
  for name in $("$ACCELNET" vm list --json "${VM_PATHS[@]}" 2>/dev/null | python3 -c '
import json, sys
print(" ".join(v["name"] for v in json.load(sys.stdin) if v["phase"] not in ("stopped", "failed")))' || true); do
    "$ACCELNET" vm stop "$name" --grace 2 "${VM_PATHS[@]}" || true
  done
fi
ip link del "$VETH" 2>/dev/null || true
ip netns del "$HOST" 2>/dev/null || true
ip netns del "$NS" 2>/dev/null || true
mkdir -p "$RUN"; rm -f "$RUN"/*.sock "$RUN"/*.log "$RUN"/*.json "$RUN"/probe-*.txt
rm -rf "$RUN/vms" "$RUN/pool" "$RUN/vms.redb"
ip netns add "$NS"
ip netns exec "$NS" sh -c 'for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done' 2>/dev/null || true
ip -n "$NS" link set lo up
ip -n "$NS" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$NS" link set br0 address 02:00:00:00:99:01
ip -n "$NS" addr add "$WIRE_IP/24" dev br0
ip -n "$NS" link set br0 up
ip link add "$VETH" type veth peer name up0 netns "$NS"
echo 1 > "/proc/sys/net/ipv6/conf/$VETH/disable_ipv6" 2>/dev/null || true
ip link set "$VETH" up
ip -n "$NS" link set up0 master br0
ip -n "$NS" link set up0 up

# 3. The switch (metrics on a free loopback port).
SWITCH_ARGS=(--vhost-user-server "$RUN/vm1.sock" --vhost-user-server "$RUN/vm2.sock"
  --uplink "$VETH" --control "$RUN/ctl.sock" --metrics 127.0.0.1:0)
start_switch() { # log file
  rm -f "$RUN/ctl.sock"
  "$ACCELNET" switch run "${SWITCH_ARGS[@]}" >"$1" 2>&1 &
  PIDS+=($!); SWITCH_PID=$!
  for _ in $(seq 100); do
    [ -S "$RUN/vm1.sock" ] && [ -S "$RUN/vm2.sock" ] && [ -S "$RUN/ctl.sock" ] && break
    kill -0 "$SWITCH_PID" 2>/dev/null || { cat "$1" >&2; die "the switch exited"; }
    sleep 0.05
  done
  [ -S "$RUN/ctl.sock" ] || { cat "$1" >&2; die "the switch did not create its sockets in 5 s"; }
}
say "starting: accelnet switch run ${SWITCH_ARGS[*]}"
start_switch "$RUN/switch.log"
sed 's/^/  switch: /' "$RUN/switch.log"

# 4. Two guests: vm2 idles (role server), vm1 pings vm2 then the wire and powers off (role ping).
guest() { # name sock mac append...
  local name=$1 sock=$2 mac=$3; shift 3
  qemu-system-x86_64 -name "$name" -machine q35,memory-backend=mem -accel tcg -cpu max -smp 1 -m 256M \
    -object memory-backend-memfd,id=mem,size=256M,share=on \
    -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initramfs.cpio.gz" \
    -append "console=ttyS0 loglevel=4 panic=-1 mitigations=off lab.mac=$mac $*" \
    -display none -serial "file:$RUN/$name.log" -monitor none -no-reboot -nodefaults \
    -chardev "socket,id=c0,path=$sock,reconnect-ms=100" -netdev vhost-user,id=n0,chardev=c0 \
    -device "virtio-net-pci,netdev=n0,mac=$mac" </dev/null 2>"$RUN/$name.qemu.log" &
  PIDS+=($!)
}
say "booting vm2 ($VM2_IP, waits) and vm1 ($VM1_IP, pings $VM2_IP then $WIRE_IP): ~10-20 s under TCG"
guest vm2 "$RUN/vm2.sock" 52:54:00:00:00:02 "lab.role=server lab.ip=$VM2_IP/24 lab.timeout=300"
guest vm1 "$RUN/vm1.sock" 52:54:00:00:00:01 "lab.role=ping lab.ip=$VM1_IP/24 lab.peer=$VM2_IP,$WIRE_IP lab.count=$COUNT lab.wait=60"
VM1_PID=${PIDS[-1]}
touch "$RUN/vm1.log"
# Show vm1's console live until it powers off (bounded).
timeout 240 tail -n +1 -F --pid="$VM1_PID" "$RUN/vm1.log" 2>/dev/null | grep --line-buffered 'LAB:' | sed -u 's/^/  vm1: /' || true
kill -0 "$VM1_PID" 2>/dev/null && die "vm1 did not finish in 240 s (see $RUN/vm1.log)"
grep -q 'server ready' "$RUN/vm2.log" || die "vm2 did not come up (see $RUN/vm2.log)"

# 5. The wire pings vm2 through the uplink.
say "wire ($WIRE_IP) pings vm2 ($VM2_IP)"
WIRE_PING=$(ip netns exec "$NS" busybox ping -c "$COUNT" -i 0.2 -W 2 "$VM2_IP" 2>&1 || true)
echo "$WIRE_PING" | sed 's/^/  wire: /'

# 6. What the switch saw, and its Prometheus metrics.
for what in ports fdb stats; do
  say "accelnet switch $what --control $RUN/ctl.sock"
  "$ACCELNET" switch "$what" --control "$RUN/ctl.sock" || echo "  (accelnet switch $what failed)"
done
METRICS=$(sed -n 's|.*metrics on http://\([0-9.]*\):\([0-9]*\)/metrics.*|\1 \2|p' "$RUN/switch.log" | head -1)
if [ -n "$METRICS" ]; then
  say "GET http://${METRICS/ /:}/metrics (excerpt)"
  { exec 3<>"/dev/tcp/${METRICS% *}/${METRICS#* }" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3; } 2>/dev/null \
    | grep -E '^accelnet_switch_port_(rx|tx)_packets_total' | sed 's/^/  /' || echo "  (metrics unavailable)"
fi

# 7. The switch dies (SIGKILL) and is started again: QEMU reconnects (reconnect-ms=100), vm2
#    keeps running, and the wire reaches it again.
say "kill -9 the switch, start it again, and ping vm2 from the wire"
kill -9 "$SWITCH_PID"; wait "$SWITCH_PID" 2>/dev/null || true
start_switch "$RUN/switch-restarted.log"
sleep 0.5   # QEMU retries every 100 ms
WIRE_PING2=$(ip netns exec "$NS" busybox ping -c "$COUNT" -i 0.2 -W 2 "$VM2_IP" 2>&1 || true)
echo "$WIRE_PING2" | sed 's/^/  wire: /'

# Part 1 is over: its guests and switch go (they would only take CPU from part 2's guest).
for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

# 8. Part 2: the "SR-IOV host", laid out like tests/tests/qemu_vm_launch.rs: its own netns with
#    uplink0 on the wire; esw0 (the embedded-switch stand-in) holding uplink0, the PF pf0 (whose
#    veth peer pfup0 is the switch's uplink) and the tap vf0tap that stands in for the VF.
say "part 2: the SR-IOV host: netns $HOST, esw0 = uplink0 + pf0 (~ pfup0, switch uplink) + vf0tap (VF stand-in)"
ip netns add "$HOST"
ip netns exec "$HOST" sh -c 'for k in all default; do echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done' 2>/dev/null || true
ip -n "$HOST" link set lo up
ip -n "$HOST" link add uplink0 type veth peer name "$HOST_PEER" netns "$NS"
ip -n "$HOST" link set uplink0 up
ip -n "$NS" link set "$HOST_PEER" master br0
ip -n "$NS" link set "$HOST_PEER" up
for cmd in "link add esw0 type bridge stp_state 0 forward_delay 0" "link set esw0 up" \
    "link set uplink0 master esw0" "link add pf0 type veth peer name pfup0" "link set pf0 master esw0" \
    "link set pf0 up" "link set pfup0 up" "tuntap add dev vf0tap mode tap" "link set vf0tap master esw0" \
    "link set vf0tap up"; do
  # shellcheck disable=SC2086
  ip netns exec "$HOST" ip $cmd
done
HCTL=$RUN/host-ctl.sock
say "starting, in $HOST: accelnet switch run --uplink pfup0 --control $HCTL"
rm -f "$HCTL"
ip netns exec "$HOST" "$ACCELNET" switch run --uplink pfup0 --control "$HCTL" >"$RUN/host-switch.log" 2>&1 &
PIDS+=($!); HSWITCH_PID=$!
for _ in $(seq 200); do
  [ -S "$HCTL" ] && break
  kill -0 "$HSWITCH_PID" 2>/dev/null || { cat "$RUN/host-switch.log" >&2; die "the host's switch exited"; }
  sleep 0.05
done
[ -S "$HCTL" ] || { cat "$RUN/host-switch.log" >&2; die "the host's switch made no control socket in 10 s"; }
sed 's/^/  switch: /' "$RUN/host-switch.log"

# Counters of the VM's switch port: frames from the guest (its replies, on the synthetic path).
port_rx() {
  ip netns exec "$HOST" "$ACCELNET" switch stats --control "$HCTL" --json | python3 -c '
import json, sys
print(next((p.get("rx_packets", 0) for p in json.load(sys.stdin)["ports"] if p["name"] == sys.argv[1]), 0))' "$VM"
}

# 9. The VM, with its failover pair: e1000e stand-in (primary) on vf0tap, virtio-net (standby)
#    on a new switch port.
CONSOLE=$RUN/vms/$VM/console.log
LAUNCH=(launch "$VM" --vcpus 2 --memory 256M --mac "$VM_MAC" --performance low
  --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initramfs.cpio.gz"
  --append "console=ttyS0 loglevel=4 panic=-1 mitigations=off lab.role=server lab.timeout=900 lab.stats=1 lab.ip=$VM_IP/24 lab.mac=$VM_MAC"
  --vf-standin vf0tap --switch-control "$HCTL")
say "accelnet vm ${LAUNCH[*]}"
VM_UP=1
vm "${LAUNCH[@]}" 2>&1 | sed 's/^/  /'
VM_PID=$(vm list --json | python3 -c '
import json, sys
print(next((v.get("pid", "") for v in json.load(sys.stdin) if v["name"] == sys.argv[1]), ""))' "$VM")
[ -n "$VM_PID" ] || die "vm launch left no running VM $VM"
vm_alive() { kill -0 "$VM_PID" 2>/dev/null || die "QEMU of VM $VM exited (see $RUN/vms/$VM/)"; }
netdevs() { grep -a 'LAB:.*netdevs:' "$CONSOLE" 2>/dev/null | tail -1 || true; }
wait_primary() { # up|gone seconds: until the guest's last netdevs: line shows the e1000e primary up / gone
  local l
  for ((i=0; i<$2*5; i++)); do
    l=$(netdevs)
    if [ "$1" = up ]; then
      case "$l" in *,virtio_net,up\)*,e1000e,master=eth0,up\)*|*,e1000e,master=eth0,up\)*,virtio_net,up\)*) echo "$l"; return 0;; esac
    else
      [ -n "$l" ] && case "$l" in *e1000e*) ;; *) echo "$l"; return 0;; esac
    fi
    vm_alive; sleep 0.2
  done
  return 1
}
say "waiting for the guest (TCG, 2 vCPUs: ~10-30 s): net_failover master with the e1000e primary up"
for ((i=0; i<1200; i++)); do grep -aq 'LAB:.*server ready' "$CONSOLE" 2>/dev/null && break; vm_alive; sleep 0.2; done
grep -aq 'LAB:.*server ready' "$CONSOLE" || die "VM $VM did not come up in 240 s (see $CONSOLE)"
PAIR=$(wait_primary up 120) || die "no failover pair in the guest: $(netdevs)"
grep -a 'LAB:' "$CONSOLE" | grep -v 'LAB: \[[0-9.]*\] stats ' | sed 's/^/  andemo: /' || true

say "accelnet vm list"
vm list | sed 's/^/  /'

# 10. The wire reaches the guest over its direct path: the switch port carries (almost) nothing.
say "wire ($WIRE_IP) pings $VM ($VM_IP): direct path, through esw0 and the e1000e"
rx0=$(port_rx)
DIRECT_PING=$(ip netns exec "$NS" busybox ping -c "$COUNT" -i 0.2 -W 2 "$VM_IP" 2>&1 || true)
rx1=$(port_rx)
echo "$DIRECT_PING" | sed 's/^/  wire: /'
DIRECT_SW=$((rx1 - rx0))
echo "  switch port $VM received $DIRECT_SW frame(s) from the guest during those pings"

# 11. A 100/s ping from the wire over each path change.
RATE_MS=10
probe_start() { # output file
  ip netns exec "$NS" busybox ping -i 0.01 -W 1 "$VM_IP" >"$1" 2>&1 &
  PROBE_PID=$!
  for _ in $(seq 100); do [ "$(grep -c ' seq=' "$1" || true)" -ge 50 ] && return 0; sleep 0.1; done
  echo "  (the probe got fewer than 50 replies in 10 s before the change)"
}
probe_stop() { kill -INT "$PROBE_PID" 2>/dev/null || true; wait "$PROBE_PID" 2>/dev/null || true; PROBE_PID=; }
# "tx rx lost gap_ms dup": lost = requests unanswered before the last answered one (the last
# request(s), in flight when the probe stops, are not counted), gap = longest run of them.
probe_numbers() {
  awk -v ms="$RATE_MS" '
    /packets transmitted/ { tx = $1 }
    / seq=/ { if (index($0, "DUP")) { dup++; next }
              match($0, /seq=[0-9]+/); s = substr($0, RSTART + 4, RLENGTH - 4) + 0
              if (!(s in got)) { got[s] = 1; rx++ }; if (s > max) max = s }
    END { if (rx == 0) { printf "%d 0 %d %d %d\n", tx, tx, tx * ms, dup; exit }
          for (s = 0; s <= max; s++) if (s in got) run = 0; else { lost++; run++; if (run > gap) gap = run }
          printf "%d %d %d %d %d\n", tx, rx, lost, gap * ms, dup }' "$1"
}
probe_report() { # label file -> one line
  local tx rx lost gap dup
  read -r tx rx lost gap dup < <(probe_numbers "$2")
  local rest=$((tx - rx - lost)) extra=''
  [ "$rest" -gt 0 ] && extra=", $rest in flight when the ping stopped"
  [ "${dup:-0}" -gt 0 ] && extra="$extra, $dup duplicate(s)"
  echo "$1: $tx sent, $rx answered, $lost lost (longest outage ${gap} ms)$extra"
}
timings() { # --json output of vm disable|enable -> one line
  python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))[0]
keys = ["both_ms", "vmm_ms", "guest_on_direct_ms", "pinned_ms", "held", "redirected", "total_ms"]
s = ", ".join("%s %s" % (k, v[k]) for k in keys if v.get(k) is not None)
if v.get("announced"): s += ", announced on " + ",".join(v["announced"])
print(s + "".join("; note: " + n for n in v.get("notes", [])))' "$1" 2>/dev/null || echo "(no timings: $(head -c 300 "$1"))"
}
reach() { # label -> ping output
  ip netns exec "$NS" busybox ping -c "$COUNT" -i 0.2 -W 2 "$VM_IP" 2>&1 || true
}

say "100/s ping from the wire, and meanwhile: accelnet vm disable $VM --json"
probe_start "$RUN/probe-disable.txt"
rx0=$(port_rx)
vm disable "$VM" --timeout 60 --json >"$RUN/disable.json" 2>"$RUN/disable.err" && DIS_OK=1 || DIS_OK=
sed 's/^/  /' "$RUN/disable.json" "$RUN/disable.err"
GONE=$(wait_primary gone 60) || GONE=
echo "  guest: ${GONE:-primary still present after 60 s: $(netdevs)}"
sleep 1
rx1=$(port_rx)
probe_stop
DIS_T=$(timings "$RUN/disable.json")
DIS_P=$(probe_report "100/s ping over vm disable" "$RUN/probe-disable.txt")
DIS_SW=$((rx1 - rx0))
echo "  host side: $DIS_T"
echo "    (ms from the start of the change: both = the embedded switch sends the MAC to both paths,"
echo "     vmm = the guest released the primary (DEVICE_DELETED), pinned = the MAC pinned to the PF;"
echo "     held = frames the switch held for the standby during the unplug, then delivered)"
echo "  $DIS_P"
say "accelnet switch stats --control $HCTL   (port $VM: +$DIS_SW frames from the guest since the disable)"
ip netns exec "$HOST" "$ACCELNET" switch stats --control "$HCTL" | sed 's/^/  /'
say "wire pings $VM on the synthetic path"
AFTER_DIS=$(reach); echo "$AFTER_DIS" | sed 's/^/  wire: /'

say "100/s ping from the wire, and meanwhile: accelnet vm enable $VM --json"
probe_start "$RUN/probe-enable.txt"
vm enable "$VM" --json >"$RUN/enable.json" 2>"$RUN/enable.err" && EN_OK=1 || EN_OK=
sed 's/^/  /' "$RUN/enable.json" "$RUN/enable.err"
BACK=$(wait_primary up 60) || BACK=
echo "  guest: ${BACK:-primary not up after 60 s: $(netdevs)}"
sleep 1
rx2=$(port_rx); sleep 1; rx3=$(port_rx)
probe_stop
EN_T=$(timings "$RUN/enable.json")
EN_P=$(probe_report "100/s ping over vm enable" "$RUN/probe-enable.txt")
EN_SW=$((rx3 - rx2))
echo "  host side: $EN_T"
echo "    (vmm = QEMU plugged the primary, guest_on_direct = the guest's first frame on it,"
echo "     pinned = the MAC pinned to the VF stand-in)"
echo "  $EN_P"
echo "  switch port $VM: +$EN_SW frames from the guest in 1 s with the 100/s ping running (direct path again)"
say "wire pings $VM on the direct path again"
AFTER_EN=$(reach); echo "$AFTER_EN" | sed 's/^/  wire: /'

say "accelnet vm list; accelnet vm stop $VM"
vm list | sed 's/^/  /'
vm stop "$VM" 2>&1 | sed 's/^/  /'
VM_UP=
for _ in $(seq 100); do [ -e "/proc/$VM_PID" ] || break; sleep 0.1; done
if [ -e "/proc/$VM_PID" ]; then STOPPED="QEMU $VM_PID still runs 10 s after vm stop"; kill_vm_pid
elif ip netns exec "$HOST" "$ACCELNET" switch ports --control "$HCTL" | grep -qw "$VM"; then STOPPED="port $VM still on the switch"
else STOPPED=; fi
vm list | sed 's/^/  /'

# 12. Verdict: every part-1 ping has all its replies; part 2's guest answered on each path.
ok=1
check() { # label text
  local line; line=$(echo "$2" | grep -E 'packets transmitted' | tail -1)
  if echo "$line" | grep -qE "$COUNT packets transmitted, $COUNT (packets )?received"; then
    echo "  PASS $1: ${line#*] }"
  else
    line=${line#*] }; echo "  FAIL $1: ${line:-no ping summary}"; ok=0
  fi
}
reachable() { # label text: some replies = reachable (a loss is printed, not fatal)
  local line n; line=$(echo "$2" | grep -E 'packets transmitted' | tail -1 || true)
  n=$(echo "$line" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  if [ "${n:-0}" -gt 0 ]; then echo "  PASS $1: $line"; else echo "  FAIL $1: ${line:-no ping summary}"; ok=0; fi
}
verdict() { # PASS|FAIL text
  echo "  $1 $2"; [ "$1" = PASS ] || ok=0
}
say "result"
vm1_log=$(cat "$RUN/vm1.log")
check "vm1 -> vm2 " "$(echo "$vm1_log" | sed -n "/first reply from $VM2_IP/,/first reply from $WIRE_IP/p")"
check "vm1 -> wire" "$(echo "$vm1_log" | sed -n "/first reply from $WIRE_IP/,\$p")"
check "wire -> vm2" "$WIRE_PING"
check "wire -> vm2 after the switch was killed and restarted" "$WIRE_PING2"
verdict PASS "$VM's failover pair came up: ${PAIR#*netdevs: }"
reachable "wire -> $VM, direct path" "$DIRECT_PING"
[ "$DIRECT_SW" -lt 5 ] && verdict PASS "the direct path carried it: switch port $VM +$DIRECT_SW frames" \
  || verdict FAIL "the switch carried the guest's replies on the direct path: port $VM +$DIRECT_SW frames"
[ -n "$DIS_OK" ] && verdict PASS "vm disable: $DIS_T" || verdict FAIL "vm disable failed: $(tail -1 "$RUN/disable.err")"
[ -n "$GONE" ] && verdict PASS "the guest released its primary" || verdict FAIL "the guest still has its primary"
[ "$DIS_SW" -ge 50 ] && verdict PASS "the switch carried the guest's replies after the disable: port $VM +$DIS_SW frames" \
  || verdict FAIL "the switch carried too little after the disable: port $VM +$DIS_SW frames"
echo "  INFO $DIS_P"
reachable "wire -> $VM after vm disable (synthetic path)" "$AFTER_DIS"
[ -n "$EN_OK" ] && verdict PASS "vm enable: $EN_T" || verdict FAIL "vm enable failed: $(tail -1 "$RUN/enable.err")"
[ -n "$BACK" ] && verdict PASS "the guest's primary is back up" || verdict FAIL "the guest's primary did not come back"
[ "$EN_SW" -lt 10 ] && verdict PASS "off the switch again after the enable: port $VM +$EN_SW frames in 1 s at 100/s" \
  || verdict FAIL "the switch still carries the guest after the enable: port $VM +$EN_SW frames in 1 s at 100/s"
echo "  INFO $EN_P"
reachable "wire -> $VM after vm enable (direct path)" "$AFTER_EN"
[ -z "$STOPPED" ] && verdict PASS "vm stop: QEMU gone, switch port gone" || verdict FAIL "vm stop: $STOPPED"
[ $ok = 1 ]

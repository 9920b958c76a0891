#!/bin/bash
# accelnet demo: two QEMU (TCG) guests talk through the accelnet vhost-user switch, which
# also has an uplink into a private "wire" network namespace (10.99.0.1).
#
#   vm1 10.99.0.2 --vm1.sock--+
#                             +-- accelnet switch -- uplink (veth) == wire netns br0 10.99.0.1
#   vm2 10.99.0.3 --vm2.sock--+
#
# vm1 pings vm2 and the wire; the wire pings vm2; then the switch's ports, FDB and counters are
# shown through its control socket and its Prometheus endpoint; then the switch is killed with
# SIGKILL and started again, and the wire pings vm2 once more (QEMU reconnects, the guest keeps
# running). Exits 0 only if every ping got its replies.
#
# usage (root, Debian 12): scripts/demo.sh
# env:  DEMO_RUN=/tmp/accelnet-demo   sockets and logs (kept after the run for inspection)
#       SKIP_DEPS=1                   skip scripts/install-deps.sh (already run)
#       COUNT=5                       pings per peer
# Everything the demo creates (switch, guests, netns, veth) is removed on exit, even on ^C.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${DEMO_RUN:-/tmp/accelnet-demo}
COUNT=${COUNT:-5}
NS=accelnet-demo
VETH=andemo0                      # root-namespace end of the veth: the switch's uplink
WIRE_IP=10.99.0.1
VM1_IP=10.99.0.2 VM2_IP=10.99.0.3
T0=$(date +%s.%N)

say() { printf '\n\033[1m[%6.1fs] %s\033[0m\n' "$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{print t1 - t0}')" "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (netns, veth, QEMU, AF_PACKET)"

PIDS=()
cleanup() {
  local rc=$?
  set +e
  # Our own processes only, by recorded pid: guests first, then the switch (SIGTERM = clean stop).
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  ip link del "$VETH" 2>/dev/null
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
ip link del "$VETH" 2>/dev/null || true       # leftovers of an interrupted run
ip netns del "$NS" 2>/dev/null || true
mkdir -p "$RUN"; rm -f "$RUN"/*.sock "$RUN"/*.log
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

# 8. Verdict: every ping sequence must have all its replies.
ok=1
check() { # label text
  local line; line=$(echo "$2" | grep -E 'packets transmitted' | tail -1)
  if echo "$line" | grep -qE "$COUNT packets transmitted, $COUNT (packets )?received"; then
    echo "  PASS $1: ${line#*] }"
  else
    line=${line#*] }; echo "  FAIL $1: ${line:-no ping summary}"; ok=0
  fi
}
say "result"
vm1_log=$(cat "$RUN/vm1.log")
check "vm1 -> vm2 " "$(echo "$vm1_log" | sed -n "/first reply from $VM2_IP/,/first reply from $WIRE_IP/p")"
check "vm1 -> wire" "$(echo "$vm1_log" | sed -n "/first reply from $WIRE_IP/,\$p")"
check "wire -> vm2" "$WIRE_PING"
check "wire -> vm2 after the switch was killed and restarted" "$WIRE_PING2"
[ $ok = 1 ]

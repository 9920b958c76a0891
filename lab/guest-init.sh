#!/bin/sh
# /init of the accelnet lab initramfs (busybox sh), built by lab/build-guest.sh.
# Behaviour is chosen on the kernel command line:
#   lab.role=shell|boot|ping|server|pingloop
#   lab.ip=10.99.0.2/24   lab.mac=52:54:00:00:00:0a (the NIC to use; default: the first one)
#   lab.peer=10.99.0.1 (ping: a comma-separated list is pinged in turn; pingloop)
#   lab.count=N (ping)   lab.wait=N (ping: tries for a first reply, 1 s each)   lab.interval=S (pingloop)
#   lab.timeout=S (server, pingloop: power off after S seconds)   lab.settle=S (sleep before use)
#   lab.modules=igb,igbvf,vfio-pci,vfio_iommu_type1 (optional modules shipped in the image, see
#     OPT_MODULES in build-guest.sh; loaded with their dependencies AFTER the lab NIC is
#     configured, so that e.g. igb's netdevs never take eth0 from the virtio NIC)
# role=shell (what the tests use): configure the NIC, print "LAB: ready ...", then run an
# interactive shell on the serial console (no echo, no prompt), so that the host types commands
# on QEMU's stdin (-serial stdio) and reads their output. Other lines meant for the host start
# with "LAB:". Every role but shell ends with "poweroff -f".
# Besides busybox, the image has iperf3 and ethtool (dynamically linked, libraries from the host).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin   # busybox applets, then iperf3 and ethtool
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "LAB: [$(up)] $*"; }
say "init running"
for kv in $(cat /proc/cmdline); do
  case "$kv" in lab.*=*) k=${kv%%=*}; k=${k#lab.}; v=${kv#*=}; eval "LAB_$k='$v'";; esac
done
ROLE=${LAB_role:-boot}; TIMEOUT=${LAB_timeout:-120}
finish() { say "poweroff ($*)"; sync; poweroff -f; sleep 5; }

if [ "$ROLE" = boot ]; then say "kernel $(uname -r)"; finish boot-only; fi

# No IPv6 chatter (router solicitations, MLD): new netdevs inherit "default".
for k in all default; do
  sysctl -w net.ipv6.conf.$k.disable_ipv6=1 >/dev/null 2>&1
done
# Load order resolved from modules.dep at build time; retry passes in case a dependency was missed.
pending=$(cat /lib/modules/load-order)
for _ in 1 2 3; do
  left=
  for m in $pending; do insmod /lib/modules/$m 2>/dev/null || left="$left $m"; done
  pending=$left
  [ -z "$pending" ] && break
done
# insmod fails on an already-loaded module too: only report modules missing from /proc/modules
for m in $pending; do n=${m%%.ko*}; grep -q "^$n " /proc/modules || say "module $m failed to load"; done
say "modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
ip link set lo up

netdevs() { # name/mac/driver/master/operstate for every netdev
  for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] && continue
    drv=$(basename "$(readlink $d/device/driver 2>/dev/null)" 2>/dev/null)
    [ -z "$drv" ] && drv=virtual
    mst=$(basename "$(readlink $d/master 2>/dev/null)" 2>/dev/null)
    printf '%s(%s,%s%s,%s) ' "$n" "$(cat $d/address)" "$drv" "${mst:+,master=$mst}" "$(cat $d/operstate)"
  done; }
pick_if() { # netdev with LAB_mac and no master (failover: the master); else first non-lo
  for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] && continue
    [ -e $d/master ] && continue
    if [ -z "$LAB_mac" ] || [ "$(cat $d/address)" = "$LAB_mac" ]; then echo $n; return; fi
  done; }
IF=; i=0
while [ -z "$IF" ] && [ $i -lt 100 ]; do IF=$(pick_if); [ -z "$IF" ] && sleep 0.2; i=$((i+1)); done
[ -z "$IF" ] && { say "no interface found: $(netdevs)"; finish no-if; }
[ -n "$LAB_settle" ] && sleep "$LAB_settle"   # e.g. wait for a failover primary to be hot-plugged
sysctl -w net.ipv6.conf.$IF.disable_ipv6=1 >/dev/null 2>&1
ip link set "$IF" up
ip addr add "${LAB_ip:-10.99.0.2/24}" dev "$IF"
say "netdevs: $(netdevs)"
say "using $IF addr ${LAB_ip:-10.99.0.2/24}"
if [ -n "$LAB_modules" ]; then
  for m in $(echo "$LAB_modules" | tr ',' ' '); do
    o=/lib/modules/opt/$m.order
    [ -f "$o" ] || o=/lib/modules/opt/$(echo "$m" | tr _ -).order
    [ -f "$o" ] || o=/lib/modules/opt/$(echo "$m" | tr - _).order
    [ -f "$o" ] || { say "module $m not in the image (lab.modules)"; continue; }
    for f in $(cat "$o"); do
      n=${f%%.ko*}; n=$(echo "$n" | tr - _)
      grep -q "^$n " /proc/modules && continue
      insmod /lib/modules/$f || say "module $f failed to load (lab.modules=$m)"
    done
  done
  say "modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
fi
PEER=${LAB_peer:-10.99.0.1}

stats_loop() { # every second: per-netdev tx/rx packet counters + topology changes
  last=""
  while :; do
    t=$(netdevs); [ "$t" != "$last" ] && say "netdevs: $t"; last=$t
    s=""; for d in /sys/class/net/*; do n=${d##*/}; [ "$n" = lo ] && continue
      s="$s $n:tx=$(cat $d/statistics/tx_packets),rx=$(cat $d/statistics/rx_packets)"; done
    say "stats$s"; sleep ${LAB_statsint:-1}
  done; }

case "$ROLE" in
shell)
  dmesg -n 1 2>/dev/null                     # kernel messages off the console
  stty -F /dev/ttyS0 -echo 2>/dev/null       # the host reads outputs only, not its own input
  export PS1='' PS2='' HOME=/root
  cd /root || true
  echo "LAB: ready if=$IF mac=$(cat /sys/class/net/$IF/address) ip=${LAB_ip:-10.99.0.2/24} uptime=$(up)"
  # setsid + cttyhack: the shell owns ttyS0 as its controlling tty, so ^C interrupts a command.
  setsid cttyhack sh
  finish shell-exited ;;
ping) # lab.peer may list several addresses: 10.99.0.3,10.99.0.1
  for p in $(echo "$PEER" | tr ',' ' '); do
    i=0; while ! ping -c1 -W1 $p >/dev/null 2>&1 && [ $i -lt ${LAB_wait:-30} ]; do i=$((i+1)); done
    say "first reply from $p after $i failed tries"
    ping -c ${LAB_count:-10} -i 0.2 $p | while read l; do say "$l"; done
  done
  say "netdevs: $(netdevs)"
  finish "done" ;;
server)
  [ -n "$LAB_stats" ] && stats_loop &
  say "server ready"
  sleep $TIMEOUT; finish timeout ;;
pingloop)
  [ -n "$LAB_stats" ] && stats_loop &
  ping -i ${LAB_interval:-0.2} -W 1 $PEER | while read l; do say "$l"; done &
  sleep $TIMEOUT; finish timeout ;;
esac
finish unknown-role

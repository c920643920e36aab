#!/bin/sh
# Host half of the network benchmark (issue 8); runs where kiln runs
# (directly, or in the nested host), inside a private network namespace.
# Guest <-> host over tap + bridge, then the same between two network
# namespaces over a veth pair. Env: KILN, KERNEL, ROOTFS (with the guest
# half), OUT (logs), SIZE_MB. Needs tcpbench in PATH and busybox.
set -u
mib=${SIZE_MB:-64}
OUT=${OUT:-/tmp}
base="console=ttyS0 reboot=k panic=1 pci=off quiet"
ping_avg() { sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p'; }
rate() { cut -d' ' -f4; }
ip link set lo up

# Guest on a tap in a bridge that has the host's address.
ip link add kbr0 type bridge && ip addr add 10.0.78.1/24 dev kbr0 && ip link set kbr0 up &&
  tunctl -t kbtap0 >/dev/null && brctl addif kbr0 kbtap0 && ip link set kbtap0 up ||
  { echo "BENCH-NET bridge/tap setup failed"; exit 1; }
tcpbench sink 5001 1 &
l1_sink=$!
"$KILN" boot --kernel "$KERNEL" --memory 256 --disk "path=$ROOTFS,root,readonly" --net tap=kbtap0 \
  --cmdline "$base kiln.run=bench ip=10.0.78.2::10.0.78.1:255.255.255.0::eth0:off kiln.mib=$mib" \
  </dev/null >"$OUT/bench-guest.log" 2>&1 &
kpid=$!
i=0
until grep -q KILN-BENCH-SINK-READY "$OUT/bench-guest.log"; do
  i=$((i + 1))
  if [ "$i" -gt 3000 ] || ! kill -0 "$kpid" 2>/dev/null; then break; fi
  sleep 0.1
done
h2g=$(tcpbench send 10.0.78.2 5002 "$mib" | rate)
wait "$kpid"
g_ping=$(sed -n 's/.*KILN-BENCH ping \([0-9.]*\).*/\1/p' "$OUT/bench-guest.log")
g2h=$(sed -n 's/.*KILN-BENCH guest-to-host tcpbench [0-9]* [0-9.]* \([0-9.]*\).*/\1/p' "$OUT/bench-guest.log")

# Two namespaces joined by a veth pair (busybox names the peer itself).
unshare -n sleep 100000 & ns_a=$!
unshare -n sleep 100000 & ns_b=$!
sleep 0.2
ip link add kva type veth
peer=$(ip -o link show | sed -n 's/^[0-9]*: \([^@:]*\)@kva:.*/\1/p')
ip link set kva netns "$ns_a" && ip link set "$peer" netns "$ns_b" ||
  { echo "BENCH-NET veth setup failed"; kill "$ns_a" "$ns_b"; exit 1; }
in_a() { nsenter -t "$ns_a" -n "$@"; }
in_b() { nsenter -t "$ns_b" -n "$@"; }
in_a sh -c 'ip link set lo up && ip addr add 10.0.79.1/24 dev kva && ip link set kva up'
in_b sh -c "ip link set lo up && ip addr add 10.0.79.2/24 dev $peer && ip link set $peer up"
n_ping=$(in_a ping -c 20 -i 0.2 -q 10.0.79.2 | ping_avg)
in_b tcpbench sink 5001 1 &
a2b=$(in_a tcpbench send 10.0.79.2 5001 "$mib" | rate)
in_a tcpbench sink 5002 1 &
b2a=$(in_b tcpbench send 10.0.79.1 5002 "$mib" | rate)
kill "$ns_a" "$ns_b" "$l1_sink" 2>/dev/null

ratio() { awk -v g="$1" -v h="$2" 'BEGIN { if (h > 0 && g > 0) printf "%.0f%%", 100 * g / h; else print "n/a" }'; }
row() { printf 'BENCH-NET %-14s %12s %12s %8s\n' "$@"; }
echo "BENCH-NET ${mib} MiB per transfer; guest = kiln virtio-net + tap + bridge, netns = veth pair"
row "" guest netns guest/netns
row "guest->host" "${g2h:-?} MiB/s" "${a2b:-?} MiB/s" "$(ratio "$g2h" "$a2b")"
row "host->guest" "${h2g:-?} MiB/s" "${b2a:-?} MiB/s" "$(ratio "$h2g" "$b2a")"
row "ping RTT avg" "${g_ping:-?} ms" "${n_ping:-?} ms" "$(ratio "$g_ping" "$n_ping")"
[ -n "$g2h" ] && [ -n "$h2g" ] || { echo "guest output:"; tail -n 20 "$OUT/bench-guest.log"; }

#!/bin/sh
# Host half of the vsock benchmark (issue 9); runs where kiln runs
# (directly, or in the nested host). A kiln guest with --vsock: throughput
# each way and round trips, the host connecting through kiln's socket
# (CONNECT/OK) and the guest connecting to <socket>_PORT; then the same
# tool over a plain Unix socket on this host, for the ratios.
# Env: KILN, KERNEL, ROOTFS (with the guest half and vsock-probe), PROBE,
# OUT (logs), SIZE_MB, ROUNDS.
set -u
mib=${SIZE_MB:-256} rounds=${ROUNDS:-1000}
OUT=${OUT:-/tmp}
P=$PROBE
base="console=ttyS0 reboot=k panic=1 pci=off quiet"
dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-vbench.XXXXXX")
sock=$dir/v.sock
"$P" listen "unix:${sock}_5101" echo &
l_echo=$!
"$P" listen "unix:${sock}_5102" sink &
l_sink=$!
"$KILN" boot --kernel "$KERNEL" --memory 256 --disk "path=$ROOTFS,root,readonly" \
  --vsock "cid=3,socket=$sock" --cmdline "$base kiln.run=bench kiln.mib=$mib kiln.rounds=$rounds" \
  </dev/null >"$OUT/bench-guest.log" 2>&1 &
kpid=$!
i=0
until grep -q KILN-BENCH-READY "$OUT/bench-guest.log"; do
  i=$((i + 1))
  if [ "$i" -gt 3000 ] || ! kill -0 "$kpid" 2>/dev/null; then break; fi
  sleep 0.1
done
h2g=$("$P" bench-send "hybrid:$sock:5002" "$mib" 2>&1)
g2h=$("$P" bench-recv "hybrid:$sock:5003" "$mib" 2>&1)
lat=$("$P" bench-latency "hybrid:$sock:5001" "$rounds" 2>&1)
"$P" stream "hybrid:$sock:5009" </dev/null >/dev/null 2>&1
wait "$kpid"
kill "$l_echo" "$l_sink" 2>/dev/null
gline() { sed -n "s/^KILN-BENCH $1 //p" "$OUT/bench-guest.log" | tr -d '\r' | head -n 1; }
g_send=$(gline guest-send)
g_lat=$(gline guest-latency)

# The same over a plain Unix socket on this host.
pids=
for m in echo sink source; do "$P" listen "unix:$dir/$m" "$m" --ready "$dir/$m.ready" & pids="$pids $!"; done
i=0
while { [ ! -e "$dir/echo.ready" ] || [ ! -e "$dir/sink.ready" ] || [ ! -e "$dir/source.ready" ]; } && [ "$i" -lt 50 ]; do
  sleep 0.1; i=$((i + 1))
done
u_send=$("$P" bench-send "unix:$dir/sink" "$mib" 2>&1)
u_recv=$("$P" bench-recv "unix:$dir/source" "$mib" 2>&1)
u_lat=$("$P" bench-latency "unix:$dir/echo" "$rounds" 2>&1)
kill $pids 2>/dev/null
rm -rf "$dir"

# Fields of the probe's lines (see tests/e2e/vsock-probe/src/bench.rs).
field() { case $1 in bench-*) echo "$1" | cut -d' ' -f"$2" ;; *) echo '?' ;; esac; }
rate() { field "$1" 6; }
ratio() { awk -v g="$1" -v h="$2" 'BEGIN { if (h > 0 && g > 0) printf "%.0f%%", 100 * g / h; else print "n/a" }'; }
row() { printf 'BENCH-VSOCK %-32s %16s %16s %8s\n' "$@"; }
echo "BENCH-VSOCK $mib MiB per transfer, $rounds round trips of 64 bytes; vsock = kiln virtio-vsock, unix = the same tool over a host Unix socket"
row "" vsock unix vsock/unix
row "host->guest (host connects)" "$(rate "$h2g") MiB/s" "$(rate "$u_send") MiB/s" "$(ratio "$(rate "$h2g")" "$(rate "$u_send")")"
row "guest->host (host connects)" "$(rate "$g2h") MiB/s" "$(rate "$u_recv") MiB/s" "$(ratio "$(rate "$g2h")" "$(rate "$u_recv")")"
row "guest->host (guest connects)" "$(rate "$g_send") MiB/s" "$(rate "$u_send") MiB/s" "$(ratio "$(rate "$g_send")" "$(rate "$u_send")")"
row "RTT median/p90 (host connects)" "$(field "$lat" 4)/$(field "$lat" 7) us" "$(field "$u_lat" 4)/$(field "$u_lat" 7) us" "$(ratio "$(field "$lat" 4)" "$(field "$u_lat" 4)")"
row "RTT median/p90 (guest connects)" "$(field "$g_lat" 4)/$(field "$g_lat" 7) us" "$(field "$u_lat" 4)/$(field "$u_lat" 7) us" "$(ratio "$(field "$g_lat" 4)" "$(field "$u_lat" 4)")"
row "connect+echo median/p90 (host)" "$(field "$lat" 13)/$(field "$lat" 16) us" "$(field "$u_lat" 13)/$(field "$u_lat" 16) us" "$(ratio "$(field "$lat" 13)" "$(field "$u_lat" 13)")"
row "connect+echo median/p90 (guest)" "$(field "$g_lat" 13)/$(field "$g_lat" 16) us" "$(field "$u_lat" 13)/$(field "$u_lat" 16) us" "$(ratio "$(field "$g_lat" 13)" "$(field "$u_lat" 13)")"
for l in "$h2g" "$g2h" "$lat" "$g_send" "$g_lat"; do
  case $l in bench-*) ;; *) echo "BENCH-VSOCK error: ${l:-no result}"; failed=1 ;; esac
done
[ -z "${failed:-}" ] || { echo "guest output:"; tail -n 20 "$OUT/bench-guest.log"; }

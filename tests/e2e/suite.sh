#!/bin/sh
# kiln end-to-end scenarios: real Linux guests booted by kiln on a KVM that
# can run them (hardware VT-x/AMD-V, or kvm-amd inside tools/nested-host).
# POSIX sh: it runs under busybox in the nested host.
#
# Environment: KILN (binary), KERNEL (vmlinux, PVH), BZIMAGE, INITRD,
# ROOTFS (ext4 root image holding the scripts of tests/e2e/guest under
# /kiln/run), DISTRO_KERNEL and DISTRO_INITRD (a distribution's bzImage and
# an initramfs with its virtio modules listed in /etc/kiln/modules, for
# distro-kernel), VSOCK_PROBE (tests/e2e/vsock-probe, static; also in the
# guests as /usr/bin/vsock-probe) for the vsock-* scenarios and
# distro-kernel, and optionally OUT (per-scenario logs, default /out),
# SCRATCH (where disk images are made: a tmpfs or ext4, default /tmp) and
# ONLY (space-separated scenario names to run). Needs mkfs.ext4, e2fsck
# and debugfs for the disk scenarios; the net-* and distro-kernel scenarios
# need root (or unprivileged user namespaces), the bridge and tun modules,
# and busybox's unshare, ip, tunctl, brctl and httpd. They run in a private
# network namespace (the suite reruns itself there).
# Prints one line per scenario: E2E-RESULT <name> PASS|FAIL <detail>
# and E2E-TIME <name> <seconds to KILN-GUEST-READY> <seconds total>.

set -u
OUT=${OUT:-/out}
mkdir -p "$OUT"
BASE="console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd quiet"
GUEST_TIMEOUT=${GUEST_TIMEOUT:-240}

now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# run_kiln NAME ARGS... : runs kiln, logs to $OUT/NAME.log, sets $status,
# $ready (seconds to KILN-GUEST-READY or "-"), $total.
run_kiln() {
  name=$1; shift
  log=$OUT/$name.log
  start=$(now)
  # Each output line is stamped as it arrives, so time-to-/init is measured
  # here rather than trusted from the guest's clock.
  { timeout -s KILL "$GUEST_TIMEOUT" "$KILN" boot "$@" </dev/null 2>"$OUT/$name.err"
    echo "KILN-STATUS $?"; } | while IFS= read -r line; do
      printf '%s %s\n' "$(now)" "$line"
    done >"$log"
  end=$(now)
  status=$(sed -n 's/^[0-9.]* KILN-STATUS \([0-9]*\)$/\1/p' "$log")
  t=$(grep -m1 'KILN-GUEST-READY' "$log" | cut -d' ' -f1)
  if [ -n "$t" ]; then ready=$(elapsed "$start" "$t"); else ready=-; fi
  total=$(elapsed "$start" "$end")
  echo "E2E-TIME $name $ready $total"
}

has() { grep -q -- "$2" "$OUT/$1.log"; }
pass() { echo "E2E-RESULT $1 PASS $2"; }
fail() {
  echo "E2E-RESULT $1 FAIL $2"
  echo "---- $1 console (last 30 lines) ----"; tail -n 30 "$OUT/$1.log"
  echo "---- $1 stderr ----"; cat "$OUT/$1.err"
}
wanted() { [ -z "${ONLY:-}" ] || case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# 1. vmlinux (PVH entry) + initramfs reaches /init and powers off (ACPI S5).
if wanted boot-vmlinux; then
  run_kiln boot-vmlinux --kernel "$KERNEL" --initrd "$INITRD" --boot-timer --metrics "$OUT/boot-vmlinux.json"
  # /init's first act is the boot-timer write (0xc0000000 <- 123): kiln
  # must have seen it, both in the --boot-timer line and in --metrics.
  user_space=$(sed -n 's/.*"user_space":\([0-9]*\).*/\1/p' "$OUT/boot-vmlinux.json" 2>/dev/null)
  if [ "$status" != 0 ] || ! has boot-vmlinux KILN-GUEST-READY; then fail boot-vmlinux "status=$status ready=$ready"
  elif [ -z "$user_space" ]; then fail boot-vmlinux "no user_space phase in --metrics: $(cat "$OUT/boot-vmlinux.json" 2>/dev/null)"
  elif ! grep -q 'kiln: boot: user space reached' "$OUT/boot-vmlinux.err"; then fail boot-vmlinux "no --boot-timer line on stderr"
  else pass boot-vmlinux "ready in ${ready}s, user space at $((user_space / 1000)) ms by the boot timer"; fi
fi

# 2. --cpus, --memory and --cmdline reach the guest.
if wanted cpus-memory-cmdline; then
  run_kiln cpus-memory-cmdline --kernel "$KERNEL" --initrd "$INITRD" --cpus 2 --memory 256 \
    --cmdline "$BASE kiln.marker=e2e-7f3a"
  info=$(grep -m1 'KILN-INFO' "$OUT/cpus-memory-cmdline.log" | cut -d' ' -f2-)
  mem=$(echo "$info" | sed -n 's/.*memtotal_kb=\([0-9]*\).*/\1/p')
  if [ "$status" != 0 ]; then fail cpus-memory-cmdline "status=$status"
  elif ! echo "$info" | grep -q 'cpus=2 '; then fail cpus-memory-cmdline "want cpus=2: $info"
  # MemTotal excludes what the kernel reserves for itself: expect 200-256 MiB.
  elif [ -z "$mem" ] || [ "$mem" -lt 204800 ] || [ "$mem" -gt 262144 ]; then fail cpus-memory-cmdline "memtotal_kb=$mem"
  elif ! has cpus-memory-cmdline 'KILN-CMDLINE .*kiln.marker=e2e-7f3a'; then fail cpus-memory-cmdline "marker missing from /proc/cmdline"
  else pass cpus-memory-cmdline "$info"; fi
fi

# 3. The bzImage of the same kernel (64-bit boot protocol entry).
if wanted bzimage; then
  run_kiln bzimage --kernel "$BZIMAGE" --initrd "$INITRD"
  if [ "$status" = 0 ] && has bzimage KILN-GUEST-READY; then pass bzimage "ready in ${ready}s"
  else fail bzimage "status=$status ready=$ready"; fi
fi

# 4. A guest panic (init exits) ends kiln non-zero with one clear line.
if wanted panic; then
  run_kiln panic --kernel "$KERNEL" --initrd "$INITRD" --cmdline "$BASE kiln.panic=1"
  if [ "$status" = 3 ] && grep -q 'panicked' "$OUT/panic.err" && [ "$(wc -l <"$OUT/panic.err")" -eq 1 ]; then
    pass panic "status 3 after ${total}s: $(cat "$OUT/panic.err")"
  else fail panic "status=$status"; fi
fi

# 5. --no-acpi: MP table for the CPUs, reboot through the i8042.
if wanted no-acpi; then
  run_kiln no-acpi --kernel "$KERNEL" --initrd "$INITRD" --no-acpi --cpus 2 --cmdline "$BASE kiln.halt=reboot"
  if [ "$status" = 0 ] && has no-acpi 'KILN-INFO cpus=2 '; then pass no-acpi "rebooted, 2 CPUs"
  else fail no-acpi "status=$status"; fi
fi
SCRATCH=${SCRATCH:-/tmp}
# Allocated KiB of a (sparse) file.
allocated_kib() { du -k "$1" | cut -f1; }
# start_kiln NAME ARGS...: kiln in the background, console to $OUT/NAME.log.
start_kiln() {
  name=$1; shift
  "$KILN" boot "$@" </dev/null >"$OUT/$name.log" 2>"$OUT/$name.err" &
  kpid=$!
}
# wait_for NAME PATTERN SECS: until PATTERN shows in the log (0) or timeout (1).
wait_for() {
  i=0
  while [ "$i" -lt "$(($3 * 5))" ]; do
    grep -q -- "$2" "$OUT/$1.log" && return 0
    kill -0 "$kpid" 2>/dev/null || { grep -q -- "$2" "$OUT/$1.log"; return $?; }
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
# A small ext4 data disk with one file, made on the host side.
make_data_disk() {
  rm -rf "$SCRATCH/tree" && mkdir -p "$SCRATCH/tree" && echo "kiln read-only data" >"$SCRATCH/tree/hello.txt"
  rm -f "$1" && mkfs.ext4 -q -F -E nodiscard -d "$SCRATCH/tree" "$1" "$2" >/dev/null
}
sum() { sha256sum "$1" | cut -d' ' -f1; }

# 6. An ext4 root disk found through ACPI: the guest writes 32 MiB, syncs and
#    powers off; the file reads back intact from the host and fsck is clean.
if wanted disk-write; then
  img=$SCRATCH/root-write.ext4
  cp "$ROOTFS" "$img"
  run_kiln disk-write --kernel "$KERNEL" --disk "path=$img,root" --cmdline "$BASE kiln.run=write32"
  want=$(yes KILN-DATA-0123456789 | head -c 33554432 | sha256sum | cut -d' ' -f1)
  debugfs -R "dump /data.bin $SCRATCH/data.bin" "$img" >/dev/null 2>&1
  got=$( [ -f "$SCRATCH/data.bin" ] && sum "$SCRATCH/data.bin")
  fsck=$(e2fsck -fn "$img" >"$OUT/disk-write.fsck" 2>&1; echo $?)
  if [ "$status" != 0 ]; then fail disk-write "status=$status"
  # With ACPI on, kiln lists disks only in the DSDT: no virtio_mmio.device=.
  elif has disk-write 'KILN-CMDLINE .*virtio_mmio.device='; then fail disk-write "disk was on the command line, not found via ACPI"
  elif ! has disk-write "KILN-WROTE $want"; then fail disk-write "guest did not write the expected file"
  elif [ "$got" != "$want" ]; then fail disk-write "host reads back $got, want $want"
  elif [ "$fsck" != 0 ]; then fail disk-write "e2fsck -fn exit $fsck: $(tail -n 3 "$OUT/disk-write.fsck")"
  else pass disk-write "found via ACPI, 32 MiB intact, e2fsck clean"; fi
  rm -f "$img" "$SCRATCH/data.bin"
fi

# 7. SIGKILL after the guest's sync loses nothing that was synced.
if wanted disk-sigkill; then
  img=$SCRATCH/root-kill.ext4
  cp "$ROOTFS" "$img"
  start_kiln disk-sigkill --kernel "$KERNEL" --disk "path=$img,root" --cmdline "$BASE kiln.run=sync-then-hang"
  if wait_for disk-sigkill KILN-SYNCED "$GUEST_TIMEOUT"; then synced=yes; else synced=no; fi
  kill -9 "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null
  # Replay the journal as the next boot would, then read the file.
  e2fsck -fy "$img" >"$OUT/disk-sigkill.fsck" 2>&1; replay=$?
  want=$(yes KILN-SYNCED-DATA | head -c 8388608 | sha256sum | cut -d' ' -f1)
  debugfs -R "dump /synced.bin $SCRATCH/synced.bin" "$img" >/dev/null 2>&1
  got=$( [ -f "$SCRATCH/synced.bin" ] && sum "$SCRATCH/synced.bin")
  clean=$(e2fsck -fn "$img" >/dev/null 2>&1; echo $?)
  if [ "$synced" != yes ]; then fail disk-sigkill "guest never reported the sync"
  elif [ "$replay" -gt 1 ] || [ "$clean" != 0 ]; then fail disk-sigkill "fsck after kill: replay=$replay clean=$clean"
  elif [ "$got" != "$want" ]; then fail disk-sigkill "synced file lost or damaged: $got"
  else pass disk-sigkill "synced 8 MiB survived SIGKILL (fsck replay exit $replay)"; fi
  rm -f "$img" "$SCRATCH/synced.bin"
fi

# 8. A read-only disk, found through the command line (--no-acpi): writes
#    fail, the image is bit-for-bit and timestamp unchanged.
if wanted disk-readonly; then
  img=$SCRATCH/data-ro.ext4
  make_data_disk "$img" 16M
  before=$(sum "$img"); mtime=$(stat -c %Y "$img")
  cp "$ROOTFS" "$SCRATCH/root-ro.ext4"
  run_kiln disk-readonly --kernel "$KERNEL" --no-acpi --disk "path=$SCRATCH/root-ro.ext4,root" \
    --disk "path=$img,readonly" --cmdline "$BASE kiln.run=readonly kiln.halt=reboot"
  if [ "$status" != 0 ]; then fail disk-readonly "status=$status"
  elif ! has disk-readonly 'KILN-CMDLINE .*virtio_mmio.device=4K@0xd0001000:6'; then fail disk-readonly "disks not on the command line"
  elif ! has disk-readonly 'KILN-RO-CONTENT kiln read-only data'; then fail disk-readonly "could not read the disk"
  elif ! has disk-readonly 'KILN-RO-TOUCH .*Read-only file system'; then fail disk-readonly "write did not fail with EROFS"
  elif has disk-readonly 'KILN-RO-DD 0'; then fail disk-readonly "raw write to the device succeeded"
  elif [ "$(sum "$img")" != "$before" ] || [ "$(stat -c %Y "$img")" != "$mtime" ]; then fail disk-readonly "image changed"
  else pass disk-readonly "found via the command line, EROFS in the guest, image unchanged"; fi
  rm -f "$img" "$SCRATCH/root-ro.ext4"
fi

# 9. Discard: deleting a file and fstrim punch holes in the image.
if wanted disk-discard; then
  img=$SCRATCH/data-discard.ext4
  make_data_disk "$img" 64M
  cp "$ROOTFS" "$SCRATCH/root-discard.ext4"
  start_kiln disk-discard --kernel "$KERNEL" --disk "path=$SCRATCH/root-discard.ext4,root" \
    --disk "path=$img" --cmdline "$BASE kiln.run=discard"
  full=-; trimmed=-
  if wait_for disk-discard KILN-PHASE1 "$GUEST_TIMEOUT"; then full=$(allocated_kib "$img"); fi
  wait "$kpid"; status=$?
  trimmed=$(allocated_kib "$img")
  if [ "$status" != 0 ] || [ "$full" = - ]; then fail disk-discard "status=$status full=$full"
  elif [ "$((full - trimmed))" -lt 8192 ]; then fail disk-discard "allocated ${full} KiB -> ${trimmed} KiB"
  else pass disk-discard "allocated ${full} KiB -> ${trimmed} KiB"; fi
  rm -f "$img" "$SCRATCH/root-discard.ext4"
fi

# ---- vsock (issue 9). One guest (guest/vsock) runs the listeners and a
# guest-initiated client; the host side runs vsock-probe (VSOCK_PROBE)
# against kiln's socket (Firecracker's CONNECT/OK convention) and listens at
# <socket>_PORT for the guest. Each check reports as its own scenario.
VSOCK_SCENARIOS="vsock-host-to-guest vsock-guest-to-host vsock-guest-connect vsock-echo-100 vsock-no-listener vsock-stalled-reader"
vsock_wanted() { for v in $VSOCK_SCENARIOS; do wanted "$v" && return 0; done; return 1; }
# A short directory: kiln takes socket paths of at most 96 bytes.
vsock_dir() { mktemp -d "${TMPDIR:-/tmp}/kiln-vsock.XXXXXX"; }
if vsock_wanted; then
  n=vsock
  P=${VSOCK_PROBE:-}
  vdir=$(vsock_dir); sock=$vdir/v.sock
  # The host's listeners, up before kiln: 64 MiB lands in a file (summed
  # after), and an echo server.
  "$P" listen "unix:${sock}_5100" stdio --count 1 --ready "$vdir/r5100" \
    </dev/null >"$SCRATCH/vsock-g2h.bin" 2>"$OUT/vsock.g2h.err" &
  g2h_pid=$!
  "$P" listen "unix:${sock}_5101" echo --ready "$vdir/r5101" 2>"$OUT/vsock.host-echo.err" &
  hecho_pid=$!
  i=0
  while { [ ! -e "$vdir/r5100" ] || [ ! -e "$vdir/r5101" ]; } && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  start=$(now)
  : >"$OUT/$n.log"; : >"$OUT/$n.err"
  h2g_rc=- echo100=- refused=- stall=- kpid=
  if [ ! -x "$P" ]; then vsock_err="VSOCK_PROBE '$P' is not an executable (tests/e2e/vsock-probe, built by tests/e2e.rs)"
  elif [ ! -e "$vdir/r5100" ] || [ ! -e "$vdir/r5101" ]; then vsock_err="host listeners did not start: $(cat "$OUT"/vsock.*.err)"
  else
    timeout -s KILL "$GUEST_TIMEOUT" "$KILN" boot --kernel "$KERNEL" --memory 256 \
      --disk "path=$ROOTFS,root,readonly" --vsock "cid=3,socket=$sock" \
      --cmdline "$BASE kiln.run=vsock" </dev/null >"$OUT/$n.log" 2>"$OUT/$n.err" &
    kpid=$!
    vsock_err="the guest never said KILN-VSOCK-READY"
  fi
  if [ -n "$kpid" ] && wait_for $n KILN-VSOCK-READY "$GUEST_TIMEOUT"; then
    vsock_err=
    "$P" gen 64M --seed 1 | "$P" stream "hybrid:$sock:5002" --timeout 60 >/dev/null 2>"$OUT/vsock.h2g.err"
    h2g_rc=$?
    echo100=$("$P" echo-many "hybrid:$sock:5001" 100 --timeout 60 2>&1)
    echo100="$? $echo100"
    refused=$("$P" expect-refused "hybrid:$sock:5199" --within 10 2>&1)
    refused="$? $refused"
    stall=$("$P" stall-check "hybrid:$sock:5003" "hybrid:$sock:5001" --stall 3 --timeout 60 2>&1)
    stall="$? $stall"
    # Done: the guest reports and powers off.
    "$P" stream "hybrid:$sock:5009" --timeout 60 </dev/null >/dev/null 2>&1
  elif [ -n "$kpid" ]; then
    kill "$kpid" 2>/dev/null # timeout passes the TERM on to kiln
  fi
  status=-; [ -z "$kpid" ] || { wait "$kpid"; status=$?; }
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  # The guest sent its 64 MiB long before it powered off; give the
  # listener a moment in case the file is still being written.
  i=0
  while kill -0 "$g2h_pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill "$g2h_pid" "$hecho_pid" 2>/dev/null
  wait "$g2h_pid"; g2h_rc=$?
  wait "$hecho_pid" 2>/dev/null
  for v in $VSOCK_SCENARIOS; do cp "$OUT/$n.log" "$OUT/$v.log"; cat "$OUT/$n.err" "$OUT"/vsock.*.err >"$OUT/$v.err" 2>/dev/null; done
  vline() { sed -n "s/^$1 //p" "$OUT/$n.log" | tr -d '\r' | head -n 1; }
  if [ -z "$vsock_err" ] && [ "$status" != 0 ]; then vsock_err="kiln exit status $status"; fi
  if [ -z "$vsock_err" ] && has $n KILN-VSOCK-ERRORS; then echo "vsock: guest listener errors: $(vline KILN-VSOCK-ERRORS)"; fi
  # The first checked field of each line is an exit status.
  code() { echo "${1%% *}"; }
  rest() { case $1 in *' '*) echo "${1#* }" ;; *) echo ;; esac; }

  if ! wanted vsock-host-to-guest; then :
  elif [ -n "$vsock_err" ]; then fail vsock-host-to-guest "$vsock_err"
  else
    want=$("$P" gen 64M --seed 1 | sha256sum | cut -d' ' -f1)
    got=$(vline KILN-VSOCK-H2G)
    if [ "$h2g_rc" != 0 ]; then fail vsock-host-to-guest "host stream exit $h2g_rc: $(cat "$OUT/vsock.h2g.err")"
    elif [ "$got" != "0 $want" ]; then fail vsock-host-to-guest "guest got '$got', want '0 $want'"
    elif [ -e "$sock" ]; then fail vsock-host-to-guest "kiln left its socket $sock behind"
    else pass vsock-host-to-guest "64 MiB through CONNECT 5002, sha256 equal, half-closed both ways; socket removed on exit"; fi
  fi
  if ! wanted vsock-guest-to-host; then :
  elif [ -n "$vsock_err" ]; then fail vsock-guest-to-host "$vsock_err"
  else
    want=$("$P" gen 64M --seed 2 | sha256sum | cut -d' ' -f1)
    got=$(sum "$SCRATCH/vsock-g2h.bin")
    sent=$(vline KILN-VSOCK-G2H)
    if [ "$(code "$sent")" != 0 ]; then fail vsock-guest-to-host "guest stream to CID 2 port 5100: $sent"
    elif [ "$g2h_rc" != 0 ]; then fail vsock-guest-to-host "host listener at ${sock}_5100 exit $g2h_rc: $(cat "$OUT/vsock.g2h.err")"
    elif [ "$got" != "$want" ]; then fail vsock-guest-to-host "host got $(wc -c <"$SCRATCH/vsock-g2h.bin") bytes, sha256 $got, want 64 MiB $want"
    else pass vsock-guest-to-host "64 MiB guest-initiated to ${sock##*/}_5100, sha256 equal"; fi
  fi
  if ! wanted vsock-guest-connect; then :
  elif [ -n "$vsock_err" ]; then fail vsock-guest-connect "$vsock_err"
  else
    gecho=$(vline KILN-VSOCK-GUEST-ECHO); grefused=$(vline KILN-VSOCK-GUEST-REFUSED)
    if [ "$(code "$gecho")" != 0 ]; then fail vsock-guest-connect "echo with the host listener at _5101: $gecho"
    elif [ "$(code "$grefused")" != 0 ]; then fail vsock-guest-connect "connect to port 5199 without a host listener: $grefused"
    else pass vsock-guest-connect "$(rest "$gecho") (host listener at _5101); port 5199 without one: $(rest "$grefused")"; fi
  fi
  if ! wanted vsock-echo-100; then :
  elif [ -n "$vsock_err" ]; then fail vsock-echo-100 "$vsock_err"
  elif [ "$(code "$echo100")" != 0 ]; then fail vsock-echo-100 "$(rest "$echo100")"
  else pass vsock-echo-100 "$(rest "$echo100")"; fi
  if ! wanted vsock-no-listener; then :
  elif [ -n "$vsock_err" ]; then fail vsock-no-listener "$vsock_err"
  elif [ "$(code "$refused")" != 0 ]; then fail vsock-no-listener "$(rest "$refused")"
  else pass vsock-no-listener "$(rest "$refused")"; fi
  if ! wanted vsock-stalled-reader; then :
  elif [ -n "$vsock_err" ]; then fail vsock-stalled-reader "$vsock_err"
  elif [ "$(code "$stall")" != 0 ]; then fail vsock-stalled-reader "$(rest "$stall")"
  else pass vsock-stalled-reader "$(rest "$stall")"; fi
  rm -rf "$vdir" "$SCRATCH/vsock-g2h.bin"
fi

# ---- Networking (issue 8). A bridge with an address in the (nested) host,
# one tap per guest, busybox httpd on the bridge address. All of it lives in
# a private network namespace, so a direct run never touches the host's
# network: the suite reruns itself there for the net-* scenarios.
NET_SCENARIOS="net-ping-http net-acpi-only net-two-guests net-absent distro-kernel"
net_wanted() { for n in $NET_SCENARIOS; do wanted "$n" && return 0; done; return 1; }
if [ -z "${KILN_E2E_NETNS:-}" ] && net_wanted; then
  only=; for n in $NET_SCENARIOS; do wanted "$n" && only="$only $n"; done
  if [ "$(id -u)" = 0 ]; then netns="unshare -n"; else netns="unshare -r -n"; fi
  if ! KILN_E2E_NETNS=1 ONLY="$only" $netns sh "$0"; then
    for n in $only; do echo "E2E-RESULT $n FAIL could not run in a private network namespace ($netns)"; done
  fi
elif [ -n "${KILN_E2E_NETNS:-}" ]; then
  BR=kbr0 NET=10.0.77
  ip link set lo up
  www=$SCRATCH/www
  rm -rf "$www" && mkdir -p "$www/cgi-bin"
  head -c 16777216 /dev/urandom >"$www/big.bin"
  big_sum=$(sum "$www/big.bin")
  # The upload lands in $SCRATCH/up.bin; the reply carries its size and sum.
  cat >"$www/cgi-bin/up" <<EOF
#!/bin/sh
head -c "\$CONTENT_LENGTH" >$SCRATCH/up.bin
printf 'Content-Type: text/plain\r\n\r\n'
echo "got \$(wc -c <$SCRATCH/up.bin) \$(sha256sum $SCRATCH/up.bin | cut -d' ' -f1)"
EOF
  chmod +x "$www/cgi-bin/up"
  # A bridge without STP (the default) forwards on a port as soon as it
  # has carrier: no forwarding delay to wait out.
  net_setup() {
    ip link add "$BR" type bridge && ip addr add "$NET.1/24" dev "$BR" && ip link set "$BR" up || return 1
    for t in ktap0 ktap1 ktap2; do
      tunctl -t "$t" >/dev/null && brctl addif "$BR" "$t" && ip link set "$t" up || return 1
    done
  }
  net_err=
  net_setup >"$OUT/net-setup.log" 2>&1 || net_err="bridge/tap setup failed: $(tail -n 2 "$OUT/net-setup.log" | tr '\n' ' ')"
  httpd -f -p "$NET.1:80" -h "$www" & httpd_pid=$!
  ip_arg() { echo "ip=$NET.$1::$NET.1:255.255.255.0::eth0:off"; }
  # Root disks are the shared test image, read-only: guests may run at once.
  ROOT="path=$ROOTFS,root,readonly"

  # 10. ping, 16 MiB down and up with sha256 on both sides. kiln with ACPI
  #     lists the card only in the DSDT (no virtio_mmio.device=), so this
  #     also proves discovery through ACPI alone (reported as net-acpi-only).
  if wanted net-ping-http || wanted net-acpi-only; then
    n=net-ping-http
    if [ -n "$net_err" ]; then fail $n "$net_err"; fail net-acpi-only "$net_err"; else
    rm -f "$SCRATCH/up.bin"
    run_kiln $n --kernel "$KERNEL" --memory 256 --disk "$ROOT" --net tap=ktap0 \
      --cmdline "$BASE kiln.run=net-http $(ip_arg 2)"
    line() { sed -n "s/^[0-9.]* $1 //p" "$OUT/$n.log" | tr -d '\r' | head -n 1; }
    ping_l=$(line KILN-NET-PING); down=$(line KILN-NET-DOWN)
    upsent=$(line KILN-NET-UPSENT); upreply=$(line KILN-NET-UPREPLY)
    up_sum=$( [ -f "$SCRATCH/up.bin" ] && sum "$SCRATCH/up.bin")
    if [ "$status" != 0 ]; then fail $n "status=$status"
    elif ! has $n 'KILN-NET-UP eth0'; then fail $n "no eth0 in the guest: $(line KILN-NET-IFACES)"
    elif [ "${ping_l%% *}" != 0 ]; then fail $n "ping $NET.1 failed: $ping_l"
    elif [ "$down" != "0 16777216 $big_sum" ]; then fail $n "download: got '$down', want '0 16777216 $big_sum'"
    elif [ -z "$upsent" ] || [ "$upreply" != "0 got $upsent" ] || [ "${upsent#* }" != "$up_sum" ]; then
      fail $n "upload: guest sent '$upsent', server replied '$upreply', host file $up_sum"
    else pass $n "ping ${ping_l#0 }; 16 MiB down and 16 MiB up, sha256 equal on both sides"; fi
    if ! wanted net-acpi-only; then :
    elif has $n 'KILN-CMDLINE .*virtio_mmio.device='; then fail net-acpi-only "devices were on the command line"
    elif ! has $n 'KILN-NET-UP eth0'; then fail net-acpi-only "no eth0 in the guest"
    else pass net-acpi-only "no virtio_mmio.device= on the command line; eth0 found through ACPI"; fi
    rm -f "$SCRATCH/up.bin"
    fi
  fi

  # 11. Two guests on one bridge at once reach each other: ping and 1 MiB by
  #     HTTP each way. The second boots with --no-acpi: its card is found
  #     through virtio_mmio.device= on the command line.
  if wanted net-two-guests; then
    n=net-two-guests
    if [ -n "$net_err" ]; then fail $n "$net_err"; else
    # Both in the background at once, each under the same time limit as
    # run_kiln's guests.
    boot_bg() {
      timeout -s KILL "$GUEST_TIMEOUT" "$KILN" boot "$@" </dev/null >"$OUT/$bg.log" 2>"$OUT/$bg.err" &
    }
    start=$(now)
    bg=$n-a; boot_bg --kernel "$KERNEL" --disk "$ROOT" --net tap=ktap1 \
      --cmdline "$BASE kiln.run=net-peer $(ip_arg 3) kiln.peer=$NET.4"
    pid_a=$!
    bg=$n-b; boot_bg --kernel "$KERNEL" --disk "$ROOT" --net tap=ktap2 --no-acpi \
      --cmdline "$BASE kiln.run=net-peer $(ip_arg 4) kiln.peer=$NET.3 kiln.halt=reboot"
    pid_b=$!
    wait "$pid_a"; st_a=$?; wait "$pid_b"; st_b=$?
    echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
    cp "$OUT/$n-a.log" "$OUT/$n.log"; cat "$OUT/$n-b.log" >>"$OUT/$n.log"
    cat "$OUT/$n-a.err" "$OUT/$n-b.err" >"$OUT/$n.err"
    pline() { sed -n "s/^$2 //p" "$OUT/$n-$1.log" | tr -d '\r' | head -n 1; }
    if [ "$st_a" != 0 ] || [ "$st_b" != 0 ]; then fail $n "status a=$st_a b=$st_b"
    elif ! grep -q 'KILN-CMDLINE .*virtio_mmio.device=' "$OUT/$n-b.log"; then fail $n "--no-acpi guest: card not on the command line"
    elif [ "$(pline a KILN-PEER-PING | cut -d' ' -f1)" != 0 ] || [ "$(pline b KILN-PEER-PING | cut -d' ' -f1)" != 0 ]; then
      fail $n "ping: a '$(pline a KILN-PEER-PING)' b '$(pline b KILN-PEER-PING)'"
    elif [ "$(pline a KILN-PEER-GOT)" != "0 $(pline b KILN-PEER-SERVE)" ] || [ "$(pline b KILN-PEER-GOT)" != "0 $(pline a KILN-PEER-SERVE)" ]; then
      fail $n "transfer: a got '$(pline a KILN-PEER-GOT)' of '$(pline b KILN-PEER-SERVE)', b got '$(pline b KILN-PEER-GOT)' of '$(pline a KILN-PEER-SERVE)'"
    elif ! grep -q KILN-PEER-BOTH-DONE "$OUT/$n-a.log" || ! grep -q KILN-PEER-BOTH-DONE "$OUT/$n-b.log"; then fail $n "a guest did not hear its peer finish"
    else pass $n "both up at once; ping $(pline a KILN-PEER-PING | cut -d' ' -f2-); 1 MiB each way intact (one via ACPI, one via the command line)"; fi
    fi
  fi

  # 12. No --net: the guest has no eth0.
  if wanted net-absent; then
    run_kiln net-absent --kernel "$KERNEL" --disk "$ROOT" --cmdline "$BASE kiln.run=net-absent"
    ifaces=$(sed -n 's/^[0-9.]* KILN-NET-IFACES //p' "$OUT/net-absent.log" | tr -d '\r')
    if [ "$status" != 0 ] || [ -z "$ifaces" ]; then fail net-absent "status=$status, no interface list"
    else case " $ifaces " in
      *" eth0 "*) fail net-absent "eth0 present without --net: $ifaces" ;;
      *" lo "*) pass net-absent "no eth0; interfaces: $(echo $ifaces)" ;;
      *) fail net-absent "interface list without lo: $ifaces" ;;
    esac; fi
  fi
  # 13. A distribution's kernel (Debian cloud, as users bring their own):
  #     virtio_mmio, virtio_blk, virtio_net and the vsock transport are
  #     modules that /init loads, virtio_mmio has no device= parameter, so
  #     the disk, the card and the vsock device are found through ACPI
  #     alone. A raw disk is read and written (checked here after kiln
  #     exits), eth0 pings the bridge and the host echoes 64 KiB through a
  #     guest AF_VSOCK listener (the host side retries until it listens).
  if wanted distro-kernel; then
    n=distro-kernel
    img=$SCRATCH/distro-disk.raw
    rm -f "$img"
    yes KILN-DISTRO-DISK | head -c 1048576 >"$img" && truncate -s 4M "$img"
    want_read=$(yes KILN-DISTRO-DISK | head -c 1048576 | sha256sum | cut -d' ' -f1)
    want_write=$(yes KILN-DISTRO-WRITE | head -c 1048576 | sha256sum | cut -d' ' -f1)
    if [ -n "$net_err" ]; then fail $n "$net_err"
    elif [ ! -f "${DISTRO_KERNEL:-}" ] || [ ! -f "${DISTRO_INITRD:-}" ]; then
      echo "E2E-RESULT $n FAIL DISTRO_KERNEL/DISTRO_INITRD not given (the distribution kernel and its initramfs)"
    else
      vdir=$(vsock_dir)
      "${VSOCK_PROBE:-vsock-probe}" echo-many "hybrid:$vdir/v.sock:5001" 1 --bytes 64K \
        --retry "$GUEST_TIMEOUT" --timeout "$GUEST_TIMEOUT" \
        >"$vdir/echo.out" 2>&1 &
      vsock_pid=$!
      run_kiln $n --kernel "$DISTRO_KERNEL" --initrd "$DISTRO_INITRD" --memory 256 \
        --disk "path=$img" --net tap=ktap0 --vsock "cid=3,socket=$vdir/v.sock" \
        --cmdline "$BASE kiln.run=distro-kernel $(ip_arg 2)"
      kill "$vsock_pid" 2>/dev/null; wait "$vsock_pid" 2>/dev/null
      vsock_host=$(tr '\n' ' ' <"$vdir/echo.out"); rm -rf "$vdir"
      dline() { sed -n "s/^[0-9.]* $1 //p" "$OUT/$n.log" | tr -d '\r' | head -n 1; }
      vsock_guest=$(dline KILN-VSOCK-ECHO)
      ping_l=$(dline KILN-NET-PING)
      got_read=$(head -c 1048576 "$img" | sha256sum | cut -d' ' -f1)
      got_write=$(dd if="$img" bs=65536 skip=16 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
      if [ "$status" != 0 ]; then fail $n "status=$status"
      elif ! has $n KILN-GUEST-READY; then fail $n "the kernel did not reach /init"
      elif has $n 'KILN-CMDLINE .*virtio_mmio.device='; then fail $n "devices were on the command line"
      elif has $n 'KILN-ERROR'; then fail $n "$(dline KILN-ERROR)"
      elif ! has $n 'KILN-MODULES [1-9]'; then fail $n "/init loaded no modules"
      elif [ "$(dline KILN-DISK-READ)" != "$want_read" ]; then fail $n "guest read '$(dline KILN-DISK-READ)' from /dev/vda, want $want_read"
      elif [ "$(dline KILN-DISK-WROTE)" != "0 $want_write" ]; then fail $n "guest write: '$(dline KILN-DISK-WROTE)'"
      elif [ "$got_write" != "$want_write" ] || [ "$got_read" != "$want_read" ]; then
        fail $n "image after exit: first MiB $got_read (want $want_read), second $got_write (want $want_write)"
      elif ! has $n 'KILN-NET-UP eth0'; then fail $n "no eth0 in the guest: $(dline KILN-NET-IFACES)"
      elif [ "${ping_l%% *}" != 0 ]; then fail $n "ping $NET.1 failed: $ping_l"
      elif [ "${vsock_guest%% *}" != 0 ]; then fail $n "guest vsock echo listener: '$vsock_guest'; host: $vsock_host"
      elif [ "${vsock_host#echo-many ok}" = "$vsock_host" ]; then fail $n "host vsock echo: $vsock_host"
      else pass $n "$(dline KILN-DISTRO-UNAME) reached /init in ${ready}s; $(dline KILN-MODULES) modules; disk read and write intact via ACPI; ping ${ping_l#0 }; vsock echo of 64 KiB intact"; fi
    fi
    rm -f "$img"
  fi
  kill "$httpd_pid" 2>/dev/null
  exit 0
fi
echo "E2E-DONE"

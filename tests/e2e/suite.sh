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
# distro-kernel, SANDBOX_INITRD (the sandbox guest's initramfs, `kiln
# guest`'s SANDBOX_INITRD=) for the exec-* scenarios and sandbox-library,
# DEBIAN_ROOTFS (resources/build-debian-rootfs.sh's image) for exec-rootfs,
# SANDBOX_CHECK (examples/sandbox_check, the library's checks) for
# sandbox-library, and optionally OUT (per-scenario logs, default /out),
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

# ---- The sandbox (issue 10). Every `kiln exec` boots a fresh microVM from
# the sandbox guest: our kernel with SANDBOX_INITRD (kiln's agent as PID 1,
# busybox for the commands), both given explicitly since the nested host has
# no guest cache or builder. Each run gets a private TMPDIR that must be
# empty afterwards and a marker in its environment, so that any process it
# leaves behind (kiln, or anything kiln started) is found in /proc.
EXEC_SCENARIOS="exec-stdout exec-exit-code exec-stderr exec-10mib exec-stdin exec-timeout exec-signal exec-not-found exec-not-executable exec-copy exec-env-cwd exec-no-net exec-fork-bomb exec-memory-hog exec-rootfs exec-distro-kernel exec-tty"
exec_wanted() { for x in $EXEC_SCENARIOS; do wanted "$x" && return 0; done; return 1; }
exec_runs=0
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
# run_exec NAME ARGS...: kiln exec --kernel --initrd ARGS, stdin from
# $EXEC_STDIN (default /dev/null), the guest from $EXEC_KERNEL and
# $EXEC_INITRD (default $KERNEL and $SANDBOX_INITRD), stdout to $OUT/NAME.out (each line
# prefixed with its arrival time when EXEC_STAMP=1), stderr to
# $OUT/NAME.err, a summary in $OUT/NAME.log. Sets $status, $total and
# $leftover (empty when kiln left nothing behind).
run_exec() {
  name=$1; shift
  exec_runs=$((exec_runs + 1))
  marker=$name.$$.$exec_runs
  etmp=$(mktemp -d "${TMPDIR:-/tmp}/kx.XXXXXX") # short: kiln's socket paths
  start=$(now)
  if [ "${EXEC_STAMP:-0}" = 1 ]; then
    { KILN_E2E_RUN=$marker TMPDIR=$etmp timeout -s KILL "$GUEST_TIMEOUT" \
        "$KILN" exec --kernel "${EXEC_KERNEL:-$KERNEL}" --initrd "${EXEC_INITRD:-$SANDBOX_INITRD}" "$@" \
        <"${EXEC_STDIN:-/dev/null}" 2>"$OUT/$name.err"
      echo "KILN-STATUS $?"; } | while IFS= read -r line; do
        printf '%s %s\n' "$(now)" "$line"
      done >"$OUT/$name.out"
    status=$(sed -n 's/^[0-9.]* KILN-STATUS \([0-9]*\)$/\1/p' "$OUT/$name.out")
  else
    KILN_E2E_RUN=$marker TMPDIR=$etmp timeout -s KILL "$GUEST_TIMEOUT" \
      "$KILN" exec --kernel "${EXEC_KERNEL:-$KERNEL}" --initrd "${EXEC_INITRD:-$SANDBOX_INITRD}" "$@" \
      <"${EXEC_STDIN:-/dev/null}" >"$OUT/$name.out" 2>"$OUT/$name.err"
    status=$?
  fi
  total=$(elapsed "$start" "$(now)")
  # The watchdog's SIGKILL would look like a command's 137.
  le "$total" "$((GUEST_TIMEOUT - 1))" || status="hung (killed after ${GUEST_TIMEOUT}s)"
  echo "E2E-TIME $name - $total"
  leftover=
  pids=$(grep -l -s -F "KILN_E2E_RUN=$marker" /proc/[0-9]*/environ | cut -d/ -f3 | tr '\n' ' ')
  [ -z "$pids" ] || leftover="processes still running: $pids"
  files=$(ls -A "$etmp")
  [ -z "$files" ] || leftover="${leftover:+$leftover; }files left in its TMPDIR: $(echo $files)"
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null
  rm -rf "$etmp"
  { echo "kiln exec $*"; echo "status $status after ${total}s${leftover:+; $leftover}"
    echo "stdout (first 2 KiB):"; head -c 2048 "$OUT/$name.out" | cat -v; } >"$OUT/$name.log"
}
# Is FILE exactly the lines given?
is_lines() { f=$1; shift; printf '%s\n' "$@" | cmp -s - "$f"; }
# The arrival time of stamped output line TEXT in $OUT/NAME.out.
stamp_of() { sed -n "s/^\([0-9.]*\) $2\$/\1/p" "$OUT/$1.out" | head -n 1; }
# exec_go NAME: is NAME to run (and can it run at all)?
exec_go() {
  wanted "$1" || return 1
  [ -z "$exec_err" ] && return 0
  echo "E2E-RESULT $1 FAIL $exec_err"
  return 1
}
if exec_wanted; then
  exec_err=
  if [ ! -f "${SANDBOX_INITRD:-}" ]; then
    exec_err="SANDBOX_INITRD='${SANDBOX_INITRD:-}' is not a file (kiln guest must print SANDBOX_INITRD=)"
  fi

  # echo to stdout; argv reaches the command as given (no shell between).
  if exec_go exec-stdout; then
    run_exec exec-stdout -- echo hello 'two  spaces' "it's"
    if [ "$status" != 0 ]; then fail exec-stdout "status=$status"
    elif ! is_lines "$OUT/exec-stdout.out" "hello two  spaces it's"; then fail exec-stdout "stdout is not exactly the echoed line"
    elif [ -s "$OUT/exec-stdout.err" ]; then fail exec-stdout "unexpected stderr"
    elif [ -n "$leftover" ]; then fail exec-stdout "$leftover"
    else pass exec-stdout "exact stdout, status 0, empty stderr in ${total}s"; fi
  fi

  # `exit 3` gives 3.
  if exec_go exec-exit-code; then
    run_exec exec-exit-code -- sh -c 'exit 3'
    if [ "$status" != 3 ]; then fail exec-exit-code "status=$status, want 3"
    elif [ -n "$leftover" ]; then fail exec-exit-code "$leftover"
    else pass exec-exit-code "sh -c 'exit 3' gives status 3"; fi
  fi

  # stdout and stderr stay separate, each in order.
  if exec_go exec-stderr; then
    run_exec exec-stderr -- sh -c 'echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2'
    if [ "$status" != 0 ]; then fail exec-stderr "status=$status"
    elif ! is_lines "$OUT/exec-stderr.out" out-1 out-2; then fail exec-stderr "stdout is not exactly out-1, out-2"
    elif ! is_lines "$OUT/exec-stderr.err" err-1 err-2; then fail exec-stderr "stderr is not exactly err-1, err-2"
    elif [ -n "$leftover" ]; then fail exec-stderr "$leftover"
    else pass exec-stderr "stdout and stderr exact and separate"; fi
  fi

  # 10 MiB of random bytes on stdout arrive intact: the guest prints their
  # sha256 on stderr.
  if exec_go exec-10mib; then
    run_exec exec-10mib -- sh -c 'head -c 10485760 /dev/urandom >/tmp/r && sha256sum </tmp/r >&2 && cat /tmp/r'
    want=$(cut -d' ' -f1 "$OUT/exec-10mib.err" | head -n 1)
    got=$(sum "$OUT/exec-10mib.out"); size=$(wc -c <"$OUT/exec-10mib.out")
    if [ "$status" != 0 ]; then fail exec-10mib "status=$status"
    elif [ "$size" != 10485760 ] || [ "$got" != "$want" ]; then fail exec-10mib "got $size bytes, sha256 $got; the guest sent 10485760, $want"
    elif [ -n "$leftover" ]; then fail exec-10mib "$leftover"
    else pass exec-10mib "10 MiB of random bytes, sha256 equal, in ${total}s"; fi
    rm -f "$OUT/exec-10mib.out"
  fi

  # -i forwards stdin, EOF included (sha256sum answers only after EOF).
  if exec_go exec-stdin; then
    head -c 3145728 /dev/urandom >"$SCRATCH/stdin.bin"
    EXEC_STDIN=$SCRATCH/stdin.bin run_exec exec-stdin -i -- sha256sum
    want=$(sum "$SCRATCH/stdin.bin")
    if [ "$status" != 0 ]; then fail exec-stdin "status=$status"
    elif ! is_lines "$OUT/exec-stdin.out" "$want  -"; then fail exec-stdin "guest sha256sum said '$(head -c 200 "$OUT/exec-stdin.out")', want $want"
    elif [ -n "$leftover" ]; then fail exec-stdin "$leftover"
    else pass exec-stdin "3 MiB of random bytes through -i, EOF seen, sha256 equal"; fi
    rm -f "$SCRATCH/stdin.bin"
  fi

  # --timeout 2 on `sleep 100`: 124 within 4 s, one line on stderr. The
  # clock starts when the command's first line arrives (booting under
  # emulation may itself take seconds; a timeout that also counts the boot
  # ends even sooner after it), or at kiln's start if it never arrived.
  if exec_go exec-timeout; then
    EXEC_STAMP=1 run_exec exec-timeout --timeout 2 -- sh -c 'echo started; exec sleep 100'
    t0=$(stamp_of exec-timeout started); t1=$(stamp_of exec-timeout "KILN-STATUS [0-9]*")
    if [ -n "$t0" ]; then after=$(elapsed "$t0" "$t1"); else after=$total; fi
    if [ "$status" != 124 ]; then fail exec-timeout "status=$status, want 124"
    elif ! le "$after" 4; then fail exec-timeout "exited ${after}s after the command started, want at most 4"
    elif [ "$(wc -l <"$OUT/exec-timeout.err")" != 1 ]; then fail exec-timeout "want exactly one line on stderr"
    elif [ -n "$leftover" ]; then fail exec-timeout "$leftover"
    else pass exec-timeout "124 ${after}s after the command started (${total}s in all): $(cat "$OUT/exec-timeout.err")"; fi
  fi

  # Killed by SIGKILL: 128 + 9.
  if exec_go exec-signal; then
    run_exec exec-signal -- sh -c 'kill -9 $$'
    if [ "$status" != 137 ]; then fail exec-signal "status=$status, want 137"
    elif [ -n "$leftover" ]; then fail exec-signal "$leftover"
    else pass exec-signal "SIGKILL reported as 137"; fi
  fi

  # A command that does not exist: 127, as a shell would.
  if exec_go exec-not-found; then
    run_exec exec-not-found -- kiln-e2e-no-such-command
    if [ "$status" != 127 ]; then fail exec-not-found "status=$status, want 127"
    elif [ -n "$leftover" ]; then fail exec-not-found "$leftover"
    else pass exec-not-found "127: $(head -n 1 "$OUT/exec-not-found.err")"; fi
  fi

  # A file that is not executable (/proc/version, mode 0444): 126.
  if exec_go exec-not-executable; then
    run_exec exec-not-executable -- /proc/version
    if [ "$status" != 126 ]; then fail exec-not-executable "status=$status, want 126"
    elif [ -n "$leftover" ]; then fail exec-not-executable "$leftover"
    else pass exec-not-executable "126: $(head -n 1 "$OUT/exec-not-executable.err")"; fi
  fi

  # 5 MiB of random bytes in with --copy-in (the guest's sha256 must match)
  # and back out with --copy-out (byte-exact: cmp).
  if exec_go exec-copy; then
    head -c 5242880 /dev/urandom >"$SCRATCH/copy-in.bin"
    rm -f "$SCRATCH/copy-out.bin"
    run_exec exec-copy --copy-in "$SCRATCH/copy-in.bin:/work/in.bin" \
      --copy-out "/work/out.bin:$SCRATCH/copy-out.bin" \
      -- sh -c 'sha256sum /work/in.bin && cp /work/in.bin /work/out.bin'
    want=$(sum "$SCRATCH/copy-in.bin")
    if [ "$status" != 0 ]; then fail exec-copy "status=$status"
    elif ! is_lines "$OUT/exec-copy.out" "$want  /work/in.bin"; then fail exec-copy "in the guest: '$(head -c 200 "$OUT/exec-copy.out")', want $want"
    elif [ ! -f "$SCRATCH/copy-out.bin" ]; then fail exec-copy "--copy-out wrote no file"
    elif ! cmp "$SCRATCH/copy-in.bin" "$SCRATCH/copy-out.bin" >"$OUT/exec-copy.cmp" 2>&1; then fail exec-copy "copied out file differs: $(cat "$OUT/exec-copy.cmp")"
    elif [ -n "$leftover" ]; then fail exec-copy "$leftover"
    else pass exec-copy "5 MiB in (sha256 equal in the guest) and out again byte-exact"; fi
    rm -f "$SCRATCH/copy-in.bin" "$SCRATCH/copy-out.bin"
  fi

  # -e KEY=VAL (a value with a space and an =) and -w DIR reach the command.
  if exec_go exec-env-cwd; then
    run_exec exec-env-cwd -e KILN_E2E_A=alpha -e 'KILN_E2E_B=two words=2' -w /tmp \
      -- sh -c 'echo "$KILN_E2E_A|$KILN_E2E_B|$(pwd)"'
    if [ "$status" != 0 ]; then fail exec-env-cwd "status=$status"
    elif ! is_lines "$OUT/exec-env-cwd.out" 'alpha|two words=2|/tmp'; then fail exec-env-cwd "got '$(head -c 200 "$OUT/exec-env-cwd.out")', want 'alpha|two words=2|/tmp'"
    elif [ -n "$leftover" ]; then fail exec-env-cwd "$leftover"
    else pass exec-env-cwd "-e values and -w /tmp seen by the command"; fi
  fi

  # No --net: no network interface but lo.
  if exec_go exec-no-net; then
    run_exec exec-no-net -- ls /sys/class/net
    ifaces=$(tr '\n' ' ' <"$OUT/exec-no-net.out")
    if [ "$status" != 0 ]; then fail exec-no-net "status=$status"
    elif [ "$ifaces" != "lo " ]; then fail exec-no-net "interfaces without --net: '$ifaces', want only lo"
    elif [ -n "$leftover" ]; then fail exec-no-net "$leftover"
    else pass exec-no-net "only lo"; fi
  fi

  # A fork bomb stays inside: kiln still enforces --timeout (124) and tears
  # the microVM down; nothing is left on the host, which carries on.
  if exec_go exec-fork-bomb; then
    EXEC_STAMP=1 run_exec exec-fork-bomb --timeout 20 \
      -- sh -c 'echo bomb-start; bomb() { bomb | bomb & }; bomb 2>/dev/null; exec sleep 1000'
    t0=$(stamp_of exec-fork-bomb bomb-start); t1=$(stamp_of exec-fork-bomb "KILN-STATUS [0-9]*")
    if [ -n "$t0" ]; then after=$(elapsed "$t0" "$t1"); else after=-; fi
    if [ -z "$t0" ]; then fail exec-fork-bomb "the bomb never started (status=$status)"
    elif [ "$status" != 124 ]; then fail exec-fork-bomb "status=$status, want 124"
    elif ! le "$after" 30; then fail exec-fork-bomb "exited ${after}s after the bomb started, want at most 30 (--timeout 20)"
    elif [ "$(wc -l <"$OUT/exec-fork-bomb.err")" != 1 ]; then fail exec-fork-bomb "want exactly one line on stderr"
    elif [ -n "$leftover" ]; then fail exec-fork-bomb "$leftover"
    else pass exec-fork-bomb "124 ${after}s after the bomb started; nothing left behind"; fi
  fi

  # A memory hog (1 MiB strings until memory runs out) in 128 MiB: the
  # guest's OOM killer ends it with SIGKILL (137), well before --timeout.
  if exec_go exec-memory-hog; then
    run_exec exec-memory-hog --memory 128 --timeout 180 \
      -- awk 'BEGIN { s = "x"; for (i = 0; i < 20; i++) s = s s; for (n = 0; ; n++) a[n] = s n }'
    if [ "$status" != 137 ]; then fail exec-memory-hog "status=$status, want 137 (OOM-killed)"
    elif [ -n "$leftover" ]; then fail exec-memory-hog "$leftover"
    else pass exec-memory-hog "OOM-killed in the guest: 137 after ${total}s; nothing left behind"; fi
  fi

  # --rootfs: a Debian image made by resources/build-debian-rootfs.sh runs
  # python3; writes land in the tmpfs overlay; the image's bytes and mtime
  # are unchanged afterwards.
  if exec_go exec-rootfs; then
    if [ ! -f "${DEBIAN_ROOTFS:-}" ]; then
      echo "E2E-RESULT exec-rootfs FAIL DEBIAN_ROOTFS='${DEBIAN_ROOTFS:-}' is not a file (resources/build-debian-rootfs.sh, run by tests/e2e.rs, needs root)"
    else
      before=$(sum "$DEBIAN_ROOTFS"); mtime=$(stat -c %Y "$DEBIAN_ROOTFS")
      run_exec exec-rootfs --rootfs "$DEBIAN_ROOTFS" -- python3 -c 'print(6*7)'
      st1=$status left1=$leftover
      run_exec exec-rootfs-overlay --rootfs "$DEBIAN_ROOTFS" \
        -- sh -c 'echo scribble >/etc/kiln-scribble && cat /etc/kiln-scribble /etc/debian_version'
      version=$(sed -n 2p "$OUT/exec-rootfs-overlay.out")
      if [ "$st1" != 0 ]; then fail exec-rootfs "python3: status=$st1"
      elif ! is_lines "$OUT/exec-rootfs.out" 42; then fail exec-rootfs "python3 printed '$(head -c 200 "$OUT/exec-rootfs.out")', want 42"
      elif [ "$status" != 0 ] || [ "$(sed -n 1p "$OUT/exec-rootfs-overlay.out")" != scribble ]; then
        fail exec-rootfs "write in the overlay: status=$status, stdout '$(head -c 200 "$OUT/exec-rootfs-overlay.out")', stderr '$(head -c 200 "$OUT/exec-rootfs-overlay.err")'"
      elif [ "$(sum "$DEBIAN_ROOTFS")" != "$before" ] || [ "$(stat -c %Y "$DEBIAN_ROOTFS")" != "$mtime" ]; then fail exec-rootfs "the image changed"
      elif [ -n "$left1$leftover" ]; then fail exec-rootfs "$left1${left1:+; }$leftover"
      else pass exec-rootfs "python3 in Debian $version printed 42; a write went to the overlay; image bytes and mtime unchanged"; fi
    fi
  fi

  # -t: the command gets a pty of the host terminal's size (the host
  # terminal here is one vsock-probe's pty-run makes, 30x90).
  if exec_go exec-tty; then
    etmp=$(mktemp -d "${TMPDIR:-/tmp}/kx.XXXXXX")
    start=$(now)
    TMPDIR=$etmp timeout -s KILL 120 "$VSOCK_PROBE" pty-run 30 90 -- \
      "$KILN" exec --kernel "$KERNEL" --initrd "$SANDBOX_INITRD" -t -- sh -c 'tty; stty size; exit 4' \
      >"$OUT/exec-tty.out" 2>"$OUT/exec-tty.err"
    status=$?
    total=$(elapsed "$start" "$(now)")
    echo "E2E-TIME exec-tty - $total"
    files=$(ls -A "$etmp"); rm -rf "$etmp"
    { echo "pty-run 30 90 -- kiln exec -t -- sh -c 'tty; stty size; exit 4'"; echo "status $status"
      cat -v "$OUT/exec-tty.out"; } >"$OUT/exec-tty.log"
    if [ "$status" != 4 ]; then fail exec-tty "status=$status, want 4: $(head -c 300 "$OUT/exec-tty.err")"
    elif ! grep -q '^/dev/pts/' "$OUT/exec-tty.out"; then fail exec-tty "tty did not name a pty: '$(head -c 200 "$OUT/exec-tty.out" | cat -v)'"
    elif ! grep -q '^30 90' "$OUT/exec-tty.out"; then fail exec-tty "stty size is not 30 90: '$(head -c 200 "$OUT/exec-tty.out" | cat -v)'"
    elif [ -n "$files" ]; then fail exec-tty "files left in its TMPDIR: $files"
    else pass exec-tty "a pty of the host terminal's size (30x90), exit status 4 passed on, in ${total}s"; fi
  fi

  # A distribution's kernel runs the sandbox too: Debian's cloud kernel,
  # whose virtio-mmio and vsock are modules, with an initramfs of kiln's
  # agent (kiln guest's AGENT=) and those modules listed in
  # /etc/kiln/modules, which the agent loads before anything else.
  if exec_go exec-distro-kernel; then
    if [ ! -f "${DISTRO_SANDBOX_INITRD:-}" ]; then
      echo "E2E-RESULT exec-distro-kernel FAIL DISTRO_SANDBOX_INITRD='${DISTRO_SANDBOX_INITRD:-}' is not a file (tests/e2e.rs builds it from kiln guest's AGENT=)"
    else
      EXEC_KERNEL=$DISTRO_KERNEL EXEC_INITRD=$DISTRO_SANDBOX_INITRD
      run_exec exec-distro-kernel -- sh -c 'uname -r; echo sandbox-ok'
      EXEC_KERNEL= EXEC_INITRD=
      release=$(sed -n 1p "$OUT/exec-distro-kernel.out")
      if [ "$status" != 0 ]; then fail exec-distro-kernel "status=$status: $(head -c 300 "$OUT/exec-distro-kernel.err")"
      elif [ "$(sed -n 2p "$OUT/exec-distro-kernel.out")" != sandbox-ok ]; then fail exec-distro-kernel "stdout '$(head -c 200 "$OUT/exec-distro-kernel.out")'"
      elif [ -n "$leftover" ]; then fail exec-distro-kernel "$leftover"
      else pass exec-distro-kernel "Debian's kernel $release ran the command in ${total}s"; fi
    fi
  fi
fi

# ---- The sandbox library (issue 10): SANDBOX_CHECK is examples/sandbox_check
# (built by tests/e2e.rs when the file exists), run against the same guest.
# Its output contract: one line per check,
#   SANDBOX-CHECK <name> PASS|FAIL <detail>
# and exit status 0 only if every check passed. The checks it must report
# (SANDBOX_CHECKS below): sequential-20 (20 commands one after another in one
# Sandbox), concurrent-4 (4 commands at once in one Sandbox, each output
# intact), file-5mib (5 MiB of random bytes through write_file and back
# through read_file, equal), stdin-roundtrip (1 MiB through cat via spawn()
# pipes), statuses (exit 3, 127, 137), pty (a terminal of the size asked), timeout (Timeout, then Stopped),
# no-leaks (50 sandboxes built and dropped: threads, fds and RSS back to
# where they were).
SANDBOX_CHECKS="sequential-20 concurrent-4 file-5mib stdin-roundtrip statuses pty timeout no-leaks"
if wanted sandbox-library; then
  n=sandbox-library
  : >"$OUT/$n.log"; : >"$OUT/$n.err"
  if [ ! -x "${SANDBOX_CHECK:-}" ]; then
    echo "E2E-RESULT $n FAIL SANDBOX_CHECK='${SANDBOX_CHECK:-}' is not an executable (examples/sandbox_check.rs, built by tests/e2e.rs when it exists)"
  elif [ ! -f "${SANDBOX_INITRD:-}" ]; then
    echo "E2E-RESULT $n FAIL SANDBOX_INITRD='${SANDBOX_INITRD:-}' is not a file (kiln guest must print SANDBOX_INITRD=)"
  else
    start=$(now)
    etmp=$(mktemp -d "${TMPDIR:-/tmp}/kx.XXXXXX")
    TMPDIR=$etmp timeout -s KILL 600 "$SANDBOX_CHECK" --kernel "$KERNEL" --initrd "$SANDBOX_INITRD" \
      </dev/null >"$OUT/$n.log" 2>"$OUT/$n.err"
    status=$?
    echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
    files=$(ls -A "$etmp"); rm -rf "$etmp"
    grep '^SANDBOX-CHECK ' "$OUT/$n.log"
    missing=
    for c in $SANDBOX_CHECKS; do grep -q "^SANDBOX-CHECK $c PASS" "$OUT/$n.log" || missing="$missing $c"; done
    if grep -q '^SANDBOX-CHECK [^ ]* FAIL' "$OUT/$n.log"; then fail $n "$(grep '^SANDBOX-CHECK [^ ]* FAIL' "$OUT/$n.log" | head -n 3 | tr '\n' ' ')"
    elif [ -n "$missing" ]; then fail $n "no PASS line for:$missing (status=$status)"
    elif [ "$status" != 0 ]; then fail $n "status=$status"
    elif [ -n "$files" ]; then fail $n "files left in its TMPDIR: $(echo $files)"
    else pass $n "$(grep -c '^SANDBOX-CHECK [^ ]* PASS' "$OUT/$n.log") checks passed: $(sed -n 's/^SANDBOX-CHECK \([^ ]*\) PASS \(.*\)/\1 (\2)/p' "$OUT/$n.log" | tr '\n' ';')"; fi
  fi
fi

. "${0%/*}/lockdown.sh"
. "${0%/*}/api.sh"
. "${0%/*}/bench.sh"

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

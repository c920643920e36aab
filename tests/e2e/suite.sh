#!/bin/sh
# kiln end-to-end scenarios: real Linux guests booted by kiln on a KVM that
# can run them (hardware VT-x/AMD-V, or kvm-amd inside tools/nested-host).
# POSIX sh: it runs under busybox in the nested host.
#
# Environment: KILN (binary), KERNEL (vmlinux, PVH), BZIMAGE, INITRD, and
# optionally OUT (directory for per-scenario logs, default /out) and
# ONLY (space-separated scenario names to run).
# Prints one line per scenario: E2E-RESULT <name> PASS|FAIL <detail>
# and E2E-TIME <name> <seconds to KILN-GUEST-READY> <seconds total>.

set -u
OUT=${OUT:-/out}
mkdir -p "$OUT"
BASE="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd quiet"
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
  run_kiln boot-vmlinux --kernel "$KERNEL" --initrd "$INITRD"
  if [ "$status" = 0 ] && has boot-vmlinux KILN-GUEST-READY; then pass boot-vmlinux "ready in ${ready}s"
  else fail boot-vmlinux "status=$status ready=$ready"; fi
fi

# 2. --cpus, --memory and --cmdline reach the guest.
if wanted cpus-memory-cmdline; then
  run_kiln cpus-memory-cmdline --kernel "$KERNEL" --initrd "$INITRD" --cpus 2 --memory 256 \
    --cmdline "$BASE kiln.marker=e2e-7f3a"
  info=$(grep -m1 'KILN-INFO' "$OUT/cpus-memory-cmdline.log")
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
echo "E2E-DONE"

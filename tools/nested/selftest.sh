#!/usr/bin/env bash
# Self-test for nested-host: runs a few cases through the tool and checks
# exit statuses, /out round trips, timeouts, library copying, and that nested
# KVM really runs a guest (kvm-probe.c). Each case boots L1 once (~5-10 s).
# Usage: tools/nested/selftest.sh   (exit 0 = all cases passed)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tool=$here/../nested-host
tmp=$(mktemp -d "${TMPDIR:-/tmp}/nested-selftest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pass=0 fail=0
ok() { echo "selftest: PASS $*"; pass=$((pass + 1)); }
bad() { echo "selftest: FAIL $*"; fail=$((fail + 1)); }
# run NAME ARGS... : runs the tool, leaves status in $rc, seconds in $secs,
# console (stdout) in $tmp/NAME.out, stderr in $tmp/NAME.err
run() {
  local name=$1 t0
  shift
  echo "selftest: --- $name"
  t0=$EPOCHREALTIME
  rc=0
  "$tool" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
  secs=$(echo "$EPOCHREALTIME - $t0" | bc)
  cat "$tmp/$name.out" "$tmp/$name.err"
  echo "selftest: $name: exit $rc after ${secs}s"
}

# 1. exit status comes back, /dev/kvm exists in L1
run status -- sh -c 'ls -l /dev/kvm; exit 7'
if [[ $rc == 7 ]] && grep -q '10, *232' "$tmp/status.out"; then ok "exit status 7 and /dev/kvm"; else bad "status (rc=$rc)"; fi

# 2. --out round trip (including a subdirectory and binary data)
run out --out "$tmp/outdir" -- sh -c 'echo hello from L1 > /out/hello.txt; mkdir /out/sub; head -c 100000 /dev/urandom > /out/sub/blob; sha256sum /out/sub/blob | cut -d" " -f1 > /out/blob.sha'
if [[ $rc == 0 && "$(cat "$tmp/outdir/hello.txt" 2>/dev/null)" == "hello from L1" ]] &&
   [[ "$(sha256sum <"$tmp/outdir/sub/blob" | cut -d' ' -f1)" == "$(cat "$tmp/outdir/blob.sha")" ]]; then
  ok "--out round trip"
else bad "--out (rc=$rc)"; fi

# 3. timeout: 124 within about TIMEOUT + 5 s
run timeout --timeout 20 -- sleep 1000
if [[ $rc == 124 ]] && (($(echo "$secs < 26" | bc))) && grep -q 'nested-host: timed out' "$tmp/timeout.err"; then
  ok "timeout -> 124 in ${secs}s"
else bad "timeout (rc=$rc after ${secs}s)"; fi

# 4. dynamic binaries: --file gets its libraries; --keep-libs-of lands in
#    /usr/bin ahead of busybox's applet of the same name.
stat_bin=$(command -v stat)
sum_bin=$(command -v sha256sum)
run dynlibs --file "$stat_bin" --keep-libs-of "$sum_bin" -- sh -c \
  './stat --version | head -n1; ./stat -c "%s" stat; sha256sum --version | head -n1; echo abc | sha256sum'
want_size=$(stat -L -c %s "$stat_bin")
want_sum=$(echo abc | sha256sum)
if [[ $rc == 0 ]] && grep -q 'stat (GNU coreutils)' "$tmp/dynlibs.out" &&
   grep -q "^$want_size" "$tmp/dynlibs.out" && grep -q 'sha256sum (GNU coreutils)' "$tmp/dynlibs.out" &&
   grep -qF "$want_sum" "$tmp/dynlibs.out"; then
  ok "dynamic --file and --keep-libs-of"
else bad "dynamic binaries (rc=$rc)"; fi

# 5. nested KVM runs a guest: a static KVM_RUN probe inside L1
if gcc -static -O2 -o "$tmp/kvm-probe" "$here/kvm-probe.c" 2>"$tmp/gcc.err"; then
  run kvmprobe --file "$tmp/kvm-probe" -- ./kvm-probe
  if [[ $rc == 0 ]] && grep -q "module kvm_amd" "$tmp/kvmprobe.out" &&
     grep -q "exit IO out port 0x3f8 size 1 data 0x4b 'K'" "$tmp/kvmprobe.out" &&
     grep -q 'exit HLT' "$tmp/kvmprobe.out"; then
    ok "kvm-probe ran a guest on nested kvm_amd"
  else bad "kvm-probe (rc=$rc)"; fi
else
  cat "$tmp/gcc.err"; bad "kvm-probe: gcc -static failed (need gcc and libc6-dev)"
fi

# 6. infrastructure failure: an L1 CPU without SVM has no /dev/kvm -> 125
KILN_NESTED_CPU_FLAGS=-svm run nosvm -- true
if [[ $rc == 125 ]] && grep -q '^nested-host: .*/dev/kvm' "$tmp/nosvm.err"; then
  ok "no SVM -> 125 with a clear message"
else bad "no SVM (rc=$rc)"; fi

echo "selftest: $pass passed, $fail failed"
[[ $fail == 0 ]]

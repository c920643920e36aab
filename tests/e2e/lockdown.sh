# Sourced by suite.sh: a locked-down VMM (issue 11). kiln runs a Linux
# guest with a writable root disk and a vsock (guest/lockdown) as an
# ordinary user, and in a --jail; while the guest runs, the host checks
# kiln's credentials, that every kiln thread runs under a seccomp filter
# and (jailed) what the VMM can see; afterwards the disk and the bytes sent
# over vsock are checked, and the jail must be gone. A jail's cgroup
# memory limit must stop a guest that needs more; kiln exec and the
# sandbox library (SANDBOX_CHECK --jail) run jailed.
# Needs root (to hand /dev/kvm and the files to the user) and VSOCK_PROBE's
# run-as. LOCKDOWN_UID/LOCKDOWN_GID: the ordinary user (default 1000).
LOCKDOWN_SCENARIOS="nonroot-disk-vsock jail-disk-vsock jail-memory-limit jail-exec jail-sandbox-library"
LUID=${LOCKDOWN_UID:-1000} LGID=${LOCKDOWN_GID:-1000}

# seccomp_report PID: "ok N" when all N threads of PID show Seccomp: 2,
# else the threads that do not.
seccomp_report() {
  n=0 bad=
  for s in /proc/"$1"/task/*/status; do
    [ -e "$s" ] || continue
    n=$((n + 1))
    mode=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$s")
    [ "$mode" = 2 ] || bad="$bad $(sed -n 's/^Name:[[:space:]]*//p' "$s")=$mode"
  done
  if [ "$n" -gt 0 ] && [ -z "$bad" ]; then echo "ok $n"; else echo "threads without a filter ($n in all):$bad"; fi
}
# status_field PID FIELD: the value of FIELD in /proc/PID/status, tabs as spaces.
status_field() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status" | tr '\t' ' '; }

# lockdown_run NAME DIR SOCK AS_USER KILN-ARGS...: the lockdown guest under
# kiln (as LUID:LGID when AS_USER is yes), a host listener at SOCK_5200 in
# DIR (once DIR is LUID's), the checks while the guest waits, then its
# release. lockdown_find_vmm (a function given the pid) finds the VMM when
# it is not kiln itself; lockdown_inspect gets its pid too. Sets $status,
# $sent ("0 <sha>" from the guest), $got (sha of what the host received),
# $creds, $seccomp, $kpid_seen (the VMM's pid while it ran).
lockdown_run() {
  name=$1 dir=$2 sock=$3 as_user=$4; shift 4
  P=$VSOCK_PROBE
  # The host's side (listener, release) is always the user's: a jailed
  # kiln, root only until it drops to LUID, must be able to connect.
  as() { "$P" run-as "$LUID" "$LGID" -- "$@"; }
  : >"$OUT/$name.log"; : >"$OUT/$name.err"
  start=$(now)
  # exec: $! is then kiln's own pid (run-as execs it too).
  if [ "$as_user" = yes ]; then
    (exec "$P" run-as "$LUID" "$LGID" -- "$KILN" boot "$@" </dev/null >"$OUT/$name.log" 2>"$OUT/$name.err") &
  else
    (exec "$KILN" boot "$@" </dev/null >"$OUT/$name.log" 2>"$OUT/$name.err") &
  fi
  kpid=$!
  got=- creds=- seccomp=- kpid_seen=$kpid
  # The listener may only be startable once kiln made DIR (a jail).
  i=0
  while [ "$(stat -c %u "$dir" 2>/dev/null)" != "$LUID" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  as "$P" listen "unix:${sock}_5200" stdio --count 1 </dev/null >"$SCRATCH/$name.recv" 2>"$OUT/$name.listen.err" &
  lpid=$!
  if wait_for "$name" KILN-LOCKDOWN-VSOCK "$GUEST_TIMEOUT"; then
    wait "$lpid"
    got=$(sum "$SCRATCH/$name.recv")
    vmm=${LOCKDOWN_VMM_PID:-$kpid}
    [ -n "${lockdown_find_vmm:-}" ] && vmm=$($lockdown_find_vmm "$kpid")
    kpid_seen=$vmm
    creds="uid=$(status_field "$vmm" Uid) gid=$(status_field "$vmm" Gid) groups=$(status_field "$vmm" Groups) caps=$(status_field "$vmm" CapEff) nnp=$(status_field "$vmm" NoNewPrivs)"
    seccomp=$(seccomp_report "$vmm")
    [ -n "${lockdown_inspect:-}" ] && $lockdown_inspect "$vmm"
    as "$P" stream "hybrid:$sock:5201" --retry 30 --timeout 60 </dev/null >/dev/null 2>>"$OUT/$name.err"
  else
    kill "$lpid" 2>/dev/null; kill -9 "$kpid" 2>/dev/null
  fi
  wait "$kpid"; status=$?
  sent=$(sed -n 's/^KILN-LOCKDOWN-VSOCK //p' "$OUT/$name.log" | tr -d '\r' | head -n 1)
  echo "E2E-TIME $name - $(elapsed "$start" "$(now)")"
  rm -f "$SCRATCH/$name.recv"
}

if wanted nonroot-disk-vsock; then
  n=nonroot-disk-vsock
  img=$SCRATCH/root-nonroot.ext4
  cp "$ROOTFS" "$img"
  vdir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-nonroot.XXXXXX")
  # The user gets exactly what kiln is given: /dev/kvm through its group,
  # the image and the socket directory as its own.
  kvm_mode=$(stat -c '%a %g' /dev/kvm)
  chgrp "$LGID" /dev/kvm && chmod 660 /dev/kvm
  chown "$LUID:$LGID" "$img" "$vdir"
  lockdown_run $n "$vdir" "$vdir/v.sock" yes --kernel "$KERNEL" --memory 256 \
    --disk "path=$img,root" --vsock "cid=3,socket=$vdir/v.sock" --cmdline "$BASE kiln.run=lockdown"
  chmod "${kvm_mode% *}" /dev/kvm; chgrp "${kvm_mode#* }" /dev/kvm
  want=$("$VSOCK_PROBE" gen 8M --seed 3 | sha256sum | cut -d' ' -f1)
  debugfs -R "dump /lockdown.bin $SCRATCH/lockdown.bin" "$img" >/dev/null 2>&1
  disk=$( [ -f "$SCRATCH/lockdown.bin" ] && sum "$SCRATCH/lockdown.bin")
  if [ "$status" != 0 ]; then fail $n "status=$status"
  elif [ "${creds#uid=$LUID $LUID $LUID $LUID gid=$LGID $LGID $LGID $LGID}" = "$creds" ]; then fail $n "kiln did not run as $LUID:$LGID: $creds"
  elif [ "${creds#*caps=0000000000000000}" = "$creds" ]; then fail $n "kiln had capabilities: $creds"
  elif [ "${seccomp%% *}" != ok ]; then fail $n "seccomp: $seccomp"
  elif [ "${sent%% *}" != 0 ]; then fail $n "guest vsock send: $sent"
  elif [ "$got" != "$want" ]; then fail $n "host received sha $got over vsock, want $want"
  elif [ "$disk" != "$want" ]; then fail $n "disk file after exit: $disk, want $want"
  else pass $n "as uid $LUID: 8 MiB to disk and over vsock intact; ${seccomp#ok } threads all with Seccomp: 2; no capabilities"; fi
  rm -rf "$img" "$vdir" "$SCRATCH/lockdown.bin"
fi

# Jails need a cgroup hierarchy with the memory and pids controllers: a
# bare nested host has none mounted (cgroup v2 then).
jail_cgroups() {
  grep -q ' /sys/fs/cgroup ' /proc/mounts || { mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup; }
}
# The jailed VMM: the outer kiln's first child.
jailed_vmm() { cut -d' ' -f1 "/proc/$1/task/$1/children"; }
# What the jailed VMM sees at its root, as one line.
jail_view() { ls "/proc/$1/root" | tr '\n' ' '; echo "etc=$( [ -e "/proc/$1/root/etc" ] && echo yes || echo no)"; }
record_view() { jail_seen=$(jail_view "$1"); }

if wanted jail-disk-vsock; then
  n=jail-disk-vsock
  jail_cgroups
  img=$SCRATCH/root-jail.ext4
  cp "$ROOTFS" "$img"
  chown "$LUID:$LGID" "$img"
  jdir=$SCRATCH/jail-vm1
  rm -rf "$jdir"
  jail_seen=-
  lockdown_find_vmm=jailed_vmm lockdown_inspect=record_view \
    lockdown_run $n "$jdir" "$jdir/v.sock" no --kernel "$KERNEL" --memory 256 \
    --disk "path=$img,root" --vsock "cid=3,socket=/v.sock" --cmdline "$BASE kiln.run=lockdown" \
    --jail "$jdir,uid=$LUID,gid=$LGID,cgroup=memory.max=512M,cgroup=pids.max=64,cgroup=cpu.max=max 100000"
  want=$("$VSOCK_PROBE" gen 8M --seed 3 | sha256sum | cut -d' ' -f1)
  debugfs -R "dump /lockdown.bin $SCRATCH/lockdown.bin" "$img" >/dev/null 2>&1
  disk=$( [ -f "$SCRATCH/lockdown.bin" ] && sum "$SCRATCH/lockdown.bin")
  if [ "$status" != 0 ]; then fail $n "status=$status"
  elif [ "${creds#uid=$LUID $LUID $LUID $LUID gid=$LGID $LGID $LGID $LGID}" = "$creds" ]; then fail $n "the jailed VMM did not run as $LUID:$LGID: $creds"
  elif [ "${creds#*nnp=1}" = "$creds" ]; then fail $n "no no_new_privs: $creds"
  elif [ "${seccomp%% *}" != ok ]; then fail $n "seccomp: $seccomp"
  elif [ "$jail_seen" != "dev disk0 kernel tmp v.sock v.sock_5200 etc=no" ]; then fail $n "the jailed VMM sees: $jail_seen"
  elif [ "$got" != "$want" ]; then fail $n "host received sha $got over vsock (at the jail's v.sock_5200), want $want"
  elif [ "$disk" != "$want" ]; then fail $n "disk file after exit: $disk, want $want"
  elif [ -e "$jdir" ]; then fail $n "the jail $jdir was left behind: $(ls "$jdir")"
  elif ls -d /sys/fs/cgroup/kiln/jail-vm1 >/dev/null 2>&1; then fail $n "its cgroup was left behind"
  else pass $n "jailed as $LUID:$LGID (sees only: ${jail_seen% etc=no}); 8 MiB to disk and over vsock intact; ${seccomp#ok } threads filtered; jail and cgroup removed"; fi
  rm -rf "$img" "$SCRATCH/lockdown.bin"
fi

# A guest that needs more memory than its jail's cgroup allows: it writes
# 160 MiB into its initramfs (RAM) with 96 MiB allowed.
if wanted jail-memory-limit; then
  n=jail-memory-limit
  jail_cgroups
  jdir=$SCRATCH/jail-hog
  rm -rf "$jdir"
  hog=$(echo 'dd if=/dev/zero of=/hog bs=1M count=160 2>/dev/null; echo KILN-HOG-DONE' | base64 | tr -d '\n')
  run_kiln $n --kernel "$KERNEL" --initrd "$INITRD" --memory 256 --cmdline "$BASE kiln.cmd=$hog" \
    --jail "$jdir,uid=$LUID,gid=$LGID,cgroup=memory.max=96M"
  err=$(cat "$OUT/$n.err")
  if [ "$status" != 137 ]; then fail $n "status=$status, want 137: $err"
  elif has $n KILN-HOG-DONE; then fail $n "the guest wrote 160 MiB within a 96 MiB limit"
  elif [ "${err#kiln: the VM was killed: it went over its memory limit}" = "$err" ]; then fail $n "stderr: $err"
  elif [ -e "$jdir" ]; then fail $n "the jail was left behind"
  else pass $n "killed at the 96 MiB limit with one line: $err"; fi
fi

if wanted jail-exec; then
  n=jail-exec
  jail_cgroups
  jdir=$SCRATCH/jail-exec
  rm -rf "$jdir"
  start=$(now)
  timeout -s KILL "$GUEST_TIMEOUT" "$KILN" exec --kernel "$KERNEL" --initrd "$SANDBOX_INITRD" \
    --jail "$jdir,uid=$LUID,gid=$LGID,cgroup=memory.max=1G" -- sh -c 'echo jailed-ok; exit 7' \
    </dev/null >"$OUT/$n.log" 2>"$OUT/$n.err"
  status=$?
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  if [ "$status" != 7 ]; then fail $n "status=$status, want 7: $(cat "$OUT/$n.err")"
  elif [ "$(cat "$OUT/$n.log")" != jailed-ok ]; then fail $n "stdout: $(cat "$OUT/$n.log")"
  elif [ -e "$jdir" ]; then fail $n "the jail was left behind"
  else pass $n "kiln exec in a jail: stdout and exit status 7 came through; jail removed"; fi
fi

# The library's jail: SANDBOX_CHECK --jail runs its sandboxes through the
# kiln binary in jails (checks: statuses, file-5mib, stdin-roundtrip,
# jail-removed, timeout).
if wanted jail-sandbox-library; then
  n=jail-sandbox-library
  jail_cgroups
  jdir=$SCRATCH/jail-sandbox
  rm -rf "$jdir"
  : >"$OUT/$n.log"; : >"$OUT/$n.err"
  if [ ! -x "${SANDBOX_CHECK:-}" ]; then fail $n "SANDBOX_CHECK='${SANDBOX_CHECK:-}' is not an executable"
  else
    start=$(now)
    timeout -s KILL 600 "$SANDBOX_CHECK" --kernel "$KERNEL" --initrd "$SANDBOX_INITRD" \
      --jail "$jdir,uid=$LUID,gid=$LGID,cgroup=memory.max=1G" --kiln "$KILN" \
      </dev/null >"$OUT/$n.log" 2>"$OUT/$n.err"
    status=$?
    echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
    grep '^SANDBOX-CHECK ' "$OUT/$n.log"
    missing=
    for c in statuses file-5mib stdin-roundtrip jail-removed timeout; do
      grep -q "^SANDBOX-CHECK $c PASS" "$OUT/$n.log" || missing="$missing $c"
    done
    if [ -n "$missing" ]; then fail $n "no PASS line for:$missing (status=$status): $(grep FAIL "$OUT/$n.log" | head -n 2 | tr '\n' ' ')$(head -c 300 "$OUT/$n.err")"
    elif [ "$status" != 0 ]; then fail $n "status=$status"
    elif [ -e "$jdir" ]; then fail $n "the jail was left behind"
    else pass $n "the library's jailed sandbox: $(grep -c '^SANDBOX-CHECK [^ ]* PASS' "$OUT/$n.log") checks passed; jail removed"; fi
  fi
fi

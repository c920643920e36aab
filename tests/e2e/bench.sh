# Sourced by suite.sh: `kiln bench boot` (issue 12) in this host, kiln
# against the runc and crun it has and QEMU's microvm (BENCH_QEMU), and
# Firecracker when BENCH_FIRECRACKER names one (tools/build-peers), in one run: the table, the
# idle rows (memory, density), boot.json, boot.csv and a PNG. BENCH_BUSYBOX
# (a static busybox, the containers' rootfs) and BENCH_FONT (the plot's
# labels) are passed on to kiln.
# Containers need /run and a cgroup2 hierarchy: a bare nested host has
# neither, so they are made when nothing is mounted at /sys/fs/cgroup.
BENCH_RUNS=${BENCH_RUNS:-5}
BENCH_DENSITY=${BENCH_DENSITY:-2}
if wanted bench-boot; then
  n=bench-boot
  bdir=$OUT/bench
  rm -rf "$bdir"
  mkdir -p /run
  if ! grep -q ' /sys/fs/cgroup ' /proc/mounts; then mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup; fi
  fc=${BENCH_FIRECRACKER:-}
  peers="--qemu ${BENCH_QEMU:-/usr/bin/qemu-system-x86_64}"
  if [ -n "$fc" ] && [ -x "$fc" ]; then peers="$peers --firecracker $fc"
  else fc=; echo "E2E-INFO $n: no Firecracker binary (tools/build-peers makes one), so no firecracker row"; fi
  start=$(now)
  KILN_BUSYBOX=${BENCH_BUSYBOX:-} KILN_BENCH_FONT=${BENCH_FONT:-} timeout -s KILL 1200 "$KILN" bench boot \
    --runs "$BENCH_RUNS" --contenders kiln,runc,crun $peers --density "$BENCH_DENSITY" \
    --kernel "$KERNEL" --initrd "$INITRD" --out "$bdir" \
    </dev/null >"$OUT/$n.log" 2>"$OUT/$n.err"
  status=$?
  echo "E2E-TIME $n - $(elapsed "$start" "$(now)")"
  # A contender's line: its times ("NAME RUNS MIN MEDIAN ...") or why not.
  row() { grep -m1 -E "^$1 +([0-9]|skipped|stopped)" "$OUT/$n.log"; }
  # Samples in boot.json: one "ready_us" per run and contender that ran.
  samples=$(grep -o '"ready_us"' "$bdir/boot.json" 2>/dev/null | wc -l)
  csv_rows() { grep -c "^$1," "$bdir/boot.csv" 2>/dev/null; }
  png_sig=$(head -c 8 "$bdir/boot.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')
  # IHDR: width and height, big-endian, at bytes 16..23.
  png_dims=$(dd if="$bdir/boot.png" bs=1 skip=16 count=8 2>/dev/null | od -An -tu1 |
    awk '{ printf "%dx%d", (($1*256+$2)*256+$3)*256+$4, (($5*256+$6)*256+$7)*256+$8 }')
  crun_row=$(row crun)
  # The whole PNG, for the test to decode on the outer host.
  [ -f "$bdir/boot.png" ] && echo "E2E-PNG $n $(base64 -w0 "$bdir/boot.png")"
  # An idle row: "NAME OVERHEAD TOTAL READY/S FIT" in MiB, after the header.
  idle_row() { sed -n '/idle instances at once/,$p' "$OUT/$n.log" | grep -m1 -E "^$1 +[0-9]"; }
  fc_row=$(row firecracker)
  if [ "$status" != 0 ]; then fail $n "status=$status: $(tail -n 3 "$OUT/$n.err")"
  elif ! grep -q "^kiln bench boot: $BENCH_RUNS runs per contender, mode " "$OUT/$n.log"; then fail $n "no table header"
  elif [ "$(row kiln | awk '{print $2}')" != "$BENCH_RUNS" ]; then fail $n "kiln row: $(row kiln)"
  elif [ "$(row runc | awk '{print $2}')" != "$BENCH_RUNS" ]; then fail $n "runc row: $(row runc)"
  elif [ "$(row qemu | awk '{print $2}')" != "$BENCH_RUNS" ]; then fail $n "qemu row: $(row qemu)"
  elif [ -n "$fc" ] && [ "$(echo "$fc_row" | awk '{print $2}')" != "$BENCH_RUNS" ]; then fail $n "firecracker row: $fc_row"
  elif [ -z "$(idle_row kiln)" ] || [ -z "$(idle_row runc)" ] || [ -z "$(idle_row qemu)" ]; then fail $n "idle rows: kiln '$(idle_row kiln)' runc '$(idle_row runc)' qemu '$(idle_row qemu)'; $(grep -m3 'idle\|failed' "$OUT/$n.log")"
  elif ! grep -q '"mode"' "$bdir/boot.json" 2>/dev/null; then fail $n "no boot.json with a mode"
  elif [ "$(csv_rows kiln)" != "$BENCH_RUNS" ] || [ "$(csv_rows runc)" != "$BENCH_RUNS" ]; then fail $n "boot.csv rows: kiln $(csv_rows kiln), runc $(csv_rows runc)"
  elif [ "$png_sig" != 89504e470d0a1a0a ] || [ "$png_dims" != 1000x600 ]; then fail $n "boot.png: signature $png_sig, size $png_dims"
  elif [ -z "$crun_row" ]; then fail $n "no crun row (neither times nor a reason)"
  else pass $n "$samples samples; kiln: $(row kiln | awk '{print "median", $4}'); runc: $(row runc | awk '{print "median", $4}'); qemu: $(row qemu | awk '{print "median", $4}'); firecracker: $(echo "${fc_row:-none}" | awk '$2 ~ /^[0-9]+$/ { print "median", $4; next } { print }' | cut -c1-60); crun: $(echo "$crun_row" | awk '$2 ~ /^[0-9]+$/ { print "median", $4; next } { print }' | cut -c1-80); idle MiB overhead/total kiln $(idle_row kiln | awk '{print $2 "/" $3}') qemu $(idle_row qemu | awk '{print $2 "/" $3}') runc $(idle_row runc | awk '{print $2 "/" $3}'); PNG $png_dims"; fi
fi

#!/bin/sh
# Host half of the block benchmark; runs where kiln runs (directly, or in
# the nested host). Env: KILN, KERNEL, ROOTFS, SCRATCH, SIZE_MB.
set -u
img=$SCRATCH/bench.img
size=${SIZE_MB:-256}
base="console=ttyS0 reboot=k panic=1 pci=off quiet"
now() { cut -d' ' -f1 /proc/uptime; }
rate() { awk -v mb="$size" -v a="$1" -v b="$2" 'BEGIN { if (b > a) printf "%.1f", mb / (b - a); else print "?" }'; }

# Allocate the image first, so host and guest both overwrite allocated blocks.
dd if=/dev/zero of="$img" bs=1M count="$size" 2>/dev/null
# Host: write, read, random reads on the image file.
t0=$(now); dd if=/dev/zero of="$img" bs=1M count="$size" conv=notrunc,fsync 2>/dev/null; t1=$(now)
dd if="$img" of=/dev/null bs=1M 2>/dev/null; t2=$(now)
hw=$(rate "$t0" "$t1"); hr=$(rate "$t1" "$t2")
hi=$(randread "$img" 5 | cut -d' ' -f2)
cp "$ROOTFS" "$SCRATCH/bench-root.ext4"
out=$("$KILN" boot --kernel "$KERNEL" --memory 256 --disk "path=$SCRATCH/bench-root.ext4,root" \
  --disk "path=$img,cache=unsafe" --cmdline "$base kiln.run=bench" </dev/null 2>&1)
gw=$(echo "$out" | sed -n 's/.*KILN-BENCH guest-write \([0-9.]*\).*/\1/p')
gr=$(echo "$out" | sed -n 's/.*KILN-BENCH guest-read \([0-9.]*\).*/\1/p')
gi=$(echo "$out" | sed -n 's/.*KILN-BENCH guest-IOPS \([0-9]*\).*/\1/p')
ratio() { awk -v g="$1" -v h="$2" 'BEGIN { if (h > 0 && g > 0) printf "%.0f%%", 100 * g / h; else print "n/a" }'; }
echo "BENCH-BLOCK size=${size}MiB"
echo "BENCH-BLOCK seq-write  host ${hw} MiB/s  guest ${gw:-?} MiB/s  ratio $(ratio "$gw" "$hw")"
echo "BENCH-BLOCK seq-read   host ${hr} MiB/s  guest ${gr:-?} MiB/s  ratio $(ratio "$gr" "$hr")"
echo "BENCH-BLOCK rand-4k    host ${hi} IOPS   guest ${gi:-?} IOPS   ratio $(ratio "$gi" "$hi")"
[ -n "$gw" ] || { echo "guest output:"; echo "$out" | tail -n 20; }

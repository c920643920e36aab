#!/usr/bin/env bash
# Build an ext4 root disk image: static busybox, kiln's /init (also reachable
# as /sbin/init), extra files. Needs no root, loop devices or mounts:
# mkfs.ext4 -d copies a directory tree into the new filesystem.
#
# Usage: build-rootfs.sh OUT.ext4 [--size MiB] [--add SRC:DST]...
#
#   --size MiB      image size (default 64)
#   --add SRC:DST   copy a host file or directory to guest path DST
#
# Boot it with e.g. "root=/dev/vda rw init=/init console=ttyS0". The kernel
# mounts devtmpfs on /dev itself (CONFIG_DEVTMPFS_MOUNT), so the image needs
# no device nodes. The filesystem is labelled "kiln-root".
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/lib/guest-tree.sh
source "$here/lib/guest-tree.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

out=''
size_mib=64
adds=()
while (( $# )); do
  case $1 in
    --size) (( $# >= 2 )) || die "--size needs MiB"; size_mib=$2; shift 2 ;;
    --size=*) size_mib=${1#--size=}; shift ;;
    --add) (( $# >= 2 )) || die "--add needs SRC:DST"; adds+=("$2"); shift 2 ;;
    --add=*) adds+=("${1#--add=}"); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) [[ -z $out ]] || die "more than one output file given"; out=$1; shift ;;
  esac
done
[[ -n $out ]] || { usage >&2; exit 2; }
if ! [[ $size_mib =~ ^[0-9]+$ ]] || (( size_mib < 8 )); then
  die "--size must be a whole number of MiB, at least 8"
fi

mkfs=$(command -v mkfs.ext4 || command -v /sbin/mkfs.ext4 || true)
if [[ -z $mkfs ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q e2fsprogs >&2
    mkfs=$(command -v mkfs.ext4)
  else
    die "mkfs.ext4 not found; install it with: sudo apt-get install e2fsprogs"
  fi
fi

find_busybox

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-rootfs.XXXXXX")
tmp_img=''
cleanup() { rm -rf "$work"; [[ -z $tmp_img ]] || rm -f "$tmp_img"; }
trap cleanup EXIT

root=$work/root
populate_tree "$root"
for spec in "${adds[@]}"; do
  add_to_tree "$root" "$spec"
done

mkdir -p "$(dirname "$out")"
tmp_img=$out.tmp.$$
rm -f "$tmp_img"
truncate -s "${size_mib}M" "$tmp_img"
# lazy_*_init=0: initialise inode tables and journal now, so the guest kernel
# does not start a background ext4lazyinit thread that writes to the disk
# during tests and benchmarks.
if ! "$mkfs" -q -F -t ext4 -L kiln-root -m 0 \
       -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
       -d "$root" "$tmp_img" >"$work/mkfs.log" 2>&1; then
  cat "$work/mkfs.log" >&2
  die "mkfs.ext4 failed (is --size $size_mib big enough for the files?)"
fi

# mkfs -d copies the owners of the host files. Without root they are ours,
# so rewrite every inode to root:root (debugfs edits the image directly).
if [[ $(id -u) -ne 0 ]]; then
  debugfs=$(command -v debugfs || echo /sbin/debugfs)
  (cd "$root" && find . -mindepth 1 -printf '%P\n') |
    awk '{ printf "sif \"/%s\" uid 0\nsif \"/%s\" gid 0\n", $0, $0 }' >"$work/chown.debugfs"
  "$debugfs" -w -f "$work/chown.debugfs" "$tmp_img" >"$work/debugfs.log" 2>&1 ||
    { cat "$work/debugfs.log" >&2; die "debugfs could not set file owners"; }
fi

mv -f "$tmp_img" "$out"
tmp_img=''
printf '%s\n' "$out"

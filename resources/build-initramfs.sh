#!/usr/bin/env bash
# Build a gzip'd newc initramfs: static busybox, kiln's /init, extra files.
#
# Usage:
#   build-initramfs.sh OUT.cpio.gz [--add SRC:DST]...
#   build-initramfs.sh --default
#   build-initramfs.sh --sandbox AGENT
#
# --add copies a host file or directory to guest path DST (repeatable); e.g.
#   --add mytest.sh:/kiln/run/mytest   then boot with kiln.run=mytest
# --default builds the stock initramfs (no extras) once into
#   ${KILN_CACHE:-$HOME/.cache/kiln}/initramfs/<key>/initramfs.cpio.gz
# and prints its path; <key> = first 16 hex digits of sha256(guest/init,
# this script, lib/guest-tree.sh, the busybox binary).
# --sandbox builds the sandbox guest's initramfs the same way (cached, path
# printed): busybox for users' commands, and AGENT (kiln's static guest
# agent, which kiln writes out from its own binary) as /init; its key also
# covers the agent's bytes.
#
# The archive is written by this script itself, not by cpio(1), so that
#  - /dev/console is a real character device (5,1) without needing root or
#    mknod. (The kernel opens /dev/console for init's stdio *before* /init
#    runs and before anything mounts devtmpfs. Linux's built-in default
#    initramfs also carries that node, but we do not rely on it.)
#  - the output is byte-for-byte reproducible: entries sorted, uid/gid 0,
#    mtimes = $SOURCE_DATE_EPOCH (default 0), inode numbers sequential,
#    gzip -n.
set -euo pipefail
export LC_ALL=C # byte-wise sort, and ${#name} counts bytes

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/lib/guest-tree.sh
source "$here/lib/guest-tree.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

out=''
default=0
agent=''
adds=()
while (( $# )); do
  case $1 in
    --add) (( $# >= 2 )) || die "--add needs SRC:DST"; adds+=("$2"); shift 2 ;;
    --add=*) adds+=("${1#--add=}"); shift ;;
    --default) default=1; shift ;;
    --sandbox) (( $# >= 2 )) || die "--sandbox needs the agent binary"; agent=$2; default=1; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) [[ -z $out ]] || die "more than one output file given"; out=$1; shift ;;
  esac
done
if (( default )); then
  [[ -z $out && ${#adds[@]} -eq 0 ]] || die "--default and --sandbox take no output file or --add"
  if [[ -n $agent ]]; then
    [[ -f $agent && -x $agent ]] || die "--sandbox: $agent is not an executable file"
    if LC_ALL=C readelf -l "$agent" 2>/dev/null | grep -q 'Requesting program interpreter'; then
      die "--sandbox: $agent is dynamically linked; the sandbox guest has no libc"
    fi
    adds=("$agent:/init")
  fi
else
  [[ -n $out ]] || { usage >&2; exit 2; }
fi

find_busybox

# ---- newc writer ----------------------------------------------------------
mtime=${SOURCE_DATE_EPOCH:-0}
ino=0

pad4() { # emit NULs up to the next multiple of 4, given a byte count
  case $(( $1 % 4 )) in
    1) printf '\0\0\0' ;;
    2) printf '\0\0' ;;
    3) printf '\0' ;;
  esac
}

# newc_header NAME MODE SIZE NLINK [RDEVMAJOR RDEVMINOR]
newc_header() {
  local name=$1 namesize=$(( ${#1} + 1 ))
  ino=$(( ino + 1 ))
  # magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
  # rdevmajor, rdevminor, namesize, check; then the NUL-terminated name.
  printf '070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\0' \
    "$ino" "$2" 0 0 "$4" "$mtime" "$3" 0 0 "${5:-0}" "${6:-0}" "$namesize" 0 "$name"
  pad4 $(( 110 + namesize ))
}

# write_cpio TREE: the whole archive (uncompressed) on stdout.
write_cpio() {
  local tree=$1 path type perm size link
  local us=$'\x1f' # field separator: not IFS whitespace, so empty fields survive
  # One find for names, types, modes, sizes and link targets (no fork per
  # file), sorted by path so parents precede children.
  while IFS=$us read -r -d '' path type perm size link; do
    case $type in
      d)
        newc_header "$path" $(( 8#040000 | 8#$perm )) 0 2
        if [[ $path == dev && ! -e $tree/dev/console ]]; then
          newc_header dev/console $(( 8#020000 | 8#600 )) 0 1 5 1
        fi ;;
      f)
        newc_header "$path" $(( 8#0100000 | 8#$perm )) "$size" 1
        cat -- "$tree/$path"
        pad4 "$size" ;;
      l)
        newc_header "$path" $(( 8#0120000 | 8#777 )) "${#link}" 1
        printf '%s' "$link"
        pad4 "${#link}" ;;
      *) die "cannot put '$path' (type $type) in an initramfs" ;;
    esac
  done < <(find "$tree" -mindepth 1 -printf "%P$us%y$us%m$us%s$us%l\0" | sort -z -t "$us" -k1,1)
  newc_header 'TRAILER!!!' 0 0 1
}

# build_to FILE: build the tree and write the compressed archive to FILE
# via a temp file in the same directory, so FILE is never half-written.
build_to() {
  local dest=$1 work spec
  work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-initramfs.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: it is local
  trap "rm -rf '$work'" EXIT
  populate_tree "$work/root"
  for spec in "${adds[@]}"; do
    add_to_tree "$work/root" "$spec"
  done
  write_cpio "$work/root" | gzip -n -9 >"$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
  rm -rf "$work"
  trap - EXIT
}

if (( ! default )); then
  mkdir -p "$(dirname "$out")"
  build_to "$out"
  printf '%s\n' "$out"
  exit 0
fi

# ---- --default: cached stock initramfs ------------------------------------
key=$({ printf 'busybox=%s\n' "$(busybox_identity)"
        cat "$kiln_init" "$here/build-initramfs.sh" "$kiln_lib_dir/guest-tree.sh"
        [[ -z $agent ]] || cat "$agent"; } | sha256sum | cut -c1-16)
idir=${KILN_CACHE:-$HOME/.cache/kiln}/initramfs
[[ -z $agent ]] || idir=${idir}-sandbox
dir=$idir/$key
if [[ -f $dir/initramfs.cpio.gz ]]; then
  printf '%s\n' "$dir/initramfs.cpio.gz"
  exit 0
fi
mkdir -p "$idir"
exec 9>"$idir/.$key.lock"
flock 9
if [[ ! -f $dir/initramfs.cpio.gz ]]; then
  rm -rf "$idir/.tmp-$key".*
  tmpd=$(mktemp -d "$idir/.tmp-$key.XXXXXX")
  build_to "$tmpd/initramfs.cpio.gz"
  chmod 0755 "$tmpd" # mktemp made it 0700
  # Atomic publish of the whole directory.
  mv -T "$tmpd" "$dir"
fi
printf '%s\n' "$dir/initramfs.cpio.gz"

#!/usr/bin/env bash
# Build a Debian ext4 image for `kiln exec --rootfs`: debootstrap's minbase
# variant of Debian 12 (bookworm) plus a few packages, copied into ext4 by
# mkfs.ext4 -d (no loop devices, no mounts). kiln mounts it read-only under
# a tmpfs overlay, so the image needs no init, kernel or device nodes.
#
# Usage: build-debian-rootfs.sh OUT.ext4 [--packages "PKG ..."] [--size MiB]
#
#   --packages "PKG ..."  packages added to minbase (default: python3-minimal)
#   --size MiB            image size (default: the tree plus about 10%)
#
# The image is built once into
#   ${KILN_CACHE:-$HOME/.cache/kiln}/rootfs/<key>/rootfs.ext4
# and copied (sparse) to OUT; <key> = first 16 hex digits of sha256(this
# script, the suite, the packages, the size), so it is rebuilt only when the
# recipe changes (not when Debian publishes updates: delete the entry for
# that). Building needs root (debootstrap chroots, creates device nodes and
# root-owned files; fakeroot is not enough) and installs debootstrap with
# apt-get when missing; a cache hit needs neither.
#
# Environment: KILN_DEBIAN_MIRROR (default: the host's apt source for the
# suite, else http://deb.debian.org/debian), KILN_DEBIAN_SUITE (default
# bookworm).
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'kiln: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

out=''
packages=python3-minimal
size_mib=auto
suite=${KILN_DEBIAN_SUITE:-bookworm}
while (( $# )); do
  case $1 in
    --packages) (( $# >= 2 )) || die "--packages needs a list"; packages=$2; shift 2 ;;
    --packages=*) packages=${1#--packages=}; shift ;;
    --size) (( $# >= 2 )) || die "--size needs MiB"; size_mib=$2; shift 2 ;;
    --size=*) size_mib=${1#--size=}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) [[ -z $out ]] || die "more than one output file given"; out=$1; shift ;;
  esac
done
[[ -n $out ]] || { usage >&2; exit 2; }
if [[ $size_mib != auto ]] && { ! [[ $size_mib =~ ^[0-9]+$ ]] || (( size_mib < 32 )); }; then
  die "--size must be a whole number of MiB, at least 32"
fi
# One package name per word, in a canonical order (for the cache key).
read -r -a pkg_list <<<"${packages//,/ }"
for p in "${pkg_list[@]}"; do
  [[ $p =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "--packages: '$p' is not a Debian package name"
done
packages=$(printf '%s\n' "${pkg_list[@]}" | sort -u | tr '\n' ' ')
packages=${packages% }

key=$({ printf 'suite=%s\npackages=%s\nsize=%s\n' "$suite" "$packages" "$size_mib"
        cat "$here/build-debian-rootfs.sh"; } | sha256sum | cut -c1-16)
rdir=${KILN_CACHE:-$HOME/.cache/kiln}/rootfs
dir=$rdir/$key

# The suite's mirror from the host's apt sources (deb822 first, then the
# one-line format), so a machine with a local mirror uses it.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$suite" '
      function flush() { if (uris != "" && deb && has) { print uris; found = 1; exit } uris = ""; deb = 0; has = 0 }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uris = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
      END { if (!found) flush() }' "$f"
  done | head -n 1
  awk -v suite="$suite" '$1 == "deb" && $0 !~ /\[/ && $3 == suite { print $2; exit }' \
    /etc/apt/sources.list 2>/dev/null || true
}

# umount_under DIR: lazily unmount whatever is mounted below DIR (debootstrap
# mounts /proc and /sys in its tree, and bind-mounts /dev nodes inside
# containers), deepest first, so that deleting the tree cannot reach the
# host's files.
umount_under() {
  awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
}

build() {   # TREE IMAGE
  local root=$1 img=$2 mirror debootstrap used_mib inodes size
  [[ $(id -u) -eq 0 ]] ||
    die "building a Debian rootfs needs root (debootstrap chroots and creates root-owned files and device nodes; fakeroot is not enough): run it with sudo"
  debootstrap=$(command -v debootstrap || command -v /usr/sbin/debootstrap || true)
  if [[ -z $debootstrap ]]; then
    command -v apt-get >/dev/null || die "debootstrap not found and no apt-get to install it"
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2; } ||
      die "apt-get install debootstrap failed"
    debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
  fi
  mirror=${KILN_DEBIAN_MIRROR:-$(host_mirror | head -n 1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  say "debootstrap --variant=minbase $suite + $packages from $mirror (a few minutes, once)"
  local include=${packages// /,}
  if ! "$debootstrap" --variant=minbase --components=main ${include:+--include="$include"} \
         "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 20 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  umount_under "$root"
  # shellcheck disable=SC2086 # one word per package
  chroot "$root" dpkg-query -W $packages >/dev/null 2>&1 ||
    die "debootstrap finished but not all of '$packages' are installed"
  # What a sandbox never needs: downloaded .debs, apt lists, docs, man
  # pages, translations, logs. Files live in the nested test host's RAM.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/* \
    "$root"/debootstrap "$root"/etc/resolv.conf
  echo kiln-sandbox >"$root/etc/hostname"
  # kiln's agent mounts devtmpfs, proc, sys and /tmp itself.
  find "$root/dev" -mindepth 1 -delete
  mkdir -p "$root/work"
  chmod 1777 "$root/work"

  # Blocks in use on the host's filesystem: close to what 4 KiB ext4 needs.
  used_mib=$(du -s -B1M "$root" | cut -f1)
  inodes=$(find "$root" | wc -l)
  inodes=$(( inodes + inodes / 4 + 1024 ))
  if [[ $size_mib == auto ]]; then
    # Data plus 10%, the inode tables (256 bytes each) and metadata: the
    # image is only ever mounted read-only, and in the nested test host it
    # lives in RAM, so it carries little free space.
    size=$(( used_mib + used_mib / 10 + inodes / 4096 + 8 ))
  else
    size=$size_mib
  fi
  truncate -s "${size}M" "$img"
  # No journal: kiln mounts the image read-only. 4 KiB blocks (mke2fs picks
  # 1 KiB for images this small). lazy_itable_init=0: nothing in the guest
  # would ever write to it in the background either.
  if ! mkfs.ext4 -q -F -t ext4 -b 4096 -L kiln-debian -m 0 -N "$inodes" -O ^has_journal \
         -E lazy_itable_init=0 -d "$root" "$img" >"$work/mkfs.log" 2>&1; then
    cat "$work/mkfs.log" >&2
    die "mkfs.ext4 failed (is --size $size big enough for the ${used_mib} MiB tree?)"
  fi
  e2fsck -fn "$img" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found problems in the new image"; }
  say "built a $size MiB image ($used_mib MiB of files) for: $packages"
}

if [[ ! -f $dir/rootfs.ext4 ]]; then
  command -v mkfs.ext4 >/dev/null || PATH=$PATH:/sbin:/usr/sbin
  command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found; install it with: sudo apt-get install e2fsprogs"
  mkdir -p "$rdir"
  exec 9>"$rdir/.$key.lock"
  flock 9
  if [[ ! -f $dir/rootfs.ext4 ]]; then
    # Leftovers of a killed build of this key (debootstrap may have left
    # /proc or /sys mounted inside its tree).
    for old in "$rdir/.tmp-$key".*; do
      [[ -e $old ]] || continue
      umount_under "$old"
      rm -rf --one-file-system "$old"
    done
    work=$(mktemp -d "$rdir/.tmp-$key.XXXXXX")
    cleanup() {
      umount_under "$work"
      rm -rf --one-file-system "$work"
    }
    trap cleanup EXIT
    mkdir "$work/entry"
    build "$work/root" "$work/entry/rootfs.ext4"
    printf 'suite=%s\npackages=%s\nbuilt=%s\n' "$suite" "$packages" "$(date -u +%FT%TZ)" >"$work/entry/build-info"
    chmod 0755 "$work/entry"
    # Atomic publish: a half-built image never looks like a cache hit.
    mv -T "$work/entry" "$dir"
    cleanup
    trap - EXIT
  fi
  exec 9>&-
fi

mkdir -p "$(dirname "$out")"
cp --sparse=always "$dir/rootfs.ext4" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
printf '%s\n' "$out"

#!/usr/bin/env bash
# Build (once) and cache kiln's guest kernel: vmlinux (PVH ELF) + bzImage.
#
# Usage: build-kernel.sh [--print-dir]
#
#   (no args)    build if needed; progress goes to stderr, and the cache dir
#                (holding vmlinux, bzImage, config, System.map, build-info)
#                is printed as the last line of stdout.
#   --print-dir  print the cache dir for the current recipe without building;
#                exit 0 if it is already built, 1 if not.
#
# Cache: ${KILN_CACHE:-$HOME/.cache/kiln}/kernel/<key>/, where <key> is the
# first 16 hex digits of sha256(recipe version, kernel source identity,
# guest/kernel.config). A cache dir only ever appears by an atomic rename of a
# finished build, so its existence means "complete".
#
# Environment:
#   KILN_CACHE          cache root (default $HOME/.cache/kiln)
#   KILN_JOBS           make -j value (default 2: the CI machines have 2 cores)
#   KILN_LINUX_TARBALL  use this Linux 6.1 source tarball instead of Debian's
#                       linux-source-6.1 package (non-Debian hosts)
#   KILN_VERBOSE=1      stream the kernel build output instead of logging it
set -euo pipefail

# Bump when the build steps change in a way that changes the output, so old
# cache entries stop matching.
readonly RECIPE_VERSION=1
readonly DEB_PKG=linux-source-6.1
readonly DEB_TARBALL=/usr/src/linux-source-6.1.tar.xz
# Measured on the 2-core CI machine (see README.md); shown to the user so a
# long silent step is not mistaken for a hang.
readonly EXPECTED_MINUTES=5-10

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly fragment=$here/guest/kernel.config
readonly kdir=${KILN_CACHE:-$HOME/.cache/kiln}/kernel

say() { printf 'kiln: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

print_dir_only=0
case ${1-} in
  '') ;;
  --print-dir) print_dir_only=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (try --help)" ;;
esac

[[ -f $fragment ]] || die "missing config fragment $fragment"

# apt-get install, refreshing the package lists once if a package is unknown.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
}

can_apt() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }

# Sets $tarball and $srcid, a string identifying the exact kernel source (part
# of the cache key). Installs the Debian source package when root.
resolve_source() {
  if [[ -n ${KILN_LINUX_TARBALL-} ]]; then
    [[ -f $KILN_LINUX_TARBALL ]] || die "KILN_LINUX_TARBALL=$KILN_LINUX_TARBALL does not exist"
    tarball=$KILN_LINUX_TARBALL
    # Name + size is cheap (no hashing 140 MB on every cache hit) and changes
    # with any real source update.
    srcid="tarball:$(basename "$tarball"):$(stat -c %s "$tarball")"
    return
  fi
  local ver
  ver=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$DEB_PKG" 2>/dev/null || true)
  if [[ $ver != ii* ]]; then
    if can_apt; then
      say "installing $DEB_PKG (kernel source, ~140 MB)"
      apt_install "$DEB_PKG"
      ver=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$DEB_PKG")
    else
      die "the guest kernel is built from Debian's $DEB_PKG; install it with
  sudo apt-get install $DEB_PKG bc flex bison libelf-dev libssl-dev
or point KILN_LINUX_TARBALL at a Linux 6.1 source tarball"
    fi
  fi
  tarball=$DEB_TARBALL
  [[ -f $tarball ]] || die "$DEB_PKG is installed but $tarball is missing"
  srcid="deb:$DEB_PKG=${ver#ii }"
}

tarball='' srcid=''
resolve_source

key=$({ printf 'recipe=%s\nsource=%s\n' "$RECIPE_VERSION" "$srcid"; cat "$fragment"; } |
      sha256sum | cut -c1-16)
readonly key
readonly out=$kdir/$key

is_built() { [[ -f $out/vmlinux && -f $out/bzImage && -f $out/config ]]; }

if (( print_dir_only )); then
  printf '%s\n' "$out"
  is_built
  exit
fi

# Fast path: no lock, no tools needed. Safe because $out only appears by
# rename of a complete build.
if is_built; then
  printf '%s\n' "$out"
  exit 0
fi

mkdir -p "$kdir"
# One builder per key. Others wait here, then find the finished build.
exec 9>"$kdir/.$key.lock"
if ! flock -n 9; then
  say "another process is building this kernel; waiting for it"
  flock 9
fi
if is_built; then
  printf '%s\n' "$out"
  exit 0
fi

# Leftovers of builds that were killed (we hold the lock, so none is live).
rm -rf "$kdir/.tmp-$key".*

# Build tools, checked only now so cache hits need none of them.
need_pkgs=()
for t in make:make gcc:gcc bc:bc flex:flex bison:bison xz:xz-utils readelf:binutils; do
  command -v "${t%%:*}" >/dev/null || need_pkgs+=("${t#*:}")
done
[[ -f /usr/include/libelf.h || -f /usr/include/elfutils/libelf.h ]] || need_pkgs+=(libelf-dev)
[[ -f /usr/include/openssl/ssl.h ]] || need_pkgs+=(libssl-dev)
if (( ${#need_pkgs[@]} )); then
  if can_apt; then
    say "installing kernel build dependencies: ${need_pkgs[*]}"
    apt_install "${need_pkgs[@]}"
  else
    die "missing kernel build dependencies; install them with
  sudo apt-get install ${need_pkgs[*]}"
  fi
fi

tmp=$(mktemp -d "$kdir/.tmp-$key.XXXXXX")
cleanup() {
  local rc=$?
  if (( rc != 0 )) && [[ -f $tmp/build.log ]]; then
    cp "$tmp/build.log" "$kdir/$key.failed.log" 2>/dev/null || true
    say "kernel build FAILED; last lines of the log ($kdir/$key.failed.log):"
    tail -n 30 "$tmp/build.log" >&2 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

log=$tmp/build.log
start=$SECONDS
say "building the guest kernel (takes ~$EXPECTED_MINUTES minutes on 2 cores, once; cached in $out)"
say "log: $log (set KILN_VERBOSE=1 to stream it)"

say "unpacking $(basename "$tarball")"
mkdir "$tmp/src"
tar -xf "$tarball" -C "$tmp/src" --strip-components=1
src=$tmp/src

# Everything that shows up in `uname -a` is fixed, so rebuilding the same key
# gives the same kernel.
mk=(make -C "$src" ARCH=x86_64
    KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln KBUILD_BUILD_VERSION=1
    "KBUILD_BUILD_TIMESTAMP=kiln-$key")

run_logged() {
  if [[ ${KILN_VERBOSE-} == 1 ]]; then
    "$@" 2>&1 | tee -a "$log" >&2
  else
    "$@" >>"$log" 2>&1
  fi
}

say "configuring (allnoconfig + guest/kernel.config)"
cp "$fragment" "$tmp/fragment.config"
run_logged "${mk[@]}" KCONFIG_ALLCONFIG="$tmp/fragment.config" allnoconfig
run_logged "${mk[@]}" olddefconfig

# olddefconfig drops options whose dependencies are unmet without a word.
# Every line of the fragment is a requirement: "CONFIG_X=v" must appear
# verbatim, "# CONFIG_X is not set" must not have become set.
missing=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*)
      grep -qxF -- "$line" "$src/.config" ||
        missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo 'absent'))") ;;
    '# CONFIG_'*' is not set')
      sym=${line#\# }; sym=${sym%% *}
      if grep -q "^$sym=" "$src/.config"; then
        missing+=("$line (got: $(grep "^$sym=" "$src/.config"))")
      fi ;;
  esac
done <"$fragment"
if (( ${#missing[@]} )); then
  say "guest/kernel.config asks for options the resolved .config does not have"
  say "(usually a dependency is missing from the fragment):"
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

say "compiling (make -j${KILN_JOBS:-2})"
run_logged nice -n 10 "${mk[@]}" -j"${KILN_JOBS:-2}" bzImage

# The monitor boots vmlinux through its PVH entry point: make sure the Xen
# note XEN_ELFNOTE_PHYS32_ENTRY (type 18 = 0x12) is really there.
# binutils prints it as "Xen ... Unknown note type: (0x00000012)"; newer ones
# may name it.
if ! readelf -W -n "$src/vmlinux" |
     awk '$1 == "Xen" && /\(0x0*12\)|PHYS32_ENTRY/ { ok = 1 } END { exit !ok }'; then
  die "vmlinux has no Xen PHYS32_ENTRY (PVH) ELF note"
fi

mkdir "$tmp/out"
# No debug info is configured; --strip-debug is a no-op safety net that keeps
# symbols and ELF notes.
objcopy --strip-debug "$src/vmlinux" "$tmp/out/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$tmp/out/bzImage"
cp "$src/.config" "$tmp/out/config"
cp "$src/System.map" "$tmp/out/System.map"
{
  printf 'key=%s\nrecipe=%s\nsource=%s\n' "$key" "$RECIPE_VERSION" "$srcid"
  printf 'kernelrelease=%s\n' "$(make -s -C "$src" ARCH=x86_64 kernelrelease)"
  printf 'compiler=%s\n' "$(gcc --version | head -n1)"
  printf 'build_seconds=%s\n' "$((SECONDS - start))"
} >"$tmp/out/build-info"

# Atomic publish: readers either see no dir or a complete one.
mv -T "$tmp/out" "$out"
say "guest kernel built in $(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s"
printf '%s\n' "$out"

# shellcheck shell=bash
# Shared by build-initramfs.sh and build-rootfs.sh: lay out the guest's root
# file tree (busybox + kiln's /init + extra files) in a host directory.
# Sourced, not executed; callers run with `set -euo pipefail`.

kiln_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kiln_resources_dir=$(dirname "$kiln_lib_dir")
kiln_init=$kiln_resources_dir/guest/init

say() { printf 'kiln: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Sets $busybox to a statically linked busybox. A dynamic one would need its
# shared libraries in the guest, which these trees do not carry.
find_busybox() {
  busybox=${KILN_BUSYBOX:-/bin/busybox}
  if [[ ! -x $busybox ]]; then
    if [[ -z ${KILN_BUSYBOX-} && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      say "installing busybox-static"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2; }
    fi
    [[ -x $busybox ]] || die "no busybox at $busybox; install it with
  sudo apt-get install busybox-static
or set KILN_BUSYBOX to a statically linked busybox"
  fi
  if LC_ALL=C readelf -l "$busybox" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$busybox is dynamically linked; install busybox-static or set KILN_BUSYBOX"
  fi
}

# A string that changes whenever the busybox binary does (for cache keys).
busybox_identity() {
  printf '%s %s' "$("$busybox" --help 2>&1 | head -n1)" "$(sha256sum <"$busybox" | cut -c1-64)"
}

# populate_tree DIR: busybox with one symlink per applet, /init, and the
# empty mount points /init expects.
populate_tree() {
  local root=$1 path
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,kiln/run}
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  cp "$busybox" "$root/bin/busybox"
  chmod 0755 "$root/bin/busybox"
  # `busybox --list-full` names each applet's usual place (bin/sh,
  # sbin/poweroff, usr/bin/base64, ...). Doing this on the host rather than
  # `busybox --install -s` in the guest keeps the tree fixed and the boot fast.
  local -a applets=() dirs=()
  while IFS= read -r path; do
    case $path in
      ''|linuxrc|bin/busybox) ;;
      */*) applets+=("$root/$path"); dirs+=("$root/${path%/*}") ;;
    esac
  done < <("$busybox" --list-full)
  mkdir -p "${dirs[@]}"
  # One ln per applet, but no other forks in the loop: ~300 applets.
  for path in "${applets[@]}"; do
    ln -sfn /bin/busybox "$path"
  done

  install -m 0755 "$kiln_init" "$root/init"
  # Boots with init=/sbin/init (or a kernel default) still get kiln's init,
  # not busybox's inittab-driven one.
  ln -sfn /init "$root/sbin/init"

  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  # Our /init is PID 1, not busybox init: plain `poweroff` would only signal
  # PID 1, which ignores it. In the interactive shell, make them act at once.
  cat >"$root/etc/profile" <<'EOF'
alias poweroff='poweroff -f' reboot='reboot -f' halt='halt -f'
PS1='kiln# '
EOF
}

# add_to_tree DIR SRC:DST — copy a host file or directory into the tree.
# DST is a guest path; a trailing "/" means "into this directory".
add_to_tree() {
  local root=$1 spec=$2 src dst
  [[ $spec == *:* ]] || die "--add wants SRC:DST, got '$spec'"
  # Split on the last colon: guest paths with colons are rarer than host ones.
  src=${spec%:*}
  dst=${spec##*:}
  [[ -e $src ]] || die "--add: $src does not exist"
  [[ $dst == /* ]] || die "--add: guest path '$dst' must be absolute"
  if [[ $dst == */ ]]; then
    dst=$dst$(basename "$src")
  fi
  mkdir -p "$root$(dirname "$dst")"
  rm -rf "${root:?}$dst"
  # Modes are kept (scripts stay executable); owners are not: everything in
  # the guest belongs to root.
  cp -R --preserve=mode "$src" "$root$dst"
}

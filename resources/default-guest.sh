#!/usr/bin/env bash
# Make sure kiln's default guest (kernel + initramfs) exists, building it on
# first use, and print where it is:
#   KERNEL=<vmlinux, the PVH ELF kiln boots>
#   BZIMAGE=<bzImage of the same kernel>
#   INITRD=<initramfs.cpio.gz>
#   SANDBOX_INITRD=<the sandbox guest's initramfs>   (when KILN_AGENT is set)
#   AGENT=<the agent itself, for a sandbox initramfs of one's own>
# KILN_AGENT names kiln's static guest agent (kiln writes it out from its
# own binary); the sandbox initramfs runs it as /init.
# This is what `kiln boot` runs when no --kernel is given. Progress and
# errors go to stderr; stdout carries only these lines.
# The first run builds the kernel (several minutes, once); later runs take
# well under a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# `tail -n1`: the path is the last line the builders print on stdout.
kdir=$("$here/build-kernel.sh" | tail -n1)
initrd=$("$here/build-initramfs.sh" --default | tail -n1)
sandbox_initrd=''
if [[ -n ${KILN_AGENT:-} ]]; then
  sandbox_initrd=$("$here/build-initramfs.sh" --sandbox "$KILN_AGENT" | tail -n1)
fi

for f in "$kdir/vmlinux" "$kdir/bzImage" "$initrd"; do
  [[ -f $f ]] || { printf 'kiln: error: %s missing after build\n' "$f" >&2; exit 1; }
done

printf 'KERNEL=%s\nBZIMAGE=%s\nINITRD=%s\n' "$kdir/vmlinux" "$kdir/bzImage" "$initrd"
[[ -z $sandbox_initrd ]] || printf 'SANDBOX_INITRD=%s\nAGENT=%s\n' "$sandbox_initrd" "$KILN_AGENT"

#!/usr/bin/env bash
# Build kiln's guest agent as a static x86_64 binary for the sandbox guest.
#
# Usage:
#   build-agent.sh OUT [--target-dir DIR]
#
# OUT receives the stripped binary (its directory must exist). The build
# uses glibc with +crt-static (there is no musl target here) in its own
# target directory, ${KILN_AGENT_TARGET_DIR:-<repo>/target/agent} unless
# --target-dir is given, so the flag does not rebuild kiln's own targets.
# Fails if the result is not statically linked.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

out=""
target_dir="${KILN_AGENT_TARGET_DIR:-$repo/target/agent}"
while [ $# -gt 0 ]; do
    case "$1" in
        --target-dir) target_dir="${2:?--target-dir needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build-agent.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *)
            [ -z "$out" ] || { echo "build-agent.sh: one output path only" >&2; exit 2; }
            out="$1"; shift ;;
    esac
done
[ -n "$out" ] || { usage >&2; exit 2; }
[ -d "$(dirname "$out")" ] || { echo "build-agent.sh: $(dirname "$out") does not exist; create it first" >&2; exit 1; }

triple=x86_64-unknown-linux-gnu
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --manifest-path "$repo/Cargo.toml" --locked --release \
        --bin kiln-agent --target "$triple" --target-dir "$target_dir" >&2

built="$target_dir/$triple/release/kiln-agent"
# A dynamic binary has a PT_INTERP (program interpreter) header.
if readelf -l "$built" | grep -q 'Requesting program interpreter'; then
    echo "build-agent.sh: $built is dynamically linked; the guest has no libc to load" >&2
    exit 1
fi
tmp="$out.tmp.$$"
cp "$built" "$tmp"
strip "$tmp" 2>/dev/null || true
mv -f "$tmp" "$out"
echo "$out"

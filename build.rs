//! Builds kiln's sandbox guest agent (`resources/agent`) as a static
//! x86_64 binary and leaves it in `OUT_DIR/kiln-agent`, which
//! `src/sandbox/guest.rs` embeds: any kiln binary carries the agent of its
//! own protocol version, as it carries the guest recipes.
//!
//! The agent is a crate of its own, built by a nested cargo in its own
//! target directory, so `+crt-static` (glibc: there is no musl target on
//! our machines) never reaches kiln's own build, and kiln's own flags
//! (a fuzzer's sanitizers, clippy's wrapper) never reach the agent.

use std::path::PathBuf;
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Variables of the outer build that must not leak into the agent's.
const OUTER_ONLY: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let agent = manifest_dir.join("resources/agent");
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", agent.join(path).display());
    }
    let target_dir = out_dir.join("agent-target");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--locked", "--target", AGENT_TARGET])
        .arg("--manifest-path")
        .arg(agent.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    for var in OUTER_ONLY {
        build.env_remove(var);
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the sandbox agent: {e}"));
    assert!(
        status.success(),
        "building the sandbox agent (resources/agent) failed; see the messages above"
    );
    let built = target_dir.join(AGENT_TARGET).join("release/kiln-agent");
    std::fs::copy(&built, out_dir.join("kiln-agent"))
        .unwrap_or_else(|e| panic!("cannot copy the sandbox agent from {}: {e}", built.display()));
}

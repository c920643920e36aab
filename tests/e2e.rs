//! End-to-end: kiln boots a real Linux guest to user space.
//!
//! On a host whose KVM boots Linux (VT-x/AMD-V) the scenarios in
//! `tests/e2e/suite.sh` run directly; elsewhere (PVM hosts, CI runners
//! without nested virtualization) they run inside the emulated host of
//! `tools/nested-host`. Either way the suite runs once, on first use, and
//! each test below checks one scenario's result line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

struct Suite {
    results: HashMap<String, (bool, String)>,
    transcript: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds (or finds in the cache) the default guest kernel and initramfs
/// through `kiln guest`, exactly as `kiln boot` without `--kernel` does
/// (which also proves that subcommand's KEY=PATH output). The sandbox
/// guest's initramfs (SANDBOX_INITRD=) is passed on when printed; without
/// it the exec-* scenarios report why they cannot run.
fn guest_artifacts() -> HashMap<String, PathBuf> {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("guest")
        .stderr(Stdio::inherit())
        .output()
        .expect("run kiln guest");
    assert!(out.status.success(), "kiln guest failed (see above)");
    let vars: HashMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect();
    for key in ["KERNEL", "BZIMAGE", "INITRD"] {
        assert!(vars.contains_key(key), "kiln guest printed no {key}= line");
    }
    for (key, path) in vars.iter().filter(|(k, _)| GUEST_KEYS.contains(&k.as_str())) {
        assert!(
            path.is_file(),
            "kiln guest: {key}={} is not a file",
            path.display()
        );
    }
    vars
}

/// The `kiln guest` lines the suite uses.
const GUEST_KEYS: &[&str] = &["KERNEL", "BZIMAGE", "INITRD", "SANDBOX_INITRD"];

/// Is scenario `name` to run under ONLY=`only` (empty: all)?
fn wanted(only: &str, name: &str) -> bool {
    only.is_empty() || only.split_whitespace().any(|o| o == name)
}

/// The Debian image for exec-rootfs, built by debootstrap on first use and
/// cached (resources/build-debian-rootfs.sh; building needs root and the
/// network). None, after saying why on stderr, when it cannot be built: the
/// scenario then fails with that hint while the others still run.
fn debian_rootfs() -> Option<PathBuf> {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-debian.ext4");
    let ok = Command::new("bash")
        .arg(repo().join("resources/build-debian-rootfs.sh"))
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("e2e: resources/build-debian-rootfs.sh failed (see above); exec-rootfs will fail");
    }
    ok.then_some(out)
}

/// examples/sandbox_check, the library's end-to-end checks, built with the
/// profile of this test run; None while the example does not exist.
///
/// Its contract (checked by the sandbox-library scenario of
/// tests/e2e/suite.sh): run as `sandbox_check --kernel PATH --initrd PATH`
/// (the sandbox guest; the nested host has no guest cache), within 600 s,
/// it prints one line per check on stdout,
/// `SANDBOX-CHECK <name> PASS|FAIL <detail>`, and exits 0 only if all
/// passed. The checks: `sequential-20` (20 commands one after another in
/// one Sandbox), `concurrent-4` (4 commands at once in one Sandbox, each
/// output intact), `file-5mib` (5 MiB of random bytes through write_file
/// and back through read_file, equal), `stdin-roundtrip` (1 MiB through
/// cat via spawn() pipes), `statuses` (exit 3, 127, 137), `timeout`
/// (Timeout, then Stopped), `no-leaks` (50 sandboxes built and dropped:
/// threads, fds and RSS back to where they were).
fn sandbox_check() -> Option<PathBuf> {
    if !repo().join("examples/sandbox_check.rs").is_file() {
        eprintln!("e2e: examples/sandbox_check.rs does not exist; sandbox-library will fail");
        return None;
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--locked", "--example", "sandbox_check"])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build --example sandbox_check");
    assert!(
        out.status.success(),
        "building examples/sandbox_check failed (see above)"
    );
    // The compiler-artifact message of the example names its executable.
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "sandbox_check")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo build --example sandbox_check named no executable");
    Some(exe)
}

/// The target vsock-probe is built for: static glibc (no musl target on the
/// CI machines), so one binary runs in the nested host and in the guests.
const PROBE_TARGET: &str = "x86_64-unknown-linux-gnu";

/// tests/e2e/vsock-probe, the vsock scenarios' test program, built once.
fn vsock_probe() -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vsock-probe");
    let ok = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--target",
            PROBE_TARGET,
        ])
        .arg("--manifest-path")
        .arg(repo().join("tests/e2e/vsock-probe/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags from the environment would replace the static one below.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .stderr(Stdio::inherit())
        .status()
        .expect("run cargo build for tests/e2e/vsock-probe")
        .success();
    assert!(ok, "building tests/e2e/vsock-probe failed (see above)");
    let probe = target_dir.join(PROBE_TARGET).join("release/vsock-probe");
    assert!(
        !has_elf_interpreter(&probe),
        "{} is dynamically linked; the guests have no libc: it must be built with +crt-static",
        probe.display()
    );
    probe
}

/// Does this ELF64 file ask for a dynamic loader (a PT_INTERP header)?
fn has_elf_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02"),
        "{} is not ELF64",
        path.display()
    );
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&PT_INTERP.to_le_bytes()[..])
    })
}

/// An ext4 root image with the guest scripts of tests/e2e/guest.
fn test_rootfs(probe: &Path) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-rootfs.ext4");
    let guest_scripts = repo().join("tests/e2e/guest");
    let ok = Command::new("bash")
        .arg(repo().join("resources/build-rootfs.sh"))
        .arg(&out)
        .args(["--size", "128", "--add"])
        .arg(format!("{}:/kiln/run", guest_scripts.display()))
        .arg("--add")
        .arg(format!("{}:/usr/bin/vsock-probe", probe.display()))
        .stderr(Stdio::inherit())
        .status()
        .expect("run resources/build-rootfs.sh")
        .success();
    assert!(ok, "building the test rootfs failed (see above)");
    out
}

/// The modules the distro-kernel guest loads (their dependencies come along).
const DISTRO_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

/// A distribution's kernel, as users bring their own: the Debian cloud
/// kernel that `tools/nested-host` also runs as the emulated host (cached,
/// downloaded once), and an initramfs with the test scripts and its virtio
/// modules, which kiln's /init loads in the order /etc/kiln/modules lists.
fn distro_artifacts(probe: &Path, agent: Option<&Path>) -> HashMap<String, PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-distro");
    let modules = dir.join("modules");
    // Stale modules of another kernel version must not linger.
    let _ = std::fs::remove_dir_all(&modules);
    let query = Command::new(repo().join("tools/nested-host"))
        .arg("--l1-kernel")
        .arg(&modules)
        .args(DISTRO_MODULES)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tools/nested-host --l1-kernel");
    assert!(
        query.status.success(),
        "tools/nested-host --l1-kernel failed (see above)"
    );
    let kernel = String::from_utf8_lossy(&query.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("VMLINUZ=").map(PathBuf::from))
        .expect("tools/nested-host --l1-kernel printed no VMLINUZ= line");
    let initrd = dir.join("initramfs.cpio.gz");
    let ok = Command::new("bash")
        .arg(repo().join("resources/build-initramfs.sh"))
        .arg(&initrd)
        .arg("--add")
        .arg(format!("{}:/lib/modules", modules.display()))
        .arg("--add")
        .arg(format!(
            "{}:/etc/kiln/modules",
            modules.join("modules.order").display()
        ))
        .arg("--add")
        .arg(format!("{}:/kiln/run", repo().join("tests/e2e/guest").display()))
        .arg("--add")
        .arg(format!("{}:/usr/bin/vsock-probe", probe.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run resources/build-initramfs.sh")
        .success();
    assert!(ok, "building the distro-kernel initramfs failed (see above)");
    let mut artifacts = HashMap::from([
        ("DISTRO_KERNEL".to_string(), kernel),
        ("DISTRO_INITRD".to_string(), initrd),
    ]);
    // The sandbox on the same kernel: kiln's agent as /init, which loads
    // the modules /etc/kiln/modules lists.
    if let Some(agent) = agent {
        let sandbox = dir.join("sandbox-initramfs.cpio.gz");
        let ok = Command::new("bash")
            .arg(repo().join("resources/build-initramfs.sh"))
            .arg(&sandbox)
            .arg("--add")
            .arg(format!("{}:/init", agent.display()))
            .arg("--add")
            .arg(format!("{}:/lib/modules", modules.display()))
            .arg("--add")
            .arg(format!(
                "{}:/etc/kiln/modules",
                modules.join("modules.order").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("run resources/build-initramfs.sh")
            .success();
        assert!(
            ok,
            "building the distro-kernel sandbox initramfs failed (see above)"
        );
        artifacts.insert("DISTRO_SANDBOX_INITRD".to_string(), sandbox);
    }
    artifacts
}

/// What runs inside the nested host. The optional files (the sandbox's)
/// may be absent: the suite then reports what is missing.
const NESTED_COMMAND: &str = "mkdir -p /scratch && mount -t tmpfs -o size=1536m tmpfs /scratch && \
    KILN=/work/kiln KERNEL=/work/vmlinux BZIMAGE=/work/bzImage INITRD=/work/initramfs.cpio.gz \
    ROOTFS=/work/rootfs.ext4 DISTRO_KERNEL=/work/distro-vmlinuz \
    DISTRO_INITRD=/work/distro-initramfs.cpio.gz VSOCK_PROBE=/work/vsock-probe SCRATCH=/scratch \
    SANDBOX_INITRD=/work/sandbox-initramfs.cpio.gz DEBIAN_ROOTFS=/work/debian-rootfs.ext4 \
    SANDBOX_CHECK=/work/sandbox_check BENCH_BUSYBOX=/work/busybox BENCH_FONT=/work/font.ttf \
    BENCH_FIRECRACKER=/work/firecracker BENCH_QEMU=/usr/bin/qemu-system-x86_64 \
    DISTRO_SANDBOX_INITRD=/work/distro-sandbox-initramfs.cpio.gz sh /work/suite.sh";

/// The Firecracker binary bench-boot runs as a peer, if this machine has
/// one: `$KILN_FIRECRACKER`, else what tools/build-peers left in the cache.
fn firecracker() -> Option<std::path::PathBuf> {
    let path = match std::env::var_os("KILN_FIRECRACKER").filter(|p| !p.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(&std::env::var_os("HOME")?).join(".cache/kiln/peers/firecracker"),
    };
    path.is_file().then(|| path.canonicalize().unwrap_or(path))
}

/// Optional artifacts: (key in the artifact map, file name in the nested
/// host's /work, as NESTED_COMMAND names them).
const OPTIONAL_FILES: &[(&str, &str)] = &[
    ("SANDBOX_INITRD", "sandbox-initramfs.cpio.gz"),
    ("DEBIAN_ROOTFS", "debian-rootfs.ext4"),
    ("SANDBOX_CHECK", "sandbox_check"),
    ("DISTRO_SANDBOX_INITRD", "distro-sandbox-initramfs.cpio.gz"),
];

/// Every scenario `tests/e2e/suite.sh` runs.
const SCENARIOS: &[&str] = &[
    "boot-vmlinux",
    "cpus-memory-cmdline",
    "bzimage",
    "panic",
    "no-acpi",
    "disk-write",
    "disk-sigkill",
    "disk-readonly",
    "disk-discard",
    "net-ping-http",
    "net-acpi-only",
    "net-two-guests",
    "net-absent",
    "distro-kernel",
    "vsock-host-to-guest",
    "vsock-guest-to-host",
    "vsock-guest-connect",
    "vsock-echo-100",
    "vsock-no-listener",
    "vsock-stalled-reader",
    "exec-stdout",
    "exec-exit-code",
    "exec-stderr",
    "exec-10mib",
    "exec-stdin",
    "exec-timeout",
    "exec-signal",
    "exec-not-found",
    "exec-not-executable",
    "exec-copy",
    "exec-env-cwd",
    "exec-no-net",
    "exec-fork-bomb",
    "exec-memory-hog",
    "exec-rootfs",
    "exec-distro-kernel",
    "exec-tty",
    "sandbox-library",
    "nonroot-disk-vsock",
    "jail-disk-vsock",
    "jail-memory-limit",
    "jail-exec",
    "jail-sandbox-library",
    "api-kata-config",
    "api-put-sequence",
    "api-rate-limit",
    "api-distro-kernel",
    "bench-boot",
];

/// Runs the suite (only `only`, when not empty) once; returns its
/// transcript and the runner's exit status.
fn run_once(a: &HashMap<String, PathBuf>, rootfs: &Path, only: &str) -> (String, Option<i32>) {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let suite = repo().join("tests/e2e/suite.sh");
    let nested_host = repo().join("tools/nested-host");
    let mode = Command::new(&nested_host)
        .arg("--check")
        .output()
        .expect("run tools/nested-host --check");
    let mode = String::from_utf8_lossy(&mode.stdout).trim().to_string();
    eprintln!("e2e: running the suite {mode}ly");
    let output = if mode == "direct" {
        let out_dir = std::env::temp_dir().join(format!("kiln-e2e-{}", std::process::id()));
        let mut suite_cmd = Command::new("sh");
        for (key, _) in OPTIONAL_FILES {
            suite_cmd.env(key, a.get(*key).map(|p| p.as_os_str()).unwrap_or_default());
        }
        suite_cmd
            .arg(&suite)
            .env("KILN", kiln)
            .env("KERNEL", &a["KERNEL"])
            .env("BZIMAGE", &a["BZIMAGE"])
            .env("INITRD", &a["INITRD"])
            .env("ROOTFS", rootfs)
            .env("DISTRO_KERNEL", &a["DISTRO_KERNEL"])
            .env("DISTRO_INITRD", &a["DISTRO_INITRD"])
            .env("VSOCK_PROBE", &a["VSOCK_PROBE"])
            .env("SCRATCH", Path::new(env!("CARGO_TARGET_TMPDIR")))
            .env("OUT", out_dir)
            .env("ONLY", only)
            .env("BENCH_FIRECRACKER", firecracker().unwrap_or_default())
            .stderr(Stdio::inherit())
            .output()
    } else {
        let file = |src: &Path, dst: &str| format!("{}:/work/{dst}", src.display());
        let command = format!("export ONLY='{only}'; {NESTED_COMMAND}");
        let mut nested = Command::new(&nested_host);
        for (key, dst) in OPTIONAL_FILES {
            if let Some(src) = a.get(*key) {
                nested.arg("--file").arg(file(src, dst));
            }
        }
        if let Some(fc) = firecracker() {
            nested.arg("--file").arg(file(&fc, "firecracker"));
        }
        // A symlink (to qboot.rom) on Debian: the file itself goes in.
        let bios = Path::new("/usr/share/qemu/bios-microvm.bin");
        let bios = bios.canonicalize().unwrap_or_else(|_| bios.to_path_buf());
        nested
            .arg("--file")
            .arg(format!("{}:/usr/share/qemu/bios-microvm.bin", bios.display()));
        nested
            // A normal run takes a few minutes (the sandbox-library checks
            // boot over 50 microVMs); the limit only catches a stall.
            .args(["--timeout", "900", "--file"])
            .arg(file(Path::new(kiln), "kiln"))
            .arg("--file")
            .arg(file(&a["KERNEL"], "vmlinux"))
            .arg("--file")
            .arg(file(&a["BZIMAGE"], "bzImage"))
            .arg("--file")
            .arg(file(&a["INITRD"], "initramfs.cpio.gz"))
            .arg("--file")
            .arg(file(rootfs, "rootfs.ext4"))
            .arg("--file")
            .arg(file(&a["DISTRO_KERNEL"], "distro-vmlinuz"))
            .arg("--file")
            .arg(file(&a["DISTRO_INITRD"], "distro-initramfs.cpio.gz"))
            .arg("--file")
            .arg(file(&a["VSOCK_PROBE"], "vsock-probe"))
            .arg("--file")
            .arg(file(&suite, "suite.sh"))
            .arg("--file")
            .arg(file(&suite.with_file_name("lockdown.sh"), "lockdown.sh"))
            .arg("--file")
            .arg(file(&suite.with_file_name("bench.sh"), "bench.sh"))
            .arg("--file")
            .arg(file(&suite.with_file_name("api.sh"), "api.sh"))
            .args([
                "--keep-libs-of",
                "mkfs.ext4",
                "--keep-libs-of",
                "e2fsck",
                "--keep-libs-of",
                "debugfs",
                // bench-boot's containers (tools/install-deps installs them).
                "--keep-libs-of",
                "runc",
                "--keep-libs-of",
                "crun",
                // and its peer QEMU (-M microvm; its firmware below).
                "--keep-libs-of",
                "qemu-system-x86_64",
                "--file",
                "/bin/busybox:/work/busybox",
                "--file",
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:/work/font.ttf",
                // The net-* scenarios bridge their taps (tun is always loaded).
                "--module",
                "bridge",
            ])
            // A tmpfs scratch area: sparse images and hole punching work there.
            .args(["--", "sh", "-c", &command]);
        // The console goes to a file as it comes, so a run that stalls can
        // be followed (tail -f) and read afterwards.
        let log_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-console.log");
        let log = std::fs::File::create(&log_path).expect("create the e2e console log");
        eprintln!("e2e: the nested host's console goes to {}", log_path.display());
        let mut child = std::os::unix::process::CommandExt::process_group(&mut nested, 0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the end-to-end suite");
        // A stalled emulated host goes silent for good; no scenario is
        // silent for this long (each kiln run is bounded at 240 s). Stop it
        // then, as nested-host's own --timeout would, but sooner.
        const SILENCE: std::time::Duration = std::time::Duration::from_secs(330);
        let (mut size, mut quiet_since) = (0, std::time::Instant::now());
        let code = loop {
            if let Some(status) = child.try_wait().expect("wait for the nested host") {
                break status.code();
            }
            let now = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            if now != size {
                (size, quiet_since) = (now, std::time::Instant::now());
            } else if quiet_since.elapsed() > SILENCE {
                eprintln!("e2e: the nested host printed nothing for {SILENCE:?}; stopping it");
                // SAFETY: kill(2) on the process group this test started.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break Some(124);
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        };
        let transcript = std::fs::read(&log_path).unwrap_or_default();
        return (String::from_utf8_lossy(&transcript).to_string(), code);
    }
    .expect("run the end-to-end suite");
    (
        String::from_utf8_lossy(&output.stdout).to_string(),
        output.status.code(),
    )
}

fn parse_results(transcript: &str) -> HashMap<String, (bool, String)> {
    transcript
        .lines()
        .filter_map(|l| {
            let rest = l
                .trim_start_matches(|c: char| c != 'E')
                .strip_prefix("E2E-RESULT ")?;
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_string();
            let ok = parts.next()? == "PASS";
            Some((name, (ok, parts.next().unwrap_or("").to_string())))
        })
        .collect()
}

fn run_suite() -> Suite {
    // ONLY="name ..." runs just those scenarios (the others then report
    // nothing and their tests fail): quicker iterations on one scenario.
    let only = std::env::var("ONLY").unwrap_or_default();
    let probe = vsock_probe();
    let mut a = guest_artifacts();
    let agent = a.get("AGENT").cloned();
    a.extend(distro_artifacts(&probe, agent.as_deref()));
    let rootfs = test_rootfs(&probe);
    a.insert("VSOCK_PROBE".to_string(), probe);
    // Built only when their scenarios run: debootstrap takes a minute the
    // first time, and the example a build.
    if wanted(&only, "exec-rootfs") {
        a.extend(debian_rootfs().map(|p| ("DEBIAN_ROOTFS".to_string(), p)));
    }
    if wanted(&only, "sandbox-library") || wanted(&only, "jail-sandbox-library") {
        a.extend(sandbox_check().map(|p| ("SANDBOX_CHECK".to_string(), p)));
    }
    let (mut transcript, mut status) = run_once(&a, &rootfs, &only);
    let mut results = parse_results(&transcript);
    // The emulated host (QEMU TCG with nested SVM) stalls for good now and
    // then (its vCPU halted with the timer interrupt pending but never
    // delivered: a QEMU SVM emulation bug), up to twice a run, with no
    // scenario failing; nested-host then stops it after 60 s without CPU
    // use and exits 124. Rerun (at most five times) only what never
    // reported; a scenario that reported FAIL is never retried.
    let missing: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|s| wanted(&only, s))
        .filter(|s| !results.contains_key(*s))
        .collect();
    let mut missing = missing;
    for _ in 0..5 {
        if missing.is_empty() || status != Some(124) {
            break;
        }
        eprintln!(
            "e2e: the emulated host stalled (exit 124); rerunning what did not report: {}",
            missing.join(" ")
        );
        let (again, again_status) = run_once(&a, &rootfs, &missing.join(" "));
        results.extend(parse_results(&again));
        transcript.push_str("\n---- rerun ----\n");
        transcript.push_str(&again);
        status = again_status;
        missing.retain(|s| !results.contains_key(*s));
    }
    for line in transcript
        .lines()
        .filter(|l| l.contains("E2E-TIME") || l.contains("E2E-RESULT"))
    {
        eprintln!("{line}");
    }
    eprintln!("e2e: suite runner exit status {status:?}");
    Suite { results, transcript }
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Suite> = OnceLock::new();
    SUITE.get_or_init(run_suite)
}

fn check(name: &str) {
    let suite = suite();
    match suite.results.get(name) {
        Some((true, detail)) => eprintln!("{name}: {detail}"),
        Some((false, detail)) => panic!("{name} failed: {detail}\n{}", suite.transcript),
        None => panic!("{name} did not report a result\n{}", suite.transcript),
    }
}

#[test]
fn vmlinux_with_initramfs_reaches_init_and_powers_off() {
    check("boot-vmlinux");
}

#[test]
fn cpus_memory_and_cmdline_reach_the_guest() {
    check("cpus-memory-cmdline");
}

#[test]
fn bzimage_of_the_same_kernel_boots() {
    check("bzimage");
}

#[test]
fn guest_panic_exits_nonzero_with_one_line() {
    check("panic");
}

#[test]
fn no_acpi_boots_with_mp_table_and_reboots() {
    check("no-acpi");
}

#[test]
fn ext4_root_disk_keeps_32_mib_written_and_synced() {
    check("disk-write");
}

#[test]
fn sigkill_after_guest_sync_loses_nothing() {
    check("disk-sigkill");
}

#[test]
fn read_only_disk_gives_erofs_and_stays_unchanged() {
    check("disk-readonly");
}

#[test]
fn discard_in_the_guest_punches_holes_in_the_image() {
    check("disk-discard");
}

#[test]
fn guest_pings_and_moves_16_mib_each_way_over_a_bridged_tap() {
    check("net-ping-http");
}

#[test]
fn net_card_is_found_through_acpi_alone() {
    check("net-acpi-only");
}

#[test]
fn two_guests_on_one_bridge_reach_each_other() {
    check("net-two-guests");
}

#[test]
fn guest_without_net_has_no_eth0() {
    check("net-absent");
}

#[test]
fn distribution_kernel_with_modular_virtio_finds_disk_net_and_vsock_through_acpi() {
    check("distro-kernel");
}

#[test]
fn vsock_host_to_guest_64_mib_with_sha256_and_half_close() {
    check("vsock-host-to-guest");
}

#[test]
fn vsock_guest_to_host_64_mib_to_the_socket_port_listener() {
    check("vsock-guest-to-host");
}

#[test]
fn vsock_guest_connects_to_a_host_listener_and_is_reset_without_one() {
    check("vsock-guest-connect");
}

#[test]
fn vsock_100_concurrent_connections_each_echo() {
    check("vsock-echo-100");
}

#[test]
fn vsock_host_connect_to_a_port_without_listener_is_closed() {
    check("vsock-no-listener");
}

#[test]
fn vsock_host_peer_that_stops_reading_does_not_stall_another_connection() {
    check("vsock-stalled-reader");
}

#[test]
fn exec_echo_reaches_stdout_with_argv_as_given() {
    check("exec-stdout");
}

#[test]
fn exec_exit_3_gives_3() {
    check("exec-exit-code");
}

#[test]
fn exec_stderr_stays_separate_from_stdout() {
    check("exec-stderr");
}

#[test]
fn exec_10_mib_of_output_arrives_intact() {
    check("exec-10mib");
}

#[test]
fn exec_stdin_round_trips_with_eof() {
    check("exec-stdin");
}

#[test]
fn exec_timeout_kills_sleep_100_and_exits_124_within_4_s() {
    check("exec-timeout");
}

#[test]
fn exec_command_killed_by_sigkill_reports_137() {
    check("exec-signal");
}

#[test]
fn exec_missing_command_exits_127() {
    check("exec-not-found");
}

#[test]
fn exec_non_executable_file_exits_126() {
    check("exec-not-executable");
}

#[test]
fn exec_copy_in_and_copy_out_5_mib_byte_exact() {
    check("exec-copy");
}

#[test]
fn exec_env_and_workdir_reach_the_command() {
    check("exec-env-cwd");
}

#[test]
fn exec_without_net_has_only_lo() {
    check("exec-no-net");
}

#[test]
fn exec_fork_bomb_is_still_timed_out_and_torn_down() {
    check("exec-fork-bomb");
}

#[test]
fn exec_memory_hog_is_oom_killed_inside_the_guest() {
    check("exec-memory-hog");
}

#[test]
fn exec_rootfs_debian_image_runs_python3_and_stays_unchanged() {
    check("exec-rootfs");
}

#[test]
fn exec_t_gives_the_command_a_pty_of_the_terminal_size() {
    check("exec-tty");
}

#[test]
fn exec_on_a_distribution_kernel_with_modular_vsock() {
    check("exec-distro-kernel");
}

#[test]
fn sandbox_library_checks_pass_in_a_real_guest() {
    check("sandbox-library");
}

#[test]
fn unprivileged_user_boots_linux_with_disk_and_vsock_under_seccomp() {
    check("nonroot-disk-vsock");
}

#[test]
fn bench_boot_compares_kiln_with_runc_and_crun_and_writes_json_csv_and_png() {
    check("bench-boot");
    // The plot comes back base64 on the console (the nested host returns
    // no files here): it must decode as a 1000x600 image.
    let line = suite()
        .transcript
        .lines()
        .find_map(|l| {
            l.split_once("E2E-PNG bench-boot ")
                .map(|(_, b)| b.trim().to_string())
        })
        .expect("bench-boot printed no E2E-PNG line");
    let mut decoder = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run base64 -d");
    let mut stdin = decoder.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, line.as_bytes()));
    let png = decoder.wait_with_output().expect("base64 -d").stdout;
    writer.join().unwrap().unwrap();
    let image = image::load_from_memory(&png).expect("boot.png decodes");
    assert_eq!((image.width(), image.height()), (1000, 600));
}

#[test]
fn jailed_vmm_boots_linux_with_disk_and_vsock_sees_only_its_jail_and_is_cleaned_up() {
    check("jail-disk-vsock");
}

#[test]
fn jail_memory_limit_below_the_guests_need_kills_it_with_one_line() {
    check("jail-memory-limit");
}

#[test]
fn exec_in_a_jail_passes_output_and_status_through() {
    check("jail-exec");
}

#[test]
fn sandbox_library_runs_its_microvm_in_a_jail() {
    check("jail-sandbox-library");
}

#[test]
fn api_kata_config_file_boots_and_patch_drives_gives_the_guest_a_new_medium() {
    check("api-kata-config");
}

#[test]
fn api_put_sequence_boots_and_send_ctrl_alt_del_ends_kiln_with_0() {
    check("api-put-sequence");
}

#[test]
fn api_rate_limited_drive_reads_within_10_percent_of_its_limit() {
    check("api-rate-limit");
}

#[test]
fn api_on_a_distribution_kernel_patches_a_drive_and_reboots_on_ctrl_alt_del() {
    check("api-distro-kernel");
}

//! The library's end-to-end proof, run inside a host that boots Linux
//! (the e2e suite runs it in the nested host):
//!
//! ```text
//! sandbox_check --kernel VMLINUX --initrd SANDBOX_INITRD [--sandboxes N]
//!               [--jail SPEC --kiln PATH]
//! ```
//! Prints one line per check, `SANDBOX-CHECK <name> PASS|FAIL <detail>`,
//! and exits 0 iff every check passed. With `--jail` (as root) the
//! sandboxes run jailed through the `kiln` binary at PATH, and the checks
//! are the jail's: statuses, files and pipes through a jailed VM, the
//! jail's directory gone after drop, and a timeout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln::config::jail::JailConfig;
use kiln::{Sandbox, SandboxBuilder, SandboxError, Stdio};

type CheckResult = Result<String, String>;

struct Args {
    kernel: PathBuf,
    initrd: PathBuf,
    sandboxes: usize,
    jail: Option<(JailConfig, PathBuf)>,
}

fn parse_args() -> Result<Args, String> {
    let (mut kernel, mut initrd, mut sandboxes) = (None, None, 50);
    let (mut jail, mut kiln) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value)),
            "--initrd" => initrd = Some(PathBuf::from(value)),
            "--sandboxes" => sandboxes = value.parse().map_err(|e| format!("--sandboxes: {e}"))?,
            "--jail" => jail = Some(value.parse::<JailConfig>().map_err(|e| e.to_string())?),
            "--kiln" => kiln = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        kernel: kernel.ok_or("--kernel is required")?,
        initrd: initrd.ok_or("--initrd is required")?,
        sandboxes,
        jail: match (jail, kiln) {
            (Some(j), Some(k)) => Some((j, k)),
            (None, None) => None,
            _ => return Err("--jail and --kiln go together".into()),
        },
    })
}

fn builder(args: &Args) -> SandboxBuilder {
    let b = Sandbox::builder()
        .kernel(&args.kernel)
        .initrd(&args.initrd)
        .memory_mib(256)
        .timeout(Duration::from_secs(60));
    match &args.jail {
        Some((jail, kiln)) => b.jail(jail.clone()).kiln_binary(kiln),
        None => b,
    }
}

/// A jailed sandbox keeps its socket in the jail's directory while it
/// runs, and the directory is gone once it is dropped.
fn jail_removed(sb: Sandbox, jail: &JailConfig) -> CheckResult {
    let socket = jail.dir.join("sandbox.vsock");
    if !socket.exists() {
        return Err(format!(
            "{} does not exist while the sandbox runs",
            socket.display()
        ));
    }
    drop(sb);
    if jail.dir.exists() {
        return Err(format!("{} is still there after drop", jail.dir.display()));
    }
    Ok(format!(
        "{} held the VM's socket, and went with the sandbox",
        jail.dir.display()
    ))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Deterministic bytes no text filter would pass unchanged.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sequential(sb: &Sandbox) -> CheckResult {
    let start = Instant::now();
    for i in 0..20 {
        let out = sb.command("echo").arg(format!("n{i}")).output().map_err(err)?;
        if out.stdout != format!("n{i}\n").as_bytes() || !out.status.success() {
            return Err(format!("command {i}: {:?} {}", out.stdout, out.status));
        }
    }
    Ok(format!("20 commands in {:?}", start.elapsed()))
}

fn concurrent(sb: &Sandbox) -> CheckResult {
    let start = Instant::now();
    let outs: Vec<Result<kiln::Output, SandboxError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                s.spawn(move || {
                    sb.command("sh")
                        .args(["-c", &format!("sleep 1; echo c{i}")])
                        .output()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SandboxError::Stopped("panicked".into())))
            })
            .collect()
    });
    let took = start.elapsed();
    for (i, out) in outs.into_iter().enumerate() {
        let out = out.map_err(err)?;
        if out.stdout != format!("c{i}\n").as_bytes() {
            return Err(format!("command {i} said {:?}", out.stdout));
        }
    }
    // Four 1 s sleeps one after another would take 4 s.
    if took >= Duration::from_millis(3500) {
        return Err(format!("4 commands took {took:?}: they did not run at once"));
    }
    Ok(format!("4 overlapping 1 s commands in {took:?}"))
}

fn file_round_trip(sb: &Sandbox) -> CheckResult {
    let data = noise(5 << 20, 42);
    let start = Instant::now();
    sb.write_file("/work/five.bin", &data).map_err(err)?;
    let size = sb
        .command("wc")
        .args(["-c", "/work/five.bin"])
        .output()
        .map_err(err)?;
    let back = sb.read_file("/work/five.bin").map_err(err)?;
    if back != data {
        return Err(format!("{} bytes came back, differing", back.len()));
    }
    Ok(format!(
        "5 MiB in and out byte-exact in {:?} (guest wc: {})",
        start.elapsed(),
        String::from_utf8_lossy(&size.stdout).trim()
    ))
}

fn stdin_round_trip(sb: &Sandbox) -> CheckResult {
    let mut child = sb
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(err)?;
    let data = noise(1 << 20, 7);
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let mut back = Vec::new();
    stdout.read_to_end(&mut back).map_err(err)?;
    writer.join().map_err(|_| "writer panicked")?.map_err(err)?;
    let status = child.wait().map_err(err)?;
    if back != data || !status.success() {
        return Err(format!("{} of {} bytes back, {status}", back.len(), data.len()));
    }
    Ok("1 MiB through cat via spawn() pipes".into())
}

fn statuses(sb: &Sandbox) -> CheckResult {
    let three = sb.command("sh").args(["-c", "exit 3"]).status().map_err(err)?;
    let missing = sb.command("kiln-no-such-command").status().map_err(err)?;
    let mut sleeper = sb.command("sleep").arg("100").spawn().map_err(err)?;
    sleeper.kill().map_err(err)?;
    let killed = sleeper.wait().map_err(err)?;
    let got = (three.code(), missing.code(), killed.shell_code());
    if got != (Some(3), Some(127), 137) {
        return Err(format!("exit 3, missing, SIGKILL gave {got:?}"));
    }
    Ok("exit 3 -> 3, missing -> 127, SIGKILL -> 137".into())
}

/// A command with a pty sees a terminal of the size asked for (what
/// `kiln exec -t` gives, without needing a terminal here).
fn pty(sb: &Sandbox) -> CheckResult {
    let out = sb
        .command("sh")
        .args(["-c", "tty; stty size"])
        .pty(33, 101)
        .output()
        .map_err(err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("/dev/pts/") || !text.contains("33 101") {
        return Err(format!("{}: {text:?}", out.status));
    }
    Ok(format!("{:?}", text.trim()))
}

fn timeout(args: &Args) -> CheckResult {
    let sb = builder(args)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(err)?;
    let start = Instant::now();
    let result = sb.command("sleep").arg("100").output();
    let took = start.elapsed();
    match result {
        Err(SandboxError::Timeout(_)) if took < Duration::from_secs(4) => {}
        other => return Err(format!("after {took:?}: {:?}", other.map(|o| o.status))),
    }
    match sb.command("true").status() {
        Err(SandboxError::Stopped(_)) => Ok(format!("Timeout after {took:?}, then Stopped")),
        other => Err(format!("the call after the timeout gave {other:?}")),
    }
}

/// This process's threads, without KVM's kernel workers (PF_USER_WORKER).
fn threads() -> usize {
    const PF_USER_WORKER: u64 = 0x4000;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let flags = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..))
                .and_then(|rest| rest.split(' ').nth(6))
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            flags & PF_USER_WORKER == 0
        })
        .count()
}

/// The thread count once threads of earlier checks that are still on
/// their way out (a detached pump ending after its sandbox) have gone: the
/// lowest count seen, once it has held for half a second (at most 5 s).
fn settled_threads() -> usize {
    let start = Instant::now();
    let (mut low, mut since) = (threads(), Instant::now());
    while start.elapsed() < Duration::from_secs(5) && since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(20));
        let now = threads();
        if now < low {
            (low, since) = (now, Instant::now());
        }
    }
    low
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn no_leaks(args: &Args) -> CheckResult {
    // Warm up: one-time set-up (signal handler, allocator arenas) first.
    drop(builder(args).build().map_err(err)?);
    let (t0, f0, r0) = (settled_threads(), fds(), rss_kib());
    let start = Instant::now();
    for i in 0..args.sandboxes {
        let sb = builder(args).build().map_err(|e| format!("sandbox {i}: {e}"))?;
        let status = sb
            .command("true")
            .status()
            .map_err(|e| format!("sandbox {i}: {e}"))?;
        if !status.success() {
            return Err(format!("sandbox {i}: true gave {status}"));
        }
    }
    let took = start.elapsed();
    let (t1, f1, r1) = (settled_threads(), fds(), rss_kib());
    let detail = format!(
        "{} sandboxes in {took:?}: threads {t0}->{t1}, fds {f0}->{f1}, RSS {r0}->{r1} KiB",
        args.sandboxes
    );
    // Allocator caches may keep a little; a leaked guest would be 256 MiB.
    const RSS_MARGIN_KIB: u64 = 16 << 10;
    if t1 > t0 || f1 != f0 || r1 > r0 + RSS_MARGIN_KIB {
        return Err(detail);
    }
    Ok(detail)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sandbox_check: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut all = true;
    // Each line as soon as its check ends: a hang shows where.
    let mut report = |name: &str, result: CheckResult| {
        let (verdict, detail) = match result {
            Ok(d) => ("PASS", d),
            Err(d) => {
                all = false;
                ("FAIL", d)
            }
        };
        println!("SANDBOX-CHECK {name} {verdict} {}", detail.replace('\n', " | "));
    };
    if let Some((jail, _)) = &args.jail {
        match builder(&args).build() {
            Ok(sb) => {
                report("statuses", statuses(&sb));
                report("file-5mib", file_round_trip(&sb));
                report("stdin-roundtrip", stdin_round_trip(&sb));
                report("jail-removed", jail_removed(sb, jail));
            }
            Err(e) => report("boot", Err(e.to_string())),
        }
        report("timeout", timeout(&args));
        return if all {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    match builder(&args).build() {
        Ok(sb) => {
            report("sequential-20", sequential(&sb));
            report("concurrent-4", concurrent(&sb));
            report("file-5mib", file_round_trip(&sb));
            report("stdin-roundtrip", stdin_round_trip(&sb));
            report("statuses", statuses(&sb));
            report("pty", pty(&sb));
        }
        Err(e) => report("boot", Err(e.to_string())),
    }
    report("timeout", timeout(&args));
    report("no-leaks", no_leaks(&args));
    if all {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

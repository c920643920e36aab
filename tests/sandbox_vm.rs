//! The sandbox's VM plumbing on the real /dev/kvm with tiny guests (which
//! run on PVM hosts too): the external stop handle, and a sandbox whose
//! guest never answers or stops while booting fails with a typed error in
//! time and leaves no thread behind.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{assemble, scratch, RESET};
use kiln::config::VmConfig;
use kiln::exit::ExitReason;
use kiln::vmm::{self, BootHooks, ConsoleIo, StopHandle};
use kiln::{Sandbox, SandboxError};

/// Tests here count this process's threads: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SPIN: &str = ".code64\n.globl _start\n_start:\n    jmp _start\n";

/// This process's threads, without KVM's kernel workers (PF_USER_WORKER),
/// which come and go with each VM.
fn user_threads() -> usize {
    const PF_USER_WORKER: u64 = 0x4000;
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let flags: u64 = after_name.split(' ').nth(6).unwrap().parse().unwrap();
            flags & PF_USER_WORKER == 0
        })
        .count()
}

fn guest(name: &str, src: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch(name);
    let kernel = assemble(&dir, name, src);
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, b"not an initramfs").unwrap();
    (kernel, initrd)
}

#[test]
fn stop_handle_stops_a_spinning_guest() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (kernel, _) = guest("stop-spin", SPIN);
    let mut config = VmConfig::new(kernel);
    config.memory_mib = 64;
    let stop = StopHandle::new().unwrap();
    let hooks = BootHooks {
        stop: Some(stop.clone()),
        ..BootHooks::default()
    };
    let io = ConsoleIo {
        output: std::fs::File::options()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into(),
        input: None,
        raw_terminal: false,
        handle_signals: false,
        detach_teardown: false,
    };
    let vmm = std::thread::spawn(move || vmm::run_vm_with(&config, io, hooks));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!vmm.is_finished(), "the spinning guest stopped by itself");
    assert_eq!(stop.exit_reason(), None);
    let start = Instant::now();
    stop.stop();
    let reason = vmm.join().unwrap().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[test]
fn a_guest_that_never_answers_is_agent_unreachable_in_time_and_leaves_no_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (kernel, initrd) = guest("never-answers", SPIN);
    let before = user_threads();
    let start = Instant::now();
    let err = Sandbox::builder()
        .kernel(&kernel)
        .initrd(&initrd)
        .memory_mib(64)
        .cpus(2)
        .boot_timeout(Duration::from_millis(800))
        .build()
        .err()
        .expect("a guest without an agent cannot make a sandbox");
    let took = start.elapsed();
    assert!(matches!(err, SandboxError::AgentUnreachable { .. }), "{err}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(user_threads(), before, "threads left behind");
    // Its private directory is gone too.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("kiln-sandbox-{}-", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_guest_that_stops_while_booting_is_reported_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let src = format!(".code64\n.globl _start\n_start:\n{RESET}");
    let (kernel, initrd) = guest("resets", &src);
    let console = scratch("resets-console").join("console");
    let before = user_threads();
    let start = Instant::now();
    let err = Sandbox::builder()
        .kernel(&kernel)
        .initrd(&initrd)
        .memory_mib(64)
        .console(&console)
        .boot_timeout(Duration::from_secs(30))
        .build()
        .err()
        .expect("a guest that resets cannot make a sandbox");
    assert!(
        matches!(
            err,
            SandboxError::GuestExited {
                reason: ExitReason::Reset,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert_eq!(user_threads(), before, "threads left behind");
}

#[test]
fn a_missing_kernel_is_a_boot_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch("no-kernel");
    let err = Sandbox::builder()
        .kernel(dir.join("missing"))
        .initrd(dir.join("missing-initrd"))
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, SandboxError::Boot(_)), "{err}");
    let err = Sandbox::builder().kernel(dir.join("k")).build().err().unwrap();
    assert!(matches!(err, SandboxError::NoGuest(_)), "{err}");
}

#[test]
fn kiln_exec_usage_errors_exit_2_with_one_line() {
    for args in [
        &["exec"][..],
        &["exec", "-e", "NOEQUALS", "--", "true"],
        &["exec", "--copy-in", "nocolon", "--", "true"],
        &["exec", "--copy-out", ":/host", "--", "true"],
        &["exec", "--timeout", "0", "--", "true"],
        &["exec", "--cpus", "0", "--", "true"],
    ] {
        let out = common::run_kiln(args, Duration::from_secs(20));
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.starts_with("kiln: "), "{}", out.stderr);
    }
}

#[test]
fn kiln_exec_reports_a_guest_that_stops_while_booting_with_status_1() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let src = format!(".code64\n.globl _start\n_start:\n{RESET}");
    let (kernel, initrd) = guest("exec-resets", &src);
    let out = common::run_kiln(
        &[
            "exec",
            "--force",
            "--memory",
            "64",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--",
            "true",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("stopped while booting"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

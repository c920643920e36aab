//! Helpers for whole-program tests: assembling tiny guests and running the
//! kiln binary with a deadline.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn kiln() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// A scratch directory unique to this test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Assembles `source` (GNU as, AT&T syntax) and links it as a static ELF
/// whose text starts at 16 MiB, like a vmlinux.
pub fn assemble(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&src, source).expect("write guest source");
    let ok = Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("run `as` (install binutils)")
        .success();
    assert!(ok, "assembling {name} failed");
    let ok = Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-static",
            "-nostdlib",
            "-Ttext=0x1000000",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&elf)
        .arg(&obj)
        .status()
        .expect("run `ld`")
        .success();
    assert!(ok, "linking {name} failed");
    elf
}

pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs kiln with `args` and no stdin, killing it after `timeout`.
pub fn run_kiln(args: &[&str], timeout: Duration) -> Outcome {
    run_kiln_with_input(args, None, timeout)
}

/// Runs kiln with `args`, writing `input` (in one write, then EOF) to its
/// stdin, or giving it none; fails the test if it runs past `timeout`.
pub fn run_kiln_with_input(args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Outcome {
    use std::io::Write;
    let start = Instant::now();
    let mut child = KillOnDrop(
        Command::new(kiln())
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kiln"),
    );
    if let (Some(input), Some(mut stdin)) = (input, child.0.stdin.take()) {
        stdin.write_all(input).expect("write kiln's stdin");
    }
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = wait_or_kill(&mut child.0, timeout)
        .unwrap_or_else(|| panic!("kiln {args:?} did not finish within {timeout:?}"))
        .code();
    Outcome {
        code,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Prints a NUL-terminated string at %rsi to COM1; clobbers %al, %dx.
pub const PUTS: &str = r#"
puts:
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret
"#;

/// Resets through the i8042 CPU-reset pulse.
pub const RESET: &str = "    mov $0xfe, %al\n    out %al, $0x64\n    hlt\n";

/// Boots `guest` with 64 MiB plus `extra` flags, with a 20 s deadline.
pub fn boot(guest: &Path, extra: &[&str]) -> Outcome {
    boot_with_input(guest, extra, None)
}

/// [`boot`], with `input` written to kiln's stdin (then EOF).
pub fn boot_with_input(guest: &Path, extra: &[&str], input: Option<&[u8]>) -> Outcome {
    let mut args = vec![
        "boot",
        "--kernel",
        guest.to_str().expect("utf-8 path"),
        "--memory",
        "64",
    ];
    args.extend_from_slice(extra);
    run_kiln_with_input(&args, input, Duration::from_secs(20))
}

/// Starts the application processors at `ap32` in 32-bit protected mode
/// (flat segments, no paging), so they can reach MMIO above 1 MiB. Append
/// [`AP_TRAMPOLINE`] to the guest and define `ap32` in `.code32`; the BSP
/// calls `start_aps` (clobbers %rax, %rcx, %rsi, %rdi).
pub const START_APS: &str = r#"
start_aps:
    lea ap_start(%rip), %rsi
    mov $0x10000, %rdi
    mov $(ap_end - ap_start), %rcx
    rep movsb
    mov $0xfee00300, %rax
    movl $0x000c4500, (%rax)     # INIT to all but self
    movl $0x000c4610, (%rax)     # SIPI, vector 0x10 -> 0x10000
    ret
"#;

/// Real mode at 0x10000 (CS = 0x1000) to protected mode, then `ap32`.
pub const AP_TRAMPOLINE: &str = r#"
    .code16
ap_start:
    cli
    lgdtl %cs:(ap_gdtr - ap_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(0x10000 + ap_flat - ap_start)
    .code32
ap_flat:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap32, %eax              # absolute: this code runs from its copy
    jmp *%eax
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff     # code: base 0, 4 GiB, 32-bit
    .quad 0x00cf92000000ffff     # data: base 0, 4 GiB
ap_gdtr:
    .word ap_gdtr - ap_gdt - 1
    .long 0x10000 + ap_gdt - ap_start
ap_end:
    .code64
"#;

/// kiln running a guest in the background, its console on a pipe; killed
/// if the test ends (or fails) before it exits.
pub struct Running {
    pub child: KillOnDrop,
    lines: std::sync::mpsc::Receiver<String>,
}

/// Starts `kiln boot` with `args` after `--kernel guest --memory 64`.
pub fn spawn(guest: &Path, args: &[&str]) -> Running {
    let mut child = Command::new(kiln())
        .args([
            "boot",
            "--kernel",
            guest.to_str().expect("utf-8 path"),
            "--memory",
            "64",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child: KillOnDrop(child),
        lines,
    }
}

impl Running {
    /// The guest's next console line, if one comes within `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends SIGTERM and returns how long kiln took to exit and its exit
    /// code, or `None` (after killing it) if it took longer than `limit`.
    pub fn terminate(mut self, limit: Duration) -> (Option<(Duration, Option<i32>)>, String) {
        // SAFETY: kill(2) on our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) }, 0);
        let start = Instant::now();
        let outcome = wait_or_kill(&mut self.child.0, limit).map(|status| (start.elapsed(), status.code()));
        let mut stderr = String::new();
        if let Some(mut err) = self.child.0.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        (outcome, stderr)
    }
}

/// A child that is killed if the test fails before it exits.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `child` to exit; kills it (and returns None)
/// if it does not. Polls every 0.5 ms, fine enough to time an exit.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for kiln") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Shrinks the pipe `read_end` belongs to, so that a slow guest fills it
/// fast; returns its capacity.
pub fn shrink_pipe(read_end: &impl std::os::fd::AsRawFd) -> usize {
    let fd = read_end.as_raw_fd();
    // SAFETY: fcntl on a pipe descriptor we own; failure (data already
    // beyond the new size) leaves the pipe as it was, which is fine.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) };
    // SAFETY: as above; F_GETPIPE_SZ only reads.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    usize::try_from(capacity).expect("not a pipe")
}

/// Waits until the pipe `read_end` belongs to holds at least `bytes`;
/// returns how long that took, or panics after `limit`.
pub fn wait_for_queued(read_end: &impl std::os::fd::AsRawFd, bytes: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer we pass.
        assert_eq!(
            unsafe { libc::ioctl(read_end.as_raw_fd(), libc::FIONREAD, &mut queued) },
            0
        );
        if queued as usize >= bytes {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "the pipe holds {queued} bytes, not {bytes}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A guest that prints "up", then halts until kiln is stopped.
pub fn waiting_guest(dir: &Path) -> PathBuf {
    let src = format!(
        ".code64\n.globl _start\n_start:\n    lea msg(%rip), %rsi\n    call puts\n    cli\n1:  hlt\n    jmp 1b\n{PUTS}msg: .asciz \"up\\n\"\n"
    );
    assemble(dir, "wait", &src)
}

/// Seccomp mode of every thread of `pid`: (thread name, mode).
pub fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        modes.push((field("Name:"), field("Seccomp:")));
    }
    modes.sort();
    modes
}

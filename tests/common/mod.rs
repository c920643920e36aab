//! Helpers for whole-program tests: assembling tiny guests and running the
//! kiln binary with a deadline.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let start = Instant::now();
    let mut child = Command::new(kiln())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
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
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for kiln") {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
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
    let mut args = vec![
        "boot",
        "--kernel",
        guest.to_str().expect("utf-8 path"),
        "--memory",
        "64",
    ];
    args.extend_from_slice(extra);
    run_kiln(&args, Duration::from_secs(20))
}

//! `kiln bench boot` end to end with a tiny guest that signals the boot
//! timer, prints the readiness marker and resets: milliseconds a run, on
//! hardware KVM and on PVM hosts alike.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assemble, kiln, scratch, PUTS, RESET};

fn ready_guest(dir: &Path) -> std::path::PathBuf {
    let src = format!(
        ".code64\n.globl _start\n_start:\n    mov $0xc0000000, %rax\n    movb $123, (%rax)\n    lea msg(%rip), %rsi\n    call puts\n{RESET}{PUTS}msg: .asciz \"KILN-GUEST-READY\\n\"\n"
    );
    assemble(dir, "ready", &src)
}

/// Runs `kiln bench boot ARGS` with `path` as $PATH (so which runtimes
/// exist is up to the test); each run is bounded by --timeout.
fn bench(args: &[&str], path: &str) -> Output {
    Command::new(kiln())
        .args(["bench", "boot", "--timeout", "20"])
        .args(args)
        .env("PATH", path)
        .output()
        .expect("run kiln bench")
}

#[test]
fn bench_boot_of_a_tiny_guest_writes_table_json_csv_and_png() {
    let dir = scratch("bench-tiny");
    let guest = ready_guest(&dir);
    let out = dir.join("out");
    // No runtime on this PATH: runc is reported as skipped, kiln still runs.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let result = bench(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--contenders",
            "kiln,runc",
            "--runs",
            "3",
            "--density",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        empty.to_str().unwrap(),
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        result.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.starts_with("kiln bench boot: 3 runs per contender, mode "),
        "{stdout}"
    );
    let kiln_row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("kiln ") && !l.starts_with("kiln bench"))
        .unwrap_or_else(|| panic!("no kiln row: {stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(kiln_row[1], "3", "{stdout}");
    assert!(
        stdout.contains("runc         skipped: runc is not on PATH"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("boot.json")).unwrap()).unwrap();
    assert!(["direct", "nested", "pvm"].contains(&json["mode"].as_str().unwrap()));
    let kiln = &json["contenders"][0];
    assert_eq!(kiln["name"], "kiln");
    assert_eq!(kiln["samples"].as_array().unwrap().len(), 3);
    let phases = &kiln["samples"][0]["phases_us"];
    let first_kvm_run = phases["first_kvm_run"].as_u64().unwrap();
    let user_space = phases["user_space"].as_u64().unwrap();
    assert!(first_kvm_run <= user_space, "{phases}");
    assert_eq!(kiln["samples"][0]["ready_us"].as_u64(), Some(user_space));
    assert_eq!(json["contenders"][1]["status"], "skipped");
    // The tiny guest resets once ready, so it cannot idle: one line says so.
    let idle = kiln["idle_error"].as_str().unwrap();
    assert!(idle.contains("ended instead of idling"), "{idle}");
    assert!(stdout.contains("kiln         idle: failed: "), "{stdout}");

    let csv = std::fs::read_to_string(out.join("boot.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.lines().skip(1).all(|l| l.starts_with("kiln,")), "{csv}");

    let png = std::fs::read(out.join("boot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!((image.width(), image.height()), (1000, 600));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_boot_rejects_unknown_contenders_in_one_line() {
    let result = bench(&["--contenders", "kiln,docker"], "/usr/bin:/bin");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown contender \"docker\""), "{stderr}");
}

#[test]
fn bench_boot_fails_when_no_contender_can_run() {
    let dir = scratch("bench-none");
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.join("out");
    let result = bench(
        &[
            "--contenders",
            "runc,crun",
            "--runs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        empty.to_str().unwrap(),
    );
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("crun         skipped: crun is not on PATH"),
        "{stdout}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("kiln: no contender could run (see the reasons above)"),
        "{stderr}"
    );
    // The files are still written, for the record.
    assert!(out.join("boot.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

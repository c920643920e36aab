//! The Firecracker-compatible API with tiny guests on this host's KVM:
//! `kiln --api-sock` configured by PUT requests, started, paused and
//! resumed; `--config-file` booting at once; errors as Firecracker gives
//! them; every thread filtered.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assemble, kiln, scratch, thread_modes, wait_or_kill, KillOnDrop, PUTS, RESET};

const START: &str = r#"{"action_type": "InstanceStart"}"#;

/// One request on a fresh connection: (status, body).
fn call(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn wait_for_socket(sock: &Path) {
    let start = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "kiln never listened on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `kiln --api-sock DIR/api.sock ARGS`, its console counted byte by byte.
struct Api {
    child: KillOnDrop,
    sock: PathBuf,
    console: Arc<AtomicUsize>,
}

fn start_api(dir: &Path, args: &[&str]) -> Api {
    let sock = dir.join("api.sock");
    let mut child: Child = Command::new(kiln())
        .arg("--api-sock")
        .arg(&sock)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let mut out = child.stdout.take().unwrap();
    let console = Arc::new(AtomicUsize::new(0));
    let counter = console.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            counter.fetch_add(n, Ordering::SeqCst);
        }
    });
    wait_for_socket(&sock);
    Api {
        child: KillOnDrop(child),
        sock,
        console,
    }
}

/// A guest that prints a dot, spins a while, and again, forever.
fn ticking_guest(dir: &Path) -> PathBuf {
    let src = ".code64\n.globl _start\n_start:\n1:  mov $0x3f8, %dx\n    mov $'.', %al\n    out %al, %dx\n    mov $200000, %ecx\n2:  dec %ecx\n    jnz 2b\n    jmp 1b\n";
    assemble(dir, "tick", src)
}

/// `PUT /machine-config` (`cpus` vCPUs, 64 MiB), then `InstanceStart`:
/// both must be accepted.
fn start_vm(api: &Api, cpus: u8) {
    let machine = format!(r#"{{"vcpu_count": {cpus}, "mem_size_mib": 64}}"#);
    assert_eq!(call(&api.sock, "PUT", "/machine-config", &machine).0, 204);
    assert_eq!(call(&api.sock, "PUT", "/actions", START).0, 204);
}

/// `kiln --no-api --config-file FILE`, to its end.
fn boot_config_file(config: &Path) -> std::process::Output {
    Command::new(kiln())
        .args(["--no-api", "--config-file"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn state(api: &Api) -> String {
    let (status, body) = call(&api.sock, "GET", "/", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

fn wait_for_console_growth(api: &Api, from: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if api.console.load(Ordering::SeqCst) > from {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn put_requests_configure_and_start_a_vm_that_pauses_and_resumes() {
    let dir = scratch("api-flow");
    let guest = ticking_guest(&dir);
    let mut api = start_api(&dir, &["--id", "vm-7"]);
    let info: serde_json::Value = serde_json::from_str(&call(&api.sock, "GET", "/", "").1).unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "vm-7");
    assert_eq!(info["app_name"], "kiln");

    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    assert_eq!(call(&api.sock, "PUT", "/boot-source", &boot).0, 204);
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": false}"#;
    assert_eq!(call(&api.sock, "PUT", "/machine-config", machine).0, 204);
    // Pre-boot-only requests, and run-time-only ones before the start.
    let (status, body) = call(&api.sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("fault_message"), "{body}");

    assert_eq!(call(&api.sock, "PUT", "/actions", START).0, 204);
    assert_eq!(state(&api), "Running");
    assert!(
        wait_for_console_growth(&api, 0, Duration::from_secs(10)),
        "the guest printed nothing"
    );

    let (status, body) = call(&api.sock, "PUT", "/boot-source", &boot);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("after starting"), "{body}");
    let (status, body) = call(&api.sock, "GET", "/machine-config", "");
    assert_eq!(status, 200);
    assert!(body.contains(r#""mem_size_mib":64"#), "{body}");

    assert_eq!(call(&api.sock, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    assert_eq!(state(&api), "Paused");
    // Output already on its way drains; then nothing while paused.
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = api.console.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        api.console.load(Ordering::SeqCst),
        paused_at,
        "the guest ran while paused"
    );

    assert_eq!(call(&api.sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
    assert_eq!(state(&api), "Running");
    assert!(
        wait_for_console_growth(&api, paused_at, Duration::from_secs(10)),
        "the guest did not run again after Resumed"
    );

    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(api.child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_or_kill(&mut api.child.0, Duration::from_secs(10)).expect("kiln exits on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!api.sock.exists(), "the API socket was left behind");
}

#[test]
fn every_thread_runs_filtered_once_the_vm_runs() {
    let dir = scratch("api-seccomp");
    let guest = ticking_guest(&dir);
    let api = start_api(&dir, &[]);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    assert_eq!(call(&api.sock, "PUT", "/boot-source", &boot).0, 204);
    start_vm(&api, 2);
    assert!(wait_for_console_growth(&api, 0, Duration::from_secs(10)));
    let threads = thread_modes(api.child.0.id());
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} runs unfiltered");
    }
    assert!(threads.iter().any(|(n, _)| n == "kiln-api"), "{threads:?}");
    // The API still answers under its filter.
    assert_eq!(state(&api), "Running");
}

#[test]
fn a_config_file_boots_at_once_without_an_api() {
    let dir = scratch("api-config-file");
    let guest = assemble(
        &dir,
        "hello",
        &format!(".code64\n.globl _start\n_start:\n    lea msg(%rip), %rsi\n    call puts\n{RESET}{PUTS}msg: .asciz \"hello from a config file\\n\"\n"),
    );
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}, "drives": []}}"#,
            guest.display()
        ),
    )
    .unwrap();
    let out = boot_config_file(&config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from a config file"));
}

#[test]
fn a_bad_config_file_is_one_line_and_status_1() {
    let dir = scratch("api-bad-config");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "surprise": 1}"#,
    )
    .unwrap();
    let out = boot_config_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_failed_instance_start_is_a_400_and_the_api_waits_for_a_fix() {
    let dir = scratch("api-bad-start");
    let api = start_api(&dir, &[]);
    let missing = r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#;
    assert_eq!(call(&api.sock, "PUT", "/boot-source", missing).0, 204);
    let (status, body) = call(&api.sock, "PUT", "/actions", START);
    assert_eq!(status, 400, "{body}");
    assert_eq!(state(&api), "Not started");
    let guest = ticking_guest(&dir);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    assert_eq!(call(&api.sock, "PUT", "/boot-source", &boot).0, 204);
    start_vm(&api, 1);
    assert_eq!(state(&api), "Running");
}

#[test]
fn version_names_a_firecracker_release_when_run_as_firecracker() {
    let dir = scratch("api-version");
    let link = dir.join("firecracker");
    std::os::unix::fs::symlink(kiln(), &link).unwrap();
    let out = Command::new(&link).arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    let second = line.split(' ').nth(1).unwrap().trim().trim_start_matches('v');
    let parts: Vec<u32> = second.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(parts >= vec![0, 21, 1], "{line}");
    let out = Command::new(kiln()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kiln "));
}

#[test]
fn patch_drives_on_a_running_vm_swaps_the_image_under_seccomp() {
    let dir = scratch("api-patch-drive");
    let guest = ticking_guest(&dir);
    let (first, second) = (dir.join("first.img"), dir.join("second.img"));
    std::fs::write(&first, vec![1u8; 4096]).unwrap();
    std::fs::write(&second, vec![2u8; 8192]).unwrap();
    let api = start_api(&dir, &[]);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    assert_eq!(call(&api.sock, "PUT", "/boot-source", &boot).0, 204);
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false, "rate_limiter": {{}}}}"#,
        first.display()
    );
    assert_eq!(call(&api.sock, "PUT", "/drives/data", &drive).0, 204);
    start_vm(&api, 1);
    assert!(wait_for_console_growth(&api, 0, Duration::from_secs(10)));

    let patch = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
        second.display()
    );
    let (status, body) = call(&api.sock, "PATCH", "/drives/data", &patch);
    assert_eq!(status, 204, "{body}");
    let limits =
        r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}"#;
    assert_eq!(call(&api.sock, "PATCH", "/drives/data", limits).0, 204);
    let (status, body) = call(
        &api.sock,
        "PATCH",
        "/drives/other",
        r#"{"drive_id": "other", "path_on_host": "/x"}"#,
    );
    assert_eq!(status, 400, "{body}");
    let missing = r#"{"drive_id": "data", "path_on_host": "/nonexistent/disk.img"}"#;
    let (status, body) = call(&api.sock, "PATCH", "/drives/data", missing);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nonexistent"), "{body}");
    // Still alive, still filtered.
    assert_eq!(state(&api), "Running");
}

#[test]
fn the_api_thread_is_stopped_by_a_call_outside_its_filter() {
    let dir = scratch("api-selftest");
    let sock = dir.join("api.sock");
    let out = Command::new(kiln())
        .arg("--api-sock")
        .arg(&sock)
        .env("KILN_SECCOMP_SELFTEST", "api:execve")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(159), "{stderr}");
    assert!(
        stderr.starts_with("kiln: seccomp: the api thread made a forbidden system call, execve (59);"),
        "{stderr}"
    );
}

#[test]
fn sigterm_still_ends_kiln_after_a_failed_instance_start() {
    let dir = scratch("api-term-after-failure");
    let mut api = start_api(&dir, &[]);
    let missing = r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#;
    assert_eq!(call(&api.sock, "PUT", "/boot-source", missing).0, 204);
    assert_eq!(call(&api.sock, "PUT", "/actions", START).0, 400);
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(api.child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_or_kill(&mut api.child.0, Duration::from_secs(5));
    assert!(status.is_some(), "kiln ignored SIGTERM after a failed start");
}

//! Bad input gives one clear line on stderr and a non-zero status (2 for
//! usage errors), never a panic or a backtrace.

mod common;

use std::time::Duration;

use common::{assemble, run_kiln, scratch};

const TIMEOUT: Duration = Duration::from_secs(20);

fn hello(dir: &std::path::Path) -> std::path::PathBuf {
    assemble(
        dir,
        "hello",
        ".code64\n.globl _start\n_start:\n    mov $0xfe, %al\n    out %al, $0x64\n    hlt\n",
    )
}

/// Runs kiln and checks for exactly one stderr line containing `needle`.
fn expect_error(args: &[&str], code: i32, needle: &str) {
    let out = run_kiln(args, TIMEOUT);
    assert_eq!(out.code, Some(code), "args {args:?}: stderr {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "args {args:?}: want {needle:?} in {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    assert!(
        !out.stderr.contains("RUST_BACKTRACE"),
        "backtrace hint: {}",
        out.stderr
    );
}

fn one_line(args: &[&str], code: i32, needle: &str) {
    expect_error(args, code, needle);
    let out = run_kiln(args, TIMEOUT);
    assert_eq!(out.stderr.lines().count(), 1, "want one line: {}", out.stderr);
}

#[test]
fn missing_kernel_file() {
    one_line(
        &["boot", "--kernel", "/nonexistent/vmlinux"],
        1,
        "cannot open kernel /nonexistent/vmlinux",
    );
}

#[test]
fn unreadable_kernel_is_a_directory() {
    one_line(&["boot", "--kernel", "/"], 1, "kernel");
}

#[test]
fn unknown_kernel_format() {
    let dir = scratch("unknown-format");
    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    one_line(
        &["boot", "--kernel", junk.to_str().unwrap()],
        1,
        "not a kernel kiln can boot",
    );
}

#[test]
fn truncated_elf() {
    let dir = scratch("truncated");
    let full = std::fs::read(hello(&dir)).unwrap();
    let cut = dir.join("cut.elf");
    std::fs::write(&cut, &full[..100]).unwrap();
    one_line(&["boot", "--kernel", cut.to_str().unwrap()], 1, "truncated");
}

#[test]
fn missing_initrd() {
    let dir = scratch("missing-initrd");
    let k = hello(&dir);
    one_line(
        &[
            "boot",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        1,
        "cannot open initrd /nonexistent/initrd",
    );
}

#[test]
fn zero_and_too_many_cpus_are_usage_errors() {
    let dir = scratch("cpus");
    let k = hello(&dir);
    let k = k.to_str().unwrap();
    one_line(
        &["boot", "--kernel", k, "--cpus", "0"],
        2,
        "--cpus must be at least 1",
    );
    one_line(&["boot", "--kernel", k, "--cpus", "100000"], 2, "--cpus 100000");
    one_line(&["boot", "--kernel", k, "--cpus", "-1"], 2, "'-1'");
}

#[test]
fn memory_too_small_or_too_large() {
    let dir = scratch("memory");
    let k = hello(&dir);
    let k = k.to_str().unwrap();
    one_line(&["boot", "--kernel", k, "--memory", "1"], 2, "too small");
    one_line(
        &["boot", "--kernel", k, "--memory", "100000000"],
        2,
        "--memory 100000000",
    );
    // 2^44 MiB is 2^64 bytes: a shift wrapped it to 0 bytes.
    one_line(
        &["boot", "--kernel", k, "--memory", "17592186044416"],
        2,
        "--memory 17592186044416 MiB is more than a guest can address",
    );
    // Fits the address space but not this host.
    one_line(&["boot", "--kernel", k, "--memory", "16000000"], 2, "RAM");
    // The kernel is linked at 16 MiB: 8 MiB cannot hold it.
    one_line(&["boot", "--kernel", k, "--memory", "8"], 1, "--memory");
}

#[test]
fn initrd_that_does_not_fit() {
    let dir = scratch("big-initrd");
    let k = hello(&dir);
    let big = dir.join("big.img");
    std::fs::write(&big, vec![0u8; 40 << 20]).unwrap();
    one_line(
        &[
            "boot",
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--initrd",
            big.to_str().unwrap(),
        ],
        1,
        "does not fit",
    );
}

#[test]
fn command_line_too_long() {
    let dir = scratch("cmdline");
    let k = hello(&dir);
    let long = "x".repeat(5000);
    one_line(
        &["boot", "--kernel", k.to_str().unwrap(), "--cmdline", &long],
        2,
        "command line is 5000 bytes",
    );
}

/// A --metrics file that could not be written is refused before the boot
/// (and before any default-guest build), not after the run.
#[test]
fn metrics_path_in_a_missing_directory_fails_at_once_and_errors_are_recorded() {
    let dir = scratch("metrics-path");
    let k = hello(&dir);
    let k = k.to_str().unwrap();
    let missing = dir.join("nope/m.json");
    let out = run_kiln(
        &["boot", "--kernel", k, "--metrics", missing.to_str().unwrap()],
        TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "the guest ran: {}", out.stdout);
    one_line(&["boot", "--metrics", dir.to_str().unwrap()], 1, "is a directory");
    // Past that check, a failure still leaves a record saying so.
    let path = dir.join("m.json");
    let path = path.to_str().unwrap();
    one_line(
        &["boot", "--kernel", k, "--cpus", "0", "--metrics", path],
        2,
        "--cpus",
    );
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(record["exit_reason"], "error");
    assert_eq!(record["exit_code"], 2);
    assert!(record["phases_us"]["vm_created"].is_null(), "{record}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    one_line(&["boot", "--kernal", "x"], 2, "--kernal");
    one_line(&["boot", "--memory"], 2, "--memory");
}

#[test]
fn default_guest_on_a_pvm_host_is_refused_before_building() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("not a PVM host: `kiln boot` would build and boot the default guest here");
        return;
    }
    let out = run_kiln(&["boot"], TIMEOUT);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("PVM") && out.stderr.contains("nested-host"),
        "{}",
        out.stderr
    );
    assert!(out.elapsed < Duration::from_secs(2), "took {:?}", out.elapsed);
}

/// Issue 8: `--disk` goes through the shared spec parser (duplicate keys
/// and stray commas are refused) and ids are checked across all disks, all
/// before any image is opened.
#[test]
fn disk_spec_mistakes_are_usage_errors() {
    let dir = scratch("disk-specs");
    let kernel = hello(&dir);
    let k = kernel.to_str().unwrap();
    for (specs, needle) in [
        (
            &["path=a.img,path=b.img"][..],
            "option path is given more than once",
        ),
        (&["path=a.img,"][..], "stray ','"),
        (&["path=a.img,root=yes"][..], "root takes no value"),
        (&["path=a.img,id=vol.1"][..], "id \"vol.1\" contains '.'"),
        (
            &["path=a.img,id=data", "path=b.img,id=data"][..],
            "id \"data\" is given to more than one device",
        ),
    ] {
        let mut args = vec!["boot", "--kernel", k];
        for spec in specs {
            args.extend(["--disk", spec]);
        }
        one_line(&args, 2, needle);
    }
}

#[test]
fn net_spec_mistakes_are_usage_errors() {
    let dir = scratch("net-specs");
    let kernel = hello(&dir);
    let k = kernel.to_str().unwrap();
    for (specs, needle) in [
        (&["mac=02:00:00:00:00:01"][..], "tap=NAME is required"),
        (&["tap=a/b"][..], "tap name \"a/b\""),
        (&["tap=a123456789abcdef"][..], "Linux allows at most 15"),
        (&["tap=t0,mac=01:00:5e:00:00:01"][..], "multicast"),
        (&["tap=t0,queues=2"][..], "unknown option \"queues\""),
        (&["tap=t0", "tap=t0"][..], "two network cards use tap t0"),
        (
            &["tap=t0,id=n0", "tap=t1,id=n0"][..],
            "id \"n0\" is given to more than one device",
        ),
    ] {
        let mut args = vec!["boot", "--kernel", k];
        for spec in specs {
            args.extend(["--net", spec]);
        }
        one_line(&args, 2, needle);
    }
}

/// Issue 9: the vsock socket path belongs to kiln only if nothing is
/// there, or a stale socket nobody listens on; kiln removes it on exit.
#[test]
fn vsock_socket_path_in_use_is_a_host_error() {
    let dir = scratch("vsock-socket");
    let kernel = hello(&dir);
    let k = kernel.to_str().unwrap();
    let socket = dir.join("v.sock");
    let spec = format!("cid=3,socket={}", socket.display());
    let args = ["boot", "--kernel", k, "--vsock", spec.as_str()];

    std::fs::write(&socket, b"someone's file").unwrap();
    one_line(
        &args,
        1,
        "exists and is not a socket; remove it or choose another path",
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"someone's file", "left alone");
    std::fs::remove_file(&socket).unwrap();

    let live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    one_line(&args, 1, "is in use by another process");

    // Its owner died without cleaning up: kiln takes the path, and
    // removes it when the guest is done.
    drop(live);
    assert!(socket.exists());
    let out = run_kiln(&args, TIMEOUT);
    assert_eq!(out.code, Some(0), "stderr {}", out.stderr);
    assert!(!socket.exists(), "removed on exit");

    one_line(
        &["boot", "--kernel", k, "--vsock", "cid=2,socket=/tmp/v.sock"],
        2,
        "cid 2 is reserved",
    );
}

#[test]
fn bad_jail_specs_are_usage_errors() {
    let dir = scratch("cli-jail");
    let guest = hello(&dir);
    let g = guest.to_str().unwrap();
    for (spec, needle) in [
        ("relative/dir", "must be an absolute path"),
        ("/j,uid=abc", "expected a number"),
        ("/j,cgroup=memory", "cgroup=KEY=VALUE"),
        ("/j,shell=yes", "expected uid=U"),
    ] {
        one_line(&["boot", "--kernel", g, "--jail", spec], 2, needle);
        one_line(
            &["exec", "--kernel", g, "--initrd", g, "--jail", spec, "--", "true"],
            2,
            needle,
        );
    }
}

#[test]
fn firecracker_style_flag_mistakes_are_one_line() {
    let dir = scratch("cli-api");
    let sock = dir.join("api.sock");
    let sock = sock.to_str().unwrap();
    one_line(&[], 2, "give a command");
    one_line(&["--no-api"], 2, "--no-api needs --config-file");
    one_line(&["--api-sock", sock, "boot"], 2, "cannot be used with");
    one_line(&["--api-sock", sock, "--level", "loud"], 2, "unknown log level");
    one_line(
        &["--no-api", "--config-file", "/nonexistent/vm.json"],
        1,
        "cannot read",
    );
    let config = dir.join("vm.json");
    std::fs::write(&config, "{not json").unwrap();
    one_line(
        &["--no-api", "--config-file", config.to_str().unwrap()],
        1,
        "vm.json",
    );
    one_line(
        &["--api-sock", sock, "--log-path", "/nonexistent/dir/log"],
        1,
        "log file",
    );
    // A path already there (a socket left behind, a file) is refused.
    std::fs::write(dir.join("taken"), b"").unwrap();
    one_line(
        &["--api-sock", dir.join("taken").to_str().unwrap()],
        1,
        "remove it first",
    );
}

//! `kiln boot --jail` with tiny guests on /dev/kvm: what the jailed VMM
//! can see and who it runs as, its cgroup limits (a memory limit below the
//! guest's need kills it, with one line), and the clean-up. Needs root, as
//! --jail does.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assemble, kiln, scratch, wait_or_kill, waiting_guest, KillOnDrop, PUTS, RESET};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: --jail needs root and this test runs as an ordinary user");
    }
    root
}

fn field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_jailed_vmm_sees_only_its_jail_runs_unprivileged_and_is_cleaned_up() {
    if !root() {
        return;
    }
    let dir = scratch("jail-view");
    let guest = waiting_guest(&dir);
    let jail = dir.join("vm-view");
    let spec = format!(
        "{},uid=1000,gid=1000,cgroup=pids.max=64,cgroup=memory.max=512M",
        jail.display()
    );
    let mut child = KillOnDrop(
        Command::new(kiln())
            .args([
                "boot",
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "64",
                "--jail",
                &spec,
            ])
            .args(["--vsock", "cid=3,socket=/v.sock"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let outer = child.0.id();
    let mut out = child.0.stdout.take().unwrap();
    let mut line = [0u8; 3];
    std::io::Read::read_exact(&mut out, &mut line).expect("the guest's first line");
    assert_eq!(&line, b"up\n");
    let vmm = children(outer).first().copied().expect("the jailed VMM");

    // Only the jail's contents: the mount points, the device, tmp, the socket.
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    seen.sort();
    assert_eq!(seen, ["dev", "kernel", "tmp", "v.sock"], "jail root");
    let mut devs: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    devs.sort();
    assert_eq!(devs, ["kvm", "null"]);
    assert!(!Path::new(&format!("/proc/{vmm}/root/etc/passwd")).exists());
    // The host reaches the socket under the jail's directory.
    assert!(jail.join("v.sock").exists());
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        assert_ne!(ours, its, "{ns} namespace");
    }
    assert_eq!(field(vmm, "Uid:"), "1000 1000 1000 1000");
    assert_eq!(field(vmm, "Gid:"), "1000 1000 1000 1000");
    assert_eq!(field(vmm, "Groups:"), "");
    assert_eq!(field(vmm, "CapEff:"), "0000000000000000");
    assert_eq!(field(vmm, "NoNewPrivs:"), "1");
    assert_eq!(field(vmm, "Seccomp:"), "2");
    let cgroups = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    assert!(cgroups.contains("/kiln/vm-view"), "{cgroups}");

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(outer as i32, libc::SIGTERM) }, 0);
    let status = wait_or_kill(&mut child.0, Duration::from_secs(10)).expect("kiln stops on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!jail.exists(), "the jail's directory is removed");
    for line in cgroups.lines().filter(|l| l.contains("/kiln/vm-view")) {
        let controllers = line.split(':').nth(1).unwrap_or_default();
        let path = line.rsplit(':').next().unwrap_or_default();
        let mount = if controllers.is_empty() {
            "/sys/fs/cgroup/unified".to_string()
        } else {
            format!("/sys/fs/cgroup/{}", controllers.split(',').next().unwrap())
        };
        assert!(
            !Path::new(&format!("{mount}{path}")).exists(),
            "{mount}{path} is removed"
        );
    }
}

#[test]
fn a_memory_limit_below_the_guests_need_kills_the_vm_with_one_line() {
    if !root() {
        return;
    }
    let dir = scratch("jail-memory");
    // Touches one byte per page from 32 MiB to 224 MiB, then resets.
    let src = format!(
        ".code64\n.globl _start\n_start:\n    mov $0x2000000, %rdi\n1:  movb $1, (%rdi)\n    add $4096, %rdi\n    cmp $0xe000000, %rdi\n    jb 1b\n    lea msg(%rip), %rsi\n    call puts\n{RESET}{PUTS}msg: .asciz \"touched\\n\"\n"
    );
    let guest = assemble(&dir, "hog", &src);
    let jail = dir.join("vm-hog");
    let run = |limit: &str| {
        let spec = format!("{},uid=1000,gid=1000,cgroup=memory.max={limit}", jail.display());
        common::run_kiln(
            &[
                "boot",
                "--kernel",
                guest.to_str().unwrap(),
                "--memory",
                "256",
                "--jail",
                &spec,
            ],
            Duration::from_secs(30),
        )
    };
    let hog = run("64M");
    assert_eq!(hog.code, Some(137), "stderr: {}", hog.stderr);
    assert!(
        hog.stderr
            .starts_with("kiln: the VM was killed: it went over its memory limit ("),
        "{}",
        hog.stderr
    );
    assert_eq!(hog.stderr.lines().count(), 1, "{}", hog.stderr);
    assert!(!jail.exists());
    // With room, the same guest finishes.
    let roomy = run("512M");
    assert_eq!(
        (roomy.code, roomy.stdout.as_str()),
        (Some(0), "touched\n"),
        "{}",
        roomy.stderr
    );
    assert!(!jail.exists());
}

#[test]
fn jail_setup_errors_are_one_line() {
    if !root() {
        return;
    }
    let dir = scratch("jail-errors");
    let guest = waiting_guest(&dir);
    let busy = dir.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("x"), b"x").unwrap();
    for (spec, code, want) in [
        (busy.display().to_string(), 1, "exists and is not empty"),
        (
            format!("{}/j,cgroup=blkio.weight=10", dir.display()),
            1,
            "cpu.*, memory.* and pids.*",
        ),
        (format!("{}/j,uid=abc", dir.display()), 2, "expected a number"),
        (format!("{}/no/such/j", dir.display()), 1, "cannot create"),
    ] {
        let out = common::run_kiln(
            &["boot", "--kernel", guest.to_str().unwrap(), "--jail", &spec],
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(code), "{spec}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{spec}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{spec}: {}", out.stderr);
    }
    assert!(busy.join("x").exists(), "a busy directory is left alone");
    assert!(!dir.join("j").exists());
}

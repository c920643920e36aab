//! Seccomp filters on a running VM (tiny guests on /dev/kvm): every kiln
//! thread is filtered once the guest runs, and a call outside a thread's
//! filter stops kiln with one line and status 159.

mod common;

use std::time::Duration;

use common::{scratch, spawn, thread_modes, waiting_guest};

#[test]
fn every_thread_runs_filtered_once_the_guest_runs_and_none_with_no_seccomp() {
    let guest = waiting_guest(&scratch("seccomp-threads"));
    for (args, want) in [(&[][..], "2"), (&["--no-seccomp"][..], "0")] {
        let mut all = vec!["--cpus", "2"];
        all.extend_from_slice(args);
        let vm = spawn(&guest, &all);
        assert_eq!(
            vm.line(Duration::from_secs(10)).as_deref(),
            Some("up"),
            "{args:?}"
        );
        let modes = thread_modes(vm.child.0.id());
        // The main (VMM) thread and both vCPUs (KVM may add a kernel
        // worker of its own to the process: it inherits the filter).
        for name in ["kiln", "kiln-vcpu0", "kiln-vcpu1"] {
            assert!(modes.iter().any(|(n, _)| n == name), "{name}: {modes:?}");
        }
        assert!(modes.iter().all(|(_, m)| m == want), "{args:?}: {modes:?}");
        let (outcome, stderr) = vm.terminate(Duration::from_secs(5));
        assert_eq!(outcome.map(|o| o.1), Some(Some(128 + libc::SIGTERM)), "{stderr}");
    }
}

#[test]
fn a_forbidden_call_on_any_thread_stops_kiln_with_one_line() {
    let guest = waiting_guest(&scratch("seccomp-selftest"));
    for (kind, call, shown) in [
        ("vmm", "execve", "execve (59)"),
        ("vmm", "open", "openat (257)"),
        ("vmm", "socket-inet", "socket (41)"),
        ("vcpu", "execve", "execve (59)"),
        ("vcpu", "ioctl", "ioctl (16)"),
        ("vcpu", "open", "openat (257)"),
    ] {
        let out = std::process::Command::new(common::kiln())
            .args(["boot", "--kernel", guest.to_str().unwrap(), "--memory", "64"])
            .env("KILN_SECCOMP_SELFTEST", format!("{kind}:{call}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(159), "{kind}:{call}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("kiln: seccomp: the {kind} thread made a forbidden system call, {shown}; a bug in kiln or an attack from the guest: stopping"),
            "{kind}:{call}"
        );
    }
}

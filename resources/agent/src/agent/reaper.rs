//! Spawning children and collecting their exit statuses.
//!
//! As PID 1 the agent inherits every orphan in the guest and must reap
//! them, but a plain `waitpid(-1)` loop would also steal the statuses of
//! the commands it runs, and of a child `std::process::Command::spawn` is
//! still reaping after a failed exec (std panics if that child is gone).
//! So in [`ReapMode::Pid1`] one thread peeks at the next zombie with
//! `waitid(WNOWAIT)` and reaps it only while holding the registry lock,
//! which `spawn` holds from fork to registration: a command's status goes
//! to its waiter, an orphan's is dropped, and a child std is still spawning
//! is left to std. Off PID 1 (tests on the host), each child gets a thread
//! that waits for it alone.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::lock;
use crate::protocol::ExitStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReapMode {
    /// The agent is PID 1: reap every child, orphans included.
    Pid1,
    /// Wait for each spawned child only (any other process).
    PerChild,
}

#[derive(Default)]
struct Registry {
    waiters: HashMap<libc::pid_t, SyncSender<ExitStatus>>,
    /// Bumped on each spawn, so an idle reaper knows to look again.
    spawned: u64,
}

struct Shared {
    registry: Mutex<Registry>,
    spawned: Condvar,
}

#[derive(Clone)]
pub struct Reaper {
    mode: ReapMode,
    shared: Arc<Shared>,
}

/// Decodes a `waitpid` status.
pub fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

impl Reaper {
    /// In [`ReapMode::Pid1`], starts the reaping thread.
    pub fn new(mode: ReapMode) -> io::Result<Self> {
        let reaper = Reaper {
            mode,
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                spawned: Condvar::new(),
            }),
        };
        if mode == ReapMode::Pid1 {
            let shared = reaper.shared.clone();
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reap_all(&shared))?;
        }
        Ok(reaper)
    }

    /// Spawns `cmd`; the receiver gets its exit status once it is reaped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<ExitStatus>)> {
        let (tx, rx) = sync_channel(1);
        let mut registry = lock(&self.shared.registry);
        let child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        match self.mode {
            ReapMode::Pid1 => {
                registry.waiters.insert(pid, tx);
                registry.spawned += 1;
                self.shared.spawned.notify_all();
            }
            ReapMode::PerChild => {
                drop(registry);
                std::thread::Builder::new()
                    .name("wait-child".into())
                    .spawn(move || wait_one(pid, &tx))?;
            }
        }
        Ok((child, rx))
    }
}

fn wait_one(pid: libc::pid_t, tx: &SyncSender<ExitStatus>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid c_int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            let _ = tx.send(decode_status(status));
            return;
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: someone else reaped it; report it lost as killed.
        let _ = tx.send(ExitStatus::Signal(libc::SIGKILL));
        return;
    }
}

fn reap_all(shared: &Shared) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only to `info`; WNOWAIT leaves the zombie in place.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => {
                    // ECHILD: no children at all. Sleep until a spawn (the
                    // timeout only guards against a missed wake-up).
                    let registry = lock(&shared.registry);
                    let seen = registry.spawned;
                    let _ = shared
                        .spawned
                        .wait_timeout_while(registry, Duration::from_secs(1), |r| r.spawned == seen);
                    continue;
                }
            }
        }
        // SAFETY: waitid succeeded for WEXITED, so si_pid is the child's pid.
        let pid = unsafe { info.si_pid() };
        if pid == 0 {
            continue;
        }
        let mut registry = lock(&shared.registry);
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`. WNOHANG: std may have
        // reaped a failed spawn meanwhile, then this finds nothing.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if let Some(tx) = registry.waiters.remove(&pid) {
                let _ = tx.send(decode_status(status));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const CHILD_ENV: &str = "KILN_REAPER_TEST_CHILD";

    /// Pid1 mode reaps every child of the process, so it runs in a child
    /// test process of its own (a subreaper, as PID 1 would be), not among
    /// the other tests' children.
    #[test]
    fn pid1_mode_routes_statuses_and_reaps_orphans() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent::reaper::tests::pid1_mode_in_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
    }

    fn children() -> String {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).unwrap())
            .collect()
    }

    #[test]
    #[ignore = "run by pid1_mode_routes_statuses_and_reaps_orphans in a process of its own"]
    fn pid1_mode_in_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        // SAFETY: prctl with integer arguments only changes this process's flag.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
        let reaper = Reaper::new(ReapMode::Pid1).unwrap();
        // An orphan: the shell exits first, its background sleep is reparented here.
        let (_, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "sleep 0.2 & exit 5"]))
            .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            ExitStatus::Code(5)
        );
        // A failed exec: std reaps that child itself and must find it there.
        for _ in 0..20 {
            let err = reaper.spawn(&mut Command::new("/nonexistent/kiln")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
        let waits: Vec<_> = (0..20)
            .map(|i| {
                let (_, rx) = reaper
                    .spawn(Command::new("sh").args(["-c", &format!("exit {i}")]))
                    .unwrap();
                (i, rx)
            })
            .collect();
        for (i, rx) in waits {
            assert_eq!(
                rx.recv_timeout(Duration::from_secs(5)).unwrap(),
                ExitStatus::Code(i)
            );
        }
        let (child, rx) = reaper.spawn(Command::new("sleep").arg("100")).unwrap();
        // SAFETY: kill only sends a signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            ExitStatus::Signal(libc::SIGKILL)
        );
        // The orphaned sleep is reaped too: no child, zombie or not, remains.
        let t0 = Instant::now();
        while !children().trim().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "left: {}", children());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

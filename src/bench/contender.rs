//! What every contender shares: the [`Contender`] trait, the [`Sample`]
//! one run gives, and [`run_timed`], which starts a command and times it
//! from spawn to a readiness marker on its stdout and to its exit.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The line the readiness command prints (the default guest's `/init`
/// prints it too, once user space is up).
pub const READY_MARKER: &str = "KILN-GUEST-READY";

/// How much of a failed run's stderr an error quotes.
const STDERR_TAIL: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error(
        "{program} did not finish within {secs} s and was killed; raise --timeout if the machine is slow"
    )]
    Timeout { program: String, secs: u64 },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} exited without printing {READY_MARKER} (stderr: {stderr})")]
    NoMarker { program: String, stderr: String },
}

/// One run of one contender. Times are µs since the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Until the contender's workload was up (the guest's user space, the
    /// container's readiness command).
    pub ready_us: u64,
    /// Until the contender's process exited (everything torn down).
    pub exit_us: u64,
    /// From spawn until the marker appeared on its stdout (the guest's
    /// serial console, the container's output): the same measure for
    /// every contender, where `ready_us` is each one's best own measure.
    pub marker_us: Option<u64>,
    /// Finer phases, cumulative, in order (kiln's boot timeline); empty
    /// for contenders that have none.
    pub phases_us: Vec<(String, u64)>,
}

/// One way of starting the same workload, run once per round.
pub trait Contender {
    /// The short name used in `--contenders`, the table and the files.
    fn name(&self) -> &str;
    /// Does one cold run and measures it.
    fn run(&mut self, round: usize) -> Result<Sample, RunError>;
    /// How to start instance `index` of the idle workload (print the
    /// marker, then stay up), for the memory and density rows.
    fn idle(&mut self, index: usize) -> Result<IdleSpec, RunError>;
}

/// An instance of the idle workload, not yet started.
#[derive(Debug)]
pub struct IdleSpec {
    pub command: Command,
    /// The size of the guest RAM mapping in KiB, for a VMM (what the
    /// memory overhead leaves out).
    pub guest_kib: Option<u64>,
    /// Run once the instance is to go, before it is killed (a container
    /// runtime's `delete --force`).
    pub cleanup: Option<Command>,
}

/// The guest every VMM contender boots, the same for all.
#[derive(Debug, Clone)]
pub struct VmGuest {
    pub kernel: std::path::PathBuf,
    pub initrd: Option<std::path::PathBuf>,
    /// The kernel command line of a boot run; the idle workload appends
    /// [`IDLE_GUEST_CMD`].
    pub cmdline: String,
    /// Guest memory of the idle instances, MiB: small, so density is the
    /// VMM's and not the guest's.
    pub idle_mib: u64,
}

impl VmGuest {
    pub fn idle_cmdline(&self) -> String {
        format!("{} {IDLE_GUEST_CMD}", self.cmdline)
    }
}

/// What the idle guest's init runs after the marker: `sleep 86400`, base64
/// as the default guest's `kiln.cmd=` takes it.
pub const IDLE_GUEST_CMD: &str = "kiln.cmd=c2xlZXAgODY0MDA=";

/// What [`run_timed`] saw.
#[derive(Debug)]
pub struct Timed {
    /// Spawn to the first [`READY_MARKER`] on stdout, if it appeared.
    pub ready: Option<Duration>,
    /// Spawn to the exit of the process.
    pub exit: Duration,
    pub status: ExitStatus,
    /// The end of what it wrote to stderr.
    pub stderr: String,
}

impl Timed {
    /// An error unless the process exited with status 0.
    pub fn check(self, program: &str) -> Result<Self, RunError> {
        if self.status.success() {
            return Ok(self);
        }
        Err(RunError::Failed {
            program: program.to_string(),
            status: self.status.to_string(),
            stderr: one_line(&self.stderr),
        })
    }
}

/// `text` as one line: its lines joined with " / ", blank ones dropped.
pub fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        "nothing on stderr".to_string()
    } else {
        lines.join(" / ")
    }
}

/// Runs `command` (stdin empty, stdout and stderr read here) and times it;
/// kills it after `limit`. Memory stays bounded whatever it prints.
pub fn run_timed(command: &mut Command, limit: Duration) -> Result<Timed, RunError> {
    let program = command.get_program().to_string_lossy().into_owned();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let watcher = thread::spawn(move || {
        let mut found = None;
        if let Some(s) = stdout {
            watch_marker(s, READY_MARKER, |at| found = Some(at));
        }
        found
    });
    let collector = thread::spawn(move || stderr.map(tail_of).unwrap_or_default());
    let Some(status) = wait_with_limit(&mut child, limit) else {
        // Not joining the readers: something the killed process started
        // (a container's init) may still hold the pipes open.
        return Err(RunError::Timeout {
            program,
            secs: limit.as_secs(),
        });
    };
    let exit = start.elapsed();
    // Both pipes close when the process and what it started have ended.
    let ready = watcher.join().ok().flatten();
    let stderr = collector.join().unwrap_or_default();
    Ok(Timed {
        // The marker was printed before the process ended: a reader thread
        // scheduled late must not place it after the exit.
        ready: ready.map(|at| at.saturating_duration_since(start).min(exit)),
        exit,
        status,
        stderr,
    })
}

/// Waits for `child`, killing it after `limit`; None if it had to be
/// killed. The wait happens on a thread so the exit time is exact, not
/// rounded up to a polling interval.
fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(limit) {
            Ok(status) => status.ok(),
            Err(_) => {
                // SAFETY: kill(2) on our own child's pid, which stays
                // reserved until the waiting thread reaps it.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let _ = rx.recv();
                None
            }
        }
    })
}

/// Reads `from` to its end, calling `on_found` with the time `marker`
/// first appeared, as soon as it does. Keeps only a marker's length of
/// the stream, so a flood costs no memory.
pub fn watch_marker(mut from: impl Read, marker: &str, on_found: impl FnOnce(Instant)) {
    let marker = marker.as_bytes();
    let mut buf = [0u8; 8192];
    let mut window: Vec<u8> = Vec::with_capacity(buf.len() + marker.len());
    let mut on_found = Some(on_found);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if on_found.is_none() {
            continue;
        }
        window.extend_from_slice(&buf[..n]);
        if window.windows(marker.len()).any(|w| w == marker) {
            if let Some(f) = on_found.take() {
                f(Instant::now());
            }
            continue;
        }
        let keep = window.len().min(marker.len().saturating_sub(1));
        window.drain(..window.len() - keep);
    }
}

/// The last [`STDERR_TAIL`] bytes `from` writes, as text.
pub fn tail_of(mut from: impl Read) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_split_across_reads_is_found() {
        // A reader that hands out one byte at a time.
        struct Trickle(std::vec::IntoIter<u8>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.next() {
                    Some(b) => {
                        buf[0] = b;
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
        }
        let find = |from: &mut dyn Read| {
            let mut found = None;
            watch_marker(from, READY_MARKER, |at| found = Some(at));
            found
        };
        let text = b"boot noise\nKILN-GUEST-READY\nmore\n".to_vec();
        assert!(find(&mut Trickle(text.into_iter())).is_some());
        assert!(find(&mut &b"KILN-GUEST-READ\n"[..]).is_none());
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let big = vec![b'x'; 100_000];
        let mut text = big.clone();
        text.extend_from_slice(b"the end");
        let tail = tail_of(&text[..]);
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with("the end"));
    }

    #[test]
    fn run_timed_sees_the_marker_exit_and_failure() {
        let t = run_timed(
            Command::new("sh").args(["-c", "sleep 0.05; echo KILN-GUEST-READY; sleep 0.05"]),
            Duration::from_secs(10),
        )
        .unwrap()
        .check("sh")
        .unwrap();
        let ready = t.ready.unwrap();
        assert!(ready >= Duration::from_millis(50) && ready < t.exit, "{t:?}");
        let e = run_timed(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap()
        .check("sh")
        .unwrap_err()
        .to_string();
        assert!(e.contains("oops") && e.contains('3'), "{e}");
    }

    #[test]
    fn run_timed_kills_at_the_limit() {
        let started = Instant::now();
        let e = run_timed(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

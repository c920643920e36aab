//! The memory and density rows: N instances of a contender's idle
//! workload started at once, timed until every one printed the marker,
//! then measured (see [`super::memory`]) and stopped.

use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::contender::{tail_of, watch_marker, Contender, IdleSpec, RunError, READY_MARKER};
use super::memory::{measure, MemoryUse};

/// How long instances idle after the last one is ready before they are
/// measured: the guest's init and the container's shell settle.
const SETTLE: Duration = Duration::from_millis(1000);

/// What one contender's idle instances gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdleResult {
    /// Instances started at once.
    pub instances: usize,
    /// From the first spawn until every instance was ready, µs.
    pub all_ready_us: u64,
    /// Each instance's memory, measured while all of them idled.
    pub memory: Vec<MemoryUse>,
}

impl IdleResult {
    /// Instances ready per second, all started at once.
    pub fn starts_per_second(&self) -> f64 {
        self.instances as f64 * 1e6 / self.all_ready_us.max(1) as f64
    }

    /// The median over instances of `pick`, KiB.
    pub fn median(&self, pick: impl Fn(&MemoryUse) -> u64) -> u64 {
        let mut values: Vec<u64> = self.memory.iter().map(pick).collect();
        values.sort_unstable();
        super::stats::nearest_rank(&values, 50)
    }
}

/// A started idle instance; stopped (cleanup, then SIGKILL) when dropped.
struct IdleInstance {
    program: String,
    child: Child,
    ready: mpsc::Receiver<Instant>,
    stderr: Option<thread::JoinHandle<String>>,
    guest_kib: Option<u64>,
    cleanup: Option<std::process::Command>,
}

impl IdleInstance {
    fn start(mut spec: IdleSpec) -> Result<Self, RunError> {
        let program = spec.command.get_program().to_string_lossy().into_owned();
        let mut child = spec
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: program.clone(),
                source,
            })?;
        let (tx, ready) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                watch_marker(stdout, READY_MARKER, |at| {
                    let _ = tx.send(at);
                })
            });
        }
        let stderr = child.stderr.take().map(|s| thread::spawn(move || tail_of(s)));
        Ok(Self {
            program,
            child,
            ready,
            stderr,
            guest_kib: spec.guest_kib,
            cleanup: spec.cleanup,
        })
    }

    /// When the marker appeared; an error if the instance ended first or
    /// `deadline` passed.
    fn wait_ready(&mut self, deadline: Instant) -> Result<Instant, RunError> {
        match self
            .ready
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(at) => Ok(at),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RunError::Timeout {
                program: self.program.clone(),
                secs: 0,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed without the marker: it ended.
                let _ = self.child.wait();
                let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
                Err(RunError::NoMarker {
                    program: self.program.clone(),
                    stderr: super::contender::one_line(&stderr),
                })
            }
        }
    }

    /// Its memory now; an error if it is no longer running.
    fn memory(&mut self) -> Result<MemoryUse, RunError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(RunError::Failed {
                program: self.program.clone(),
                status: status.to_string(),
                stderr: "it ended instead of idling after the marker: bench a guest whose init runs kiln.cmd= (like the default guest)".to_string(),
            });
        }
        Ok(measure(self.child.id(), self.guest_kib))
    }
}

impl Drop for IdleInstance {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.as_mut() {
            let _ = cleanup.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` idle instances of `contender` at once, waits until all
/// are ready (within `limit`), measures each, and stops them.
pub fn run_idle(
    contender: &mut dyn Contender,
    count: usize,
    limit: Duration,
) -> Result<IdleResult, RunError> {
    let start = Instant::now();
    let mut instances = Vec::with_capacity(count);
    for index in 0..count {
        instances.push(IdleInstance::start(contender.idle(index)?)?);
    }
    let deadline = start + limit;
    let mut last = start;
    for instance in &mut instances {
        let at = instance.wait_ready(deadline).map_err(|e| match e {
            RunError::Timeout { program, .. } => RunError::Timeout {
                program,
                secs: limit.as_secs(),
            },
            e => e,
        })?;
        last = last.max(at);
    }
    thread::sleep(SETTLE);
    let memory = instances
        .iter_mut()
        .map(IdleInstance::memory)
        .collect::<Result<Vec<_>, _>>()?;
    drop(instances);
    Ok(IdleResult {
        instances: count,
        all_ready_us: u64::try_from((last - start).as_micros()).unwrap_or(u64::MAX),
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::contender::Sample;
    use std::process::Command;

    struct Shell(&'static str);

    impl Contender for Shell {
        fn name(&self) -> &str {
            "shell"
        }
        fn run(&mut self, _round: usize) -> Result<Sample, RunError> {
            unreachable!()
        }
        fn idle(&mut self, _index: usize) -> Result<IdleSpec, RunError> {
            let mut command = Command::new("sh");
            command.args(["-c", self.0]);
            Ok(IdleSpec {
                command,
                guest_kib: None,
                cleanup: None,
            })
        }
    }

    #[test]
    fn instances_start_together_are_measured_and_stopped() {
        let mut shell = Shell("sleep 0.1; echo KILN-GUEST-READY; exec sleep 30");
        let started = Instant::now();
        let r = run_idle(&mut shell, 3, Duration::from_secs(20)).unwrap();
        assert_eq!(r.instances, 3);
        assert_eq!(r.memory.len(), 3);
        assert!(r.all_ready_us >= 100_000, "{r:?}");
        assert!(
            r.memory.iter().all(|m| m.total_kib > 0 && m.overhead_kib > 0),
            "{r:?}"
        );
        assert!(r.starts_per_second() > 0.0);
        // Stopped, not waited for: far less than the 30 s sleep.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_instance_that_ends_or_hangs_is_an_error() {
        let e = run_idle(&mut Shell("echo broken >&2; exit 1"), 2, Duration::from_secs(20)).unwrap_err();
        assert!(
            matches!(&e, RunError::NoMarker { stderr, .. } if stderr == "broken"),
            "{e}"
        );
        let e = run_idle(&mut Shell("sleep 30"), 1, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
        let e = run_idle(&mut Shell("echo KILN-GUEST-READY"), 1, Duration::from_secs(20)).unwrap_err();
        assert!(e.to_string().contains("ended instead of idling"), "{e}");
    }

    #[test]
    fn medians_and_rates_follow_the_instances() {
        let m = |o, t| MemoryUse {
            overhead_kib: o,
            total_kib: t,
        };
        let r = IdleResult {
            instances: 3,
            all_ready_us: 500_000,
            memory: vec![m(10, 100), m(30, 300), m(20, 200)],
        };
        assert_eq!(r.median(|m| m.overhead_kib), 20);
        assert_eq!(r.starts_per_second(), 6.0);
    }
}

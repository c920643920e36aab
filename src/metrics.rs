//! The `--metrics` record: one JSON object written when kiln exits, for
//! scripts (benchmarks, CI) to read.
//!
//! ```json
//! {"phases_us":{"process_start":0,"vm_created":612,...,"user_space":null,"guest_exit":5210},
//!  "cpu_user_us":1200,"cpu_sys_us":3400,"peak_rss_kib":2900,
//!  "exit_reason":"power-off","exit_code":0}
//! ```
//! Phases are µs since process start (see [`crate::timeline::Phase`]),
//! each `null` if not reached. The file is created (emptied) when kiln
//! starts and the record written into it at exit: under seccomp kiln can
//! open no file once the guest runs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::exit::ExitReason;
use crate::timeline::BootTimeline;
use crate::vstate::memory::ProcSelfStatus;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics {path}: directory {dir} does not exist; create it or pick another path")]
    NoDirectory { path: String, dir: String },
    #[error("--metrics {path} is a directory; give a file name")]
    IsDirectory { path: String },
    #[error("cannot write --metrics {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Where the record goes: opened before the VM starts, written at exit.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    file: File,
    /// Opened now to read the peak RSS at exit.
    status: Option<ProcSelfStatus>,
}

impl MetricsFile {
    /// Creates (or empties) `path` if its directory exists and it is not a
    /// directory itself, so a typo fails at once rather than after the
    /// whole run.
    pub fn open(path: &Path) -> Result<Self, MetricsError> {
        let shown = path.display().to_string();
        if path.is_dir() || path.file_name().is_none() {
            return Err(MetricsError::IsDirectory { path: shown });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(MetricsError::NoDirectory {
                path: shown,
                dir: dir.display().to_string(),
            });
        }
        let file = File::create(path).map_err(|source| MetricsError::Write { path: shown, source })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            status: ProcSelfStatus::open(),
        })
    }

    /// This process's peak resident set (VmHWM) in KiB, guest pages it
    /// touched included. (ru_maxrss would include the image of the
    /// process that exec'd kiln; VmHWM is kiln's own.)
    pub fn peak_rss_kib(&self) -> Option<u64> {
        match &self.status {
            Some(status) => status.kib("VmHWM"),
            None => own_rusage().map(|u| u.ru_maxrss.max(0) as u64).filter(|k| *k > 0),
        }
    }

    /// Reads the peak RSS from getrusage from now on: a forked child (the
    /// jailed VMM) holds its parent's /proc entry and has no /proc of its
    /// own, but its ru_maxrss is its own.
    pub fn use_getrusage(&mut self) {
        self.status = None;
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.len() == 0)
    }

    /// The descriptors this holds, to keep open across a jail's entry.
    pub fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let mut fds = vec![self.file.as_raw_fd()];
        fds.extend(self.status.as_ref().map(ProcSelfStatus::as_raw_fd));
        fds
    }

    /// Writes `record` as one line of JSON.
    pub fn write(&self, record: &MetricsRecord) -> Result<(), MetricsError> {
        let err = |source| MetricsError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_vec(record).map_err(|e| err(e.into()))?;
        text.push(b'\n');
        (&self.file).write_all(&text).map_err(err)
    }
}

/// How the run ended, as the record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest stopped (or was stopped) for this reason.
    Guest(ExitReason),
    /// kiln could not build or run the VM (exit status 1 or 2).
    Error,
    /// The VM ran in a jail and ended there (its record is the jailed
    /// kiln's; this one is written only if that one could not be).
    Jailed,
}

impl RunEnd {
    fn name(&self) -> &'static str {
        match self {
            RunEnd::Guest(ExitReason::PowerOff) => "power-off",
            RunEnd::Guest(ExitReason::Reset) => "reset",
            RunEnd::Guest(ExitReason::GuestPanic) => "guest-panic",
            RunEnd::Guest(ExitReason::TripleFault { .. }) => "triple-fault",
            RunEnd::Guest(ExitReason::InternalError { .. }) => "internal-error",
            RunEnd::Guest(ExitReason::UnhandledExit { .. }) => "unhandled-exit",
            RunEnd::Guest(ExitReason::Signal(_)) => "signal",
            RunEnd::Guest(ExitReason::Stopped) => "stopped",
            RunEnd::Error => "error",
            RunEnd::Jailed => "killed-in-jail",
        }
    }
}

/// Every phase by name, µs since the origin or null, in boot order.
struct PhasesUs<'a>(&'a BootTimeline);

impl Serialize for PhasesUs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let phases = self.0.snapshot();
        let mut map = serializer.serialize_map(Some(phases.len()))?;
        for (phase, at) in phases {
            let us = at.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            map.serialize_entry(phase.name(), &us)?;
        }
        map.end()
    }
}

/// The record written at exit.
#[derive(Serialize)]
pub struct MetricsRecord<'a> {
    phases_us: PhasesUs<'a>,
    cpu_user_us: u64,
    cpu_sys_us: u64,
    /// The process's peak resident set (VmHWM), guest pages it touched
    /// included.
    peak_rss_kib: Option<u64>,
    exit_reason: &'static str,
    exit_code: i32,
}

impl<'a> MetricsRecord<'a> {
    /// The record for this process now: `timeline`'s phases, the CPU time
    /// of every thread so far, the peak memory given, and how the run ended.
    pub fn now(timeline: &'a BootTimeline, end: &RunEnd, exit_code: i32, peak_rss_kib: Option<u64>) -> Self {
        let (cpu_user_us, cpu_sys_us) = cpu_time_us();
        Self {
            phases_us: PhasesUs(timeline),
            cpu_user_us,
            cpu_sys_us,
            peak_rss_kib,
            exit_reason: end.name(),
            exit_code,
        }
    }
}

/// A running VM's record, one JSON line each time the API's metrics are
/// flushed (periodically and on `FlushMetrics`).
#[derive(Serialize)]
pub struct SnapshotRecord<'a, S: Serialize> {
    utc_timestamp_ms: u64,
    /// The VM's state as the API names it.
    state: S,
    phases_us: PhasesUs<'a>,
    cpu_user_us: u64,
    cpu_sys_us: u64,
}

impl<'a, S: Serialize> SnapshotRecord<'a, S> {
    pub fn now(timeline: &'a BootTimeline, state: S) -> Self {
        let (cpu_user_us, cpu_sys_us) = cpu_time_us();
        let utc_timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            utc_timestamp_ms,
            state,
            phases_us: PhasesUs(timeline),
            cpu_user_us,
            cpu_sys_us,
        }
    }
}

/// User and system CPU time of this process (all its threads), in µs.
fn cpu_time_us() -> (u64, u64) {
    let Some(usage) = own_rusage() else {
        return (0, 0);
    };
    let us = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
    (us(usage.ru_utime), us(usage.ru_stime))
}

/// getrusage(RUSAGE_SELF): CPU time, and the peak RSS where /proc is out
/// of reach (a forked child's ru_maxrss is its own).
fn own_rusage() -> Option<libc::rusage> {
    // SAFETY: rusage is plain data; getrusage fills it in or fails.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write to.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::timeline::Phase;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-metrics-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn open_refuses_missing_directories_and_directories() {
        let dir = scratch("check");
        let missing = dir.join("nope/m.json");
        let e = MetricsFile::open(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("nope"), "{e}");
        let e = MetricsFile::open(&dir).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        assert!(MetricsFile::open(Path::new("/")).is_err());
        assert!(MetricsFile::open(&dir.join("m.json")).is_ok());
    }

    #[test]
    fn record_has_every_phase_in_order_with_nulls_for_missing_ones() {
        let timeline = BootTimeline::with_origin(Instant::now() - Duration::from_millis(3));
        timeline.record(Phase::VmCreated);
        timeline.record(Phase::GuestExit);
        let file = MetricsFile::open(&scratch("record").join("m.json")).unwrap();
        let record = MetricsRecord::now(
            &timeline,
            &RunEnd::Guest(ExitReason::PowerOff),
            0,
            file.peak_rss_kib(),
        );
        let text = serde_json::to_string(&record).unwrap();
        let names: Vec<usize> = Phase::ALL.iter().map(|p| text.find(p.name()).unwrap()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let phases = &v["phases_us"];
        assert_eq!(phases["process_start"], 0);
        assert!(phases["vm_created"].as_u64().unwrap() >= 3000, "{text}");
        assert!(phases["user_space"].is_null());
        assert_eq!(v["exit_reason"], "power-off");
        assert_eq!(v["exit_code"], 0);
        // CPU time may round to 0 in a short test; its presence is the point.
        assert!(v["cpu_user_us"].is_u64() && v["cpu_sys_us"].is_u64(), "{text}");
        assert!(v["peak_rss_kib"].as_u64().unwrap() > 0);
    }

    #[test]
    fn open_empties_the_file_and_write_puts_the_record_in_it() {
        let dir = scratch("write");
        let path = dir.join("m.json");
        std::fs::write(&path, "old").unwrap();
        let timeline = BootTimeline::starting_now();
        let file = MetricsFile::open(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // The directory can go away meanwhile: the record is written to
        // the file opened at start, which is what seccomp requires.
        file.write(&MetricsRecord::now(&timeline, &RunEnd::Error, 1, None))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["exit_reason"], "error");
        assert!(v["peak_rss_kib"].is_null());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn every_exit_reason_has_a_distinct_name() {
        let ends = [
            RunEnd::Guest(ExitReason::PowerOff),
            RunEnd::Guest(ExitReason::Reset),
            RunEnd::Guest(ExitReason::GuestPanic),
            RunEnd::Guest(ExitReason::TripleFault { vcpu: 0 }),
            RunEnd::Guest(ExitReason::InternalError {
                vcpu: 0,
                detail: String::new(),
            }),
            RunEnd::Guest(ExitReason::UnhandledExit {
                vcpu: 0,
                detail: String::new(),
            }),
            RunEnd::Guest(ExitReason::Signal(15)),
            RunEnd::Error,
        ];
        let names: std::collections::HashSet<&str> = ends.iter().map(RunEnd::name).collect();
        assert_eq!(names.len(), ends.len());
    }
}

//! `PUT /metrics`: JSON lines to a file or a FIFO, once a minute while the
//! VM runs and on `FlushMetrics`.
//!
//! Orchestrators give a FIFO they read from. Opened read-write and
//! non-blocking, a FIFO never blocks kiln: not at open (no reader yet),
//! not on a write (a reader that stopped reading). A line that does not
//! fit goes unwritten and is counted, rather than stall the event loop.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::model::InstanceState;
use crate::metrics::SnapshotRecord;
use crate::timeline::BootTimeline;

/// How often a line goes out on its own (Firecracker's period).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

pub struct MetricsSink {
    file: File,
    timer: Option<TimerFd>,
    /// Lines the reader had no room for.
    pub dropped: u64,
}

impl MetricsSink {
    /// Opens `path`, an existing file or FIFO.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = super::open_sink(path)?;
        Ok(Self {
            file,
            timer: None,
            dropped: 0,
        })
    }

    /// Starts the periodic flush (when the VM starts).
    pub fn start_timer(&mut self) -> io::Result<()> {
        let mut timer = TimerFd::new()?;
        timer.reset(FLUSH_PERIOD, Some(FLUSH_PERIOD))?;
        self.timer = Some(timer);
        Ok(())
    }

    pub fn timer(&self) -> Option<&TimerFd> {
        self.timer.as_ref()
    }

    /// Writes one line now.
    pub fn flush(&mut self, timeline: &BootTimeline, state: InstanceState) -> io::Result<()> {
        let record = SnapshotRecord::now(timeline, state);
        let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
        line.push(b'\n');
        match self.file.write(&line) {
            Ok(n) if n == line.len() => Ok(()),
            // A FIFO write of at most PIPE_BUF bytes is all or nothing; a
            // partial one means a full file system.
            Ok(_) => Err(io::ErrorKind::WriteZero.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.dropped += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The periodic flush: the timer expired.
    pub fn tick(&mut self, timeline: &BootTimeline, state: InstanceState) {
        if let Some(timer) = &mut self.timer {
            let _ = timer.wait();
        }
        if let Err(e) = self.flush(timeline, state) {
            log::warn!("cannot write the metrics: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    #[test]
    fn lines_go_to_a_file() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("m.json");
        assert!(MetricsSink::open(&path).is_err(), "created a file");
        std::fs::write(&path, b"").unwrap();
        let mut sink = MetricsSink::open(&path).unwrap();
        let timeline = BootTimeline::starting_now();
        sink.flush(&timeline, InstanceState::Running).unwrap();
        sink.flush(&timeline, InstanceState::Paused).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["state"], "Paused");
        assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn a_fifo_nobody_reads_never_blocks() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut sink = MetricsSink::open(&path).unwrap();
        let timeline = BootTimeline::starting_now();
        for _ in 0..2000 {
            sink.flush(&timeline, InstanceState::Running).unwrap();
        }
        assert!(sink.dropped > 0);
        // A reader then gets whole lines.
        let mut reader = File::open(&path).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = reader.read(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]);
        assert!(first.starts_with('{'), "{first}");
    }
}

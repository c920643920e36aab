//! Where kiln's log goes when it runs as a Firecracker-style VMM:
//! `--log-path`/`--level` at start, or `PUT /logger` before the VM starts.
//!
//! The `log` crate takes one logger for the process's life, so the logger
//! installed at start writes through a sink that `PUT /logger` can point
//! at a file (or an orchestrator's FIFO) later. Writes never block: a FIFO
//! nobody reads loses lines rather than stall a thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use super::model::Logger;

/// The log file, once one is given; stderr until then.
static SINK: Mutex<Option<File>> = Mutex::new(None);

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match crate::sync::lock(&SINK).as_mut() {
            // A full FIFO drops the line: report it written.
            Some(file) => match file.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(buf.len()),
                other => other,
            },
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the process's logger: `level` (default: errors only) to
/// `path` (default: stderr).
pub fn init(level: log::LevelFilter, path: Option<&Path>) -> io::Result<()> {
    if let Some(path) = path {
        *crate::sync::lock(&SINK) = Some(open(path)?);
    }
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .target(env_logger::Target::Pipe(Box::new(Sink)))
        .try_init()
        .map_err(io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

/// `PUT /logger`: a new file and level.
pub fn configure(logger: &Logger) -> io::Result<()> {
    if logger.module.is_some() {
        return Err(io::Error::other(
            "logger module: kiln filters its log by level only; leave module out",
        ));
    }
    if let Some(path) = &logger.log_path {
        *crate::sync::lock(&SINK) = Some(open(path)?);
    }
    if let Some(level) = logger.level {
        log::set_max_level(level.filter());
    }
    Ok(())
}

fn open(path: &Path) -> io::Result<File> {
    super::open_sink(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open the log file {}: {e}", path.display()),
        )
    })
}

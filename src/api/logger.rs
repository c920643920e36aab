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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::model::Logger;

/// The log file, once one is given; stderr until then.
static SINK: Mutex<Option<File>> = Mutex::new(None);
/// What each line shows besides its message (Firecracker's `show_level`,
/// on by default, and `show_log_origin`, off).
static SHOW_LEVEL: AtomicBool = AtomicBool::new(true);
static SHOW_ORIGIN: AtomicBool = AtomicBool::new(false);

/// One line: `[kiln:LEVEL:file:line] message`, the level and origin as
/// the logger's settings say.
fn format(buf: &mut env_logger::fmt::Formatter, record: &log::Record) -> io::Result<()> {
    let mut tag = String::from("kiln");
    if SHOW_LEVEL.load(Ordering::Relaxed) {
        tag.push(':');
        tag.push_str(record.level().as_str());
    }
    if SHOW_ORIGIN.load(Ordering::Relaxed) {
        tag.push_str(&format!(
            ":{}:{}",
            record.file().unwrap_or("?"),
            record.line().unwrap_or(0)
        ));
    }
    writeln!(buf, "[{tag}] {}", record.args())
}

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
        .format(format)
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
    if let Some(show) = logger.show_level {
        SHOW_LEVEL.store(show, Ordering::Relaxed);
    }
    if let Some(show) = logger.show_log_origin {
        SHOW_ORIGIN.store(show, Ordering::Relaxed);
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

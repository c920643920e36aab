//! The kiln contender: each run is a cold `kiln boot` of this same binary
//! with `--metrics`, whose record gives the boot's phases.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::contender::{run_timed, Contender, IdleSpec, RunError, Sample, VmGuest};
use crate::timeline::Phase;

#[derive(Debug, thiserror::Error)]
pub enum KilnBenchError {
    #[error("cannot find the kiln binary to run: {0}")]
    CurrentExe(std::io::Error),
    #[error("cannot read kiln's --metrics record {path}: {reason}")]
    Metrics { path: String, reason: String },
    #[error("the guest never signalled user space (no write of 123 to the boot timer at 0xc0000000); bench a guest whose init does, like the default guest")]
    NoUserSpace,
}

impl From<KilnBenchError> for RunError {
    fn from(e: KilnBenchError) -> Self {
        RunError::Failed {
            program: "kiln".to_string(),
            status: "bad record".to_string(),
            stderr: e.to_string(),
        }
    }
}

/// Boots the guest once per run.
pub struct KilnContender {
    exe: PathBuf,
    guest: VmGuest,
    metrics: PathBuf,
    limit: Duration,
}

impl KilnContender {
    /// `scratch` holds the per-run metrics file.
    pub fn new(guest: &VmGuest, scratch: &Path, limit: Duration) -> Result<Self, KilnBenchError> {
        Ok(Self {
            exe: std::env::current_exe().map_err(KilnBenchError::CurrentExe)?,
            guest: guest.clone(),
            metrics: scratch.join("kiln-metrics.json"),
            limit,
        })
    }

    /// `kiln boot` of the guest with `cmdline` and `memory_mib` (kiln's
    /// default when None).
    fn boot_command(&self, cmdline: &str, memory_mib: Option<u64>) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("boot")
            .arg("--kernel")
            .arg(&self.guest.kernel)
            .arg("--cmdline")
            .arg(cmdline);
        if let Some(initrd) = &self.guest.initrd {
            command.arg("--initrd").arg(initrd);
        }
        if let Some(mib) = memory_mib {
            command.arg("--memory").arg(mib.to_string());
        }
        command
    }
}

impl Contender for KilnContender {
    fn name(&self) -> &str {
        "kiln"
    }

    fn run(&mut self, _round: usize) -> Result<Sample, RunError> {
        // A stale record must not pass for this run's.
        let _ = std::fs::remove_file(&self.metrics);
        let mut command = self.boot_command(&self.guest.cmdline, None);
        command.arg("--metrics").arg(&self.metrics);
        let timed = run_timed(&mut command, self.limit)?.check("kiln")?;
        let text = std::fs::read_to_string(&self.metrics).map_err(|e| KilnBenchError::Metrics {
            path: self.metrics.display().to_string(),
            reason: e.to_string(),
        })?;
        let phases_us = phases_from_record(&text).map_err(|reason| KilnBenchError::Metrics {
            path: self.metrics.display().to_string(),
            reason,
        })?;
        let ready_us = phases_us
            .iter()
            .find(|(name, _)| name == Phase::UserSpace.name())
            .map(|(_, us)| *us)
            .ok_or(KilnBenchError::NoUserSpace)?;
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(Sample {
            ready_us,
            exit_us: us(timed.exit),
            marker_us: timed.ready.map(us),
            phases_us,
        })
    }

    fn idle(&mut self, _index: usize) -> Result<IdleSpec, RunError> {
        Ok(IdleSpec {
            command: self.boot_command(&self.guest.idle_cmdline(), Some(self.guest.idle_mib)),
            guest_kib: Some(self.guest.idle_mib << 10),
            cleanup: None,
        })
    }
}

/// The reached phases of a `--metrics` record after process start, in
/// boot order, as (name, µs since kiln started).
pub fn phases_from_record(text: &str) -> Result<Vec<(String, u64)>, String> {
    #[derive(serde::Deserialize)]
    struct Record {
        phases_us: HashMap<String, Option<u64>>,
    }
    let record: Record = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(Phase::ALL[1..]
        .iter()
        .filter_map(|p| {
            let us = record.phases_us.get(p.name()).copied().flatten()?;
            Some((p.name().to_string(), us))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_come_in_boot_order_without_unreached_ones() {
        let text = r#"{"phases_us":{"guest_exit":900,"process_start":0,"vm_created":204,
            "memory_mapped":286,"kernel_loaded":301,"devices_ready":1173,"first_kvm_run":1292,
            "user_space":null},"exit_code":0}"#;
        let phases = phases_from_record(text).unwrap();
        let names: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm_created",
                "memory_mapped",
                "kernel_loaded",
                "devices_ready",
                "first_kvm_run",
                "guest_exit"
            ]
        );
        assert_eq!(phases[5].1, 900);
        assert!(phases_from_record("{").is_err());
        assert!(phases_from_record(r#"{"phases_us":{"vm_created":"x"}}"#).is_err());
    }
}

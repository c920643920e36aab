//! What `kiln bench boot` found, and its writers: the table on stdout,
//! the JSON and CSV files.

use std::fmt::Write as _;
use std::path::Path;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::contender::Sample;
use super::idle::IdleResult;
use super::memory::MemoryUse;
use super::stats::{nearest_rank, Summary};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}; check that --out is a writable directory")]
    Write { path: String, source: std::io::Error },
}

/// How one contender fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every round ran.
    Ok,
    /// It could not run here at all (the reason says why).
    Skipped(String),
    /// It ran, then a run failed; it was left out of later rounds.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct ContenderResult {
    pub name: String,
    pub status: Status,
    pub samples: Vec<Sample>,
    /// The memory and density rows, or why they failed; None when not run.
    pub idle: Option<Result<IdleSummary, String>>,
}

/// The idle instances of one contender, summed up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleSummary {
    pub instances: usize,
    pub all_ready_us: u64,
    pub starts_per_second: f64,
    /// Medians over the instances, KiB.
    pub overhead_kib: u64,
    pub total_kib: u64,
    /// The mean total, KiB: what the budget is divided by.
    pub mean_total_kib: u64,
    pub memory: Vec<MemoryUse>,
}

impl From<IdleResult> for IdleSummary {
    fn from(r: IdleResult) -> Self {
        Self {
            instances: r.instances,
            all_ready_us: r.all_ready_us,
            starts_per_second: r.starts_per_second(),
            overhead_kib: r.median(|m| m.overhead_kib),
            total_kib: r.median(|m| m.total_kib),
            mean_total_kib: r.memory.iter().map(|m| m.total_kib).sum::<u64>() / r.memory.len().max(1) as u64,
            memory: r.memory,
        }
    }
}

impl IdleSummary {
    /// How many instances fit in `budget_kib`.
    pub fn fit_in(&self, budget_kib: u64) -> u64 {
        budget_kib / self.mean_total_kib.max(1)
    }
}

impl ContenderResult {
    pub fn ready(&self) -> Option<Summary> {
        Summary::of(&self.samples.iter().map(|s| s.ready_us).collect::<Vec<_>>())
    }

    pub fn exit(&self) -> Option<Summary> {
        Summary::of(&self.samples.iter().map(|s| s.exit_us).collect::<Vec<_>>())
    }

    /// Spawn to the marker, over the runs that printed it.
    pub fn marker(&self) -> Option<Summary> {
        Summary::of(
            &self
                .samples
                .iter()
                .filter_map(|s| s.marker_us)
                .collect::<Vec<_>>(),
        )
    }

    /// Each phase's median over the runs that reached it, in boot order.
    pub fn phase_medians(&self) -> Vec<(String, u64)> {
        let mut names: Vec<&str> = Vec::new();
        for sample in &self.samples {
            for (name, _) in &sample.phases_us {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
            .into_iter()
            .map(|name| {
                let mut values: Vec<u64> = self
                    .samples
                    .iter()
                    .filter_map(|s| s.phases_us.iter().find(|(n, _)| n == name).map(|p| p.1))
                    .collect();
                values.sort_unstable();
                (name.to_string(), nearest_rank(&values, 50))
            })
            .collect()
    }
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct Report {
    /// "direct", "nested" or "pvm" (see [`super::Mode`]).
    pub mode: String,
    /// What the mode rests on, for a person.
    pub mode_detail: String,
    pub runs: usize,
    pub kernel: String,
    pub initrd: Option<String>,
    /// The kernel command line the monitors booted with.
    pub cmdline: String,
    /// Guest memory of each idle microVM, MiB.
    pub idle_mib: u64,
    /// What the density row fits instances into, KiB.
    pub memory_budget_kib: Option<u64>,
    pub contenders: Vec<ContenderResult>,
}

impl Report {
    /// The median time to ready of the first contender named `pick`
    /// selects that has samples.
    fn reference(&self, pick: impl Fn(&str) -> bool) -> Option<(&str, u64)> {
        self.contenders
            .iter()
            .filter(|c| pick(&c.name))
            .find_map(|c| Some((c.name.as_str(), c.ready()?.median)))
    }

    /// The container the ratios compare with: the first that ran.
    pub fn container_reference(&self) -> Option<(&str, u64)> {
        self.reference(|n| super::container::RUNTIMES.contains(&n))
    }

    pub fn kiln_reference(&self) -> Option<(&str, u64)> {
        self.reference(|n| n == "kiln")
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kiln bench boot: {} runs per contender, mode {} ({})",
            self.runs, self.mode, self.mode_detail
        );
        let _ = writeln!(
            out,
            "guest: {}{}",
            self.kernel,
            self.initrd
                .as_deref()
                .map(|i| format!(" + {i}"))
                .unwrap_or_default()
        );
        let container = self.container_reference();
        let kiln = self.kiln_reference();
        // The name column fits the longest name ("cloud-hypervisor").
        let w = self
            .contenders
            .iter()
            .map(|c| c.name.len() + 1)
            .fold(12, usize::max);
        let vs = |name: Option<(&str, u64)>| name.map_or("-".to_string(), |(n, _)| format!("vs {n}"));
        let _ = writeln!(
            out,
            "{:<w$}{:>5}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}{:>9}{:>9}",
            "ms to ready",
            "runs",
            "min",
            "median",
            "p90",
            "max",
            "marker",
            "exit median",
            vs(container),
            vs(kiln)
        );
        for c in &self.contenders {
            if let (Some(r), Some(e)) = (c.ready(), c.exit()) {
                let ratio = |to: Option<(&str, u64)>| match to {
                    Some((_, m)) if m > 0 => format!("{:.2}x", r.median as f64 / m as f64),
                    _ => "-".to_string(),
                };
                let _ = writeln!(
                    out,
                    "{:<w$}{:>5}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}{:>9}{:>9}",
                    c.name,
                    r.runs,
                    ms(r.min),
                    ms(r.median),
                    ms(r.p90),
                    ms(r.max),
                    c.marker().map_or("-".to_string(), |m| ms(m.median)),
                    ms(e.median),
                    ratio(container),
                    ratio(kiln)
                );
            }
            match &c.status {
                Status::Ok => {}
                Status::Skipped(why) => {
                    let _ = writeln!(out, "{:<w$} skipped: {why}", c.name);
                }
                Status::Failed(why) => {
                    let _ = writeln!(
                        out,
                        "{:<w$} stopped after {} runs: {why}",
                        c.name,
                        c.samples.len()
                    );
                }
            }
        }
        self.idle_table(&mut out);
        out
    }

    /// The memory and density rows, if any contender had them.
    fn idle_table(&self, out: &mut String) {
        let Some(count) = self
            .contenders
            .iter()
            .find_map(|c| Some(c.idle.as_ref()?.as_ref().ok()?.instances))
        else {
            for c in &self.contenders {
                if let Some(Err(why)) = &c.idle {
                    let _ = writeln!(out, "{:<12} idle: failed: {why}", c.name);
                }
            }
            return;
        };
        let budget = self.memory_budget_kib;
        let _ = writeln!(
            out,
            "\n{count} idle instances at once (guest memory {} MiB), memory per instance:",
            self.idle_mib
        );
        let fit_head = budget.map_or("-".to_string(), |b| format!("fit {} MiB", b >> 10));
        let _ = writeln!(
            out,
            "{:<18}{:>14}{:>11}{:>16}{:>14}",
            "idle", "overhead MiB", "total MiB", "ready/s (all)", fit_head
        );
        let mib = |kib: u64| format!("{:.2}", kib as f64 / 1024.0);
        for c in &self.contenders {
            match &c.idle {
                Some(Ok(i)) => {
                    let _ = writeln!(
                        out,
                        "{:<18}{:>14}{:>11}{:>16.2}{:>14}",
                        c.name,
                        mib(i.overhead_kib),
                        mib(i.total_kib),
                        i.starts_per_second,
                        budget.map_or("-".to_string(), |b| i.fit_in(b).to_string())
                    );
                }
                Some(Err(why)) => {
                    let _ = writeln!(out, "{:<18} failed: {why}", c.name);
                }
                None => {}
            }
        }
    }

    /// The JSON file: everything, every sample included.
    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&JsonReport(self)).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The CSV file: one row per run of each contender, phases as extra
    /// columns (empty where a contender has none).
    pub fn csv(&self) -> String {
        let mut phases: Vec<&str> = Vec::new();
        for c in &self.contenders {
            for s in &c.samples {
                for (name, _) in &s.phases_us {
                    if !phases.contains(&name.as_str()) {
                        phases.push(name);
                    }
                }
            }
        }
        let mut out = String::from("contender,run,ready_us,exit_us,marker_us");
        for p in &phases {
            let _ = write!(out, ",{p}_us");
        }
        out.push('\n');
        for c in &self.contenders {
            for (i, s) in c.samples.iter().enumerate() {
                let marker = s.marker_us.map(|m| m.to_string()).unwrap_or_default();
                let _ = write!(out, "{},{},{},{},{marker}", c.name, i + 1, s.ready_us, s.exit_us);
                for p in &phases {
                    out.push(',');
                    if let Some((_, us)) = s.phases_us.iter().find(|(n, _)| n == p) {
                        let _ = write!(out, "{us}");
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// Writes `boot.json` and `boot.csv` into `dir`; returns their paths.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<String>, ReportError> {
        let mut written = Vec::new();
        for (name, text) in [("boot.json", self.json()), ("boot.csv", self.csv())] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| ReportError::Write {
                path: path.display().to_string(),
                source,
            })?;
            written.push(path.display().to_string());
        }
        Ok(written)
    }
}

/// µs as ms with three decimals.
pub fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

struct JsonReport<'a>(&'a Report);

impl Serialize for JsonReport<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("mode", &r.mode)?;
        map.serialize_entry("mode_detail", &r.mode_detail)?;
        map.serialize_entry("runs", &r.runs)?;
        map.serialize_entry("kernel", &r.kernel)?;
        map.serialize_entry("initrd", &r.initrd)?;
        map.serialize_entry("cmdline", &r.cmdline)?;
        map.serialize_entry("idle_memory_mib", &r.idle_mib)?;
        map.serialize_entry("memory_budget_kib", &r.memory_budget_kib)?;
        map.serialize_entry("container_reference", &r.container_reference().map(|c| c.0))?;
        let contenders: Vec<JsonContender> = r.contenders.iter().map(JsonContender).collect();
        map.serialize_entry("contenders", &contenders)?;
        map.end()
    }
}

struct JsonContender<'a>(&'a ContenderResult);

impl Serialize for JsonContender<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &c.name)?;
        let (status, reason) = match &c.status {
            Status::Ok => ("ok", None),
            Status::Skipped(why) => ("skipped", Some(why)),
            Status::Failed(why) => ("failed", Some(why)),
        };
        map.serialize_entry("status", status)?;
        map.serialize_entry("reason", &reason)?;
        map.serialize_entry("ready_us", &c.ready())?;
        map.serialize_entry("exit_us", &c.exit())?;
        map.serialize_entry("marker_us", &c.marker())?;
        map.serialize_entry("phase_medians_us", &PhaseMap(&c.phase_medians()))?;
        let samples: Vec<JsonSample> = c.samples.iter().map(JsonSample).collect();
        map.serialize_entry("samples", &samples)?;
        match &c.idle {
            Some(Ok(idle)) => map.serialize_entry("idle", idle)?,
            Some(Err(why)) => map.serialize_entry("idle_error", why)?,
            None => {}
        }
        map.end()
    }
}

struct JsonSample<'a>(&'a Sample);

impl Serialize for JsonSample<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("ready_us", &self.0.ready_us)?;
        map.serialize_entry("exit_us", &self.0.exit_us)?;
        map.serialize_entry("marker_us", &self.0.marker_us)?;
        map.serialize_entry("phases_us", &PhaseMap(&self.0.phases_us))?;
        map.end()
    }
}

/// Phases as a JSON object in boot order.
struct PhaseMap<'a>(&'a [(String, u64)]);

impl Serialize for PhaseMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, us) in self.0 {
            map.serialize_entry(name, us)?;
        }
        map.end()
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
pub(crate) mod tests;

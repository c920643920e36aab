//! `kiln bench`: kiln measured against containers on the same machine.
//!
//! `kiln bench boot` starts each contender N times, cold, alternating
//! them round by round (each round starts with the next contender) so
//! drift (thermal, page cache, neighbours) hits all alike, and reports how
//! long each took to get its workload running and to exit; then starts N
//! idle instances of each at once for the memory and density rows: a
//! table on stdout, `boot.json`, `boot.csv` and `boot.png` in `--out`.

pub mod container;
pub mod contender;
pub mod idle;
pub mod kiln;
pub mod memory;
pub mod peer;
pub mod plot;
pub mod report;
pub mod stats;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use self::container::{Bundles, RuntimeContender, RUNTIMES};
use self::contender::{one_line, Contender, VmGuest};
use self::kiln::KilnContender;
use self::peer::{PeerContender, PeerKind};
use self::report::{ContenderResult, IdleSummary, Report, Status};
use crate::vstate::kvm::HostKind;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown contender {0:?}; choose from kiln, runc, crun, firecracker, cloud-hypervisor, qemu (comma-separated)")]
    UnknownContender(String),
    #[error("--runs must be between 1 and 100000")]
    Runs,
    #[error("--density must be between 0 and 1000")]
    Density,
    #[error("--idle-memory must be between 16 and 65536 MiB")]
    IdleMemory,
    #[error("--out {path}: {source}; give a directory kiln can create or write")]
    OutDir { path: String, source: std::io::Error },
    #[error("no contender could run (see the reasons above)")]
    NothingRan,
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

impl BenchError {
    /// kiln's exit status for this error: 2 for bad flags, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::UnknownContender(_)
            | BenchError::Runs
            | BenchError::Density
            | BenchError::IdleMemory => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot time: N cold starts of kiln, of OCI containers (runc, crun)
    /// running the same busybox readiness command and of other monitors
    /// booting the same guest, side by side; then memory and density.
    Boot(BootBenchArgs),
}

#[derive(Debug, Args)]
pub struct BootBenchArgs {
    /// Measured runs per contender (after one warm-up run each).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub runs: usize,
    /// Which contenders run, comma-separated: kiln, runc, crun,
    /// firecracker, cloud-hypervisor, qemu. Programs are found on PATH
    /// unless their flag gives a path; one that is missing or cannot run
    /// here is reported with the reason and skipped.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "kiln,runc,crun"
    )]
    pub contenders: Vec<String>,
    /// Firecracker binary to bench beside kiln (adds it to the contenders).
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
    /// Cloud Hypervisor binary to bench beside kiln (adds it).
    #[arg(long, value_name = "PATH")]
    pub cloud_hypervisor: Option<PathBuf>,
    /// qemu-system-x86_64 to bench beside kiln with `-M microvm` (adds it).
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// Kernel command line every monitor boots the guest with (the
    /// default guest's).
    #[arg(long, value_name = "ARGS", default_value_t = crate::config::default_guest_cmdline())]
    pub cmdline: String,
    /// Idle instances of each contender started at once for the memory
    /// and density rows (0 leaves both out).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub density: usize,
    /// Guest memory of each idle microVM, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub idle_memory: u64,
    /// Memory budget the density row fits instances into, MiB (default:
    /// the host's MemAvailable when the bench starts).
    #[arg(long, value_name = "MIB")]
    pub memory_budget: Option<u64>,
    /// Guest kernel kiln boots (default: the default guest, built on first
    /// use; `kiln guest` prints its files).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd for --kernel (default: the default guest's with no --kernel).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Directory for boot.json, boot.csv and boot.png (created if missing).
    #[arg(long, value_name = "DIR", default_value = "kiln-bench")]
    pub out: PathBuf,
    /// Seconds one run may take before it is killed and its contender
    /// stopped.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

/// Where the KVM kiln uses comes from; nested times do not compare with
/// hardware ones, so every report says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hardware KVM on a machine that is not itself a VM.
    Direct,
    /// Hardware KVM (VT-x/AMD-V) inside a VM, e.g. tools/nested-host.
    Nested,
    /// PVM's software virtualization: only tiny guests boot.
    Pvm,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Nested => "nested",
            Mode::Pvm => "pvm",
        }
    }

    /// The mode for `host` and this CPU's flags (from /proc/cpuinfo),
    /// with a few words on why.
    pub fn detect_from(host: HostKind, cpuinfo: &str) -> (Self, String) {
        let in_vm = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
        match (host, in_vm) {
            (HostKind::Pvm, _) => (
                Mode::Pvm,
                "kvm_pvm, software virtualization: Linux guests need tools/nested-host".into(),
            ),
            (_, true) => (
                Mode::Nested,
                "hardware KVM inside a virtual machine: compare ratios, not absolute times".into(),
            ),
            (_, false) => (Mode::Direct, "hardware KVM on bare metal".into()),
        }
    }

    pub fn detect() -> (Self, String) {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self::detect_from(HostKind::detect(), &cpuinfo)
    }
}

/// Runs `kiln bench ...`; prints the results, or one line on failure.
pub fn main(command: BenchCommand) -> ExitCode {
    let BenchCommand::Boot(args) = command;
    match boot(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The contender names asked for (and the peers given by path), checked,
/// in order, without repeats.
pub fn parse_contenders(list: &[String], peers_given: &[&str]) -> Result<Vec<String>, BenchError> {
    let mut names: Vec<String> = Vec::new();
    let listed = list.iter().map(|n| n.trim()).filter(|n| !n.is_empty());
    for name in listed.chain(peers_given.iter().copied()) {
        let known = name == "kiln" || RUNTIMES.contains(&name) || PeerKind::from_name(name).is_some();
        if !known {
            return Err(BenchError::UnknownContender(name.to_string()));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(BenchError::UnknownContender(String::new()));
    }
    Ok(names)
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One contender's place in the benchmark: what runs it (None once it is
/// skipped or stopped) and what it gave.
struct Slot {
    contender: Option<Box<dyn Contender>>,
    result: ContenderResult,
}

impl Slot {
    fn new(name: &str, contender: Result<Box<dyn Contender>, String>) -> Self {
        let (contender, status) = match contender {
            Ok(c) => (Some(c), Status::Ok),
            Err(why) => (None, Status::Skipped(why)),
        };
        Self {
            contender,
            result: ContenderResult {
                name: name.to_string(),
                status,
                samples: Vec::new(),
                idle: None,
            },
        }
    }
}

fn boot(args: &BootBenchArgs) -> Result<(), BenchError> {
    let peer_path = |kind: PeerKind| match kind {
        PeerKind::Firecracker => args.firecracker.as_deref(),
        PeerKind::CloudHypervisor => args.cloud_hypervisor.as_deref(),
        PeerKind::Qemu => args.qemu.as_deref(),
    };
    let given: Vec<&str> = PeerKind::ALL
        .into_iter()
        .filter(|k| peer_path(*k).is_some())
        .map(PeerKind::name)
        .collect();
    let names = parse_contenders(&args.contenders, &given)?;
    if !(1..=100_000).contains(&args.runs) {
        return Err(BenchError::Runs);
    }
    if args.density > 1000 {
        return Err(BenchError::Density);
    }
    if !(16..=65536).contains(&args.idle_memory) {
        return Err(BenchError::IdleMemory);
    }
    let out_err = |source| BenchError::OutDir {
        path: args.out.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&args.out).map_err(out_err)?;
    let scratch = Scratch(std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(out_err)?;
    let limit = Duration::from_secs(args.timeout.max(1));
    let (mode, mode_detail) = Mode::detect();

    let (kernel, initrd) = guest_files(args, mode);
    let guest = match &kernel {
        Ok(kernel) => Ok(VmGuest {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: args.cmdline.clone(),
            idle_mib: args.idle_memory,
        }),
        Err(why) => Err(why.clone()),
    };
    let mut bundles: Option<Result<Bundles, String>> = None;
    let mut slots: Vec<Slot> = Vec::new();
    for name in &names {
        let contender: Result<Box<dyn Contender>, String> = if let Some(kind) = PeerKind::from_name(name) {
            match &guest {
                Ok(g) => PeerContender::new(kind, peer_path(kind), g, &scratch.0, limit)
                    .map(|c| Box::new(c) as Box<dyn Contender>)
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            }
        } else if name == "kiln" {
            match &guest {
                Ok(g) => KilnContender::new(g, &scratch.0, limit)
                    .map(|c| Box::new(c) as Box<dyn Contender>)
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            }
        } else {
            let bundles =
                bundles.get_or_insert_with(|| Bundles::create(&scratch.0).map_err(|e| e.to_string()));
            match bundles {
                Ok(b) => RuntimeContender::new(name, b, limit)
                    .map(|c| Box::new(c) as Box<dyn Contender>)
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            }
        };
        slots.push(Slot::new(name, contender));
    }

    run_rounds(&mut slots, args.runs);
    if args.density > 0 {
        run_idle_rows(&mut slots, args.density, limit);
    }
    let memory_budget_kib = args
        .memory_budget
        .map(|m| m << 10)
        .or_else(|| crate::vstate::memory::proc_kib("/proc/meminfo", "MemAvailable"));

    let report = Report {
        mode: mode.name().to_string(),
        mode_detail,
        runs: args.runs,
        kernel: match &kernel {
            Ok(k) => k.display().to_string(),
            Err(_) => "(none)".to_string(),
        },
        initrd: initrd.map(|i| i.display().to_string()),
        cmdline: args.cmdline.clone(),
        idle_mib: args.idle_memory,
        memory_budget_kib,
        contenders: slots.into_iter().map(|s| s.result).collect(),
    };
    print!("{}", report.table());
    let mut written = report.write_files(&args.out)?;
    let png = args.out.join("boot.png");
    plot::write_png(&report, &png)?;
    written.push(png.display().to_string());
    eprintln!("kiln: bench results in {}", written.join(", "));
    if report.contenders.iter().all(|c| c.samples.is_empty()) {
        return Err(BenchError::NothingRan);
    }
    Ok(())
}

/// The kernel and initrd kiln boots: the flags', else the default
/// guest's (not built where it could not boot).
fn guest_files(args: &BootBenchArgs, mode: Mode) -> (Result<PathBuf, String>, Option<PathBuf>) {
    if let Some(kernel) = &args.kernel {
        return (Ok(kernel.clone()), args.initrd.clone());
    }
    if mode == Mode::Pvm {
        let why = "the default guest cannot boot on this PVM host; run `kiln bench boot` inside tools/nested-host (tools/bench-boot-compare does), or pass --kernel with a tiny guest";
        return (Err(why.to_string()), args.initrd.clone());
    }
    match crate::default_guest::ensure() {
        Ok(guest) => (
            Ok(guest.kernel),
            Some(args.initrd.clone().unwrap_or(guest.initrd)),
        ),
        Err(e) => (Err(e.to_string()), args.initrd.clone()),
    }
}

/// One warm-up run per contender (a failure skips it, with the reason),
/// then `runs` rounds, each starting with the next contender in turn.
fn run_rounds(slots: &mut [Slot], runs: usize) {
    let bar = progress_bar(slots, runs);
    for slot in slots.iter_mut() {
        let Some(contender) = slot.contender.as_mut() else {
            continue;
        };
        bar.set_message(format!("warm-up: {}", slot.result.name));
        if let Err(e) = contender.run(0) {
            slot.result.status =
                Status::Skipped(format!("its warm-up run failed: {}", one_line(&e.to_string())));
            slot.contender = None;
        }
    }
    let live = slots.iter().filter(|s| s.contender.is_some()).count() as u64;
    bar.set_length(live * runs as u64);
    let count = slots.len();
    for round in 1..=runs {
        for k in 0..count {
            let slot = &mut slots[(round - 1 + k) % count];
            let Some(contender) = slot.contender.as_mut() else {
                continue;
            };
            bar.set_message(format!("round {round}/{runs}: {}", slot.result.name));
            match contender.run(round) {
                Ok(sample) => slot.result.samples.push(sample),
                Err(e) => {
                    let why = format!("run {round} failed: {}", one_line(&e.to_string()));
                    slot.result.status = Status::Failed(why);
                    slot.contender = None;
                    bar.inc((runs - round) as u64);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
}

/// The memory and density rows: `count` idle instances of each contender
/// still running, started at once; a failure is that contender's row.
fn run_idle_rows(slots: &mut [Slot], count: usize, limit: Duration) {
    for slot in slots.iter_mut() {
        let Some(contender) = slot.contender.as_mut() else {
            continue;
        };
        eprintln!("kiln: bench: {count} idle {} at once", slot.result.name);
        slot.result.idle = Some(
            idle::run_idle(contender.as_mut(), count, limit)
                .map(IdleSummary::from)
                .map_err(|e| one_line(&e.to_string())),
        );
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(slots: &[Slot], runs: usize) -> ProgressBar {
    let live = slots.iter().filter(|s| s.contender.is_some()).count() as u64;
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(live * runs as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} runs {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contenders_are_checked_and_deduplicated() {
        let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            parse_contenders(&list("kiln,runc,kiln"), &[]).unwrap(),
            ["kiln", "runc"]
        );
        assert_eq!(parse_contenders(&list(" crun "), &[]).unwrap(), ["crun"]);
        // Peers given by path join the list once.
        assert_eq!(
            parse_contenders(&list("kiln,qemu"), &["firecracker", "qemu"]).unwrap(),
            ["kiln", "qemu", "firecracker"]
        );
        let e = parse_contenders(&list("kiln,docker"), &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("\"docker\"") && e.to_string().contains("choose from"));
        assert!(parse_contenders(&list(","), &[]).is_err());
    }

    #[test]
    fn mode_follows_the_kvm_module_and_the_hypervisor_flag() {
        let vm = "processor\t: 0\nflags\t\t: fpu vme svm hypervisor lahf_lm\n";
        let metal = "flags\t\t: fpu vme vmx lahf_lm\n";
        assert_eq!(Mode::detect_from(HostKind::Pvm, vm).0, Mode::Pvm);
        assert_eq!(Mode::detect_from(HostKind::Hardware, vm).0, Mode::Nested);
        assert_eq!(Mode::detect_from(HostKind::Hardware, metal).0, Mode::Direct);
        assert_eq!(Mode::detect_from(HostKind::Unknown, "").0, Mode::Direct);
    }

    /// A contender that fails on chosen rounds and records the order.
    struct Scripted {
        name: &'static str,
        fail_on: Option<usize>,
        log: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    }

    impl Contender for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        fn idle(&mut self, _index: usize) -> Result<contender::IdleSpec, contender::RunError> {
            Err(contender::RunError::NoMarker {
                program: self.name.into(),
                stderr: String::new(),
            })
        }
        fn run(&mut self, round: usize) -> Result<contender::Sample, contender::RunError> {
            self.log.borrow_mut().push(format!("{}{round}", self.name));
            if self.fail_on == Some(round) {
                return Err(contender::RunError::NoMarker {
                    program: self.name.into(),
                    stderr: "boom\nsecond line".into(),
                });
            }
            Ok(contender::Sample {
                ready_us: round as u64,
                exit_us: round as u64 + 1,
                marker_us: None,
                phases_us: Vec::new(),
            })
        }
    }

    #[test]
    fn rounds_alternate_and_failures_skip_or_stop_a_contender() {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let make = |name, fail_on| -> Result<Box<dyn Contender>, String> {
            Ok(Box::new(Scripted {
                name,
                fail_on,
                log: log.clone(),
            }))
        };
        let mut slots = vec![
            Slot::new("a", make("a", None)),
            Slot::new("b", make("b", Some(2))),
            Slot::new("c", make("c", Some(0))),
            Slot::new("d", Err("not on PATH".into())),
        ];
        run_rounds(&mut slots, 3);
        // Warm-up in order, then each round starts one further along.
        assert_eq!(log.borrow().join(" "), "a0 b0 c0 a1 b1 b2 a2 a3");
        assert_eq!(slots[0].result.samples.len(), 3);
        assert_eq!(slots[0].result.status, Status::Ok);
        assert_eq!(slots[1].result.samples.len(), 1);
        assert!(
            matches!(&slots[1].result.status, Status::Failed(w) if w.starts_with("run 2 failed") && w.contains("boom / second line")),
            "{:?}",
            slots[1].result.status
        );
        assert!(matches!(&slots[2].result.status, Status::Skipped(w) if w.contains("warm-up")));
        assert_eq!(slots[3].result.status, Status::Skipped("not on PATH".into()));
    }
}

//! The `kiln` command: turns flags into a `VmConfig`, runs it, and maps the
//! outcome to an exit status (0 guest stopped cleanly, 1 host/setup error,
//! 2 usage error, 3 guest panic, 4 triple fault, 5 KVM error, 128+N signal).

mod api_cli;
mod exec_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use kiln::config::{self, VmConfig};
use kiln::jail::JailSide;
use kiln::metrics::{MetricsFile, MetricsRecord, RunEnd};
use kiln::timeline::BootTimeline;
use kiln::vmm::{self, BootHooks, ConsoleIo};
use kiln::vstate::kvm::{HostKind, PVM_HINT};

#[derive(Parser)]
#[command(
    name = "kiln",
    about = "A KVM microVM monitor",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    subcommand_required = false
)]
struct Cli {
    /// Started as Firecracker is (for orchestrators): see README, "The
    /// Firecracker-compatible API".
    #[command(flatten)]
    api: api_cli::ApiArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel with its serial console on this terminal.
    ///
    /// kiln exits when the guest powers off or reboots (status 0), or with a
    /// non-zero status and one line on stderr if the guest crashes.
    Boot(BootArgs),
    /// Run a command in a fresh sandbox microVM and exit with its status.
    ///
    /// stdout and stderr are streamed as produced; the status is CMD's
    /// (128+N if signal N killed it; 127 not found, 126 not executable;
    /// 124 on --timeout). kiln's own errors: 1 (host/setup), 2 (usage).
    Exec(exec_cli::ExecArgs),
    /// Build the default guest if needed and print its files as KEY=PATH
    /// lines (KERNEL=, BZIMAGE=, INITRD=, SANDBOX_INITRD= for kiln exec,
    /// AGENT= the static guest agent, for a sandbox initramfs of one's own),
    /// so they can be prepared ahead
    /// (an image build step, a cache) and copied to another host.
    Guest,
    /// Benchmarks: kiln against containers on this machine (see README).
    #[command(subcommand)]
    Bench(kiln::bench::BenchCommand),
}

#[derive(Args)]
struct BootArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    /// Without it kiln boots its default guest (a 6.1 kernel and busybox
    /// initramfs), building it on first use: that takes several minutes, once.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk to load for the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line; replaces the default: "console=ttyS0 reboot=k
    /// panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd", plus "quiet
    /// 8250.nr_uarts=1" for the default guest.
    #[arg(long, value_name = "ARGS")]
    cmdline: Option<String>,
    /// Number of vCPUs (1 to 254, and no more than KVM allows).
    #[arg(long, value_name = "N", default_value_t = u64::from(config::DEFAULT_CPUS))]
    cpus: u64,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = config::DEFAULT_MEMORY_MIB)]
    memory: u64,
    /// A virtio-blk disk (repeatable, up to 19 in all):
    /// path=FILE[,root][,readonly][,id=ID][,cache=unsafe|writeback|none][,shared=on].
    /// `root` makes it /dev/vda and adds `root=/dev/vda rw` (ro if readonly)
    /// unless --cmdline sets root=; `readonly` never writes the file; `id` is
    /// what the guest reads as its serial (1 to 20 letters, digits, '_' or
    /// '-', unique among the VM's devices); cache=none
    /// bypasses the host page cache (O_DIRECT), cache=unsafe ignores flushes;
    /// `shared=on` lets other processes open the image too (otherwise a
    /// writable image is locked).
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<config::DiskConfig>,
    /// A virtio-net card on a host tap (repeatable; eth0, eth1, ... in the
    /// order given): tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,id=ID]. The tap is
    /// opened if it exists, created if kiln has CAP_NET_ADMIN; wire it into
    /// a bridge or routing yourself. Without mac= the address is derived
    /// from the tap name (02:..., the same every run).
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<config::NetConfig>,
    /// A virtio-vsock device: cid=N,socket=PATH (N 3 or more). kiln listens
    /// on PATH (an existing file is refused unless it is a stale socket;
    /// removed on exit): a host process connects and writes
    /// `CONNECT <port>\n` to reach the guest's listener on <port>. A guest
    /// connection to host port P reaches a Unix socket listening at PATH_P.
    #[arg(long = "vsock", value_name = "SPEC")]
    vsock: Option<config::VsockConfig>,
    /// Describe the machine with an MP table only, no ACPI tables.
    #[arg(long)]
    no_acpi: bool,
    /// Back guest memory with 4 KiB pages only. By default it is 2 MiB
    /// aligned and asks for transparent huge pages (except on PVM hosts): a
    /// faster boot, while a guest's resident memory grows in 2 MiB steps.
    #[arg(long)]
    no_huge_pages: bool,
    /// Boot a Linux kernel even where KVM is known not to run one (PVM hosts).
    #[arg(long)]
    force: bool,
    /// Run the VM in a jail (kiln must be root):
    /// DIR[,uid=U][,gid=G][,netns=PATH][,cgroup=KEY=VALUE]... kiln creates
    /// DIR with only what the VM uses, enters it in new namespaces as U:G
    /// (default 65534), applies the cgroup limits (memory.max, cpu.max,
    /// pids.max) and removes DIR and the cgroups when the VM ends.
    #[arg(long, value_name = "SPEC")]
    jail: Option<config::jail::JailConfig>,
    /// Run without the seccomp filters (for debugging kiln only). By
    /// default each kiln thread may make only the system calls it needs
    /// once the guest runs; any other call stops kiln with status 159.
    #[arg(long)]
    no_seccomp: bool,
    /// Print one line on stderr when the guest reaches user space (writes
    /// 123 to the boot-timer device at 0xc0000000), with the time of each
    /// earlier phase in ms since kiln started.
    #[arg(long)]
    boot_timer: bool,
    /// Write one JSON record to PATH when kiln exits: each boot phase in µs
    /// since kiln started (null if not reached), CPU time, peak RSS and how
    /// the guest stopped.
    #[arg(long, value_name = "PATH")]
    metrics: Option<PathBuf>,
}

impl BootArgs {
    fn into_config(self, kernel: PathBuf) -> Result<VmConfig, config::ConfigError> {
        let mut c = VmConfig::new(kernel);
        c.initrd = self.initrd;
        c.cmdline = self
            .cmdline
            .unwrap_or_else(|| config::DEFAULT_CMDLINE.to_string());
        c.cpus = config::validate_cpus(self.cpus)?;
        c.memory_mib = self.memory;
        c.acpi = !self.no_acpi;
        c.huge_pages = !self.no_huge_pages;
        c.force = self.force;
        // The root disk goes first so the guest sees it as /dev/vda.
        c.disks = self.disks;
        c.disks.sort_by_key(|d| !d.root);
        c.nets = self.nets;
        c.vsock = self.vsock;
        if self.no_seccomp {
            c.seccomp = kiln::seccomp::SeccompMode::Off;
        }
        c.validate()?;
        Ok(c)
    }
}

/// `--boot-timer`: one line on stderr when the guest reaches user space.
fn boot_timer_report(on: bool) -> Option<vmm::UserSpaceReport> {
    on.then(|| {
        Box::new(|t: &BootTimeline| {
            if let Some(line) = t.user_space_report() {
                eprintln!("kiln: {line}");
            }
        }) as vmm::UserSpaceReport
    })
}

/// kiln's own failure: one line on stderr and the exit status.
fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("kiln: {message}");
    ExitCode::from(code)
}

/// Finds or builds the default guest; fills in its initrd unless given.
/// Errors are host/setup errors (exit status 1).
fn default_guest(args: &mut BootArgs) -> Result<PathBuf, String> {
    // Refuse before a multi-minute build whose result could not boot here.
    if !HostKind::detect().boots_linux() && !args.force {
        return Err(PVM_HINT.to_string());
    }
    let guest = kiln::default_guest::ensure().map_err(|e| e.to_string())?;
    args.initrd.get_or_insert(guest.initrd);
    args.cmdline.get_or_insert_with(config::default_guest_cmdline);
    Ok(guest.kernel)
}

fn main() -> ExitCode {
    // "Process start" for --boot-timer and --metrics: before anything else
    // kiln does (the dynamic loader and Rust's runtime set-up come before).
    let timeline = Arc::new(BootTimeline::starting_now());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap explains at length; kiln's contract is one line.
            let rendered = e.render().to_string();
            let summary: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let summary = summary.join(" ");
            let summary = summary.strip_prefix("error: ").unwrap_or(&summary);
            return fail(2, format_args!("{summary} (see kiln --help)"));
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let command = match cli.command {
        Some(c) => c,
        None if cli.api.given() => return api_cli::run(cli.api, &timeline),
        None => {
            return fail(
                2,
                "give a command (boot, exec, guest, bench) or --api-sock/--config-file (see kiln --help)",
            )
        }
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("KILN_LOG", "error")).init();
    match command {
        Command::Guest => match kiln::default_guest::ensure() {
            Ok(guest) => {
                println!("KERNEL={}", guest.kernel.display());
                println!("BZIMAGE={}", guest.bzimage.display());
                println!("INITRD={}", guest.initrd.display());
                println!("SANDBOX_INITRD={}", guest.sandbox_initrd.display());
                println!("AGENT={}", guest.agent.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Command::Exec(args) => exec_cli::exec(args),
        Command::Bench(command) => kiln::bench::main(command),
        Command::Boot(args) => {
            // A bad --metrics path fails before a guest build or boot.
            let metrics = match args.metrics.as_deref().map(MetricsFile::open).transpose() {
                Ok(m) => m,
                Err(e) => return fail(1, e),
            };
            let mut metrics = metrics;
            let (end, code) = boot(args, &timeline, &mut metrics);
            // Outside a jail whose VMM wrote its own record, nothing more.
            let metrics = metrics.filter(|m| end != RunEnd::Jailed || m.is_empty());
            if let Some(file) = metrics {
                if let Err(e) = file.write(&MetricsRecord::now(
                    &timeline,
                    &end,
                    i32::from(code),
                    file.peak_rss_kib(),
                )) {
                    // The run's own failure, if any, says more.
                    return fail(if code == 0 { 1 } else { code }, e);
                }
            }
            ExitCode::from(code)
        }
    }
}

/// `kiln boot`: runs the guest, prints a line if it or kiln failed, and
/// returns how the run ended with kiln's exit status.
fn boot(mut args: BootArgs, timeline: &Arc<BootTimeline>, metrics: &mut Option<MetricsFile>) -> (RunEnd, u8) {
    let error = |code: u8, message: &dyn std::fmt::Display| {
        eprintln!("kiln: {message}");
        (RunEnd::Error, code)
    };
    let boot_timer = args.boot_timer;
    let jail = args.jail.take();
    let kernel = match args.kernel.take() {
        Some(k) => k,
        None => match default_guest(&mut args) {
            Ok(k) => k,
            Err(e) => return error(1, &e),
        },
    };
    let mut config = match args.into_config(kernel) {
        Ok(c) => c,
        Err(e) => return error(2, &e),
    };
    if let Some(jail) = &jail {
        match kiln::jail::enter(jail, &mut config) {
            Ok(JailSide::Outside(code)) => return (RunEnd::Jailed, code),
            Ok(JailSide::Inside(entry)) => {
                // The jail has no /proc: getrusage gives the peak RSS.
                let keep = metrics.as_mut().map_or(Vec::new(), |m| {
                    m.use_getrusage();
                    m.fds()
                });
                if let Err(e) = entry.finish(&keep) {
                    return error(1, &e);
                }
            }
            Err(e) => return error(1, &e),
        }
    }
    let io = match ConsoleIo::stdio() {
        Ok(io) => io,
        Err(e) => return error(1, &format!("cannot use stdout for the guest console: {e}")),
    };
    let hooks = BootHooks {
        timeline: timeline.clone(),
        on_user_space: boot_timer_report(boot_timer),
        ..BootHooks::default()
    };
    match vmm::run_vm_with(&config, io, hooks) {
        Ok(reason) => {
            let code = reason.exit_code().clamp(0, 255) as u8;
            if let Some(m) = reason.message() {
                eprintln!("kiln: {m}");
            }
            (RunEnd::Guest(reason), code)
        }
        Err(e) => error(e.exit_code() as u8, &e),
    }
}

//! `kiln --api-sock PATH [--config-file FILE] ...`: kiln started as
//! Firecracker is, for orchestrators (Kata Containers, firecracker-
//! containerd, the Firecracker SDKs) that drive it over Firecracker's API
//! or config file.
//!
//! The main thread is the VMM thread: before `InstanceStart` it answers
//! the API from [`Preboot`]; then it runs the VM, whose event loop answers
//! through [`ApiRuntime`]. The API thread only moves bytes.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Args;

use crate::fail;

use kiln::api::action::{self, ApiInbox, ApiRequest, ApiSender};
use kiln::api::http::Response;
use kiln::api::metrics::MetricsSink;
use kiln::api::model::LogLevel;
use kiln::api::preboot::Preboot;
use kiln::api::resources::VmResources;
use kiln::api::routes::{self, Routed, FIRECRACKER_COMPAT};
use kiln::api::runtime::{ApiRuntime, Identity};
use kiln::seccomp::{self, SeccompMode, ThreadKind};
use kiln::timeline::BootTimeline;
use kiln::vmm::{self, BootHooks, ConsoleIo, RunningVm};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Args, Default)]
pub struct ApiArgs {
    /// Serve Firecracker's REST API on this Unix socket (it must not exist;
    /// removed on exit). The VM boots on `PUT /actions InstanceStart`, or at
    /// once with --config-file.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// The instance id `GET /` reports.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    id: String,
    /// Boot at once from a Firecracker JSON config file (boot-source,
    /// drives, machine-config, network-interfaces, vsock, logger, metrics).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// No API socket: boot from --config-file alone.
    #[arg(long)]
    no_api: bool,
    /// Print one line on stderr when the guest reaches user space.
    #[arg(long)]
    boot_timer: bool,
    /// Run without the seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Log level: Error (default), Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
    /// Write the log to this file or FIFO (it must exist) instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Print the version (`Firecracker vX.Y.Z (kiln ...)` when kiln is run
    /// through a link named `firecracker`) and exit.
    #[arg(long, short = 'V')]
    version: bool,
}

impl ApiArgs {
    /// Whether any of these flags was given (else kiln wants a subcommand).
    pub fn given(&self) -> bool {
        self.api_sock.is_some() || self.config_file.is_some() || self.no_api || self.version
    }
}

/// `--version`: Kata's runtime reads the second word as a semver and
/// requires a Firecracker of at least 0.21.1, so kiln run as
/// `firecracker` names the Firecracker release it is compatible with.
pub fn version_line(argv0: &str) -> String {
    let kiln = env!("CARGO_PKG_VERSION");
    if Path::new(argv0).file_name().is_some_and(|n| n == "firecracker") {
        format!("Firecracker v{FIRECRACKER_COMPAT} (kiln {kiln})")
    } else {
        format!("kiln {kiln} (Firecracker API v{FIRECRACKER_COMPAT})")
    }
}

pub fn run(args: ApiArgs, timeline: &Arc<BootTimeline>) -> ExitCode {
    if args.version {
        println!("{}", version_line(&std::env::args().next().unwrap_or_default()));
        return ExitCode::SUCCESS;
    }
    let level = match args.level.as_deref().map(parse_level).transpose() {
        Ok(l) => l.unwrap_or(log::LevelFilter::Error),
        Err(e) => return fail(2, e),
    };
    if let Err(e) = kiln::api::logger::init(level, args.log_path.as_deref()) {
        return fail(1, e);
    }
    let start_now = args.config_file.is_some();
    let resources = match &args.config_file {
        Some(path) => match read_config_file(path) {
            Ok(r) => r,
            Err(e) => return fail(1, e),
        },
        None if args.no_api => {
            return fail(
                2,
                "--no-api needs --config-file (there is nothing else to boot from)",
            )
        }
        None => (VmResources::default(), None, None),
    };
    let (resources, logger, metrics) = resources;
    if let Some(l) = &logger {
        if let Err(e) = kiln::api::logger::configure(l) {
            return fail(1, e);
        }
    }
    let mut preboot = Preboot::new(resources, args.id.clone(), timeline.clone());
    if let Some(m) = &metrics {
        match m.check().map_err(|e| e.to_string()).and_then(|()| {
            MetricsSink::open(&m.metrics_path)
                .map_err(|e| format!("cannot open {}: {e}", m.metrics_path.display()))
        }) {
            Ok(sink) => preboot.metrics = Some(sink),
            Err(e) => return fail(1, e),
        }
    }
    let (sender, inbox) = match action::channel() {
        Ok(pair) => pair,
        Err(e) => return fail(1, format!("cannot set up the API's channel: {e}")),
    };
    let seccomp = if args.no_seccomp {
        SeccompMode::Off
    } else {
        SeccompMode::On
    };
    let api = match (&args.api_sock, args.no_api) {
        (Some(path), false) => match start_api_thread(path, sender, seccomp) {
            Ok(thread) => Some((thread, SocketFile(path.clone()))),
            Err(e) => return fail(1, e),
        },
        _ => None,
    };
    let code = vmm_thread(preboot, inbox, start_now, seccomp, args.boot_timer, timeline);
    if let Some((thread, socket)) = api {
        thread.stop();
        drop(socket);
    }
    code
}

/// Removes the API socket when kiln ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn parse_level(text: &str) -> Result<log::LevelFilter, String> {
    serde_json::from_value::<LogLevel>(serde_json::Value::String(text.into()))
        .map(LogLevel::filter)
        .map_err(|e| format!("--level: {e}"))
}

type ConfigParts = (
    VmResources,
    Option<kiln::api::model::Logger>,
    Option<kiln::api::model::Metrics>,
);

fn read_config_file(path: &Path) -> Result<ConfigParts, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = VmResources::from_config_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((file.resources, file.logger, file.metrics))
}

/// The API thread, for the end of kiln: `stop` asks it to write the
/// replies it holds and return.
struct ApiThread {
    exit: EventFd,
    handle: std::thread::JoinHandle<()>,
}

impl ApiThread {
    /// Lets the thread flush what it holds (bounded: it never waits on a
    /// client), so a reply the VMM just made is not cut off by the exit.
    fn stop(self) {
        let _ = self.exit.write(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while !self.handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn start_api_thread(path: &Path, sender: ApiSender, seccomp: SeccompMode) -> Result<ApiThread, String> {
    let listener = UnixListener::bind(path).map_err(|e| {
        format!(
            "cannot listen on the API socket {}: {e}{}",
            path.display(),
            if e.kind() == std::io::ErrorKind::AddrInUse {
                " (remove it first)"
            } else {
                ""
            }
        )
    })?;
    let exit = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("cannot set up the API thread: {e}"))?;
    let thread_exit = exit
        .try_clone()
        .map_err(|e| format!("cannot set up the API thread: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("kiln-api".into())
        .spawn(move || {
            // SIGTERM and the like are the VMM thread's to handle (its
            // signalfd, once the VM runs); before that they end kiln.
            if let Err(e) = vmm::block_stop_signals() {
                log::error!("cannot block signals on the API thread: {e}");
                return;
            }
            if let Err(e) = seccomp::install(ThreadKind::Api, seccomp) {
                log::error!("{e}");
                return;
            }
            let served =
                kiln::api::server::serve(listener, &thread_exit, |request| match routes::route(&request) {
                    Routed::Now(response) => response,
                    Routed::Action(a) => sender.call(a),
                });
            if let Err(e) = served {
                log::error!("the API server stopped: {e}");
            }
        })
        .map_err(|e| format!("cannot start the API thread: {e}"))?;
    Ok(ApiThread { exit, handle })
}

/// What the running VM's API subscriber takes over from the pre-boot loop.
struct Handover {
    inbox: ApiInbox,
    start: Option<ApiRequest>,
    identity: Identity,
    metrics: Option<MetricsSink>,
}

/// The VMM thread: pre-boot requests until `InstanceStart` (or at once
/// with a config file), then the VM until it stops.
fn vmm_thread(
    mut preboot: Preboot,
    inbox: ApiInbox,
    start_now: bool,
    seccomp: SeccompMode,
    boot_timer: bool,
    timeline: &Arc<BootTimeline>,
) -> ExitCode {
    let mut inbox = Some(inbox);
    let mut start_request = None;
    let mut boot_now = start_now;
    loop {
        if !boot_now {
            // Wait for InstanceStart, answering everything else.
            let Some(request) = inbox.as_ref().and_then(ApiInbox::next_blocking) else {
                return fail(1, "the API thread ended");
            };
            match preboot.handle(request) {
                Some(start) => start_request = Some(start),
                None => continue,
            }
        }
        boot_now = false;
        let mut config = match preboot.resources.vm_config() {
            Ok(c) => c,
            Err(e) => match start_request.take() {
                Some(r) => {
                    r.answer(Response::fault(400, e.to_string()));
                    continue;
                }
                None => return fail(1, e),
            },
        };
        config.seccomp = seccomp;
        config.runtime_changes = true;
        let handover = Arc::new(Mutex::new(Some(Handover {
            inbox: inbox.take().expect("the inbox is here until the VM runs"),
            start: start_request.take(),
            identity: Identity {
                id: preboot.id.clone(),
                machine: preboot.resources.machine_config().clone(),
            },
            metrics: preboot.metrics.take(),
        })));
        let result = run_vm(&config, &handover, boot_timer, timeline);
        // The VM never ran: take the API back, report, and wait again.
        let back = kiln::sync::lock(&handover).take();
        match (result, back) {
            (Err(e), Some(back)) if back.start.is_some() => {
                inbox = Some(back.inbox);
                preboot.metrics = back.metrics;
                if let Some(r) = back.start {
                    r.answer(Response::fault(400, format!("cannot start the microVM: {e}")));
                }
            }
            (Err(e), _) => return fail(e.exit_code() as u8, e),
            (Ok(reason), _) => {
                if let Some(m) = reason.message() {
                    eprintln!("kiln: {m}");
                }
                return ExitCode::from(reason.exit_code().clamp(0, 255) as u8);
            }
        }
    }
}

fn run_vm(
    config: &kiln::config::VmConfig,
    handover: &Arc<Mutex<Option<Handover>>>,
    boot_timer: bool,
    timeline: &Arc<BootTimeline>,
) -> Result<kiln::exit::ExitReason, vmm::VmmError> {
    let io = ConsoleIo::stdio().map_err(|e| vmm::VmmError::Build(vmm::BuildError::Setup(e)))?;
    let taken = handover.clone();
    let hooks = BootHooks {
        timeline: timeline.clone(),
        on_user_space: crate::boot_timer_report(boot_timer),
        on_running: Some(Box::new(move |vm: RunningVm| {
            let h = kiln::sync::lock(&taken).take()?;
            let mut metrics = h.metrics;
            if let Some(m) = &mut metrics {
                if let Err(e) = m.start_timer() {
                    log::warn!("metrics will only be written on FlushMetrics: {e}");
                }
            }
            if let Some(start) = h.start {
                start.answer(Response::no_content());
            }
            let runtime = ApiRuntime::new(h.inbox, vm, h.identity, metrics);
            Some(Arc::new(Mutex::new(runtime)) as Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>)
        })),
        ..BootHooks::default()
    };
    vmm::run_vm_with(config, io, hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_depends_on_the_name_kiln_runs_as() {
        let fc = version_line("/usr/local/bin/firecracker");
        assert!(
            fc.starts_with(&format!("Firecracker v{FIRECRACKER_COMPAT} ")),
            "{fc}"
        );
        // Kata reads the second word, less its 'v', as a semver >= 0.21.1.
        let second = fc.split(' ').nth(1).unwrap().trim().trim_start_matches('v');
        assert_eq!(second, FIRECRACKER_COMPAT);
        assert!(version_line("kiln").starts_with("kiln "));
    }

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(parse_level("Warning").unwrap(), log::LevelFilter::Warn);
        assert_eq!(parse_level("debug").unwrap(), log::LevelFilter::Debug);
        assert!(parse_level("loud").is_err());
    }
}

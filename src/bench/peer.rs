//! The peers: other microVM monitors (Firecracker, Cloud Hypervisor,
//! QEMU's `microvm` machine), given by path, booting the same kernel,
//! initrd and command line as kiln, one vCPU, kiln's default memory.
//!
//! Time to ready is what each can report most like kiln's: Firecracker
//! with `--boot-timer` logs the guest's write of 123 to 0xc0000000, counted
//! from its own `main` as kiln's is; the others are timed from spawn to
//! the marker the guest's `/init` prints on the serial console.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::contender::{run_timed, Contender, IdleSpec, RunError, Sample, VmGuest};
use crate::config::DEFAULT_MEMORY_MIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Firecracker,
    CloudHypervisor,
    Qemu,
}

impl PeerKind {
    /// The peers `--contenders` knows.
    pub const ALL: [Self; 3] = [Self::Firecracker, Self::CloudHypervisor, Self::Qemu];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The program looked up on PATH when no path flag names it.
    pub fn program(self) -> &'static str {
        match self {
            Self::Qemu => "qemu-system-x86_64",
            other => other.name(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::CloudHypervisor => "cloud-hypervisor",
            Self::Qemu => "qemu",
        }
    }

    /// What a guest reboot or power-off needs on this peer's command
    /// line so that the peer exits when the guest is done: Firecracker
    /// has no power-off, so the guest resets through the i8042 instead.
    fn halt_arg(self) -> &'static str {
        match self {
            Self::Firecracker => " kiln.halt=reboot",
            Self::CloudHypervisor | Self::Qemu => "",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{program} is not on PATH; give its path with --{name}")]
    NotFound {
        name: &'static str,
        program: &'static str,
    },
    #[error("--{name} {path}: no such executable file")]
    BadPath { name: &'static str, path: String },
    #[error("cannot write {path}: {source}")]
    Scratch { path: String, source: std::io::Error },
}

/// Another monitor booting the guest.
pub struct PeerContender {
    kind: PeerKind,
    exe: PathBuf,
    guest: VmGuest,
    scratch: PathBuf,
    limit: Duration,
}

impl PeerContender {
    /// The peer at `path`, else found on PATH.
    pub fn new(
        kind: PeerKind,
        path: Option<&Path>,
        guest: &VmGuest,
        scratch: &Path,
        limit: Duration,
    ) -> Result<Self, PeerError> {
        let name = kind.name();
        let exe = match path {
            Some(p) if p.is_file() => p.to_path_buf(),
            Some(p) => {
                return Err(PeerError::BadPath {
                    name,
                    path: p.display().to_string(),
                })
            }
            None => {
                let program = kind.program();
                super::container::find_on_path(program).ok_or(PeerError::NotFound { name, program })?
            }
        };
        Ok(Self {
            kind,
            exe,
            guest: guest.clone(),
            scratch: scratch.to_path_buf(),
            limit,
        })
    }

    /// The command booting the guest with `cmdline` and `mib` of memory;
    /// `tag` names its scratch files.
    fn command(&self, cmdline: &str, mib: u64, tag: &str) -> Result<Command, PeerError> {
        let cmdline = format!("{cmdline}{}", self.kind.halt_arg());
        let kernel = self.guest.kernel.display().to_string();
        let initrd = self.guest.initrd.as_ref().map(|i| i.display().to_string());
        let mut command = Command::new(&self.exe);
        match self.kind {
            PeerKind::Firecracker => {
                let config = self.scratch.join(format!("firecracker-{tag}.json"));
                let body = firecracker_config(&kernel, initrd.as_deref(), &cmdline, mib);
                self.write(&config, body.to_string().as_bytes())?;
                let log = self.log_path(tag);
                // Firecracker opens its log file; it does not create it.
                self.write(&log, b"")?;
                command
                    .arg("--no-api")
                    .arg("--config-file")
                    .arg(&config)
                    .arg("--boot-timer")
                    .arg("--level")
                    .arg("Info")
                    .arg("--log-path")
                    .arg(&log);
            }
            PeerKind::CloudHypervisor => {
                command
                    .args(["--kernel", &kernel, "--cmdline", &cmdline])
                    .args(["--cpus", "boot=1", "--memory"])
                    .arg(format!("size={mib}M"))
                    .args(["--serial", "tty", "--console", "off"]);
                if let Some(initrd) = &initrd {
                    command.args(["--initramfs", initrd]);
                }
            }
            PeerKind::Qemu => {
                command
                    .args(["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"])
                    .args(["-accel", "kvm", "-cpu", "host", "-smp", "1", "-m"])
                    .arg(mib.to_string())
                    .args(["-nodefaults", "-no-user-config", "-display", "none"])
                    .args(["-serial", "stdio", "-no-reboot"])
                    .args(["-kernel", &kernel, "-append", &cmdline]);
                if let Some(initrd) = &initrd {
                    command.args(["-initrd", initrd]);
                }
            }
        }
        Ok(command)
    }

    fn log_path(&self, tag: &str) -> PathBuf {
        self.scratch.join(format!("{}-{tag}.log", self.kind.name()))
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), PeerError> {
        std::fs::write(path, bytes).map_err(|source| PeerError::Scratch {
            path: path.display().to_string(),
            source,
        })
    }
}

fn scratch_error(e: PeerError) -> RunError {
    RunError::Failed {
        program: "kiln bench".to_string(),
        status: "scratch".to_string(),
        stderr: e.to_string(),
    }
}

/// A Firecracker `--config-file` body booting the guest on one vCPU.
pub fn firecracker_config(kernel: &str, initrd: Option<&str>, cmdline: &str, mib: u64) -> serde_json::Value {
    let mut boot = json!({ "kernel_image_path": kernel, "boot_args": cmdline });
    if let Some(initrd) = initrd {
        boot["initrd_path"] = json!(initrd);
    }
    json!({
        "boot-source": boot,
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": mib, "smt": false },
        "network-interfaces": []
    })
}

/// The µs of Firecracker's boot-timer line in its log, if there is one:
/// `Guest-boot-time =   1234 us 1 ms,    567 CPU us 0 CPU ms`.
pub fn firecracker_boot_time_us(log: &str) -> Option<u64> {
    let (_, after) = log.split_once("Guest-boot-time =")?;
    let mut words = after.split_whitespace();
    let us = words.next()?.parse().ok()?;
    (words.next()? == "us").then_some(us)
}

impl Contender for PeerContender {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn run(&mut self, _round: usize) -> Result<Sample, RunError> {
        let mut command = self
            .command(&self.guest.cmdline, DEFAULT_MEMORY_MIB, "boot")
            .map_err(scratch_error)?;
        let timed = run_timed(&mut command, self.limit)?.check(self.kind.name())?;
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let from_timer = match self.kind {
            PeerKind::Firecracker => std::fs::read_to_string(self.log_path("boot"))
                .ok()
                .and_then(|log| firecracker_boot_time_us(&log)),
            _ => None,
        };
        let ready_us = match (from_timer, timed.ready) {
            (Some(us), _) => us,
            (None, Some(ready)) => us(ready),
            (None, None) => {
                return Err(RunError::NoMarker {
                    program: self.kind.name().to_string(),
                    stderr: super::contender::one_line(&timed.stderr),
                })
            }
        };
        Ok(Sample {
            ready_us,
            exit_us: us(timed.exit),
            marker_us: timed.ready.map(us),
            phases_us: Vec::new(),
        })
    }

    fn idle(&mut self, index: usize) -> Result<IdleSpec, RunError> {
        let command = self
            .command(
                &self.guest.idle_cmdline(),
                self.guest.idle_mib,
                &format!("idle-{index}"),
            )
            .map_err(scratch_error)?;
        Ok(IdleSpec {
            command,
            guest_kib: Some(self.guest.idle_mib << 10),
            cleanup: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> VmGuest {
        VmGuest {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 quiet".into(),
            idle_mib: 64,
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn names_and_missing_peers_say_what_to_do() {
        for kind in PeerKind::ALL {
            assert_eq!(PeerKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(PeerKind::Qemu.program(), "qemu-system-x86_64");
        assert!(PeerKind::from_name("docker").is_none());
        let scratch = std::env::temp_dir();
        let e = PeerContender::new(
            PeerKind::Qemu,
            Some(Path::new("/nonexistent/qemu")),
            &guest(),
            &scratch,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "--qemu /nonexistent/qemu: no such executable file");
    }

    #[test]
    fn every_peer_boots_the_same_guest_with_one_vcpu() {
        let scratch = std::env::temp_dir().join(format!("kiln-peer-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let make = |kind| PeerContender {
            kind,
            exe: "/bin/true".into(),
            guest: guest(),
            scratch: scratch.clone(),
            limit: Duration::from_secs(1),
        };
        let fc = make(PeerKind::Firecracker);
        let a = args(&fc.command("console=ttyS0 quiet", 64, "t").unwrap());
        assert_eq!(
            a[..3],
            [
                "--no-api",
                "--config-file",
                scratch.join("firecracker-t.json").to_str().unwrap()
            ]
        );
        assert!(a.contains(&"--boot-timer".to_string()));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(scratch.join("firecracker-t.json")).unwrap()).unwrap();
        assert_eq!(
            config["boot-source"]["boot_args"],
            "console=ttyS0 quiet kiln.halt=reboot"
        );
        assert_eq!(config["boot-source"]["initrd_path"], "/k/initrd");
        assert_eq!(config["machine-config"]["mem_size_mib"], 64);
        assert_eq!(config["machine-config"]["vcpu_count"], 1);
        assert!(scratch.join("firecracker-t.log").is_file());

        let q = args(&make(PeerKind::Qemu).command("c", 128, "t").unwrap());
        let at = |flag: &str| q[q.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(at("-kernel"), "/k/vmlinux");
        assert_eq!(at("-initrd"), "/k/initrd");
        assert_eq!(at("-append"), "c");
        assert_eq!(at("-smp"), "1");
        assert_eq!(at("-m"), "128");

        let ch = args(&make(PeerKind::CloudHypervisor).command("c", 64, "t").unwrap());
        assert!(ch.windows(2).any(|w| w == ["--memory", "size=64M"]), "{ch:?}");
        assert!(ch.windows(2).any(|w| w == ["--initramfs", "/k/initrd"]), "{ch:?}");
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    /// A stand-in for a peer: a script that logs Firecracker's boot-timer
    /// line where `--log-path` says, prints the marker, and idles when the
    /// command line asks the guest to.
    fn fake_peer(dir: &Path) -> PathBuf {
        let path = dir.join("fake-peer");
        std::fs::write(
            &path,
            "#!/bin/sh\nlog=/dev/null\nwhile [ $# -gt 0 ]; do [ \"$1\" = --log-path ] && log=$2; shift; done\n\
             echo 'x [anonymous-instance:fc_vcpu 0] Guest-boot-time =   4321 us 4 ms,    100 CPU us 0 CPU ms' >>\"$log\"\n\
             echo KILN-GUEST-READY\n\
             grep -q c2xlZXAgODY0MDA= \"$(dirname \"$0\")\"/*idle*.json 2>/dev/null && exec sleep 30\n\
             exit 0\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_run_reads_firecrackers_timer_and_others_the_marker() {
        let scratch = std::env::temp_dir().join(format!("kiln-peer-run-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let fake = fake_peer(&scratch);
        let limit = Duration::from_secs(20);
        let mut fc =
            PeerContender::new(PeerKind::Firecracker, Some(&fake), &guest(), &scratch, limit).unwrap();
        let sample = fc.run(1).unwrap();
        assert_eq!(sample.ready_us, 4321);
        assert!(sample.exit_us > 0);
        let mut qemu = PeerContender::new(PeerKind::Qemu, Some(&fake), &guest(), &scratch, limit).unwrap();
        let sample = qemu.run(1).unwrap();
        assert!(
            sample.ready_us > 0 && sample.ready_us <= sample.exit_us,
            "{sample:?}"
        );
        // Firecracker's idle instance: its config asks the guest to sleep.
        let idle = crate::bench::idle::run_idle(&mut fc, 2, limit).unwrap();
        assert_eq!(idle.memory.len(), 2);
        std::fs::remove_dir_all(&scratch).unwrap();
    }

    #[test]
    fn firecrackers_boot_timer_line_is_read() {
        let log = "2026-12-06T22:00:00 [anonymous-instance:main] Running Firecracker v1.9.1\n\
                   2026-12-06T22:00:01 [anonymous-instance:fc_vcpu 0] Guest-boot-time =  81234 us 81 ms,  70123 CPU us 70 CPU ms\n";
        assert_eq!(firecracker_boot_time_us(log), Some(81234));
        assert_eq!(firecracker_boot_time_us("nothing"), None);
        assert_eq!(firecracker_boot_time_us("Guest-boot-time = x us"), None);
        assert_eq!(firecracker_boot_time_us("Guest-boot-time = 12 ms"), None);
    }
}

//! The container contenders: OCI runtimes (runc, crun) found on PATH,
//! each run a `RUNTIME run` of a bundle whose rootfs is the same static
//! busybox the default guest's initramfs carries, running the same
//! readiness command (print the marker, exit). `run` creates, starts,
//! waits for and deletes the container, so every run is a cold start.
//! A second bundle's process prints the marker and then sleeps: the idle
//! workload of the memory and density rows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::contender::{run_timed, Contender, IdleSpec, RunError, Sample};

/// The runtimes `--contenders` knows, in the order they run.
pub const RUNTIMES: &[&str] = &["runc", "crun"];

/// Busybox applets the rootfs needs for the readiness command.
const APPLETS: &[&str] = &["sh", "echo", "true", "sleep"];

/// The readiness command of a boot run.
pub const READY_COMMAND: &str = "echo KILN-GUEST-READY";
/// The idle workload: ready, then up for a day (until stopped).
pub const IDLE_COMMAND: &str = "echo KILN-GUEST-READY; exec sleep 86400";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{0} is not on PATH; install it (Debian: apt-get install {0})")]
    NotFound(String),
    #[error("no static busybox for the container rootfs: set KILN_BUSYBOX or install busybox-static")]
    NoBusybox,
    #[error("{0} is dynamically linked; the rootfs needs a static busybox (install busybox-static or set KILN_BUSYBOX)")]
    DynamicBusybox(String),
    #[error("cannot build the OCI bundle in {path}: {source}")]
    Bundle { path: String, source: std::io::Error },
}

/// An OCI bundle on disk: `config.json` and `rootfs/`.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Makes the bundle in `dir` (created; its old contents replaced),
    /// whose process is `sh -c COMMAND`.
    pub fn create(dir: &Path, busybox: &Path, command: &str) -> Result<Self, ContainerError> {
        let err = |source| ContainerError::Bundle {
            path: dir.display().to_string(),
            source,
        };
        let _ = std::fs::remove_dir_all(dir);
        let rootfs = dir.join("rootfs");
        for sub in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).map_err(err)?;
        }
        std::fs::copy(busybox, rootfs.join("bin/busybox")).map_err(err)?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).map_err(err)?;
        }
        let text = serde_json::to_vec_pretty(&config_json(command)).map_err(|e| err(e.into()))?;
        std::fs::write(dir.join("config.json"), text).map_err(err)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The bundle's `config.json` (OCI runtime spec 1.0): what `runc spec`
/// generates, with `sh -c COMMAND` as the process and a read-only root,
/// so the container is an ordinary one, isolated as usual.
pub fn config_json(command: &str) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/sh", "-c", command],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "kiln-bench",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                "/proc/scsi", "/sys/firmware"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// A static busybox: `$KILN_BUSYBOX`, else the usual places (the same
/// choice as the guest's initramfs build, resources/lib/guest-tree.sh).
pub fn find_busybox() -> Result<PathBuf, ContainerError> {
    let candidates: Vec<PathBuf> = match std::env::var_os("KILN_BUSYBOX").filter(|b| !b.is_empty()) {
        Some(b) => vec![PathBuf::from(b)],
        None => ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .collect(),
    };
    let found = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(ContainerError::NoBusybox)?;
    let bytes = std::fs::read(&found).map_err(|_| ContainerError::NoBusybox)?;
    match elf_has_interpreter(&bytes) {
        Some(false) => Ok(found),
        _ => Err(ContainerError::DynamicBusybox(found.display().to_string())),
    }
}

/// Whether a 64-bit little-endian ELF image asks for a program
/// interpreter (is dynamically linked); None if it is not such an ELF.
pub fn elf_has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// `name` in a directory of `$PATH`, if there and executable.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Whether `/` is the initial ramfs (as inside tools/nested-host), where
/// pivot_root(2) fails and runtimes need `--no-pivot`.
pub fn root_is_ramfs(mountinfo: &str) -> bool {
    // Fields: id parent major:minor root mountpoint options... - fstype ...
    let fstype_of_root = mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/"))
        .filter_map(|l| l.split(" - ").nth(1)?.split_whitespace().next())
        .next_back();
    matches!(fstype_of_root, Some("rootfs" | "ramfs"))
}

/// The two bundles every runtime runs: the boot run's and the idle one.
#[derive(Debug)]
pub struct Bundles {
    pub ready: Bundle,
    pub idle: Bundle,
}

impl Bundles {
    /// Both bundles under `dir`, from the static busybox found.
    pub fn create(dir: &Path) -> Result<Self, ContainerError> {
        let busybox = find_busybox()?;
        Ok(Self {
            ready: Bundle::create(&dir.join("bundle"), &busybox, READY_COMMAND)?,
            idle: Bundle::create(&dir.join("bundle-idle"), &busybox, IDLE_COMMAND)?,
        })
    }
}

/// One OCI runtime starting the bundles.
pub struct RuntimeContender {
    name: String,
    runtime: PathBuf,
    bundle: PathBuf,
    idle_bundle: PathBuf,
    no_pivot: bool,
    limit: Duration,
}

impl RuntimeContender {
    /// The runtime `name` from PATH, running `bundles`.
    pub fn new(name: &str, bundles: &Bundles, limit: Duration) -> Result<Self, ContainerError> {
        let runtime = find_on_path(name).ok_or_else(|| ContainerError::NotFound(name.to_string()))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Ok(Self {
            name: name.to_string(),
            runtime,
            bundle: bundles.ready.dir().to_path_buf(),
            idle_bundle: bundles.idle.dir().to_path_buf(),
            no_pivot: root_is_ramfs(&mountinfo),
            limit,
        })
    }

    /// The `run` command line for container `id` of `bundle`.
    pub fn run_args(&self, bundle: &Path, id: &str) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        if self.no_pivot {
            args.push("--no-pivot".to_string());
        }
        args.push("--bundle".to_string());
        args.push(bundle.display().to_string());
        args.push(id.to_string());
        args
    }

    fn delete_command(&self, id: &str) -> Command {
        let mut command = Command::new(&self.runtime);
        command.args(["delete", "--force", id]);
        command
    }
}

impl Contender for RuntimeContender {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, round: usize) -> Result<Sample, RunError> {
        let id = format!("kiln-bench-{}-{}-{round}", std::process::id(), self.name);
        let mut command = Command::new(&self.runtime);
        command.args(self.run_args(&self.bundle, &id));
        let result = run_timed(&mut command, self.limit).and_then(|t| t.check(&self.name));
        let timed = match result {
            Ok(t) => t,
            Err(e) => {
                // A failed or killed run may leave the container behind.
                let _ = self
                    .delete_command(&id)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                return Err(e);
            }
        };
        let ready = timed.ready.ok_or_else(|| RunError::NoMarker {
            program: self.name.clone(),
            stderr: super::contender::one_line(&timed.stderr),
        })?;
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(Sample {
            ready_us: us(ready),
            exit_us: us(timed.exit),
            marker_us: Some(us(ready)),
            phases_us: Vec::new(),
        })
    }

    fn idle(&mut self, index: usize) -> Result<IdleSpec, RunError> {
        let id = format!("kiln-bench-{}-{}-idle-{index}", std::process::id(), self.name);
        let mut command = Command::new(&self.runtime);
        command.args(self.run_args(&self.idle_bundle, &id));
        Ok(IdleSpec {
            command,
            guest_kib: None,
            cleanup: Some(self.delete_command(&id)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_runs_the_readiness_command_in_a_read_only_isolated_root() {
        assert!(READY_COMMAND.ends_with(crate::bench::contender::READY_MARKER));
        assert!(IDLE_COMMAND.contains(crate::bench::contender::READY_MARKER));
        let c = config_json(READY_COMMAND);
        assert_eq!(c["ociVersion"], "1.0.2");
        assert_eq!(
            c["process"]["args"],
            json!(["/bin/sh", "-c", "echo KILN-GUEST-READY"])
        );
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["root"], json!({ "path": "rootfs", "readonly": true }));
        let namespaces: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for ns in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(namespaces.contains(&ns), "{namespaces:?}");
        }
        let mounts: Vec<&str> = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(
            mounts.contains(&"/proc") && mounts.contains(&"/dev"),
            "{mounts:?}"
        );
    }

    #[test]
    fn bundle_has_config_and_busybox_applets() {
        let dir = std::env::temp_dir().join(format!("kiln-bundle-{}", std::process::id()));
        // Any regular file stands for busybox here.
        let fake = dir.with_extension("busybox");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let bundle = Bundle::create(&dir, &fake, IDLE_COMMAND).unwrap();
        let config: Value =
            serde_json::from_slice(&std::fs::read(bundle.dir().join("config.json")).unwrap()).unwrap();
        assert_eq!(config, config_json(IDLE_COMMAND));
        for applet in APPLETS {
            let link = std::fs::read_link(dir.join("rootfs/bin").join(applet)).unwrap();
            assert_eq!(link, Path::new("busybox"));
        }
        assert_eq!(std::fs::read(dir.join("rootfs/bin/busybox")).unwrap(), b"\x7fELF");
        assert!(dir.join("rootfs/proc").is_dir());
        // Made again over an old one: replaced, not an error.
        Bundle::create(&dir, &fake, READY_COMMAND).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(&fake).unwrap();
        let e = Bundle::create(Path::new("/proc/nope/bundle"), &fake, READY_COMMAND).unwrap_err();
        assert!(e.to_string().contains("cannot build the OCI bundle"), "{e}");
    }

    #[test]
    fn elf_interpreter_is_detected() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(elf_has_interpreter(&sh), Some(true));
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
        // Truncated headers: None, no panic.
        assert_eq!(elf_has_interpreter(&sh[..0x30]), None);
        let mut no_ph = sh[..0x40].to_vec();
        no_ph[0x38] = 0;
        no_ph[0x39] = 0;
        assert_eq!(elf_has_interpreter(&no_ph), Some(false));
    }

    #[test]
    fn ramfs_root_needs_no_pivot() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw\n20 1 0:5 / /proc rw - proc proc rw\n";
        assert!(root_is_ramfs(initramfs));
        let disk = "1 0 0:2 / / rw - rootfs rootfs rw\n25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
        assert!(!root_is_ramfs(disk));
        assert!(!root_is_ramfs(""));
    }

    #[test]
    fn missing_runtime_is_a_one_line_reason() {
        let dir = std::env::temp_dir().join(format!("kiln-bundle-nf-{}", std::process::id()));
        let bundles = Bundles {
            ready: Bundle { dir: dir.clone() },
            idle: Bundle { dir },
        };
        let e = RuntimeContender::new("no-such-runtime-kiln", &bundles, Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "no-such-runtime-kiln is not on PATH; install it (Debian: apt-get install no-such-runtime-kiln)"
        );
    }
}

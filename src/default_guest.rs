//! The default guest: a kernel and initramfs built from the recipes in
//! `resources/`, which are compiled into the binary so `kiln boot` works
//! from any install. The first use builds them (minutes, once); later uses
//! find them in the cache.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The recipes, by path below `resources/`.
const RECIPES: &[(&str, &str)] = &[
    ("default-guest.sh", include_str!("../resources/default-guest.sh")),
    ("build-kernel.sh", include_str!("../resources/build-kernel.sh")),
    (
        "build-initramfs.sh",
        include_str!("../resources/build-initramfs.sh"),
    ),
    (
        "lib/guest-tree.sh",
        include_str!("../resources/lib/guest-tree.sh"),
    ),
    ("guest/init", include_str!("../resources/guest/init")),
    (
        "guest/kernel.config",
        include_str!("../resources/guest/kernel.config"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DefaultGuestError {
    #[error("cannot find a cache directory: set KILN_CACHE or HOME")]
    NoCache,
    #[error("cannot write the guest recipes to {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot run bash to build the default guest: {0}")]
    Spawn(std::io::Error),
    #[error("building the default guest failed (see the messages above); pass --kernel to boot your own")]
    Build,
    #[error("building the default guest failed; pass a kernel of your own. Its last messages: {0}")]
    BuildQuiet(String),
    #[error("the default guest build did not report {0}")]
    Missing(&'static str),
    #[error("cannot write the sandbox guest agent to {path}: {source}")]
    Agent { path: String, source: std::io::Error },
}

/// The default guest's files.
#[derive(Debug, Clone)]
pub struct DefaultGuest {
    pub kernel: PathBuf,
    pub bzimage: PathBuf,
    pub initrd: PathBuf,
    /// The sandbox guest's initramfs: busybox, and kiln's guest agent as
    /// `/init`.
    pub sandbox_initrd: PathBuf,
    /// kiln's static guest agent (the sandbox initramfs's `/init`), for
    /// users who build a sandbox initramfs of their own (e.g. with their
    /// kernel's modules listed in `/etc/kiln/modules`).
    pub agent: PathBuf,
}

/// `$KILN_CACHE`, else `$HOME/.cache/kiln`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KILN_CACHE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln"))
}

/// Writes the recipes to a directory named after their contents, so
/// different kiln versions never share a half-matching set.
fn unpack_recipes() -> Result<PathBuf, DefaultGuestError> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    RECIPES.hash(&mut hasher);
    let dir = cache_dir()
        .ok_or(DefaultGuestError::NoCache)?
        .join(format!("resources/{:016x}", hasher.finish()));
    for (name, text) in RECIPES {
        let path = dir.join(name);
        // The recipes run each other directly, so scripts must be executable.
        let mode = if name.ends_with(".sh") { 0o755 } else { 0o644 };
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            if !std::fs::read_to_string(&path).is_ok_and(|t| t == *text) {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Write beside and rename: a concurrent kiln never sees half a script.
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        };
        write().map_err(|source| DefaultGuestError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(dir)
}

/// Builds the default guest (and the sandbox guest's initramfs) if the
/// cache lacks them and returns their files.
/// Progress goes to stderr.
pub fn ensure() -> Result<DefaultGuest, DefaultGuestError> {
    build(false)
}

/// [`ensure`] without printing anything (for the library): a failed
/// build's last messages are in the error instead.
pub fn ensure_quietly() -> Result<DefaultGuest, DefaultGuestError> {
    build(true)
}

fn build(quiet: bool) -> Result<DefaultGuest, DefaultGuestError> {
    let dir = unpack_recipes()?;
    let cache = cache_dir().ok_or(DefaultGuestError::NoCache)?;
    let agent = crate::sandbox::guest::write_agent(&cache).map_err(|source| DefaultGuestError::Agent {
        path: cache.display().to_string(),
        source,
    })?;
    let inputs = recipe_inputs(&agent);
    if let Some(guest) = read_resolved(&dir, &inputs) {
        return Ok(guest);
    }
    let out = Command::new("bash")
        .arg(dir.join("default-guest.sh"))
        .env("KILN_AGENT", &agent)
        .stdin(Stdio::null())
        .stderr(if quiet { Stdio::piped() } else { Stdio::inherit() })
        .output()
        .map_err(DefaultGuestError::Spawn)?;
    if !out.status.success() {
        if !quiet {
            return Err(DefaultGuestError::Build);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
        return Err(DefaultGuestError::BuildQuiet(tail));
    }
    let report = String::from_utf8_lossy(&out.stdout);
    let guest = parse_report(&report)?;
    // Only a speed-up: without it the next run asks the recipes again.
    let _ = write_resolved(&dir, &inputs, &report);
    Ok(guest)
}

/// The file beside the recipes that keeps their last answer.
const RESOLVED: &str = "resolved";

/// What the recipes' answer depends on beyond their own text (which names
/// their directory): the environment they read and the files whose change
/// makes them build again (busybox, the installed packages with the
/// kernel source, a source tarball), by size, mtime and inode. Asking the
/// recipes themselves costs bash, dpkg-query and a sha256 of busybox on
/// every boot (about 90 ms natively, far more on an emulated host).
fn recipe_inputs(agent: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::fs::MetadataExt;
    let mut inputs = format!("agent={}\n", agent.display());
    for var in [
        "KILN_BUSYBOX",
        "KILN_LINUX_TARBALL",
        "KILN_DEBIAN_MIRROR",
        "KILN_DEBIAN_SUITE",
    ] {
        let _ = writeln!(inputs, "{var}={:?}", std::env::var_os(var));
    }
    let busybox = std::env::var_os("KILN_BUSYBOX")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "/bin/busybox".into());
    let tarball = std::env::var_os("KILN_LINUX_TARBALL").filter(|t| !t.is_empty());
    for file in [Some(busybox), Some("/var/lib/dpkg/status".into()), tarball]
        .into_iter()
        .flatten()
    {
        let _ = match std::fs::metadata(&file) {
            Ok(m) => writeln!(
                inputs,
                "{} {} {}.{} {}",
                Path::new(&file).display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            ),
            Err(_) => writeln!(inputs, "{} absent", Path::new(&file).display()),
        };
    }
    inputs
}

/// The recipes' last answer if it was given for `inputs` and its files
/// are all still there.
fn read_resolved(dir: &Path, inputs: &str) -> Option<DefaultGuest> {
    let text = std::fs::read_to_string(dir.join(RESOLVED)).ok()?;
    let report = text.strip_prefix(inputs)?.strip_prefix("--\n")?;
    let guest = parse_report(report).ok()?;
    [
        &guest.kernel,
        &guest.bzimage,
        &guest.initrd,
        &guest.sandbox_initrd,
        &guest.agent,
    ]
    .iter()
    .all(|f| f.is_file())
    .then_some(guest)
}

fn write_resolved(dir: &Path, inputs: &str, report: &str) -> std::io::Result<()> {
    // Beside and rename: a concurrent kiln never reads half of it.
    let tmp = dir.join(format!("{RESOLVED}.tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{inputs}--\n{report}"))?;
    std::fs::rename(&tmp, dir.join(RESOLVED))
}

/// `KERNEL=...` lines, as `default-guest.sh` prints them.
fn parse_report(report: &str) -> Result<DefaultGuest, DefaultGuestError> {
    let vars: HashMap<&str, PathBuf> = report
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect();
    let get = |k: &'static str| vars.get(k).cloned().ok_or(DefaultGuestError::Missing(k));
    Ok(DefaultGuest {
        kernel: get("KERNEL")?,
        bzimage: get("BZIMAGE")?,
        initrd: get("INITRD")?,
        sandbox_initrd: get("SANDBOX_INITRD")?,
        agent: get("AGENT")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_embedded_and_unpack_idempotently() {
        let cache = std::env::temp_dir().join(format!("kiln-recipes-{}", std::process::id()));
        // Tests run in threads of one process: scope the env change tightly.
        std::env::set_var("KILN_CACHE", &cache);
        let first = unpack_recipes().unwrap();
        let second = unpack_recipes().unwrap();
        std::env::remove_var("KILN_CACHE");
        assert_eq!(first, second);
        for (name, text) in RECIPES {
            assert_eq!(std::fs::read_to_string(first.join(name)).unwrap(), *text);
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&first.join(name).metadata().unwrap().permissions());
            assert_eq!(mode & 0o111 != 0, name.ends_with(".sh"), "{name} mode {mode:o}");
        }
        assert!(RECIPES
            .iter()
            .any(|(n, t)| *n == "default-guest.sh" && t.contains("KERNEL=")));
    }

    /// The recipes' last answer is reused only for the same inputs and
    /// while every file it names exists.
    #[test]
    fn a_resolved_guest_is_reused_only_while_its_inputs_and_files_hold() {
        let dir = std::env::temp_dir().join(format!("kiln-resolved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["KERNEL", "BZIMAGE", "INITRD", "SANDBOX_INITRD", "AGENT"];
        let mut report = String::new();
        for name in names {
            let file = dir.join(name.to_lowercase());
            std::fs::write(&file, b"x").unwrap();
            report += &format!("{name}={}\n", file.display());
        }
        let inputs = recipe_inputs(&dir.join("agent"));
        assert!(read_resolved(&dir, &inputs).is_none(), "nothing written yet");
        write_resolved(&dir, &inputs, &report).unwrap();
        let guest = read_resolved(&dir, &inputs).unwrap();
        assert_eq!(guest.kernel, dir.join("kernel"));
        assert_eq!(guest.sandbox_initrd, dir.join("sandbox_initrd"));
        let other = recipe_inputs(&dir.join("another-agent"));
        assert!(read_resolved(&dir, &other).is_none(), "other inputs");
        std::fs::remove_file(dir.join("initrd")).unwrap();
        assert!(read_resolved(&dir, &inputs).is_none(), "a file is gone");
        // A report without one of the lines is no answer either.
        write_resolved(&dir, &inputs, "KERNEL=/x\n").unwrap();
        assert!(read_resolved(&dir, &inputs).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

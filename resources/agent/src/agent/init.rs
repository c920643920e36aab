//! What the agent does as PID 1 that an init would: mount the kernel's
//! file systems (into the user's root image under a tmpfs overlay when the
//! kernel command line says `kiln.rootfs=DEVICE`), and power the guest off.

use std::ffi::CString;
use std::io;

/// (source, target, type, flags, data) for each mount a command may need:
/// /proc and /sys for tools, /dev with devpts for ptys, tmpfs scratch space.
const MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
    (
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0620,ptmxmode=0666",
    ),
    (
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
    // Commands start here (kiln's default working directory), scratch
    // space that is never the image's.
    (
        "tmpfs",
        "/work",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

/// The kernel command line switch naming the user's root image.
pub const ROOTFS_SWITCH: &str = "kiln.rootfs=";
/// Where the image and its overlay are put together.
const ROOTFS_DIR: &str = "/rootfs";

/// The device `kiln.rootfs=` names on a kernel command line, if any.
pub fn rootfs_device(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(ROOTFS_SWITCH))
        .filter(|d| !d.is_empty())
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (source, target_c, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        let err = io::Error::last_os_error();
        // Already mounted (the kernel's devtmpfs automount, a rootfs init): fine.
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Ok(())
}

/// Mounts what commands need under `root`. A mount that fails is reported
/// and skipped: commands that do not need it still run.
fn mount_under(root: &str) -> Vec<String> {
    MOUNTS
        .iter()
        .filter_map(|&(source, target, fstype, flags, data)| {
            let target = format!("{}{target}", root.trim_end_matches('/'));
            mount(source, &target, fstype, flags, data)
                .err()
                .map(|e| format!("mounting {fstype} on {target} failed: {e}"))
        })
        .collect()
}

/// Puts the user's image `device` together as the root commands see: the
/// image read-only (never written: its bytes and times stay as they were),
/// a tmpfs overlay on top for whatever commands write, kiln's mounts inside
/// it; then makes it the agent's root, so commands and file transfers
/// alike see it. The agent keeps running from memory (it is static).
fn enter_rootfs(device: &str) -> io::Result<Vec<String>> {
    let lower = format!("{ROOTFS_DIR}/lower");
    let rw = format!("{ROOTFS_DIR}/rw");
    let root = format!("{ROOTFS_DIR}/root");
    let ro = libc::MS_RDONLY | libc::MS_NOATIME;
    // A journal that needs replaying cannot be replayed read-only: then
    // mount without it (`noload`) rather than not at all.
    mount(device, &lower, "ext4", ro, "")
        .or_else(|_| mount(device, &lower, "ext4", ro, "noload"))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mounting the root image {device} (ext4) failed: {e}"),
            )
        })?;
    mount(
        "tmpfs",
        &rw,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    std::fs::create_dir_all(format!("{rw}/upper"))?;
    std::fs::create_dir_all(format!("{rw}/work"))?;
    let options = format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work");
    mount("overlay", &root, "overlay", 0, &options).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("putting the overlay on the root image failed: {e}"),
        )
    })?;
    let problems = mount_under(&root);
    let root_c = cstr(&root)?;
    // SAFETY: a valid NUL-terminated path that outlives the call.
    if unsafe { libc::chroot(root_c.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")?;
    Ok(problems)
}

/// Module files to load at boot, one a line, dependencies first; relative
/// paths are under `/lib/modules` (the convention of kiln's default /init):
/// a distribution kernel with virtio-mmio, virtio-blk or vsock as modules
/// needs them before anything else.
const MODULE_LIST: &str = "/etc/kiln/modules";

/// Loads the modules [`MODULE_LIST`] names; one already loaded is fine.
fn load_modules() -> Vec<String> {
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for line in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let path = if line.starts_with('/') {
            line.to_string()
        } else {
            format!("/lib/modules/{line}")
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("module {path}: {e}"));
                continue;
            }
        };
        // SAFETY: finit_module reads the open module file and an empty,
        // NUL-terminated parameter string; both outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                c"".as_ptr(),
                0,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                problems.push(format!("loading module {path} failed: {err}"));
            }
        }
    }
    problems
}

/// Waits (briefly) for a device node a module's probe is still creating.
fn wait_for(path: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::path::Path::new(path).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Mounts what commands need and, with `kiln.rootfs=DEVICE` on the kernel
/// command line, moves into the user's image first. Returns the problems
/// commands can live with; an image that cannot be used is an error (the
/// caller stops the guest: commands must not silently run elsewhere).
pub fn mount_all() -> io::Result<Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = mount(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ) {
        problems.push(format!("mounting proc on /proc failed: {e}"));
    }
    problems.extend(load_modules());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(device) = rootfs_device(&cmdline) {
        // The device node comes from devtmpfs.
        let _ = mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
        wait_for(device);
        problems.extend(enter_rootfs(device)?);
    } else {
        problems.extend(mount_under("/"));
    }
    // Commands without a working directory of their own start in /work.
    if let Err(e) = std::env::set_current_dir("/work") {
        problems.push(format!("cannot enter /work: {e}"));
    }
    Ok(problems)
}

/// Flushes file systems and powers the machine off. Only returns if the
/// kernel refuses (not PID 1, or no privilege).
pub fn power_off() -> io::Error {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot with RB_POWER_OFF takes no pointers; it returns only on failure.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rootfs_switch_is_found_among_other_words() {
        assert_eq!(
            rootfs_device("console=ttyS0 kiln.rootfs=/dev/vda quiet"),
            Some("/dev/vda")
        );
        assert_eq!(rootfs_device("console=ttyS0 quiet"), None);
        assert_eq!(rootfs_device("kiln.rootfs= quiet"), None);
        assert_eq!(rootfs_device("xkiln.rootfs=/dev/vda"), None);
    }
}

//! The jail's directory: what goes in, entering it, and removing it.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::JailError;
use crate::config::jail::JailConfig;
use crate::config::VmConfig;

/// RLIMIT_NOFILE inside the jail: vsock's 2,048 connections and the rest.
const JAIL_NOFILE: u64 = 4096;

/// A host file bind-mounted into the jail.
struct Bind {
    source: PathBuf,
    /// Its name inside the jail (absolute).
    target: PathBuf,
    read_only: bool,
}

pub struct JailRoot {
    dir: PathBuf,
    binds: Vec<Bind>,
}

fn c_path(p: &Path) -> CString {
    // Paths from the command line or our own joins: no NUL inside.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(JailError::setup(what)(std::io::Error::last_os_error()))
    }
}

/// Whether user `uid`/`gid` may read (and write) the file `meta` describes.
fn permits(meta: &std::fs::Metadata, uid: u32, gid: u32, write: bool) -> bool {
    let mode = meta.mode();
    let bits = if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o4 != 0 && (!write || bits & 0o2 != 0)
}

impl JailRoot {
    /// Creates the directory with everything the VM uses, and rewrites
    /// `config`'s paths to their names inside it.
    pub fn prepare(jail: &JailConfig, config: &mut VmConfig) -> Result<Self, JailError> {
        match std::fs::create_dir(&jail.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let empty = std::fs::read_dir(&jail.dir).is_ok_and(|mut d| d.next().is_none());
                if !empty {
                    return Err(JailError::DirNotEmpty(jail.dir.clone()));
                }
            }
            Err(e) => return Err(JailError::setup(format!("create {}", jail.dir.display()))(e)),
        }
        let mut root = JailRoot {
            dir: jail.dir.clone(),
            binds: Vec::new(),
        };
        if let Err(e) = root.populate(jail, config) {
            root.remove();
            return Err(e);
        }
        Ok(root)
    }

    fn populate(&mut self, jail: &JailConfig, config: &mut VmConfig) -> Result<(), JailError> {
        let (uid, gid) = (jail.uid, jail.gid);
        let chown = |p: &Path| {
            check(
                // SAFETY: a valid C path.
                unsafe { libc::chown(c_path(p).as_ptr(), uid, gid) },
                format!("hand {} to {uid}:{gid}", p.display()),
            )
        };
        // The VM's user owns the root so it can make its sockets there.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o750)).map_err(
            JailError::setup(format!("set the mode of {}", self.dir.display())),
        )?;
        chown(&self.dir)?;
        let mut files: Vec<(PathBuf, String, bool, bool)> =
            vec![(config.kernel.clone(), "kernel".into(), true, false)];
        if let Some(initrd) = &config.initrd {
            files.push((initrd.clone(), "initrd".into(), true, false));
        }
        for (i, d) in config.disks.iter().enumerate() {
            files.push((
                d.block.path.clone(),
                format!("disk{i}"),
                d.block.read_only,
                !d.block.read_only,
            ));
        }
        for (source, name, read_only, write) in files {
            let meta =
                std::fs::metadata(&source).map_err(JailError::setup(format!("use {}", source.display())))?;
            if !permits(&meta, uid, gid, write) {
                return Err(JailError::Setup {
                    what: format!(
                        "use {} in the jail: user {uid}:{gid} may not {} it",
                        source.display(),
                        if write { "read and write" } else { "read" }
                    ),
                    source: std::io::Error::from_raw_os_error(libc::EACCES),
                });
            }
            let target = Path::new("/").join(&name);
            std::fs::File::create(self.dir.join(&name))
                .map_err(JailError::setup(format!("create the mount point {name}")))?;
            self.binds.push(Bind {
                source,
                target,
                read_only,
            });
        }
        config.kernel = PathBuf::from("/kernel");
        if config.initrd.is_some() {
            config.initrd = Some(PathBuf::from("/initrd"));
        }
        for (i, d) in config.disks.iter_mut().enumerate() {
            d.block.path = PathBuf::from(format!("/disk{i}"));
        }
        // /dev/null: where a sandbox's unwanted console goes.
        let mut nodes = vec!["dev/kvm", "dev/null"];
        if !config.nets.is_empty() {
            nodes.push("dev/net/tun");
        }
        for node in nodes {
            let mode = if node == "dev/null" { 0o666 } else { 0o600 };
            let host = Path::new("/").join(node);
            let rdev = std::fs::metadata(&host)
                .map_err(JailError::setup(format!("use {}", host.display())))?
                .rdev();
            let inside = self.dir.join(node);
            if let Some(parent) = inside.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(JailError::setup(format!("create {}", parent.display())))?;
            }
            check(
                // SAFETY: a valid C path; a character device like the host's.
                unsafe { libc::mknod(c_path(&inside).as_ptr(), libc::S_IFCHR | mode, rdev) },
                format!("make {}", inside.display()),
            )?;
            chown(&inside)?;
        }
        // Temporary files and sockets (the sandbox puts its own there).
        let tmp = self.dir.join("tmp");
        std::fs::create_dir(&tmp).map_err(JailError::setup("create tmp"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
            .map_err(JailError::setup("set the mode of tmp"))?;
        if let Some(vsock) = &mut config.vsock {
            // The socket path is the jail's: host peers find it under DIR.
            let inside = Path::new("/").join(&vsock.socket);
            if let Some(parent) = inside.parent().filter(|p| *p != Path::new("/")) {
                let dir = self.dir.join(parent.strip_prefix("/").unwrap_or(parent));
                std::fs::create_dir_all(&dir)
                    .map_err(JailError::setup(format!("create {}", dir.display())))?;
                chown(&dir)?;
            }
            vsock.socket = inside;
        }
        Ok(())
    }

    /// In the forked child: namespaces, the bind mounts, pivot_root, then
    /// the process's own limits and credentials.
    pub fn enter(&self, jail: &JailConfig, keep: &[RawFd]) -> Result<(), JailError> {
        close_other_fds(keep);
        let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        if jail.netns.is_none() {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: unshare(2) of this single-threaded process's namespaces.
        check(unsafe { libc::unshare(flags) }, "make new namespaces")?;
        if let Some(netns) = &jail.netns {
            let file =
                std::fs::File::open(netns).map_err(JailError::setup(format!("open {}", netns.display())))?;
            use std::os::fd::AsRawFd;
            check(
                // SAFETY: a network namespace descriptor we hold.
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                format!("join the network namespace {}", netns.display()),
            )?;
        }
        let none = std::ptr::null();
        // SAFETY (all mount calls): valid C paths or null where mount(2)
        // ignores the argument.
        check(
            unsafe {
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                )
            },
            "make the mounts private",
        )?;
        for bind in &self.binds {
            let target = c_path(
                &self
                    .dir
                    .join(bind.target.strip_prefix("/").unwrap_or(&bind.target)),
            );
            check(
                unsafe {
                    libc::mount(
                        c_path(&bind.source).as_ptr(),
                        target.as_ptr(),
                        none,
                        libc::MS_BIND,
                        none.cast(),
                    )
                },
                format!("bind {}", bind.source.display()),
            )?;
            if bind.read_only {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                check(
                    unsafe { libc::mount(none, target.as_ptr(), none, flags, none.cast()) },
                    format!("make {} read-only", bind.target.display()),
                )?;
            }
        }
        let dir = c_path(&self.dir);
        check(
            unsafe {
                libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    none.cast(),
                )
            },
            "bind the jail onto itself",
        )?;
        std::env::set_current_dir(&self.dir).map_err(JailError::setup("enter the jail"))?;
        // pivot_root(".", "."): the old root ends up under the new one,
        // where a lazy unmount drops it.
        // SAFETY: two valid C paths.
        let pivot = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
        if pivot == 0 {
            // SAFETY: a valid C path.
            check(
                unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) },
                "detach the old root",
            )?;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The root is an initramfs (rootfs), which cannot be pivoted
            // away: move the jail over / and chroot into it, as container
            // runtimes' --no-pivot does. The old root stays only under the
            // moved mount, out of reach once the capabilities are dropped.
            check(
                // SAFETY: valid C paths; null where mount(2) ignores them.
                unsafe { libc::mount(c".".as_ptr(), c"/".as_ptr(), none, libc::MS_MOVE, none.cast()) },
                "move the jail over / (the host root is an initramfs)",
            )?;
            // SAFETY: a valid C path.
            check(unsafe { libc::chroot(c".".as_ptr()) }, "chroot into the jail")?;
        } else {
            return Err(JailError::setup("pivot_root into the jail")(
                std::io::Error::last_os_error(),
            ));
        }
        std::env::set_current_dir("/").map_err(JailError::setup("enter the jail's root"))?;
        // SAFETY: a valid buffer and its length.
        unsafe { libc::sethostname(c"kiln".as_ptr(), 4) };
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        for (resource, limit) in [(libc::RLIMIT_NOFILE, JAIL_NOFILE), (libc::RLIMIT_CORE, 0)] {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: a valid rlimit.
            check(
                unsafe { libc::setrlimit(resource, &rl) },
                "set the jail's rlimits",
            )?;
        }
        let (uid, gid) = (jail.uid, jail.gid);
        // SAFETY: plain credential syscalls on this process; the uid last,
        // while changing the others is still allowed.
        unsafe {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "set no_new_privs",
            )?;
            check(
                libc::setgroups(0, std::ptr::null()),
                "drop the supplementary groups",
            )?;
            check(libc::setresgid(gid, gid, gid), format!("become group {gid}"))?;
            check(libc::setresuid(uid, uid, uid), format!("become user {uid}"))?;
            // A kiln killed by its parent's death, whatever our uid now.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        Ok(())
    }

    /// Removes the directory (outside the jail's mount namespace its
    /// mount points are plain empty files).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Closes every descriptor but 0, 1, 2 and `keep`.
fn close_other_fds(keep: &[RawFd]) {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing descriptors nothing in this process will use
            // again (the directory handle above is already gone).
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_are_checked_for_the_jails_user() {
        let dir = std::env::temp_dir().join(format!("kiln-jail-perm-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        let (owner, group) = (meta.uid(), meta.gid());
        assert!(permits(&meta, owner, 12345, true));
        assert!(permits(&meta, 54321, group, false));
        assert!(!permits(&meta, 54321, group, true));
        assert!(!permits(&meta, 54321, 12345, false));
        std::fs::remove_file(&dir).unwrap();
    }
}

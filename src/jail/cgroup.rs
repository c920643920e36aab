//! A cgroup per jailed VM, on cgroup v2 or v1, whichever hierarchy has the
//! controller a limit needs (hosts with v1 controllers and a v2 mount side
//! by side are common). Keys are written in v2's names (`memory.max`,
//! `cpu.max`, `pids.max`); on v1 they are translated, and v1's own names
//! (`memory.limit_in_bytes`, `cpu.cfs_quota_us`, ...) are accepted there.

use std::path::{Path, PathBuf};

use super::JailError;

/// Controllers kiln sets limits for.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// One mounted hierarchy: where, and which controllers it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub v2: bool,
    pub controllers: Vec<String>,
}

/// The cgroup hierarchies in `mountinfo` (the text of /proc/self/mountinfo);
/// a v2 hierarchy's controllers are read from its cgroup.controllers.
pub fn hierarchies(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = match left.split(' ').nth(4) {
            Some(m) => PathBuf::from(m),
            None => continue,
        };
        let mut right = right.split(' ');
        let (fstype, _source, options) = (right.next(), right.next(), right.next().unwrap_or(""));
        match fstype {
            Some("cgroup2") => {
                let controllers = v2_controllers(&mount)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                found.push(Hierarchy {
                    mount,
                    v2: true,
                    controllers,
                });
            }
            Some("cgroup") => found.push(Hierarchy {
                mount,
                v2: false,
                controllers: options.split(',').map(str::to_string).collect(),
            }),
            _ => {}
        }
    }
    found
}

/// The files to write for `key=value` on a v1 hierarchy, in order.
pub fn v1_writes(key: &str, value: &str) -> Vec<(String, String)> {
    let unlimited = |v: &str| {
        if v == "max" {
            "-1".to_string()
        } else {
            v.to_string()
        }
    };
    match key {
        "memory.max" => vec![("memory.limit_in_bytes".into(), unlimited(value))],
        "cpu.max" => {
            let mut parts = value.split_whitespace();
            let quota = unlimited(parts.next().unwrap_or("max"));
            let mut w = Vec::new();
            // The period first: a quota is checked against it.
            if let Some(period) = parts.next() {
                w.push(("cpu.cfs_period_us".into(), period.to_string()));
            }
            w.push(("cpu.cfs_quota_us".into(), quota));
            w
        }
        _ => vec![(key.to_string(), value.to_string())],
    }
}

/// The VM's cgroups: one directory per hierarchy used.
#[derive(Debug, Default)]
pub struct VmCgroups {
    dirs: Vec<PathBuf>,
}

impl VmCgroups {
    /// Creates `kiln/<name>` in each hierarchy a limit needs and writes the
    /// limits. Nothing is left behind on error.
    pub fn create(name: &str, limits: &[(String, String)]) -> Result<Self, JailError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let found = hierarchies(&mountinfo, |m| {
            std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default()
        });
        let mut cgroups = VmCgroups::default();
        for (key, value) in limits {
            if let Err(e) = cgroups.apply(&found, name, key, value) {
                cgroups.remove();
                return Err(e);
            }
        }
        Ok(cgroups)
    }

    fn apply(&mut self, found: &[Hierarchy], name: &str, key: &str, value: &str) -> Result<(), JailError> {
        let controller = key.split('.').next().unwrap_or_default();
        if !CONTROLLERS.contains(&controller) {
            return Err(JailError::CgroupKey(key.to_string()));
        }
        let has = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller);
        let (hierarchy, writes) = if let Some(h) = found.iter().filter(|h| h.v2).find(has) {
            (h, vec![(key.to_string(), value.to_string())])
        } else if let Some(h) = found.iter().filter(|h| !h.v2).find(has) {
            (h, v1_writes(key, value))
        } else {
            return Err(JailError::NoController(controller.to_string()));
        };
        let parent = hierarchy.mount.join("kiln");
        let dir = parent.join(name);
        let io = |what: String| move |source| JailError::Cgroup { what, source };
        std::fs::create_dir_all(&parent).map_err(io(format!("create {}", parent.display())))?;
        if hierarchy.v2 {
            // Each controller must be handed down to reach kiln/<name>.
            for d in [&hierarchy.mount, &parent] {
                let file = d.join("cgroup.subtree_control");
                std::fs::write(&file, format!("+{controller}"))
                    .map_err(io(format!("enable {controller} in {}", file.display())))?;
            }
        }
        if !self.dirs.contains(&dir) {
            match std::fs::create_dir(&dir) {
                Ok(()) => self.dirs.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(JailError::CgroupExists(dir));
                }
                Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
            }
        }
        for (file, v) in writes {
            let path = dir.join(&file);
            std::fs::write(&path, &v).map_err(io(format!("write {v:?} to {}", path.display())))?;
        }
        Ok(())
    }

    /// Moves process `pid` into every one of the VM's cgroups.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), JailError> {
        for dir in &self.dirs {
            let path = dir.join("cgroup.procs");
            std::fs::write(&path, pid.to_string()).map_err(|source| JailError::Cgroup {
                what: format!("move process {pid} into {}", path.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer struck inside the VM's memory cgroup.
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            ["memory.events", "memory.oom_control"].iter().any(|f| {
                std::fs::read_to_string(d.join(f)).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.strip_prefix("oom_kill ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .is_some_and(|n| n > 0)
                    })
                })
            })
        })
    }

    /// The value a memory limit was set to, for messages.
    pub fn memory_limit(&self) -> Option<String> {
        self.dirs.iter().find_map(|d| {
            ["memory.max", "memory.limit_in_bytes"]
                .iter()
                .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
                .map(|v| v.trim().to_string())
        })
    }

    /// Removes the VM's cgroups (once their processes are gone; a
    /// just-killed process may take a moment to leave).
    pub fn remove(&mut self) {
        for dir in self.dirs.drain(..) {
            for _ in 0..100 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:34 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hierarchies_are_found_with_their_controllers() {
        let found = hierarchies(HYBRID, |_| "hugetlb\n".to_string());
        assert_eq!(found.len(), 4);
        assert_eq!(found[1].mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(!found[1].v2 && found[1].controllers.contains(&"memory".to_string()));
        assert!(found[3].v2 && found[3].controllers == vec!["hugetlb".to_string()]);
        let v2 = hierarchies(
            "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
            |_| "cpuset cpu io memory pids".to_string(),
        );
        assert!(v2[0].v2 && v2[0].controllers.contains(&"memory".to_string()));
    }

    #[test]
    fn v2_keys_become_v1_writes() {
        assert_eq!(
            v1_writes("memory.max", "64M"),
            vec![("memory.limit_in_bytes".to_string(), "64M".to_string())]
        );
        assert_eq!(
            v1_writes("cpu.max", "50000 100000"),
            vec![
                ("cpu.cfs_period_us".to_string(), "100000".to_string()),
                ("cpu.cfs_quota_us".to_string(), "50000".to_string())
            ]
        );
        assert_eq!(
            v1_writes("cpu.max", "max"),
            vec![("cpu.cfs_quota_us".to_string(), "-1".to_string())]
        );
        assert_eq!(
            v1_writes("pids.max", "64"),
            vec![("pids.max".to_string(), "64".to_string())]
        );
        assert_eq!(
            v1_writes("memory.limit_in_bytes", "1G"),
            vec![("memory.limit_in_bytes".to_string(), "1G".to_string())]
        );
    }
}

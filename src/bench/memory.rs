//! What a running contender costs in memory, read from /proc: the
//! process tree it started, and per process the resident and proportional
//! sizes of its mappings (`/proc/PID/smaps`).
//!
//! Two figures, as Firecracker's own tests count them:
//! - **overhead**: resident memory of the VMM (or runtime) itself, i.e.
//!   everything but the guest's RAM mapping, and for a container everything
//!   but the container's own processes (those in another PID namespace);
//!   helper processes it forked (kiln's teardown child) add only their
//!   private pages, since the rest they share with it;
//! - **total**: the proportional set size of the whole tree, guest pages
//!   touched and the container's workload included: what N of them cost
//!   together, shared pages counted once.

use std::collections::HashMap;

/// Memory one running instance takes, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MemoryUse {
    /// Resident memory of the monitor or runtime, guest RAM and the
    /// container's processes left out.
    pub overhead_kib: u64,
    /// Proportional set size of everything the instance runs.
    pub total_kib: u64,
}

/// One mapping of a `smaps` file: its size and the resident and
/// proportional parts, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mapping {
    pub size_kib: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps.
    pub private_kib: u64,
}

/// The mappings of a `/proc/PID/smaps` text, in order.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        // A mapping's header starts with its address range ("start-end").
        if key.contains('-') && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            continue;
        }
        let value = || rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
        match key {
            "Size" => out.push(Mapping {
                size_kib: value().unwrap_or(0),
                ..Mapping::default()
            }),
            "Rss" => {
                if let (Some(m), Some(v)) = (out.last_mut(), value()) {
                    m.rss_kib = v;
                }
            }
            "Pss" => {
                if let (Some(m), Some(v)) = (out.last_mut(), value()) {
                    m.pss_kib = v;
                }
            }
            "Private_Clean" | "Private_Dirty" => {
                if let (Some(m), Some(v)) = (out.last_mut(), value()) {
                    m.private_kib += v;
                }
            }
            _ => {}
        }
    }
    out
}

/// One process of an instance's tree, as far as memory goes.
#[derive(Debug, Clone, Default)]
pub struct ProcessMemory {
    pub mappings: Vec<Mapping>,
    /// In another PID namespace than the process the bench started: a
    /// container's own process.
    pub contained: bool,
    /// The process the bench started (its resident pages count whole).
    pub root: bool,
}

/// The two figures for a tree of processes; `guest_kib` is the size of
/// the guest RAM mapping of a VMM (one mapping of exactly that size is
/// guest memory), None for a container.
pub fn memory_use(tree: &[ProcessMemory], guest_kib: Option<u64>) -> MemoryUse {
    let mut use_ = MemoryUse::default();
    for process in tree {
        let mut guest_left = guest_kib.is_some();
        for m in &process.mappings {
            use_.total_kib += m.pss_kib;
            if process.contained {
                continue;
            }
            if guest_left && Some(m.size_kib) == guest_kib {
                guest_left = false;
                continue;
            }
            use_.overhead_kib += if process.root { m.rss_kib } else { m.private_kib };
        }
    }
    use_
}

/// `root` and its descendants, from the parent pids in /proc.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(ppid) = parent_of(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(kids) = children.get(&tree[next]) {
            tree.extend(kids);
        }
        next += 1;
    }
    tree
}

/// The parent pid from a `/proc/PID/stat` line (the name in parentheses
/// may itself hold spaces and parentheses).
pub fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Reads the memory of `root`'s tree now. Processes that end meanwhile are
/// left out.
pub fn measure(root: u32, guest_kib: Option<u64>) -> MemoryUse {
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let root_ns = ns(root);
    let tree: Vec<ProcessMemory> = process_tree(root)
        .into_iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
            Some(ProcessMemory {
                mappings: parse_smaps(&text),
                contained: ns(pid) != root_ns,
                root: pid == root,
            })
        })
        .collect();
    memory_use(&tree, guest_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 1234   /usr/bin/kiln
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 400 kB
Shared_Clean:        800 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               20480 kB
Pss:               20480 kB
Private_Dirty:     20480 kB
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
Private_Clean:         4 kB
Private_Dirty:         8 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn smaps_gives_each_mapping_with_its_sizes() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 3);
        assert_eq!(
            maps[1],
            Mapping {
                size_kib: 65536,
                rss_kib: 20480,
                pss_kib: 20480,
                private_kib: 20480
            }
        );
        assert_eq!((maps[2].rss_kib, maps[2].private_kib), (12, 12));
        assert_eq!(maps[0].private_kib, 0);
        assert!(parse_smaps("garbage\n: kB\nRss: x kB\n").is_empty());
    }

    #[test]
    fn overhead_leaves_out_guest_ram_and_the_containers_processes() {
        let vmm = ProcessMemory {
            mappings: parse_smaps(SMAPS),
            contained: false,
            root: true,
        };
        let vm = memory_use(std::slice::from_ref(&vmm), Some(65536));
        assert_eq!(
            vm,
            MemoryUse {
                overhead_kib: 812,
                total_kib: 20892
            }
        );
        // Without a guest size, every mapping is the process's own.
        assert_eq!(memory_use(std::slice::from_ref(&vmm), None).overhead_kib, 21292);
        let workload = ProcessMemory {
            mappings: vec![Mapping {
                size_kib: 100,
                rss_kib: 50,
                pss_kib: 30,
                private_kib: 20,
            }],
            contained: true,
            root: false,
        };
        let container = memory_use(&[vmm.clone(), workload], None);
        assert_eq!(container.overhead_kib, 21292);
        assert_eq!(container.total_kib, 20892 + 30);
        // A forked helper adds its private pages only.
        let helper = ProcessMemory {
            mappings: parse_smaps(SMAPS),
            contained: false,
            root: false,
        };
        let with_helper = memory_use(&[vmm, helper], Some(65536));
        assert_eq!(with_helper.overhead_kib, 812 + 12);
    }

    #[test]
    fn parent_pids_come_from_after_the_name() {
        assert_eq!(parent_of("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_of("nonsense"), None);
    }

    #[test]
    fn this_process_is_measured_with_its_children() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let tree = process_tree(std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
        let m = measure(std::process::id(), None);
        assert!(m.overhead_kib > 0 && m.total_kib > 0, "{m:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

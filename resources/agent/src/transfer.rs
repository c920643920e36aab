//! File and directory transfer, the same on both ends: [`send_tree`] walks
//! a local file or tree into [`Entry`]s and data chunks; [`TreeWriter`]
//! turns them back into files under a destination. The writer trusts no
//! path it is given: each must be plain and relative, may not pass through
//! a symlink or a file, and limits bound what a peer can make it write.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::protocol::{Entry, ProtocolError, MAX_CHUNK};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: the name is not UTF-8, which the transfer protocol cannot carry; rename it")]
    NotUtf8(PathBuf),
    #[error(
        "refusing entry path {0:?}: paths must be relative, '/'-separated, without '.', '..' \
         or empty parts"
    )]
    BadPath(String),
    #[error("refusing {path:?}: {via:?} in the destination is not a directory (a symlink or a file)")]
    ThroughNonDir { path: String, via: PathBuf },
    #[error("the first entry of a transfer must be its root (path \"\"), not {0:?}")]
    RootNotFirst(String),
    #[error("entry {0:?} follows a root that is not a directory")]
    NotUnderDir(String),
    #[error("a second root entry arrived in one transfer")]
    SecondRoot,
    #[error("file data arrived without a file entry before it")]
    DataWithoutFile,
    #[error("the transfer ended without any entry")]
    Empty,
    #[error("the transfer passed its limit of {limit} bytes; raise the limit or move less")]
    TooLarge { limit: u64 },
    #[error("the transfer passed its limit of {limit} entries; raise the limit or move less")]
    TooManyEntries { limit: u64 },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One step of a transfer.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Entry(Entry),
    Data(Vec<u8>),
}

/// Bounds on what a [`TreeWriter`] writes for its peer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
    };
}

fn utf8(path: &Path, part: &std::ffi::OsStr) -> Result<String, TransferError> {
    part.to_str()
        .map(str::to_string)
        .ok_or_else(|| TransferError::NotUtf8(path.to_path_buf()))
}

fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// Walks `root` (followed if it is a symlink; symlinks below it are sent
/// as symlinks) and hands each entry and data chunk to `emit`. FIFOs,
/// sockets and devices are skipped: reading them could block forever.
pub fn send_tree(
    root: &Path,
    mut emit: impl FnMut(Item) -> Result<(), TransferError>,
) -> Result<(), TransferError> {
    let meta = fs::metadata(root).map_err(io_err(root))?;
    // An explicit stack: a deep tree must not overflow ours.
    let mut stack = vec![(root.to_path_buf(), String::new(), meta)];
    while let Some((path, rel, meta)) = stack.pop() {
        let mode = mode_of(&meta);
        let kind = meta.file_type();
        if kind.is_dir() {
            emit(Item::Entry(Entry::Dir {
                path: rel.clone(),
                mode,
            }))?;
            let mut children = Vec::new();
            for child in fs::read_dir(&path).map_err(io_err(&path))? {
                let child = child.map_err(io_err(&path))?;
                let child_path = child.path();
                let name = utf8(&child_path, &child.file_name())?;
                let child_meta = fs::symlink_metadata(&child_path).map_err(io_err(&child_path))?;
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                children.push((child_path, child_rel, child_meta));
            }
            // Sorted, reversed onto the stack: entries go out in name order.
            children.sort_by(|a, b| b.1.cmp(&a.1));
            stack.extend(children);
        } else if kind.is_file() {
            emit(Item::Entry(Entry::File { path: rel, mode }))?;
            let mut file = File::open(&path).map_err(io_err(&path))?;
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                emit(Item::Data(buf[..n].to_vec()))?;
            }
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let target = utf8(&path, target.as_os_str())?;
            emit(Item::Entry(Entry::Symlink { path: rel, target }))?;
        }
    }
    Ok(())
}

/// Checks an entry path: "" (the root) or plain names joined by '/'.
fn check_rel(path: &str) -> Result<Vec<&str>, TransferError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = path.split('/').collect();
    let bad = |p: &&str| p.is_empty() || *p == "." || *p == ".." || p.contains('\0');
    if parts.iter().any(bad) {
        return Err(TransferError::BadPath(path.to_string()));
    }
    Ok(parts)
}

/// Writes a transfer's entries under `dest`. The root entry becomes `dest`
/// itself (its parent directories are created); everything else must lie
/// in directories this transfer or the destination already has.
pub struct TreeWriter {
    dest: PathBuf,
    limits: Limits,
    /// Set by the root entry: whether it is a directory (entries may follow).
    root_is_dir: Option<bool>,
    file: Option<(File, PathBuf, u32)>,
    /// Directory modes, applied at the end so a read-only directory can still be filled.
    dir_modes: Vec<(PathBuf, u32)>,
    /// Directories this transfer made or checked: no need to check them again.
    known_dirs: HashSet<PathBuf>,
    bytes: u64,
    entries: u64,
}

impl TreeWriter {
    pub fn new(dest: impl Into<PathBuf>, limits: Limits) -> Self {
        TreeWriter {
            dest: dest.into(),
            limits,
            root_is_dir: None,
            file: None,
            dir_modes: Vec::new(),
            known_dirs: HashSet::new(),
            bytes: 0,
            entries: 0,
        }
    }

    pub fn item(&mut self, item: Item) -> Result<(), TransferError> {
        match item {
            Item::Entry(entry) => self.entry(entry),
            Item::Data(data) => self.data(&data),
        }
    }

    pub fn entry(&mut self, entry: Entry) -> Result<(), TransferError> {
        self.close_file()?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(TransferError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let rel = match &entry {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path.clone(),
        };
        let is_root = rel.is_empty();
        if is_root {
            if self.root_is_dir.is_some() {
                return Err(TransferError::SecondRoot);
            }
            self.root_is_dir = Some(matches!(entry, Entry::Dir { .. }));
        } else {
            match self.root_is_dir {
                None => return Err(TransferError::RootNotFirst(rel)),
                Some(false) => return Err(TransferError::NotUnderDir(rel)),
                Some(true) => {}
            }
        }
        let target = self.target(&rel)?;
        if is_root {
            if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
        }
        match entry {
            Entry::Dir { mode, .. } => {
                // The root may already exist (and may be a symlink to a
                // directory the user named); anything below may not be a symlink.
                let existing = if is_root {
                    fs::metadata(&target)
                } else {
                    fs::symlink_metadata(&target)
                };
                match existing {
                    Ok(meta) if meta.is_dir() => {}
                    _ => fs::create_dir(&target).map_err(io_err(&target))?,
                }
                self.known_dirs.insert(target.clone());
                self.dir_modes.push((target, mode & 0o7777));
            }
            Entry::File { mode, .. } => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err(&target))?;
                self.file = Some((file, target, mode & 0o7777));
            }
            Entry::Symlink { target: to, .. } => {
                if let Ok(meta) = fs::symlink_metadata(&target) {
                    if !meta.is_dir() {
                        fs::remove_file(&target).map_err(io_err(&target))?;
                    }
                }
                std::os::unix::fs::symlink(&to, &target).map_err(io_err(&target))?;
            }
        }
        Ok(())
    }

    /// Where `rel` lands, after checking it and every directory on the way.
    fn target(&mut self, rel: &str) -> Result<PathBuf, TransferError> {
        let parts = check_rel(rel)?;
        let Some((last, parents)) = parts.split_last() else {
            return Ok(self.dest.clone());
        };
        let mut dir = self.dest.clone();
        for part in parents {
            dir.push(part);
            if self.known_dirs.contains(&dir) {
                continue;
            }
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {
                    self.known_dirs.insert(dir.clone());
                }
                _ => {
                    return Err(TransferError::ThroughNonDir {
                        path: rel.to_string(),
                        via: dir,
                    })
                }
            }
        }
        Ok(dir.join(last))
    }

    pub fn data(&mut self, data: &[u8]) -> Result<(), TransferError> {
        let Some((file, path, _)) = self.file.as_mut() else {
            return Err(TransferError::DataWithoutFile);
        };
        self.bytes = self.bytes.saturating_add(data.len() as u64);
        if self.bytes > self.limits.max_bytes {
            return Err(TransferError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        file.write_all(data).map_err(io_err(path))
    }

    fn close_file(&mut self) -> Result<(), TransferError> {
        if let Some((file, path, mode)) = self.file.take() {
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Ends the transfer: closes the last file and sets directory modes.
    pub fn finish(mut self) -> Result<(), TransferError> {
        self.close_file()?;
        if self.root_is_dir.is_none() {
            return Err(TransferError::Empty);
        }
        for (dir, mode) in self.dir_modes.iter().rev() {
            fs::set_permissions(dir, Permissions::from_mode(*mode)).map_err(io_err(dir))?;
        }
        Ok(())
    }
}

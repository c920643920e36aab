//! `--jail DIR[,uid=U][,gid=G][,netns=PATH][,cgroup=KEY=VALUE]...`: where
//! and as whom a jailed kiln runs (see `crate::jail`).

use std::path::PathBuf;

/// The user and group a jail drops to when none is given: nobody/nogroup.
pub const DEFAULT_JAIL_ID: u32 = 65534;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JailSpecError {
    #[error("--jail needs a directory first: DIR[,uid=U][,gid=G][,netns=PATH][,cgroup=KEY=VALUE]...")]
    NoDir,
    #[error("--jail {0:?}: the directory must be an absolute path")]
    RelativeDir(String),
    #[error("--jail option {0:?}: expected uid=U, gid=G, netns=PATH or cgroup=KEY=VALUE")]
    UnknownOption(String),
    #[error("--jail {key}={value:?}: expected a number from 0 to {max}", max = u32::MAX - 1)]
    BadId { key: &'static str, value: String },
    #[error("--jail {0}= is given twice")]
    Twice(&'static str),
    #[error("--jail cgroup={0:?}: expected cgroup=KEY=VALUE with KEY like memory.max, cpu.max or pids.max")]
    BadCgroup(String),
}

/// A parsed `--jail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    /// The per-VM directory kiln creates, enters and removes.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// A network namespace to join (e.g. /var/run/netns/NAME); without
    /// it the VM gets a new, empty one.
    pub netns: Option<PathBuf>,
    /// cgroup files and the values written to them, in order.
    pub cgroups: Vec<(String, String)>,
}

fn id(key: &'static str, value: &str) -> Result<u32, JailSpecError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| JailSpecError::BadId {
            key,
            value: value.to_string(),
        })
}

/// A cgroup key: `controller.file`, letters, digits and '_' in each part,
/// so it can never name a path outside the VM's cgroup.
fn valid_cgroup_key(key: &str) -> bool {
    let mut parts = key.split('.');
    parts.clone().count() >= 2
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

pub fn parse(spec: &str) -> Result<JailConfig, JailSpecError> {
    let mut items = spec.split(',');
    let dir = items
        .next()
        .filter(|d| !d.is_empty())
        .ok_or(JailSpecError::NoDir)?;
    let dir = dir.strip_prefix("dir=").unwrap_or(dir);
    if !dir.starts_with('/') {
        return Err(JailSpecError::RelativeDir(dir.to_string()));
    }
    let mut jail = JailConfig {
        dir: PathBuf::from(dir),
        uid: DEFAULT_JAIL_ID,
        gid: DEFAULT_JAIL_ID,
        netns: None,
        cgroups: Vec::new(),
    };
    let (mut uid, mut gid) = (None, None);
    for item in items {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| JailSpecError::UnknownOption(item.to_string()))?;
        match key {
            "uid" if uid.is_some() => return Err(JailSpecError::Twice("uid")),
            "uid" => uid = Some(id("uid", value)?),
            "gid" if gid.is_some() => return Err(JailSpecError::Twice("gid")),
            "gid" => gid = Some(id("gid", value)?),
            "netns" if jail.netns.is_some() => return Err(JailSpecError::Twice("netns")),
            "netns" if value.is_empty() => return Err(JailSpecError::UnknownOption(item.to_string())),
            "netns" => jail.netns = Some(PathBuf::from(value)),
            "cgroup" => match value.split_once('=') {
                Some((k, v)) if valid_cgroup_key(k) && !v.is_empty() && !v.contains('\n') => {
                    jail.cgroups.push((k.to_string(), v.to_string()))
                }
                _ => return Err(JailSpecError::BadCgroup(value.to_string())),
            },
            _ => return Err(JailSpecError::UnknownOption(item.to_string())),
        }
    }
    jail.uid = uid.unwrap_or(DEFAULT_JAIL_ID);
    jail.gid = gid.unwrap_or(DEFAULT_JAIL_ID);
    Ok(jail)
}

/// The spec: it parses back to the same jail (given paths without commas).
impl std::fmt::Display for JailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},uid={},gid={}", self.dir.display(), self.uid, self.gid)?;
        if let Some(netns) = &self.netns {
            write!(f, ",netns={}", netns.display())?;
        }
        for (key, value) in &self.cgroups {
            write!(f, ",cgroup={key}={value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for JailConfig {
    type Err = JailSpecError;

    fn from_str(spec: &str) -> Result<Self, JailSpecError> {
        parse(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jail_writes_back_to_a_spec_that_parses_to_it() {
        for spec in [
            "/srv/j",
            "/srv/j,uid=5,gid=6,netns=/run/netns/a,cgroup=memory.max=1G,cgroup=pids.max=9",
        ] {
            let j: JailConfig = spec.parse().unwrap();
            assert_eq!(j.to_string().parse::<JailConfig>().unwrap(), j, "{spec}");
        }
    }

    #[test]
    fn jail_specs_parse() {
        let j = parse("/srv/jail/vm1,uid=1000,gid=100,netns=/var/run/netns/a,cgroup=memory.max=1G,cgroup=cpu.max=50000 100000").unwrap();
        assert_eq!(j.dir, PathBuf::from("/srv/jail/vm1"));
        assert_eq!((j.uid, j.gid), (1000, 100));
        assert_eq!(j.netns, Some(PathBuf::from("/var/run/netns/a")));
        assert_eq!(
            j.cgroups,
            vec![
                ("memory.max".to_string(), "1G".to_string()),
                ("cpu.max".to_string(), "50000 100000".to_string())
            ]
        );
        let j = parse("dir=/j").unwrap();
        assert_eq!((j.uid, j.gid, j.netns, j.cgroups.len()), (65534, 65534, None, 0));
    }

    #[test]
    fn bad_jail_specs_say_why() {
        for (spec, why) in [
            ("", "needs a directory"),
            ("jail", "absolute path"),
            ("/j,uid=x", "uid=\"x\": expected a number"),
            ("/j,uid=1,uid=2", "uid= is given twice"),
            ("/j,bogus", "expected uid=U"),
            ("/j,cgroup=memory", "cgroup=KEY=VALUE"),
            ("/j,cgroup=../../x=1", "cgroup=KEY=VALUE"),
            ("/j,cgroup=memory.max=", "cgroup=KEY=VALUE"),
            ("/j,netns=", "expected uid=U"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}

//! `--vsock cid=N,socket=PATH`: the VM's virtio-vsock device, with the
//! host side on Unix sockets in Firecracker's scheme: the host connects to
//! `PATH` to reach the guest; a guest connecting to host port P reaches
//! `PATH_P`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::spec::{Key, Spec, SpecError};
use super::ConfigError;

const KEYS: &[Key] = &[
    Key::value("cid", "N").required(),
    Key::value("socket", "PATH").required(),
];

/// CIDs 0 to 2 are the hypervisor, the local loopback and the host.
pub const MIN_GUEST_CID: u32 = 3;
/// `VMADDR_CID_ANY`: a wildcard, not an address.
pub const CID_ANY: u32 = u32::MAX;
/// Longest path a Unix socket address holds (`sun_path` less the NUL).
pub const MAX_SUN_PATH: usize = 107;
/// Room the `_P` suffix of a guest-initiated connection needs: '_' and
/// the ten digits of the largest port.
pub const PORT_SUFFIX_LEN: usize = 1 + 10;
/// Longest `socket=` path.
pub const MAX_SOCKET_PATH: usize = MAX_SUN_PATH - PORT_SUFFIX_LEN;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cid={0}: expected a number from {MIN_GUEST_CID} to {max}", max = CID_ANY - 1)]
    BadCid(String),
    #[error(
        "cid {0} is reserved (0 to 2 are the hypervisor, loopback and host, {CID_ANY} means any); \
         use {MIN_GUEST_CID} to {max}", max = CID_ANY - 1
    )]
    ReservedCid(u32),
    #[error("the vsock socket path is empty; give the path kiln should listen on")]
    EmptySocket,
    #[error("the vsock socket path {0:?} contains a NUL byte")]
    SocketNul(PathBuf),
    #[error(
        "the vsock socket path {path:?} is {len} bytes; use at most {MAX_SOCKET_PATH}, so that \
         it and its _PORT suffix fit a Unix socket address ({MAX_SUN_PATH} bytes)"
    )]
    SocketTooLong { path: PathBuf, len: usize },
    #[error("the vsock socket path {0:?} names a directory; give a file name in it")]
    SocketNotAFile(PathBuf),
    #[error("the directory of the vsock socket {path:?} does not exist; create {dir:?} first")]
    NoSocketDir { path: PathBuf, dir: PathBuf },
}

/// The vsock device. Plain data: the command line and the API both build
/// it, then call [`VsockConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id.
    pub cid: u32,
    /// The Unix socket kiln listens on for host-initiated connections;
    /// guest-initiated ones to port P go to `{socket}_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    /// Checks the CID and that the socket paths can be bound: they fit a
    /// socket address and their directory exists (the one host check).
    pub fn validate(&self) -> Result<(), VsockError> {
        if self.cid < MIN_GUEST_CID || self.cid == CID_ANY {
            return Err(VsockError::ReservedCid(self.cid));
        }
        let bytes = self.socket.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(VsockError::EmptySocket);
        }
        if bytes.contains(&0) {
            return Err(VsockError::SocketNul(self.socket.clone()));
        }
        if bytes.len() > MAX_SOCKET_PATH {
            return Err(VsockError::SocketTooLong {
                path: self.socket.clone(),
                len: bytes.len(),
            });
        }
        // `Path::file_name` forgets a trailing '/', which bind would not.
        if bytes.ends_with(b"/") || self.socket.file_name().is_none() {
            return Err(VsockError::SocketNotAFile(self.socket.clone()));
        }
        let dir = match self.socket.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(VsockError::NoSocketDir {
                path: self.socket.clone(),
                dir: dir.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// Parses and validates one `--vsock` spec. The entry point for a fuzz
/// target too.
pub fn parse(spec: &str) -> Result<VsockConfig, ConfigError> {
    parse_spec(spec).map_err(|why| ConfigError::BadVsock {
        spec: spec.to_string(),
        why,
    })
}

fn parse_spec(text: &str) -> Result<VsockConfig, VsockError> {
    let spec = Spec::parse(text, KEYS)?;
    let cid = spec.value("cid").unwrap_or_default();
    // u32's parser alone would take "+3".
    if !cid.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VsockError::BadCid(cid.to_string()));
    }
    let vsock = VsockConfig {
        cid: cid.parse().map_err(|_| VsockError::BadCid(cid.to_string()))?,
        socket: PathBuf::from(spec.value("socket").unwrap_or_default()),
    };
    vsock.validate()?;
    Ok(vsock)
}

/// The spec: it parses back to the same device (given a path without
/// commas).
impl std::fmt::Display for VsockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cid={},socket={}", self.cid, self.socket.display())
    }
}

impl std::str::FromStr for VsockConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        parse(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vsock_writes_back_to_a_spec_that_parses_to_it() {
        let v: VsockConfig = "cid=7,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(v.to_string().parse::<VsockConfig>().unwrap(), v);
    }

    #[test]
    fn vsock_specs_parse() {
        assert_eq!(
            parse("cid=3,socket=/tmp/vm1.vsock").unwrap(),
            VsockConfig {
                cid: 3,
                socket: "/tmp/vm1.vsock".into()
            }
        );
        let top = parse("socket=vm.sock,cid=4294967294").unwrap();
        assert_eq!((top.cid, top.socket), (CID_ANY - 1, "vm.sock".into()));
        assert_eq!(parse("cid=007,socket=./v").unwrap().cid, 7);
    }

    #[test]
    fn bad_vsock_specs_say_why() {
        for (spec, why) in [
            ("", "nothing given; use cid=N, socket=PATH"),
            ("cid=3", "socket=PATH is required"),
            ("socket=/tmp/v", "cid=N is required"),
            ("cid=3,socket=", "the value of socket is empty"),
            ("cid=3,cid=4,socket=/tmp/v", "option cid is given more than once"),
            ("cid=3,socket=/tmp/v,port=5", "unknown option \"port\""),
            (
                "cid=three,socket=/tmp/v",
                "cid=three: expected a number from 3 to 4294967294",
            ),
            ("cid=+3,socket=/tmp/v", "expected a number"),
            ("cid=-1,socket=/tmp/v", "expected a number"),
            ("cid=4294967296,socket=/tmp/v", "expected a number"),
            ("cid=0,socket=/tmp/v", "cid 0 is reserved"),
            ("cid=2,socket=/tmp/v", "cid 2 is reserved"),
            ("cid=4294967295,socket=/tmp/v", "cid 4294967295 is reserved"),
            ("cid=3,socket=/tmp/", "names a directory"),
            ("cid=3,socket=/", "names a directory"),
            ("cid=3,socket=/tmp/..", "names a directory"),
            (
                "cid=3,socket=/nonexistent-kiln-dir/v",
                "create \"/nonexistent-kiln-dir\" first",
            ),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--vsock {spec:?}: ")), "{err}");
            assert!(err.contains(why), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: {err}");
        }
    }

    #[test]
    fn socket_paths_leave_room_for_the_port_suffix() {
        // "/tmp/" and a name: exactly at the limit, and one over.
        let name = "v".repeat(MAX_SOCKET_PATH - "/tmp/".len());
        let longest = format!("/tmp/{name}");
        assert_eq!(longest.len(), MAX_SOCKET_PATH);
        let vsock = parse(&format!("cid=3,socket={longest}")).unwrap();
        let guest_side = format!("{}_{}", longest, u32::MAX);
        assert_eq!(guest_side.len(), MAX_SUN_PATH);
        assert_eq!(vsock.validate(), Ok(()));

        let too_long = format!("{longest}v");
        let err = parse(&format!("cid=3,socket={too_long}")).unwrap_err();
        assert!(err.to_string().contains("is 97 bytes; use at most 96"), "{err}");
    }

    #[test]
    fn api_built_vsock_gets_the_same_checks() {
        let mut vsock = VsockConfig {
            cid: 3,
            socket: PathBuf::new(),
        };
        assert_eq!(vsock.validate(), Err(VsockError::EmptySocket));
        vsock.socket = "a\0b".into();
        assert_eq!(vsock.validate(), Err(VsockError::SocketNul("a\0b".into())));
        vsock.socket = "in-the-working-directory.sock".into();
        assert_eq!(vsock.validate(), Ok(()));
        vsock.cid = 1;
        assert_eq!(vsock.validate(), Err(VsockError::ReservedCid(1)));
    }
}

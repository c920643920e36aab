//! Ethernet frames between a NIC model and the host network.
//!
//! A [`NetBackend`] moves whole frames, one per call, each led by a
//! virtio-net style header of the length set with
//! [`NetBackend::set_vnet_hdr_len`]. The backend treats the header as bytes
//! it hands to (or gets from) the host; parsing and validating it is the
//! device model's job, so nothing here knows about virtio.
//!
//! [`TapBackend`] is a Linux tap interface (the production backend);
//! [`SocketBackend`] is a connected datagram socket carrying one frame per
//! message, which is what tests use and what user-space network stacks with
//! a datagram interface speak.
//!
//! Frames arrive in and leave from `VolatileSlice`s (guest memory, or a
//! local buffer via `VolatileSlice::from(&mut [u8])`): the guest may change
//! them at any time, so only the kernel touches them, through iovecs.

use std::ffi::CString;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use libc::{c_int, c_short, c_uint, c_ulong};
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::VolatileSlice;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// The tun/tap clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Header length set when a tap is opened: `virtio_net_hdr_v1`, which
/// virtio 1.x drivers always use (it includes `num_buffers`).
pub const DEFAULT_VNET_HDR_LEN: usize = 12;
/// The kernel refuses vnet headers shorter than the legacy
/// `virtio_net_hdr` (10 bytes).
pub const MIN_VNET_HDR_LEN: usize = 10;
/// Most buffers one frame may be spread over: the kernel refuses more than
/// 1024 iovecs in one call (a frame cannot be split over calls), and one is
/// kept for detecting frames that do not fit.
pub const MAX_FRAME_BUFFERS: usize = 1023;

/// Tap, no packet-information prefix, vnet header on every frame. Not
/// IFF_ONE_QUEUE: Linux has ignored it since 3.8. Not IFF_MULTI_QUEUE: one
/// queue pair, and an existing multi-queue tap would refuse us anyway.
const TAP_FLAGS: c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short;

/// Offloads the receiver of frames read from a backend (the guest) accepts:
/// partial checksums and segmentation it will finish itself. Offloading
/// less than the receiver accepts is always safe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (`NEEDS_CSUM`).
    pub csum: bool,
    /// TCP over IPv4 segmentation (large frames).
    pub tso4: bool,
    /// TCP over IPv6 segmentation.
    pub tso6: bool,
    /// Segmented TCP frames may have the ECN CWR bit set.
    pub tso_ecn: bool,
    /// UDP fragmentation offload (Linux no longer produces it, but accepts
    /// the flag).
    pub ufo: bool,
    /// UDP segmentation over IPv4.
    pub uso4: bool,
    /// UDP segmentation over IPv6.
    pub uso6: bool,
}

impl Offloads {
    pub const NONE: Self = Self {
        csum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
        ufo: false,
        uso4: false,
        uso6: false,
    };
    pub const ALL: Self = Self {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
        ufo: true,
        uso4: true,
        uso6: true,
    };

    /// The offloads in both `self` and `other`.
    pub fn intersection(self, other: Self) -> Self {
        Self {
            csum: self.csum && other.csum,
            tso4: self.tso4 && other.tso4,
            tso6: self.tso6 && other.tso6,
            tso_ecn: self.tso_ecn && other.tso_ecn,
            ufo: self.ufo && other.ufo,
            uso4: self.uso4 && other.uso4,
            uso6: self.uso6 && other.uso6,
        }
    }

    /// The `TUNSETOFFLOAD` argument, reduced to a combination the kernel
    /// accepts: every offload needs checksum offload, ECN needs TCP
    /// segmentation, and UDP segmentation goes for both IP versions or
    /// neither. Anything else makes the ioctl fail with EINVAL.
    pub fn tun_flags(self) -> c_uint {
        if !self.csum {
            return 0;
        }
        let mut flags = libc::TUN_F_CSUM;
        if self.tso4 {
            flags |= libc::TUN_F_TSO4;
        }
        if self.tso6 {
            flags |= libc::TUN_F_TSO6;
        }
        if self.tso_ecn && (self.tso4 || self.tso6) {
            flags |= libc::TUN_F_TSO_ECN;
        }
        if self.ufo {
            flags |= libc::TUN_F_UFO;
        }
        if self.uso4 && self.uso6 {
            flags |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
        }
        flags
    }
}

/// A tap name the kernel would refuse (or rename). Its own type so the
/// configuration can check names with the very rule [`TapBackend::open`]
/// applies, long before a tap is opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceNameError {
    #[error("tap name {name:?} is {len} bytes; Linux allows at most {MAX_IFNAME_LEN}")]
    TooLong { name: String, len: usize },
    #[error("tap name {name:?} {reason}; use letters, digits, '-' or '_'")]
    Invalid { name: String, reason: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum NetBackendError {
    #[error("{TUN_PATH} is missing or has no driver behind it; load the tun module (modprobe tun)")]
    NoTunDevice,
    #[error("no permission to open {TUN_PATH}; give kiln's user read-write access to it")]
    TunPermission,
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(io::Error),
    #[error(transparent)]
    Name(#[from] InterfaceNameError),
    #[error(
        "cannot create tap {name}: kiln lacks CAP_NET_ADMIN; create the tap beforehand \
         (ip tuntap add {name} mode tap user <kiln's user>) or grant kiln CAP_NET_ADMIN"
    )]
    CreatePermission { name: String },
    #[error(
        "tap {name} belongs to another user or group and kiln lacks CAP_NET_ADMIN; recreate it \
         with ip tuntap add {name} mode tap user <kiln's user>, or grant kiln CAP_NET_ADMIN"
    )]
    AttachPermission { name: String },
    #[error(
        "tap {name} is already in use (by another process, or another NIC of this VM); stop that \
         user or use another tap"
    )]
    Busy { name: String },
    #[error(
        "network interface {name} exists but is not a single-queue tap; use another name, or \
         recreate it with ip tuntap add {name} mode tap"
    )]
    NotATap { name: String },
    #[error("cannot attach to tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    #[error("cannot set the vnet header length of {name} to {len} bytes: {source}")]
    SetVnetHdrLen {
        name: String,
        len: usize,
        source: io::Error,
    },
    #[error("cannot set offloads {flags:#x} on {name}: {source}")]
    SetOffloads {
        name: String,
        flags: c_uint,
        source: io::Error,
    },
    #[error("receive buffers of {len} bytes cannot hold the {needed}-byte vnet header")]
    BufferTooSmall { len: usize, needed: usize },
    #[error("a frame spread over {count} buffers is over the limit of {MAX_FRAME_BUFFERS}")]
    TooManyBuffers { count: usize },
    #[error("tap {name} is down; bring it up (ip link set {name} up)")]
    LinkDown { name: String },
    #[error("cannot read a frame from {name}: {source}")]
    Read { name: String, source: io::Error },
    #[error("cannot write a frame to {name}: {source}")]
    Write { name: String, source: io::Error },
    #[error("{name} took {written} bytes of a {len}-byte frame")]
    ShortWrite {
        name: String,
        written: usize,
        len: usize,
    },
}

/// One end of a host network link, moving one frame per call.
///
/// Implementations are non-blocking: the event loop waits for the fd
/// ([`AsRawFd`]) to become readable, or writable after a write found the
/// backend full.
pub trait NetBackend: AsRawFd + Debug + Send {
    /// What the backend is, for messages: the tap's name, for example.
    fn name(&self) -> &str;

    /// Reads the next frame (vnet header first) into `bufs`, in order.
    ///
    /// Returns the frame's length, `None` when no frame is waiting. A frame
    /// longer than `bufs` is cut short and the rest discarded; the length
    /// returned is then above the buffers' total (but not necessarily the
    /// whole length), and the caller must drop the frame. `bufs` must hold
    /// at least the vnet header, or nothing is read.
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError>;

    /// Writes `bufs` (vnet header first) as one frame. Returns its length,
    /// or `None` when the backend cannot take it now (try again when the fd
    /// is writable). The frame goes whole or not at all.
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError>;

    /// Offloads this backend can apply to the frames it hands out; offer
    /// the guest no more than these.
    fn supported_offloads(&self) -> Offloads;

    /// Starts handing out frames with the given offloads (those not
    /// supported are left out). Call it with what the driver accepted.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetBackendError>;

    /// Sets the length of the header before every frame, in both
    /// directions; at least [`MIN_VNET_HDR_LEN`].
    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), NetBackendError>;
}

/// A Linux tap interface, opened non-blocking with a vnet header on every
/// frame.
///
/// `open` attaches to an existing tap, or creates one when kiln has
/// CAP_NET_ADMIN. A created tap is not made persistent: like Firecracker's
/// and Cloud Hypervisor's, it disappears when kiln closes it (or exits). A
/// tap that existed before (`ip tuntap add`) stays.
#[derive(Debug)]
pub struct TapBackend {
    file: File,
    name: String,
    created: bool,
    supported: Offloads,
    offloads: Offloads,
    vnet_hdr_len: usize,
}

impl TapBackend {
    /// Opens (or creates) the tap called `name`, with
    /// [`DEFAULT_VNET_HDR_LEN`] and no offloads until the driver asks.
    pub fn open(name: &str) -> Result<Self, NetBackendError> {
        Self::open_at(Path::new(TUN_PATH), name)
    }

    /// [`Self::open`] through the clone device at `tun_path`.
    fn open_at(tun_path: &Path, name: &str) -> Result<Self, NetBackendError> {
        let ifname = interface_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(tun_path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => NetBackendError::NoTunDevice,
                Some(libc::EACCES | libc::EPERM) => NetBackendError::TunPermission,
                _ => NetBackendError::OpenTun(e),
            })?;

        // Only for the error message and `created()`: another process may
        // create or delete the interface between this and TUNSETIFF.
        let existed = interface_exists(name);
        // SAFETY: `ifreq` is plain C data (arrays, integers and a raw
        // pointer in a union), for which all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = ifname;
        req.ifr_ifru.ifru_flags = TAP_FLAGS;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is;
        // `file` is an open tun clone device.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as c_ulong, &mut req) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) if existed => NetBackendError::AttachPermission { name },
                Some(libc::EPERM) => NetBackendError::CreatePermission { name },
                Some(libc::EBUSY) => NetBackendError::Busy { name },
                // Another kind of interface, a tun, or a multi-queue tap.
                Some(libc::EINVAL) if existed => NetBackendError::NotATap { name },
                _ => NetBackendError::Attach { name, source },
            });
        }

        let mut tap = Self {
            file,
            name: name.to_string(),
            created: !existed,
            supported: Offloads::NONE,
            offloads: Offloads::NONE,
            vnet_hdr_len: 0,
        };
        tap.set_vnet_hdr_len(DEFAULT_VNET_HDR_LEN)?;
        // UDP segmentation arrived in Linux 6.2; older kernels refuse it.
        let uso = Offloads {
            csum: true,
            uso4: true,
            uso6: true,
            ..Offloads::NONE
        };
        let uso_supported = tap.apply_offload_flags(uso.tun_flags()).is_ok();
        tap.supported = Offloads {
            uso4: uso_supported,
            uso6: uso_supported,
            ..Offloads::ALL
        };
        // A persistent tap keeps the offloads its last user set.
        tap.set_offloads(Offloads::NONE)?;
        Ok(tap)
    }

    /// Whether this call created the interface (it goes away when the
    /// backend is dropped) rather than attaching to an existing one.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The offloads currently in effect.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }

    /// The interface's MTU, as `ip link` shows it.
    pub fn mtu(&self) -> io::Result<u16> {
        // SIOCGIFMTU wants a socket, of any kind.
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket we just opened and nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `ifreq` is plain C data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = interface_name(&self.name).map_err(io::Error::other)?;
        // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into
        // one `ifreq`, which `req` is.
        let ret = unsafe { ioctl_with_mut_ref(&socket, libc::SIOCGIFMTU as c_ulong, &mut req) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFMTU filled in the `ifru_mtu` member.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u16::try_from(mtu).map_err(io::Error::other)
    }

    fn apply_offload_flags(&self, flags: c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `file` is an
        // attached tap.
        let ret = unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD as c_ulong, c_ulong::from(flags)) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for TapBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for TapBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError> {
        check_room_for_header(bufs, self.vnet_hdr_len)?;
        read_frame_fd(self.file.as_fd(), bufs, Receive::Read, &self.name)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError> {
        write_frame_fd(self.file.as_fd(), bufs, Transmit::Write, &self.name).map_err(|e| match e {
            // A tap whose interface is down refuses frames with EIO.
            NetBackendError::Write { name, source } if source.raw_os_error() == Some(libc::EIO) => {
                NetBackendError::LinkDown { name }
            }
            other => other,
        })
    }

    fn supported_offloads(&self) -> Offloads {
        self.supported
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetBackendError> {
        let offloads = offloads.intersection(self.supported);
        let flags = offloads.tun_flags();
        self.apply_offload_flags(flags)
            .map_err(|source| NetBackendError::SetOffloads {
                name: self.name.clone(),
                flags,
                source,
            })?;
        self.offloads = offloads;
        Ok(())
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), NetBackendError> {
        let error = |source| NetBackendError::SetVnetHdrLen {
            name: self.name.clone(),
            len,
            source,
        };
        let value = c_int::try_from(len).map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: TUNSETVNETHDRSZ reads one `int`, which `value` is; `file`
        // is an attached tap.
        let ret = unsafe { ioctl_with_ref(&self.file, libc::TUNSETVNETHDRSZ as c_ulong, &value) };
        if ret < 0 {
            return Err(error(io::Error::last_os_error()));
        }
        self.vnet_hdr_len = len;
        Ok(())
    }
}

/// A connected datagram (or seqpacket) socket carrying one frame per
/// message, vnet header included. The socket has no offloads of its own:
/// the ones set are recorded, and the peer must cope with what it gets.
#[derive(Debug)]
pub struct SocketBackend {
    socket: UnixDatagram,
    name: String,
    supported: Offloads,
    offloads: Offloads,
    vnet_hdr_len: usize,
}

impl SocketBackend {
    /// Wraps a connected socket (made non-blocking here), claiming
    /// `supported` offloads on behalf of its peer.
    pub fn new(socket: UnixDatagram, supported: Offloads) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            name: "socket backend".to_string(),
            supported,
            offloads: Offloads::NONE,
            vnet_hdr_len: DEFAULT_VNET_HDR_LEN,
        })
    }

    /// A backend and the (blocking) socket at the other end of it.
    pub fn pair(supported: Offloads) -> io::Result<(Self, UnixDatagram)> {
        let (ours, peer) = UnixDatagram::pair()?;
        Ok((Self::new(ours, supported)?, peer))
    }

    /// The offloads last set.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    pub fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }
}

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl NetBackend for SocketBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError> {
        check_room_for_header(bufs, self.vnet_hdr_len)?;
        read_frame_fd(self.socket.as_fd(), bufs, Receive::Message, &self.name)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> Result<Option<usize>, NetBackendError> {
        write_frame_fd(self.socket.as_fd(), bufs, Transmit::Message, &self.name)
    }

    fn supported_offloads(&self) -> Offloads {
        self.supported
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetBackendError> {
        self.offloads = offloads.intersection(self.supported);
        Ok(())
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), NetBackendError> {
        // Same rule as a tap, so tests see what production would.
        if len < MIN_VNET_HDR_LEN {
            return Err(NetBackendError::SetVnetHdrLen {
                name: self.name.clone(),
                len,
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        self.vnet_hdr_len = len;
        Ok(())
    }
}

/// Checks a tap name as the kernel's `dev_valid_name` does, plus '%'
/// (which would make the kernel pick a name for us), so a bad name gets its
/// own message rather than a bare EINVAL. The one copy of the rule: the
/// configuration calls it too.
pub fn check_interface_name(name: &str) -> Result<(), InterfaceNameError> {
    let invalid = |reason| InterfaceNameError::Invalid {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(InterfaceNameError::TooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if name == "." || name == ".." {
        return Err(invalid("is '.' or '..'"));
    }
    // Linux also takes most non-ASCII bytes, but its idea of a space
    // includes some of them (0xa0): printable ASCII keeps the rule simple.
    if name
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'/' || b == b':' || b == b'%')
    {
        return Err(invalid(
            "has a character other than printable ASCII, or '/', ':', '%'",
        ));
    }
    Ok(())
}

/// `name` as the kernel wants it, once [`check_interface_name`] accepts it.
fn interface_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], NetBackendError> {
    check_interface_name(name)?;
    let mut ifname = [0; libc::IFNAMSIZ];
    for (dst, &src) in ifname.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifname)
}

/// Whether an interface called `name` exists in this thread's network
/// namespace.
fn interface_exists(name: &str) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn check_room_for_header(bufs: &[VolatileSlice<'_>], needed: usize) -> Result<(), NetBackendError> {
    let len = bufs.iter().map(|b| b.len()).fold(0usize, usize::saturating_add);
    if len < needed {
        return Err(NetBackendError::BufferTooSmall { len, needed });
    }
    Ok(())
}

/// How a frame is received: `readv` on a tap, `recvmsg` with MSG_TRUNC on a
/// socket (which then returns a cut-short frame's whole length).
#[derive(Clone, Copy)]
enum Receive {
    Read,
    Message,
}

/// How a frame is sent: `writev` on a tap, `sendmsg` on a socket (without
/// SIGPIPE when the peer has gone).
#[derive(Clone, Copy)]
enum Transmit {
    Write,
    Message,
}

/// Guards that keep `bufs` mapped, and iovecs pointing into them.
fn iovecs(bufs: &[VolatileSlice<'_>]) -> Result<(Vec<PtrGuardMut>, Vec<libc::iovec>), NetBackendError> {
    let guards: Vec<PtrGuardMut> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| b.ptr_guard_mut())
        .collect();
    if guards.len() > MAX_FRAME_BUFFERS {
        return Err(NetBackendError::TooManyBuffers { count: guards.len() });
    }
    let iovecs = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    Ok((guards, iovecs))
}

fn read_frame_fd(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_>],
    how: Receive,
    name: &str,
) -> Result<Option<usize>, NetBackendError> {
    let (_guards, mut iovecs) = iovecs(bufs)?;
    // A tap returns only what it copied, so one byte past the buffers tells
    // a frame that did not fit from one that filled them exactly.
    let mut overflow = [0u8; 1];
    iovecs.push(libc::iovec {
        iov_base: overflow.as_mut_ptr().cast(),
        iov_len: overflow.len(),
    });
    let count =
        c_int::try_from(iovecs.len()).map_err(|_| NetBackendError::TooManyBuffers { count: iovecs.len() })?;
    loop {
        let ret = match how {
            // SAFETY: each iovec describes live memory (held by `_guards`,
            // or `overflow`) that nothing holds Rust references to; the
            // kernel writes only inside them. `count` is their number.
            Receive::Read => unsafe { libc::readv(fd.as_raw_fd(), iovecs.as_ptr(), count) },
            Receive::Message => {
                // SAFETY: `msghdr` is plain C data; all zeroes is "no name,
                // no control data".
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iovecs.as_mut_ptr();
                msg.msg_iovlen = iovecs.len();
                // SAFETY: as for readv; `msg` points only at the iovecs.
                unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC | libc::MSG_DONTWAIT) }
            }
        };
        match usize::try_from(ret) {
            Ok(len) => return Ok(Some(len)),
            Err(_) => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                source => {
                    return Err(NetBackendError::Read {
                        name: name.to_string(),
                        source,
                    })
                }
            },
        }
    }
}

fn write_frame_fd(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_>],
    how: Transmit,
    name: &str,
) -> Result<Option<usize>, NetBackendError> {
    let (_guards, mut iovecs) = iovecs(bufs)?;
    let len: usize = iovecs.iter().map(|iov| iov.iov_len).sum();
    let count =
        c_int::try_from(iovecs.len()).map_err(|_| NetBackendError::TooManyBuffers { count: iovecs.len() })?;
    loop {
        let ret = match how {
            // SAFETY: each iovec describes live memory (held by `_guards`);
            // the kernel only reads it. `count` is their number.
            Transmit::Write => unsafe { libc::writev(fd.as_raw_fd(), iovecs.as_ptr(), count) },
            Transmit::Message => {
                // SAFETY: `msghdr` is plain C data; all zeroes is "no name,
                // no control data".
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iovecs.as_mut_ptr();
                msg.msg_iovlen = iovecs.len();
                // SAFETY: as for writev; `msg` points only at the iovecs.
                unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) }
            }
        };
        match usize::try_from(ret) {
            Ok(written) if written == len => return Ok(Some(written)),
            Ok(written) => {
                return Err(NetBackendError::ShortWrite {
                    name: name.to_string(),
                    written,
                    len,
                })
            }
            Err(_) => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                source => {
                    return Err(NetBackendError::Write {
                        name: name.to_string(),
                        source,
                    })
                }
            },
        }
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::*;

/// Runs `test` on a thread of its own inside a fresh network namespace, so
/// the taps it makes never reach the host and vanish with the thread.
/// `None` (with the reason printed) where the host cannot: no tun driver,
/// or no permission to make namespaces.
fn in_fresh_netns<T: std::marker::Send + 'static>(
    test: impl FnOnce() -> T + std::marker::Send + 'static,
) -> Option<T> {
    if !Path::new(TUN_PATH).exists() {
        eprintln!("skipping: {TUN_PATH} does not exist on this host");
        return None;
    }
    let outcome = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; the new namespace belongs to
        // this thread alone and dies with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(test())
    })
    .join();
    match outcome {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            eprintln!("skipping: cannot create a network namespace: {e}");
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops CAP_NET_ADMIN from the calling thread (capabilities are per
/// thread); the rest of the test process keeps it.
fn drop_cap_net_admin() {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset read a header and write/read two data entries
    // for version 3, which is what we pass.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()), 0);
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        data[0].permitted &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()), 0);
    }
}

fn interface_index(name: &str) -> u32 {
    let name = CString::new(name).unwrap();
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// A raw tun/tap fd attached with `flags`, as `ip tuntap add` would make.
fn raw_tuntap(name: &str, flags: c_int) -> File {
    let file = OpenOptions::new().read(true).write(true).open(TUN_PATH).unwrap();
    // SAFETY: as in `TapBackend::open_at`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = interface_name(name).unwrap();
    req.ifr_ifru.ifru_flags = flags as c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`.
    let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as c_ulong, &mut req) };
    assert!(ret >= 0, "TUNSETIFF: {}", io::Error::last_os_error());
    file
}

fn set_persistent(tap: &File, persistent: bool) {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let ret = unsafe { ioctl_with_val(tap, libc::TUNSETPERSIST as c_ulong, c_ulong::from(persistent)) };
    assert!(ret >= 0, "TUNSETPERSIST: {}", io::Error::last_os_error());
}

fn vnet_hdr_len_in_kernel(tap: &TapBackend) -> c_int {
    let mut len: c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one `int`.
    let ret = unsafe { ioctl_with_mut_ref(&tap.file, libc::TUNGETVNETHDRSZ as c_ulong, &mut len) };
    assert!(ret >= 0, "TUNGETVNETHDRSZ: {}", io::Error::last_os_error());
    len
}

/// Brings interface `name` up or down.
fn set_link_up(name: &str, up: bool) {
    // SAFETY: plain socket(2); the fd is owned right away.
    let sock = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
    // SAFETY: as in `TapBackend::open_at`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = interface_name(name).unwrap();
    // SAFETY: SIOCGIFFLAGS fills the flags of one `ifreq`, which we read
    // back from the same union field.
    unsafe {
        assert!(ioctl_with_mut_ref(&sock, libc::SIOCGIFFLAGS, &mut req) >= 0);
        let flags = req.ifr_ifru.ifru_flags;
        let up_flag = libc::IFF_UP as c_short;
        req.ifr_ifru.ifru_flags = if up { flags | up_flag } else { flags & !up_flag };
        assert!(ioctl_with_mut_ref(&sock, libc::SIOCSIFFLAGS, &mut req) >= 0);
    }
}

fn set_mtu(name: &str, mtu: c_int) {
    // SAFETY: plain socket(2); the fd is owned right away.
    let sock = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
    // SAFETY: as in `TapBackend::open_at`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = interface_name(name).unwrap();
    req.ifr_ifru.ifru_mtu = mtu;
    // SAFETY: SIOCSIFMTU reads one `ifreq`.
    assert!(unsafe { ioctl_with_mut_ref(&sock, libc::SIOCSIFMTU, &mut req) } >= 0);
}

/// An AF_PACKET socket on interface `name`: the host side of the wire.
fn packet_socket(name: &str) -> OwnedFd {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, c_int::from(protocol)) };
    assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero `sockaddr_ll` is valid; the fields that matter are
    // set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = interface_index(name) as c_int;
    // SAFETY: `addr` is a `sockaddr_ll` of the size given.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(ret, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
    sock
}

/// An Ethernet frame with an experimental EtherType the host stack ignores,
/// so nothing but the test looks at it.
fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, byte) in frame[14..].iter_mut().enumerate() {
        *byte = seed.wrapping_add(i as u8);
    }
    frame
}

fn wait_readable(fd: RawFd, deadline: Instant) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let left = deadline.saturating_duration_since(Instant::now()).as_millis() as c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pollfd, 1, left) > 0 }
}

#[test]
fn tap_flags_fit_the_ifreq_field() {
    assert_eq!(
        c_int::from(TAP_FLAGS),
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR
    );
}

#[test]
fn offload_flags_follow_the_kernel_rules() {
    let csum = Offloads {
        csum: true,
        ..Offloads::NONE
    };
    assert_eq!(Offloads::NONE.tun_flags(), 0);
    assert_eq!(csum.tun_flags(), libc::TUN_F_CSUM);
    // Without checksum offload the kernel would refuse everything else.
    let no_csum = Offloads {
        csum: false,
        ..Offloads::ALL
    };
    assert_eq!(no_csum.tun_flags(), 0);
    let tso4 = Offloads { tso4: true, ..csum };
    assert_eq!(tso4.tun_flags(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    let tso6_ecn = Offloads {
        tso6: true,
        tso_ecn: true,
        ..csum
    };
    assert_eq!(
        tso6_ecn.tun_flags(),
        libc::TUN_F_CSUM | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    // ECN is only about segmented TCP.
    let ecn_alone = Offloads {
        tso_ecn: true,
        ..csum
    };
    assert_eq!(ecn_alone.tun_flags(), libc::TUN_F_CSUM);
    let ufo = Offloads { ufo: true, ..csum };
    assert_eq!(ufo.tun_flags(), libc::TUN_F_CSUM | libc::TUN_F_UFO);
    // UDP segmentation for one IP version only: the kernel wants both.
    let uso4 = Offloads { uso4: true, ..csum };
    assert_eq!(uso4.tun_flags(), libc::TUN_F_CSUM);
    let uso = Offloads {
        uso4: true,
        uso6: true,
        ..csum
    };
    assert_eq!(
        uso.tun_flags(),
        libc::TUN_F_CSUM | libc::TUN_F_USO4 | libc::TUN_F_USO6
    );
    assert_eq!(
        Offloads::ALL.tun_flags(),
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_TSO_ECN
            | libc::TUN_F_UFO
            | libc::TUN_F_USO4
            | libc::TUN_F_USO6
    );
    assert_eq!(Offloads::ALL.intersection(tso4), tso4);
    assert_eq!(tso4.intersection(uso), csum);
}

#[test]
fn tap_names_are_checked_before_the_kernel_sees_them() {
    let ok = "a123456789abcde";
    assert_eq!(ok.len(), MAX_IFNAME_LEN);
    let ifname = interface_name(ok).unwrap();
    assert_eq!(ifname[MAX_IFNAME_LEN], 0);

    let err = TapBackend::open("a123456789abcdef").unwrap_err();
    assert!(
        matches!(
            err,
            NetBackendError::Name(InterfaceNameError::TooLong { len: 16, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at most 15"), "{err}");
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "tap:0",
        "tap%d",
        "tap 0",
        "tap\t0",
        "tap\u{0}0",
    ] {
        let err = TapBackend::open(bad).unwrap_err();
        assert!(
            matches!(err, NetBackendError::Name(InterfaceNameError::Invalid { .. })),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn missing_tun_device_is_named() {
    let err = TapBackend::open_at(Path::new("/nonexistent/net/tun"), "kiln0").unwrap_err();
    assert!(matches!(err, NetBackendError::NoTunDevice), "{err}");
    assert!(err.to_string().contains("modprobe tun"), "{err}");
}

#[test]
fn created_tap_has_a_12_byte_vnet_header_and_disappears_on_close() {
    in_fresh_netns(|| {
        assert_eq!(interface_index("kiln0"), 0);
        let mut tap = TapBackend::open("kiln0").unwrap();
        assert!(tap.created());
        assert_eq!(tap.name(), "kiln0");
        assert_ne!(interface_index("kiln0"), 0);
        assert_eq!(tap.vnet_hdr_len(), DEFAULT_VNET_HDR_LEN);
        assert_eq!(vnet_hdr_len_in_kernel(&tap), 12);
        assert_eq!(tap.offloads(), Offloads::NONE);
        // SAFETY: F_GETFL takes no pointer.
        let flags = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);

        tap.set_vnet_hdr_len(16).unwrap();
        assert_eq!(vnet_hdr_len_in_kernel(&tap), 16);
        let err = tap.set_vnet_hdr_len(8).unwrap_err();
        assert!(
            matches!(err, NetBackendError::SetVnetHdrLen { len: 8, .. }),
            "{err}"
        );
        assert_eq!(tap.vnet_hdr_len(), 16);

        drop(tap);
        assert_eq!(
            interface_index("kiln0"),
            0,
            "a tap kiln created must not outlive it"
        );
    });
}

/// The card reports the tap's MTU, whatever the host set it to.
#[test]
fn tap_mtu_is_read_from_the_interface() {
    in_fresh_netns(|| {
        let tap = TapBackend::open("kiln0").unwrap();
        assert_eq!(tap.mtu().unwrap(), 1500);
        set_mtu("kiln0", 9000);
        assert_eq!(tap.mtu().unwrap(), 9000);
    });
}

#[test]
fn existing_persistent_tap_is_attached_and_kept() {
    in_fresh_netns(|| {
        let setup = raw_tuntap("kiln-keep", libc::IFF_TAP | libc::IFF_NO_PI);
        set_persistent(&setup, true);
        drop(setup);
        let tap = TapBackend::open("kiln-keep").unwrap();
        assert!(!tap.created());
        assert_eq!(vnet_hdr_len_in_kernel(&tap), 12);
        drop(tap);
        assert_ne!(interface_index("kiln-keep"), 0);
        // The namespace dies with the thread and takes the tap with it.
    });
}

#[test]
fn tap_in_use_is_reported_busy() {
    in_fresh_netns(|| {
        let _first = TapBackend::open("kiln0").unwrap();
        let err = TapBackend::open("kiln0").unwrap_err();
        assert!(matches!(err, NetBackendError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("already in use"), "{err}");
    });
}

#[test]
fn interface_that_is_not_a_tap_is_reported() {
    in_fresh_netns(|| {
        let err = TapBackend::open("lo").unwrap_err();
        assert!(matches!(err, NetBackendError::NotATap { .. }), "{err}");
        assert!(err.to_string().contains("not a single-queue tap"), "{err}");

        let _tun = raw_tuntap("kiln-tun", libc::IFF_TUN | libc::IFF_NO_PI);
        let err = TapBackend::open("kiln-tun").unwrap_err();
        assert!(matches!(err, NetBackendError::NotATap { .. }), "{err}");

        let mq = raw_tuntap("kiln-mq", libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE);
        set_persistent(&mq, true);
        drop(mq);
        let err = TapBackend::open("kiln-mq").unwrap_err();
        assert!(matches!(err, NetBackendError::NotATap { .. }), "{err}");
    });
}

#[test]
fn creating_a_tap_without_cap_net_admin_names_the_capability() {
    in_fresh_netns(|| {
        let owned = raw_tuntap("kiln-owned", libc::IFF_TAP | libc::IFF_NO_PI);
        // Owned by a user that is not us, so attaching needs the capability.
        // SAFETY: TUNSETOWNER takes its argument by value.
        let ret = unsafe { ioctl_with_val(&owned, libc::TUNSETOWNER as c_ulong, 4242) };
        assert!(ret >= 0, "TUNSETOWNER: {}", io::Error::last_os_error());
        set_persistent(&owned, true);
        drop(owned);

        drop_cap_net_admin();
        let err = TapBackend::open("kiln0").unwrap_err();
        assert!(matches!(err, NetBackendError::CreatePermission { .. }), "{err}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        assert_eq!(interface_index("kiln0"), 0);

        let err = TapBackend::open("kiln-owned").unwrap_err();
        assert!(matches!(err, NetBackendError::AttachPermission { .. }), "{err}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    });
}

#[test]
fn kernel_accepts_every_offload_combination() {
    in_fresh_netns(|| {
        let mut tap = TapBackend::open("kiln0").unwrap();
        let supported = tap.supported_offloads();
        assert!(supported.csum && supported.tso4 && supported.tso6 && supported.tso_ecn);
        for bits in 0u8..128 {
            let bit = |n: u8| bits & (1 << n) != 0;
            let wanted = Offloads {
                csum: bit(0),
                tso4: bit(1),
                tso6: bit(2),
                tso_ecn: bit(3),
                ufo: bit(4),
                uso4: bit(5),
                uso6: bit(6),
            };
            tap.set_offloads(wanted)
                .unwrap_or_else(|e| panic!("{wanted:?}: {e}"));
            assert_eq!(tap.offloads(), wanted.intersection(supported));
        }
        tap.set_offloads(Offloads::NONE).unwrap();
    });
}

#[test]
fn tap_carries_frames_both_ways_with_a_vnet_header() {
    in_fresh_netns(|| {
        let mut tap = TapBackend::open("kiln0").unwrap();
        set_link_up("kiln0", true);
        let wire = packet_socket("kiln0");
        let deadline = Instant::now() + Duration::from_secs(5);

        // Guest to host: a zero header, then the frame split over buffers.
        let frame = test_frame(300, 7);
        let mut header = [0u8; DEFAULT_VNET_HDR_LEN];
        let mut first = frame[..100].to_vec();
        let mut rest = frame[100..].to_vec();
        let bufs = [
            VolatileSlice::from(&mut header[..]),
            VolatileSlice::from(&mut first[..]),
            VolatileSlice::from(&mut rest[..]),
        ];
        assert_eq!(tap.write_frame(&bufs).unwrap(), Some(12 + 300));
        let mut seen = vec![0u8; 2048];
        loop {
            assert!(
                wait_readable(wire.as_raw_fd(), deadline),
                "frame never reached the host"
            );
            // SAFETY: `seen` is writable for its length.
            let n = unsafe { libc::recv(wire.as_raw_fd(), seen.as_mut_ptr().cast(), seen.len(), 0) };
            if usize::try_from(n).ok() == Some(frame.len()) && seen[..frame.len()] == frame[..] {
                break;
            }
        }

        // Host to guest: the tap prepends a 12-byte header. Other traffic
        // (IPv6 autoconfiguration on the new link) is skipped.
        let frame = test_frame(200, 99);
        // SAFETY: `frame` is readable for its length.
        let sent = unsafe { libc::send(wire.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize);
        let mut got = vec![0u8; 12 + 2048];
        loop {
            assert!(
                wait_readable(tap.as_raw_fd(), deadline),
                "frame never reached the tap"
            );
            let Some(len) = tap.read_frame(&[VolatileSlice::from(&mut got[..])]).unwrap() else {
                continue;
            };
            if len == 12 + frame.len() && got[12..len] == frame[..] {
                // No offloads set: no flags, no segmentation.
                assert_eq!(got[..10], [0u8; 10]);
                break;
            }
        }
        while tap
            .read_frame(&[VolatileSlice::from(&mut got[..])])
            .unwrap()
            .is_some()
        {}
        assert_eq!(
            tap.read_frame(&[VolatileSlice::from(&mut got[..])]).unwrap(),
            None
        );

        // A frame longer than the buffers: cut short, and reported as such.
        let frame = test_frame(1000, 3);
        // SAFETY: as above.
        unsafe { libc::send(wire.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        let mut small = [0u8; 12 + 100];
        loop {
            assert!(
                wait_readable(tap.as_raw_fd(), deadline),
                "frame never reached the tap"
            );
            let Some(len) = tap.read_frame(&[VolatileSlice::from(&mut small[..])]).unwrap() else {
                continue;
            };
            // Longer than the buffers, which hold its beginning.
            if len > small.len() && small[12..] == frame[..100] {
                break;
            }
        }
        // A frame that fills the buffers exactly is whole.
        let frame = test_frame(100, 4);
        // SAFETY: as above.
        unsafe { libc::send(wire.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        loop {
            assert!(
                wait_readable(tap.as_raw_fd(), deadline),
                "frame never reached the tap"
            );
            let Some(len) = tap.read_frame(&[VolatileSlice::from(&mut small[..])]).unwrap() else {
                continue;
            };
            if small[12..] == frame[..] {
                assert_eq!(len, small.len());
                break;
            }
        }
        let err = tap
            .read_frame(&[VolatileSlice::from(&mut small[..11])])
            .unwrap_err();
        assert!(
            matches!(err, NetBackendError::BufferTooSmall { len: 11, needed: 12 }),
            "{err}"
        );
    });
}

#[test]
fn writing_to_a_tap_that_is_down_says_so() {
    in_fresh_netns(|| {
        let mut tap = TapBackend::open("kiln0").unwrap();
        let mut frame = [vec![0u8; DEFAULT_VNET_HDR_LEN], test_frame(64, 1)].concat();
        let err = tap
            .write_frame(&[VolatileSlice::from(&mut frame[..])])
            .unwrap_err();
        assert!(matches!(err, NetBackendError::LinkDown { .. }), "{err}");
        assert!(err.to_string().contains("ip link set kiln0 up"), "{err}");
        set_link_up("kiln0", true);
        assert_eq!(
            tap.write_frame(&[VolatileSlice::from(&mut frame[..])]).unwrap(),
            Some(frame.len())
        );
    });
}

#[test]
fn socket_backend_round_trips_scattered_frames() {
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let mut header = [1u8; DEFAULT_VNET_HDR_LEN];
    let mut payload = test_frame(1500, 5);
    let (a, b) = payload.split_at_mut(700);
    let bufs = [
        VolatileSlice::from(&mut header[..]),
        VolatileSlice::from(a),
        VolatileSlice::from(&mut [][..]),
        VolatileSlice::from(b),
    ];
    assert_eq!(backend.write_frame(&bufs).unwrap(), Some(12 + 1500));
    let mut got = vec![0u8; 4096];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(n, 12 + 1500);
    assert_eq!(got[..12], [1u8; 12]);
    assert_eq!(got[12..n], test_frame(1500, 5)[..]);

    assert_eq!(
        backend.read_frame(&[VolatileSlice::from(&mut got[..])]).unwrap(),
        None
    );
    let sent = [vec![0u8; 12], test_frame(60, 9)].concat();
    peer.send(&sent).unwrap();
    let mut h = [0u8; 5];
    let mut rest = [0u8; 200];
    let len = backend
        .read_frame(&[
            VolatileSlice::from(&mut h[..]),
            VolatileSlice::from(&mut rest[..]),
        ])
        .unwrap();
    assert_eq!(len, Some(72));
    assert_eq!([&h[..], &rest[..67]].concat(), sent);
}

#[test]
fn socket_backend_reports_the_whole_length_of_a_cut_short_frame() {
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();
    let sent = test_frame(9000, 2);
    peer.send(&sent).unwrap();
    let mut small = vec![0u8; 1000];
    let len = backend
        .read_frame(&[VolatileSlice::from(&mut small[..])])
        .unwrap();
    assert_eq!(len, Some(9000));
    assert_eq!(small[..], sent[..1000]);
    // The rest was discarded, not left for the next read.
    assert_eq!(
        backend
            .read_frame(&[VolatileSlice::from(&mut small[..])])
            .unwrap(),
        None
    );
}

#[test]
fn socket_backend_refuses_buffers_it_cannot_use() {
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();
    peer.send(&test_frame(100, 0)).unwrap();
    let mut tiny = [0u8; 11];
    let err = backend
        .read_frame(&[VolatileSlice::from(&mut tiny[..])])
        .unwrap_err();
    assert!(
        matches!(err, NetBackendError::BufferTooSmall { len: 11, needed: 12 }),
        "{err}"
    );

    let mut pool = vec![0u8; MAX_FRAME_BUFFERS + 1];
    let many: Vec<VolatileSlice> = pool.chunks_mut(1).map(VolatileSlice::from).collect();
    let err = backend.read_frame(&many).unwrap_err();
    assert!(matches!(err, NetBackendError::TooManyBuffers { count } if count == MAX_FRAME_BUFFERS + 1));
    let err = backend.write_frame(&many).unwrap_err();
    assert!(matches!(err, NetBackendError::TooManyBuffers { .. }), "{err}");
    // The frame is still there for a proper read.
    let mut buf = [0u8; 200];
    assert_eq!(
        backend.read_frame(&[VolatileSlice::from(&mut buf[..])]).unwrap(),
        Some(100)
    );
}

#[test]
fn socket_backend_says_when_the_peer_is_full_or_gone() {
    let (mut backend, peer) = SocketBackend::pair(Offloads::NONE).unwrap();
    let mut frame = test_frame(64, 0);
    let mut sent = 0;
    while backend
        .write_frame(&[VolatileSlice::from(&mut frame[..])])
        .unwrap()
        .is_some()
    {
        sent += 1;
        assert!(sent < 100_000, "the peer's queue never filled");
    }
    assert!(sent > 0);
    drop(peer);
    let err = backend
        .write_frame(&[VolatileSlice::from(&mut frame[..])])
        .unwrap_err();
    assert!(matches!(err, NetBackendError::Write { .. }), "{err}");
}

#[test]
fn socket_backend_keeps_the_tap_rules_for_offloads_and_header_length() {
    let supported = Offloads {
        csum: true,
        tso4: true,
        ..Offloads::NONE
    };
    let (mut backend, _peer) = SocketBackend::pair(supported).unwrap();
    assert_eq!(backend.supported_offloads(), supported);
    backend.set_offloads(Offloads::ALL).unwrap();
    assert_eq!(backend.offloads(), supported);
    assert_eq!(backend.vnet_hdr_len(), DEFAULT_VNET_HDR_LEN);
    let err = backend.set_vnet_hdr_len(MIN_VNET_HDR_LEN - 1).unwrap_err();
    assert!(matches!(err, NetBackendError::SetVnetHdrLen { .. }), "{err}");
    backend.set_vnet_hdr_len(MIN_VNET_HDR_LEN).unwrap();
    assert_eq!(backend.vnet_hdr_len(), MIN_VNET_HDR_LEN);
}

use super::flags::*;
use super::*;
use crate::devices::virtio::net::features::*;
use crate::devices::virtio::net::{DropReason, MAX_PACKET_LEN};

/// Everything a driver can ask of the transmit path.
const ALL_TX: u64 = with(
    with(
        with(
            with(
                with(with(0, VIRTIO_NET_F_CSUM), VIRTIO_NET_F_HOST_TSO4),
                VIRTIO_NET_F_HOST_TSO6,
            ),
            VIRTIO_NET_F_HOST_ECN,
        ),
        VIRTIO_NET_F_HOST_UFO,
    ),
    VIRTIO_NET_F_HOST_USO,
);
const CSUM_ONLY: u64 = with(0, VIRTIO_NET_F_CSUM);

fn raw(hdr: VirtioNetHdr) -> [u8; VNET_HDR_LEN] {
    hdr.to_bytes()
}

/// A TCPv4 segmentation request as Linux sends it for a 9000-byte frame.
fn tso4() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

#[test]
fn header_bytes_are_little_endian_in_spec_order() {
    let hdr = VirtioNetHdr {
        flags: 0x01,
        gso_type: 0x84,
        hdr_len: 0x0302,
        gso_size: 0x0504,
        csum_start: 0x0706,
        csum_offset: 0x0908,
        num_buffers: 0x0b0a,
    };
    let bytes = [0x01, 0x84, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    assert_eq!(hdr.to_bytes(), bytes);
    assert_eq!(VirtioNetHdr::from_bytes(&bytes), hdr);
    assert_eq!(MAX_PACKET_LEN, 65_562);
}

#[test]
fn header_is_copied_out_of_scattered_buffers() {
    let mut a = [1u8, 2, 3];
    let mut b = [4u8, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
    let mut c = [15u8; 20];
    let bufs = [
        VolatileSlice::from(&mut [][..]),
        VolatileSlice::from(&mut a[..]),
        VolatileSlice::from(&mut b[..]),
        VolatileSlice::from(&mut [][..]),
        VolatileSlice::from(&mut c[..]),
    ];
    let (header, frame) = split_tx_header(&bufs).unwrap();
    assert_eq!(header, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(frame.len(), 2);
    assert_eq!(total_len(&frame), 2 + 20);
    let mut rest = [0u8; 2];
    frame[0].copy_to(&mut rest[..]);
    assert_eq!(rest, [13, 14]);
    // The guest rewriting its buffer afterwards changes not what was read.
    bufs[1].copy_from(&[0xff, 0xff, 0xff][..]);
    assert_eq!(header[..3], [1, 2, 3]);

    let mut exact = [0u8; VNET_HDR_LEN];
    let (_, frame) = split_tx_header(&[VolatileSlice::from(&mut exact[..])]).unwrap();
    assert!(frame.is_empty());
}

#[test]
fn short_header_is_refused() {
    assert_eq!(
        split_tx_header(&[]).unwrap_err(),
        HeaderError::ShortHeader { len: 0 }
    );
    let mut a = [0u8; 5];
    let mut b = [0u8; 6];
    let err =
        split_tx_header(&[VolatileSlice::from(&mut a[..]), VolatileSlice::from(&mut b[..])]).unwrap_err();
    assert_eq!(err, HeaderError::ShortHeader { len: 11 });
    assert_eq!(err.drop_reason(), DropReason::TxBadHeader);
}

#[test]
fn frame_length_limits() {
    let plain = raw(VirtioNetHdr::default());
    let rules = TxRules::new(ALL_TX, 1500);
    assert!(rules.check(&plain, MAX_FRAME_LEN).is_ok());
    let err = rules.check(&plain, MAX_FRAME_LEN + 1).unwrap_err();
    assert_eq!(
        err,
        HeaderError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        }
    );
    assert_eq!(err.drop_reason(), DropReason::TxTooLarge);
    assert!(rules.check(&plain, usize::MAX).is_err());
    assert!(rules.check(&plain, ETH_HLEN).is_ok());
    let err = rules.check(&plain, ETH_HLEN - 1).unwrap_err();
    assert_eq!(err, HeaderError::TooShort { len: 13 });
    assert_eq!(err.drop_reason(), DropReason::TxTooShort);
    assert!(rules.check(&plain, 0).is_err());

    // A negotiated MTU binds unsegmented frames: MTU + Ethernet + VLAN.
    let mtu = TxRules::new(with(ALL_TX, VIRTIO_NET_F_MTU), 1500);
    assert_eq!(mtu.max_frame_len(), 1518);
    assert!(mtu.check(&plain, 1518).is_ok());
    assert_eq!(
        mtu.check(&plain, 1519).unwrap_err(),
        HeaderError::TooLarge { len: 1519, max: 1518 }
    );
    // ... but not segmented ones.
    assert!(mtu.check(&raw(tso4()), 9000).is_ok());
    assert!(mtu.check(&raw(tso4()), MAX_FRAME_LEN).is_ok());
    assert!(mtu.check(&raw(tso4()), MAX_FRAME_LEN + 1).is_err());
    // An MTU the frame limit cannot hold is capped by it.
    assert_eq!(
        TxRules::new(with(0, VIRTIO_NET_F_MTU), u16::MAX).max_frame_len(),
        MAX_FRAME_LEN
    );
}

#[test]
fn segmentation_needs_its_feature() {
    let cases = [
        (
            VIRTIO_NET_HDR_GSO_TCPV4,
            VIRTIO_NET_F_HOST_TSO4,
            "VIRTIO_NET_F_HOST_TSO4",
        ),
        (
            VIRTIO_NET_HDR_GSO_TCPV6,
            VIRTIO_NET_F_HOST_TSO6,
            "VIRTIO_NET_F_HOST_TSO6",
        ),
        (
            VIRTIO_NET_HDR_GSO_UDP,
            VIRTIO_NET_F_HOST_UFO,
            "VIRTIO_NET_F_HOST_UFO",
        ),
        (
            VIRTIO_NET_HDR_GSO_UDP_L4,
            VIRTIO_NET_F_HOST_USO,
            "VIRTIO_NET_F_HOST_USO",
        ),
    ];
    for (gso_type, feature, name) in cases {
        let header = raw(VirtioNetHdr { gso_type, ..tso4() });
        let without = TxRules::new(ALL_TX & !(1 << feature), 1500);
        let err = without.check(&header, 9000).unwrap_err();
        assert_eq!(
            err,
            HeaderError::GsoNotNegotiated {
                gso_type,
                feature: name
            }
        );
        assert_eq!(err.drop_reason(), DropReason::TxGsoNotNegotiated);
        assert!(err.to_string().contains(name), "{err}");
        let only = TxRules::new(with(CSUM_ONLY, feature), 1500);
        assert_eq!(only.check(&header, 9000).unwrap().gso_type, gso_type);
    }
    // A driver that negotiated nothing gets no segmentation at all.
    assert!(matches!(
        TxRules::new(0, 1500).check(&raw(tso4()), 9000),
        Err(HeaderError::GsoNotNegotiated { .. })
    ));
}

#[test]
fn ecn_is_for_negotiated_tcp_segmentation_only() {
    let ecn = |gso_type| {
        raw(VirtioNetHdr {
            gso_type: gso_type | VIRTIO_NET_HDR_GSO_ECN,
            ..tso4()
        })
    };
    let rules = TxRules::new(ALL_TX, 1500);
    assert!(rules.check(&ecn(VIRTIO_NET_HDR_GSO_TCPV4), 9000).is_ok());
    assert!(rules.check(&ecn(VIRTIO_NET_HDR_GSO_TCPV6), 9000).is_ok());
    for not_tcp in [
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    ] {
        let err = rules.check(&ecn(not_tcp), 9000).unwrap_err();
        assert!(
            matches!(err, HeaderError::EcnWithoutTcp { .. }),
            "{not_tcp}: {err}"
        );
        assert_eq!(err.drop_reason(), DropReason::TxBadHeader);
    }
    let no_ecn = TxRules::new(ALL_TX & !(1 << VIRTIO_NET_F_HOST_ECN), 1500);
    assert_eq!(
        no_ecn.check(&ecn(VIRTIO_NET_HDR_GSO_TCPV4), 9000).unwrap_err(),
        HeaderError::GsoNotNegotiated {
            gso_type: 0x81,
            feature: "VIRTIO_NET_F_HOST_ECN"
        }
    );
}

#[test]
fn unknown_segmentation_types_are_refused() {
    let rules = TxRules::new(ALL_TX, 1500);
    for gso_type in [2, 6, 7, 0x10, 0x7f, 0x82, 0xff] {
        let err = rules
            .check(&raw(VirtioNetHdr { gso_type, ..tso4() }), 9000)
            .unwrap_err();
        assert_eq!(err, HeaderError::UnknownGsoType(gso_type));
        assert_eq!(err.drop_reason(), DropReason::TxBadHeader);
    }
}

#[test]
fn segmentation_needs_a_checksum_and_a_segment_size() {
    let rules = TxRules::new(ALL_TX, 1500);
    let no_csum = VirtioNetHdr { flags: 0, ..tso4() };
    assert_eq!(
        rules.check(&raw(no_csum), 9000).unwrap_err(),
        HeaderError::GsoWithoutChecksum
    );
    let no_size = VirtioNetHdr {
        gso_size: 0,
        ..tso4()
    };
    let err = rules.check(&raw(no_size), 9000).unwrap_err();
    assert_eq!(err, HeaderError::ZeroGsoSize);
    assert_eq!(err.drop_reason(), DropReason::TxBadHeader);
}

#[test]
fn checksum_offload_needs_csum_and_must_lie_in_the_frame() {
    let partial = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VirtioNetHdr::default()
    };
    let err = TxRules::new(0, 1500).check(&raw(partial), 100).unwrap_err();
    assert_eq!(err, HeaderError::CsumNotNegotiated);
    assert_eq!(err.drop_reason(), DropReason::TxCsumNotNegotiated);

    let rules = TxRules::new(CSUM_ONLY, 1500);
    assert!(rules.check(&raw(partial), 100).is_ok());
    // The checksum's two bytes end exactly at the end of the frame.
    assert!(rules.check(&raw(partial), 42).is_ok());
    assert_eq!(
        rules.check(&raw(partial), 41).unwrap_err(),
        HeaderError::ChecksumOutsideFrame {
            start: 34,
            offset: 6,
            len: 41
        }
    );
    let huge = VirtioNetHdr {
        csum_start: u16::MAX,
        csum_offset: u16::MAX,
        ..partial
    };
    assert!(matches!(
        rules.check(&raw(huge), MAX_FRAME_LEN),
        Err(HeaderError::ChecksumOutsideFrame { .. })
    ));
    let in_ethernet = VirtioNetHdr {
        csum_start: 13,
        ..partial
    };
    let err = rules.check(&raw(in_ethernet), 100).unwrap_err();
    assert_eq!(err, HeaderError::ChecksumInEthernetHeader { start: 13 });
    assert_eq!(err.drop_reason(), DropReason::TxBadHeader);
}

#[test]
fn checked_header_keeps_only_what_the_host_should_act_on() {
    let rules = TxRules::new(ALL_TX, 1500);
    // Receive-only and unknown flags, a stray num_buffers, and fields an
    // unsegmented frame without a partial checksum does not use.
    let noisy = VirtioNetHdr {
        flags: 0xfe,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 9999,
        gso_size: 1448,
        csum_start: 7,
        csum_offset: 9,
        num_buffers: 3,
    };
    assert_eq!(rules.check(&raw(noisy), 60).unwrap(), VirtioNetHdr::default());

    let tso = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID | VIRTIO_NET_HDR_F_RSC_INFO,
        num_buffers: 1,
        ..tso4()
    };
    assert_eq!(rules.check(&raw(tso), 9000).unwrap(), tso4());
    // hdr_len is a hint: clipped to the frame.
    let long_hint = VirtioNetHdr {
        hdr_len: 60_000,
        ..tso4()
    };
    assert_eq!(rules.check(&raw(long_hint), 9000).unwrap().hdr_len, 9000);
}

#[test]
fn every_flags_and_type_byte_is_decided_without_panicking() {
    for acked in [0, CSUM_ONLY, ALL_TX, with(ALL_TX, VIRTIO_NET_F_MTU)] {
        let rules = TxRules::new(acked, 1500);
        for flags in 0..=u8::MAX {
            for gso_type in 0..=u8::MAX {
                let hdr = VirtioNetHdr {
                    flags,
                    gso_type,
                    hdr_len: u16::MAX,
                    gso_size: u16::from(flags),
                    csum_start: 14 + u16::from(gso_type),
                    csum_offset: u16::from(flags),
                    num_buffers: u16::MAX,
                };
                for frame_len in [0, 14, 1514, MAX_FRAME_LEN] {
                    let Ok(clean) = rules.check(&raw(hdr), frame_len) else {
                        continue;
                    };
                    assert_eq!(clean.flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
                    assert_eq!(clean.num_buffers, 0);
                    assert!(usize::from(clean.hdr_len) <= frame_len);
                    let kind = clean.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
                    assert!([0, 1, 3, 4, 5].contains(&kind), "{hdr:?}");
                    if kind != 0 {
                        assert_ne!(acked & !CSUM_ONLY, 0, "{hdr:?} passed without GSO features");
                    }
                    if clean.flags != 0 {
                        assert!(has(acked, VIRTIO_NET_F_CSUM), "{hdr:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn num_buffers_is_written_across_buffer_boundaries() {
    let mut a = [0xaau8; 11];
    let mut b = [0xaau8; 4];
    {
        let bufs = [VolatileSlice::from(&mut a[..]), VolatileSlice::from(&mut b[..])];
        set_num_buffers(&bufs, 0x0201).unwrap();
    }
    assert_eq!(a[..10], [0xaa; 10]);
    assert_eq!(a[10], 0x01);
    assert_eq!(b, [0x02, 0xaa, 0xaa, 0xaa]);

    let mut short = [0u8; 11];
    assert_eq!(
        set_num_buffers(&[VolatileSlice::from(&mut short[..])], 1).unwrap_err(),
        HeaderError::ShortHeader { len: 11 }
    );
    assert_eq!(short, [0; 11]);
}

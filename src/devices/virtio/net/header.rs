//! The virtio-net header (`virtio_net_hdr_v1`, §5.1.6) in front of every
//! frame, and the checks a transmitted one must pass.
//!
//! A transmit header comes from the guest: it is copied out of guest memory
//! once ([`split_tx_header`]), checked against the negotiated features
//! ([`TxRules::check`]), and the backend gets the clean copy that check
//! returns. The guest cannot change what was checked, and flag bits the
//! host should not act on never reach it.

use vm_memory::VolatileSlice;

use super::features::{self, has};
use super::MAX_FRAME_LEN;
use crate::backends::tap::MIN_VNET_HDR_LEN;

/// Length of `virtio_net_hdr_v1`: what every virtio 1.x driver uses, with
/// or without mergeable receive buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Where `num_buffers` sits in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
pub const ETH_HLEN: usize = 14;
/// An 802.1Q tag, which the MTU does not count.
pub const VLAN_HLEN: usize = 4;
/// The smallest MTU the spec lets a device report (§5.1.4.1).
pub const MIN_MTU: u16 = 68;

const _: () = assert!(VNET_HDR_LEN >= MIN_VNET_HDR_LEN);

/// `flags` bits.
pub mod flags {
    /// `csum_start` / `csum_offset` describe a checksum left to finish.
    pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
    /// Receive only: the device checked the checksum.
    pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
    /// Receive only: coalescing information in place of the checksum.
    pub const VIRTIO_NET_HDR_F_RSC_INFO: u8 = 4;
}

/// `gso_type` values.
pub mod gso {
    pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
    pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
    pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
    pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
    pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
    /// Flag on a TCP type: the segments carry ECN.
    pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;
}

use flags::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use gso::*;

/// `struct virtio_net_hdr_v1`, fields in host order (little-endian in
/// memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    pub fn from_bytes(bytes: &[u8; VNET_HDR_LEN]) -> Self {
        let le16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Self {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers: le16(NUM_BUFFERS_OFFSET),
        }
    }

    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut bytes = [0; VNET_HDR_LEN];
        bytes[0] = self.flags;
        bytes[1] = self.gso_type;
        for (at, value) in [
            (2, self.hdr_len),
            (4, self.gso_size),
            (6, self.csum_start),
            (8, self.csum_offset),
            (NUM_BUFFERS_OFFSET, self.num_buffers),
        ] {
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("virtio-net header is {len} bytes; it needs {VNET_HDR_LEN}")]
    ShortHeader { len: usize },
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than an Ethernet header ({ETH_HLEN} bytes)")]
    TooShort { len: usize },
    #[error("unknown segmentation type {0:#x}")]
    UnknownGsoType(u8),
    #[error("segmentation type {gso_type:#x} needs {feature}, which the driver did not negotiate")]
    GsoNotNegotiated { gso_type: u8, feature: &'static str },
    #[error("the ECN flag is set on segmentation type {gso_type:#x}, which is not TCP")]
    EcnWithoutTcp { gso_type: u8 },
    #[error("checksum offload requested without VIRTIO_NET_F_CSUM negotiated")]
    CsumNotNegotiated,
    #[error("segmentation requested without a partial checksum (NEEDS_CSUM)")]
    GsoWithoutChecksum,
    #[error("segmentation requested with a segment size of 0")]
    ZeroGsoSize,
    #[error("checksum starts at byte {start}, inside the Ethernet header")]
    ChecksumInEthernetHeader { start: u16 },
    #[error("checksum at {start}+{offset} does not fit in a {len}-byte frame")]
    ChecksumOutsideFrame { start: u16, offset: u16, len: usize },
}

impl HeaderError {
    /// The counter a frame dropped for this error goes to.
    pub fn drop_reason(&self) -> super::DropReason {
        use super::DropReason;
        match self {
            Self::TooLarge { .. } => DropReason::TxTooLarge,
            Self::TooShort { .. } => DropReason::TxTooShort,
            Self::GsoNotNegotiated { .. } => DropReason::TxGsoNotNegotiated,
            Self::CsumNotNegotiated => DropReason::TxCsumNotNegotiated,
            Self::ShortHeader { .. }
            | Self::UnknownGsoType(_)
            | Self::EcnWithoutTcp { .. }
            | Self::GsoWithoutChecksum
            | Self::ZeroGsoSize
            | Self::ChecksumInEthernetHeader { .. }
            | Self::ChecksumOutsideFrame { .. } => DropReason::TxBadHeader,
        }
    }
}

/// What a transmitted frame must respect, fixed when the driver finishes
/// negotiating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRules {
    acked: u64,
    max_frame_len: usize,
}

impl TxRules {
    /// `mtu` is the config space value; it binds only when the driver
    /// negotiated `VIRTIO_NET_F_MTU`, and then only frames that are not
    /// segmented (§5.1.6.2.1): it counts no Ethernet header or VLAN tag.
    pub fn new(acked: u64, mtu: u16) -> Self {
        let max_frame_len = if has(acked, features::VIRTIO_NET_F_MTU) {
            (usize::from(mtu) + ETH_HLEN + VLAN_HLEN).min(MAX_FRAME_LEN)
        } else {
            MAX_FRAME_LEN
        };
        Self { acked, max_frame_len }
    }

    /// Largest frame without segmentation.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Checks the header `raw` of a `frame_len`-byte frame (header not
    /// counted) and returns the header to send on: only the NEEDS_CSUM
    /// flag (the others are for receiving, or unknown, which a device must
    /// ignore), `num_buffers` zero, and no fields the frame does not use.
    /// `hdr_len` is only a hint (no `VIRTIO_NET_F_GUEST_HDRLEN`): it is kept
    /// for segmentation, clipped to the frame, and dropped otherwise.
    pub fn check(&self, raw: &[u8; VNET_HDR_LEN], frame_len: usize) -> Result<VirtioNetHdr, HeaderError> {
        use features::*;

        let hdr = VirtioNetHdr::from_bytes(raw);
        if frame_len > MAX_FRAME_LEN {
            return Err(HeaderError::TooLarge {
                len: frame_len,
                max: MAX_FRAME_LEN,
            });
        }
        if frame_len < ETH_HLEN {
            return Err(HeaderError::TooShort { len: frame_len });
        }
        let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        let ecn = hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0;
        let kind = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
        let (gso_feature, feature_name) = match kind {
            VIRTIO_NET_HDR_GSO_NONE => (None, ""),
            VIRTIO_NET_HDR_GSO_TCPV4 => (Some(VIRTIO_NET_F_HOST_TSO4), "VIRTIO_NET_F_HOST_TSO4"),
            VIRTIO_NET_HDR_GSO_TCPV6 => (Some(VIRTIO_NET_F_HOST_TSO6), "VIRTIO_NET_F_HOST_TSO6"),
            VIRTIO_NET_HDR_GSO_UDP => (Some(VIRTIO_NET_F_HOST_UFO), "VIRTIO_NET_F_HOST_UFO"),
            VIRTIO_NET_HDR_GSO_UDP_L4 => (Some(VIRTIO_NET_F_HOST_USO), "VIRTIO_NET_F_HOST_USO"),
            _ => return Err(HeaderError::UnknownGsoType(hdr.gso_type)),
        };
        match gso_feature {
            None => {
                if ecn {
                    return Err(HeaderError::EcnWithoutTcp {
                        gso_type: hdr.gso_type,
                    });
                }
                if frame_len > self.max_frame_len {
                    return Err(HeaderError::TooLarge {
                        len: frame_len,
                        max: self.max_frame_len,
                    });
                }
            }
            Some(feature) => {
                if !has(self.acked, feature) {
                    return Err(HeaderError::GsoNotNegotiated {
                        gso_type: hdr.gso_type,
                        feature: feature_name,
                    });
                }
                if ecn {
                    if kind != VIRTIO_NET_HDR_GSO_TCPV4 && kind != VIRTIO_NET_HDR_GSO_TCPV6 {
                        return Err(HeaderError::EcnWithoutTcp {
                            gso_type: hdr.gso_type,
                        });
                    }
                    if !has(self.acked, VIRTIO_NET_F_HOST_ECN) {
                        return Err(HeaderError::GsoNotNegotiated {
                            gso_type: hdr.gso_type,
                            feature: "VIRTIO_NET_F_HOST_ECN",
                        });
                    }
                }
                if !needs_csum {
                    return Err(HeaderError::GsoWithoutChecksum);
                }
                if hdr.gso_size == 0 {
                    return Err(HeaderError::ZeroGsoSize);
                }
            }
        }
        if needs_csum {
            if !has(self.acked, VIRTIO_NET_F_CSUM) {
                return Err(HeaderError::CsumNotNegotiated);
            }
            if usize::from(hdr.csum_start) < ETH_HLEN {
                return Err(HeaderError::ChecksumInEthernetHeader {
                    start: hdr.csum_start,
                });
            }
            // The 16-bit checksum itself must lie inside the frame.
            let csum_end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
            if csum_end > frame_len {
                return Err(HeaderError::ChecksumOutsideFrame {
                    start: hdr.csum_start,
                    offset: hdr.csum_offset,
                    len: frame_len,
                });
            }
        }

        let segmented = gso_feature.is_some();
        let frame_len_u16 = u16::try_from(frame_len).unwrap_or(u16::MAX);
        Ok(VirtioNetHdr {
            flags: hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: hdr.gso_type,
            hdr_len: if segmented {
                hdr.hdr_len.min(frame_len_u16)
            } else {
                0
            },
            gso_size: if segmented { hdr.gso_size } else { 0 },
            csum_start: if needs_csum { hdr.csum_start } else { 0 },
            csum_offset: if needs_csum { hdr.csum_offset } else { 0 },
            num_buffers: 0,
        })
    }
}

/// Total length of `bufs`.
pub fn total_len(bufs: &[VolatileSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).fold(0, usize::saturating_add)
}

/// Copies the header out of the start of a transmit chain's buffers and
/// returns it with the buffers of the frame after it (empty ones left out).
pub fn split_tx_header<'a>(
    bufs: &[VolatileSlice<'a>],
) -> Result<([u8; VNET_HDR_LEN], Vec<VolatileSlice<'a>>), HeaderError> {
    let mut header = [0u8; VNET_HDR_LEN];
    let mut filled = 0;
    let mut frame = Vec::with_capacity(bufs.len());
    for buf in bufs {
        let take = (VNET_HDR_LEN - filled).min(buf.len());
        if take > 0 {
            filled += buf.copy_to(&mut header[filled..filled + take]);
        }
        if buf.len() > take {
            let rest = buf
                .offset(take)
                .map_err(|_| HeaderError::ShortHeader { len: filled })?;
            frame.push(rest);
        }
    }
    if filled < VNET_HDR_LEN {
        return Err(HeaderError::ShortHeader { len: filled });
    }
    Ok((header, frame))
}

/// Writes `num_buffers` into a received frame's header, the first
/// [`VNET_HDR_LEN`] bytes of `bufs`. The backend does not: a tap leaves
/// those two bytes as they were.
pub fn set_num_buffers(bufs: &[VolatileSlice<'_>], num_buffers: u16) -> Result<(), HeaderError> {
    let len = total_len(bufs);
    if len < VNET_HDR_LEN {
        return Err(HeaderError::ShortHeader { len });
    }
    write_at(bufs, NUM_BUFFERS_OFFSET, &num_buffers.to_le_bytes());
    Ok(())
}

/// Copies `data` to byte `offset` of the concatenation of `bufs`, as far as
/// they reach.
fn write_at(bufs: &[VolatileSlice<'_>], mut offset: usize, mut data: &[u8]) {
    for buf in bufs {
        if data.is_empty() {
            return;
        }
        if offset >= buf.len() {
            offset -= buf.len();
            continue;
        }
        let Ok(dst) = buf.offset(offset) else {
            return;
        };
        let n = dst.len().min(data.len());
        dst.copy_from(&data[..n]);
        data = &data[n..];
        offset = 0;
    }
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;

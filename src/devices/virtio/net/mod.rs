//! virtio-net (virtio 1.2 §5.1): the parts of the model that are pure
//! functions of bytes, features and guest memory, and the device.
//!
//! - [`features`]: feature bits and their dependencies; [`guest_offloads`]
//!   and [`guest_offload_features`] map receive offloads to and from a
//!   backend's.
//! - [`header`]: the 12-byte `virtio_net_hdr_v1` in front of every frame,
//!   checked against the negotiated features before a frame goes out.
//! - [`config_space`]: the device configuration layout and the MAC address.
//! - [`counters`]: per-NIC packet, byte and drop counters.
//! - [`NetDevice`]: the device itself (`device.rs`, the receive path in
//!   `rx.rs`), which moves frames between the queues and the backend.
//!
//! The host side is a [`crate::backends::tap::NetBackend`], which knows
//! nothing of virtio.

pub mod config_space;
pub mod counters;
mod device;
pub mod header;
mod rx;

use crate::backends::tap::Offloads;

pub use config_space::{ConfigSpaceError, MacAddr, NetConfigSpace};
pub use counters::{DropReason, NetCounters, NetCountersSnapshot};
pub use device::{NetDevice, NetDeviceError, DEFAULT_MTU, PROCESS_BACKEND, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use header::{HeaderError, TxRules, VirtioNetHdr, VNET_HDR_LEN};

/// virtio device ID of a network card.
pub const NET_DEVICE_ID: u32 = 1;
/// Largest Ethernet frame, without the virtio-net header, that may cross
/// the device in either direction: 64 KiB of segmentation payload plus
/// headers.
pub const MAX_FRAME_LEN: usize = 65_550;
/// [`MAX_FRAME_LEN`] with the virtio-net header: the largest buffer a frame
/// ever needs.
pub const MAX_PACKET_LEN: usize = MAX_FRAME_LEN + VNET_HDR_LEN;

/// Network device feature bits (§5.1.3), as bit numbers.
pub mod features {
    /// The device handles partial checksums from the driver (transmit).
    pub const VIRTIO_NET_F_CSUM: u32 = 0;
    /// The driver handles partial checksums from the device (receive).
    pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
    pub const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: u32 = 2;
    /// The config space `mtu` field is valid.
    pub const VIRTIO_NET_F_MTU: u32 = 3;
    /// The config space `mac` field is valid.
    pub const VIRTIO_NET_F_MAC: u32 = 5;
    pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
    pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
    pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
    pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
    pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
    pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
    pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
    pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;
    pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
    /// The config space `status` field is valid.
    pub const VIRTIO_NET_F_STATUS: u32 = 16;
    pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
    pub const VIRTIO_NET_F_CTRL_RX: u32 = 18;
    pub const VIRTIO_NET_F_CTRL_VLAN: u32 = 19;
    pub const VIRTIO_NET_F_GUEST_ANNOUNCE: u32 = 21;
    /// The config space `max_virtqueue_pairs` field is valid.
    pub const VIRTIO_NET_F_MQ: u32 = 22;
    pub const VIRTIO_NET_F_CTRL_MAC_ADDR: u32 = 23;
    pub const VIRTIO_NET_F_NOTF_COAL: u32 = 53;
    pub const VIRTIO_NET_F_GUEST_USO4: u32 = 54;
    pub const VIRTIO_NET_F_GUEST_USO6: u32 = 55;
    pub const VIRTIO_NET_F_HOST_USO: u32 = 56;
    pub const VIRTIO_NET_F_GUEST_HDRLEN: u32 = 59;
    pub const VIRTIO_NET_F_RSS: u32 = 60;
    pub const VIRTIO_NET_F_RSC_EXT: u32 = 61;

    /// Whether feature bit `bit` is set in `features`.
    pub fn has(features: u64, bit: u32) -> bool {
        bit < 64 && features & (1 << bit) != 0
    }

    /// `features` with bit `bit` set (unchanged for a bit past 63).
    pub const fn with(features: u64, bit: u32) -> u64 {
        match 1u64.checked_shl(bit) {
            Some(mask) => features | mask,
            None => features,
        }
    }

    /// Features that need another (§5.1.3.1): (feature, it needs one of).
    pub const DEPENDENCIES: &[(u32, &[u32])] = &[
        (VIRTIO_NET_F_GUEST_TSO4, &[VIRTIO_NET_F_GUEST_CSUM]),
        (VIRTIO_NET_F_GUEST_TSO6, &[VIRTIO_NET_F_GUEST_CSUM]),
        (
            VIRTIO_NET_F_GUEST_ECN,
            &[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6],
        ),
        (VIRTIO_NET_F_GUEST_UFO, &[VIRTIO_NET_F_GUEST_CSUM]),
        (VIRTIO_NET_F_GUEST_USO4, &[VIRTIO_NET_F_GUEST_CSUM]),
        (VIRTIO_NET_F_GUEST_USO6, &[VIRTIO_NET_F_GUEST_CSUM]),
        (VIRTIO_NET_F_HOST_TSO4, &[VIRTIO_NET_F_CSUM]),
        (VIRTIO_NET_F_HOST_TSO6, &[VIRTIO_NET_F_CSUM]),
        (
            VIRTIO_NET_F_HOST_ECN,
            &[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6],
        ),
        (VIRTIO_NET_F_HOST_UFO, &[VIRTIO_NET_F_CSUM]),
        (VIRTIO_NET_F_HOST_USO, &[VIRTIO_NET_F_CSUM]),
        (VIRTIO_NET_F_CTRL_RX, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_CTRL_VLAN, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_GUEST_ANNOUNCE, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_MQ, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_CTRL_MAC_ADDR, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_NOTF_COAL, &[VIRTIO_NET_F_CTRL_VQ]),
        (VIRTIO_NET_F_RSS, &[VIRTIO_NET_F_CTRL_VQ]),
        (
            VIRTIO_NET_F_RSC_EXT,
            &[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6],
        ),
    ];

    /// The first feature in `acked` whose prerequisite is missing, as
    /// (feature, one of the features it needs). A driver must not accept
    /// such a set (§5.1.3.1); the device may refuse FEATURES_OK.
    pub fn missing_dependency(acked: u64) -> Option<(u32, u32)> {
        DEPENDENCIES.iter().find_map(|&(feature, needs)| {
            (has(acked, feature) && !needs.iter().any(|&n| has(acked, n))).then(|| (feature, needs[0]))
        })
    }
}

/// Status bits in the config space (§5.1.4).
pub mod status {
    pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
    pub const VIRTIO_NET_S_ANNOUNCE: u16 = 2;
}

/// The receive offloads the driver accepted, for
/// [`crate::backends::tap::NetBackend::set_offloads`]. The spec makes every
/// receive offload depend on `GUEST_CSUM`; without it there are none.
pub fn guest_offloads(acked: u64) -> Offloads {
    use features::*;
    if !has(acked, VIRTIO_NET_F_GUEST_CSUM) {
        return Offloads::NONE;
    }
    Offloads {
        csum: true,
        tso4: has(acked, VIRTIO_NET_F_GUEST_TSO4),
        tso6: has(acked, VIRTIO_NET_F_GUEST_TSO6),
        tso_ecn: has(acked, VIRTIO_NET_F_GUEST_ECN),
        ufo: has(acked, VIRTIO_NET_F_GUEST_UFO),
        uso4: has(acked, VIRTIO_NET_F_GUEST_USO4),
        uso6: has(acked, VIRTIO_NET_F_GUEST_USO6),
    }
}

/// The receive-offload feature bits worth offering with a backend that
/// supports `supported`: the inverse of [`guest_offloads`].
pub fn guest_offload_features(supported: Offloads) -> u64 {
    use features::*;
    if !supported.csum {
        return 0;
    }
    [
        (true, VIRTIO_NET_F_GUEST_CSUM),
        (supported.tso4, VIRTIO_NET_F_GUEST_TSO4),
        (supported.tso6, VIRTIO_NET_F_GUEST_TSO6),
        (
            supported.tso_ecn && (supported.tso4 || supported.tso6),
            VIRTIO_NET_F_GUEST_ECN,
        ),
        (supported.ufo, VIRTIO_NET_F_GUEST_UFO),
        (supported.uso4, VIRTIO_NET_F_GUEST_USO4),
        (supported.uso6, VIRTIO_NET_F_GUEST_USO6),
    ]
    .into_iter()
    .filter(|&(on, _)| on)
    .fold(0, |acc, (_, bit)| with(acc, bit))
}

#[cfg(test)]
mod tests;

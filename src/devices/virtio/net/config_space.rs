//! The device configuration space (`struct virtio_net_config`, §5.1.4) and
//! the MAC address in it.
//!
//! The layout is fixed whatever was negotiated: `mac` at 0, `status` at 6,
//! `max_virtqueue_pairs` at 8, `mtu` at 10, all little-endian. A field
//! whose feature is not offered still takes its place; it reads as what the
//! device put there. The fields after `mtu` (speed, duplex, RSS) are not
//! offered and read as zero.

use std::fmt;
use std::str::FromStr;

use super::header::MIN_MTU;
use super::status::VIRTIO_NET_S_LINK_UP;
use crate::devices::virtio::read_config_bytes;

pub const MAC_OFFSET: usize = 0;
pub const STATUS_OFFSET: usize = 6;
pub const MAX_VIRTQUEUE_PAIRS_OFFSET: usize = 8;
pub const MTU_OFFSET: usize = 10;
/// Bytes up to and including `mtu`.
pub const CONFIG_SPACE_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigSpaceError {
    #[error("MAC address {0:?} is not six hex bytes separated by ':' (like 52:54:00:12:34:56)")]
    BadMac(String),
    #[error("MAC address {0} is a multicast address (lowest bit of the first byte set); use a unicast one")]
    MulticastMac(MacAddr),
    #[error("MTU {0} is below {MIN_MTU}, the smallest the virtio spec allows")]
    MtuTooSmall(u16),
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// A unicast address; multicast ones cannot name a NIC.
    pub fn new(bytes: [u8; 6]) -> Result<Self, ConfigSpaceError> {
        let mac = Self(bytes);
        if mac.is_multicast() {
            return Err(ConfigSpaceError::MulticastMac(mac));
        }
        Ok(mac)
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether the address was made up locally rather than assigned by a
    /// vendor (the bit to set in a generated address).
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 2 != 0
    }
}

impl FromStr for MacAddr {
    type Err = ConfigSpaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigSpaceError::BadMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+f".
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Self::new(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// The fields of the config space the device offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfigSpace {
    pub mac: MacAddr,
    /// `VIRTIO_NET_S_*` bits.
    pub status: u16,
    /// 1: one receive and one transmit queue.
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfigSpace {
    /// Link up, one queue pair; `mtu` must be at least [`MIN_MTU`].
    pub fn new(mac: MacAddr, mtu: u16) -> Result<Self, ConfigSpaceError> {
        if mtu < MIN_MTU {
            return Err(ConfigSpaceError::MtuTooSmall(mtu));
        }
        Ok(Self {
            mac,
            status: VIRTIO_NET_S_LINK_UP,
            max_virtqueue_pairs: 1,
            mtu,
        })
    }

    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut bytes = [0u8; CONFIG_SPACE_LEN];
        bytes[MAC_OFFSET..MAC_OFFSET + 6].copy_from_slice(&self.mac.bytes());
        for (at, value) in [
            (STATUS_OFFSET, self.status),
            (MAX_VIRTQUEUE_PAIRS_OFFSET, self.max_virtqueue_pairs),
            (MTU_OFFSET, self.mtu),
        ] {
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// A driver's read of any offset and length; past the end reads zero.
    /// The driver cannot write any field of a modern device.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.to_bytes(), offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn mac_addresses_parse_and_print() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(mac.bytes(), MAC);
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(format!("{mac:?}"), "MacAddr(52:54:00:12:34:56)");
        // QEMU's prefix 52:54:00 is a locally administered one.
        assert!(mac.is_locally_administered());
        let upper: MacAddr = "00:1B:21:aB:cd:EF".parse().unwrap();
        assert_eq!(upper.to_string(), "00:1b:21:ab:cd:ef");
        assert!(!upper.is_locally_administered());
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:zz",
            "+2:54:00:12:34:56",
            "52:54:00:12:34:56:",
            "é2:54:00:12:34:56",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err, ConfigSpaceError::BadMac(bad.to_string()), "{bad:?}");
        }
        let err = "01:00:5e:00:00:01".parse::<MacAddr>().unwrap_err();
        assert!(matches!(err, ConfigSpaceError::MulticastMac(_)), "{err}");
        assert!(err.to_string().contains("unicast"), "{err}");
        assert!(MacAddr::new([0xff; 6]).is_err());
    }

    #[test]
    fn config_space_has_the_spec_layout() {
        let config = NetConfigSpace::new(MacAddr::new(MAC).unwrap(), 1500).unwrap();
        assert_eq!(
            config.to_bytes(),
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 0x05]
        );
        let mut mtu = [0u8; 2];
        config.read(MTU_OFFSET as u64, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1500);
        let mut status = [0xffu8; 4];
        config.read(STATUS_OFFSET as u64, &mut status);
        assert_eq!(status, [1, 0, 1, 0]);
        // Speed and duplex are not offered: zero, as is anything further.
        let mut past = [0xffu8; 8];
        config.read(CONFIG_SPACE_LEN as u64, &mut past);
        assert_eq!(past, [0; 8]);
        config.read(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn mtu_below_the_spec_minimum_is_refused() {
        let mac = MacAddr::new(MAC).unwrap();
        assert_eq!(
            NetConfigSpace::new(mac, 67).unwrap_err(),
            ConfigSpaceError::MtuTooSmall(67)
        );
        assert_eq!(NetConfigSpace::new(mac, 68).unwrap().mtu, 68);
        assert_eq!(NetConfigSpace::new(mac, u16::MAX).unwrap().mtu, u16::MAX);
    }
}

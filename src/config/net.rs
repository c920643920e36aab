//! `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,id=ID]`: one virtio-net card on
//! a host tap. Several cards appear in the guest in the order given.
//!
//! Without `mac=`, a card gets [`default_mac`] of its tap: the same
//! configuration always boots with the same addresses, so DHCP leases and
//! the guest's own network settings keep working across runs.

use super::id::{validate_id, IdError};
use super::spec::{Key, Spec, SpecError};
use super::ConfigError;
use crate::backends::tap::{check_interface_name, InterfaceNameError};
use crate::devices::virtio::net::{ConfigSpaceError, MacAddr};
use crate::rate_limiter::{RateKeys, RateLimitConfigError, RateLimiterConfig};

const KEYS: &[Key] = &[
    Key::value("tap", "NAME").required(),
    Key::value("mac", "XX:XX:XX:XX:XX:XX"),
    Key::value("id", "ID"),
    Key::value("rx-bw", "SIZE/MS"),
    Key::value("rx-bw-burst", "SIZE"),
    Key::value("rx-ops", "N/MS"),
    Key::value("rx-ops-burst", "N"),
    Key::value("tx-bw", "SIZE/MS"),
    Key::value("tx-bw-burst", "SIZE"),
    Key::value("tx-ops", "N/MS"),
    Key::value("tx-ops-burst", "N"),
];

/// First byte of every default MAC: locally administered (bit 1) and
/// unicast (bit 0 clear), so it can clash with no vendor's address.
pub const DEFAULT_MAC_FIRST_BYTE: u8 = 0x02;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    TapName(#[from] InterfaceNameError),
    #[error(transparent)]
    Mac(#[from] ConfigSpaceError),
    #[error("MAC address 00:00:00:00:00:00 cannot name a card; give another, or leave mac= out")]
    ZeroMac,
    #[error(transparent)]
    RateLimit(#[from] RateLimitConfigError),
}

/// One network card. Plain data: the command line and the API both build
/// it, then call [`NetConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The host tap interface (created if missing and kiln may).
    pub tap: String,
    /// The guest's address; [`default_mac`] of the tap when `None`.
    pub mac: Option<MacAddr>,
    pub id: Option<String>,
    /// Limits on what the guest receives.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Limits on what the guest sends.
    pub tx_rate_limiter: RateLimiterConfig,
}

impl NetConfig {
    /// A card on `tap` with the default MAC, no id and no rate limits.
    pub fn new(tap: impl Into<String>) -> Self {
        Self {
            tap: tap.into(),
            mac: None,
            id: None,
            rx_rate_limiter: RateLimiterConfig::default(),
            tx_rate_limiter: RateLimiterConfig::default(),
        }
    }

    /// Checks what this card alone can get wrong. Rules across devices
    /// (one card per tap, unique ids) are [`super::VmConfig::validate`]'s.
    pub fn validate(&self) -> Result<(), NetError> {
        // The rule the tap backend applies when it opens the tap.
        check_interface_name(&self.tap)?;
        // A multicast MacAddr cannot exist; zero is the one bad unicast.
        if self.mac.is_some_and(|mac| mac.bytes() == [0; 6]) {
            return Err(NetError::ZeroMac);
        }
        if let Some(id) = &self.id {
            validate_id(id)?;
        }
        self.rx_rate_limiter.validate()?;
        self.tx_rate_limiter.validate()?;
        Ok(())
    }

    /// The guest's MAC address: the one given, or the tap's default.
    pub fn mac_or_default(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| default_mac(&self.tap))
    }
}

/// The MAC a card on `tap` gets when none is given: `02:` and then 40 bits
/// of a hash of the tap name.
///
/// Why the tap name, and nothing else: it is what identifies a card across
/// runs (kiln has no VM id, and a process id or boot time would change the
/// address every run), and the kernel lets one tap serve one card at a
/// time, so on one host the cards of all running VMs get distinct
/// addresses (up to a 2^-40 chance of a hash clash per pair). Reordering
/// `--net` flags keeps each tap's address. VMs on different hosts bridged
/// into one segment with equal tap names would clash: give them `mac=`.
///
/// The hash is spelled out (FNV-1a, then the SplitMix64 finalizer to spread
/// short names over all bits) because std's hasher may change between Rust
/// releases, and the address must not.
pub fn default_mac(tap: &str) -> MacAddr {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in b"kiln-net:".iter().chain(tap.as_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let [a, b, c, d, e, ..] = hash.to_be_bytes();
    MacAddr::new([DEFAULT_MAC_FIRST_BYTE, a, b, c, d, e])
        .expect("a first byte of 0x02 is unicast, whatever the tap name")
}

/// Parses and validates one `--net` spec. The entry point for a fuzz
/// target too.
pub fn parse(spec: &str) -> Result<NetConfig, ConfigError> {
    parse_spec(spec).map_err(|why| ConfigError::BadNet {
        spec: spec.to_string(),
        why,
    })
}

fn parse_spec(text: &str) -> Result<NetConfig, NetError> {
    let spec = Spec::parse(text, KEYS)?;
    let net = NetConfig {
        tap: spec.value("tap").unwrap_or_default().to_string(),
        mac: spec.value("mac").map(str::parse).transpose()?,
        id: spec.value("id").map(str::to_string),
        rx_rate_limiter: rate_limiter(&spec, &RateKeys::RX)?,
        tx_rate_limiter: rate_limiter(&spec, &RateKeys::TX)?,
    };
    net.validate()?;
    Ok(net)
}

/// One direction's rate limits from its four keys.
fn rate_limiter(spec: &Spec<'_>, keys: &RateKeys) -> Result<RateLimiterConfig, RateLimitConfigError> {
    let values = [keys.bw, keys.bw_burst, keys.ops, keys.ops_burst].map(|key| spec.value(key));
    RateLimiterConfig::from_keys(keys, values)
}

/// The spec that names every field given, each once: it parses back to
/// the same card.
impl std::fmt::Display for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tap={}", self.tap)?;
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        if let Some(id) = &self.id {
            write!(f, ",id={id}")?;
        }
        f.write_str(&self.rx_rate_limiter.spec_keys(&RateKeys::RX))?;
        f.write_str(&self.tx_rate_limiter.spec_keys(&RateKeys::TX))
    }
}

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        parse(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_writes_back_to_a_spec_that_parses_to_it() {
        for spec in [
            "tap=t0",
            "tap=t1,mac=02:00:00:00:00:09,id=eth0,rx-bw=1M/100,tx-ops=5/10,tx-ops-burst=3",
        ] {
            let n: NetConfig = spec.parse().unwrap();
            assert_eq!(n.to_string().parse::<NetConfig>().unwrap(), n, "{spec}");
        }
    }

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_direction_has_its_own_rate_limit_keys() {
        use crate::rate_limiter::TokenBucketConfig;
        let net =
            parse("tap=t0,rx-bw=1M/100,rx-ops-burst=10,rx-ops=50/1000,tx-bw=2K/10,tx-bw-burst=4K").unwrap();
        let bucket = |size, one_time_burst, refill_time| {
            Some(TokenBucketConfig {
                size,
                one_time_burst,
                refill_time,
            })
        };
        assert_eq!(
            net.rx_rate_limiter,
            RateLimiterConfig {
                bandwidth: bucket(1 << 20, None, 100),
                ops: bucket(50, Some(10), 1000),
            }
        );
        assert_eq!(
            net.tx_rate_limiter,
            RateLimiterConfig {
                bandwidth: bucket(2048, Some(4096), 10),
                ops: None,
            }
        );
        for (spec, why) in [
            ("tap=t0,bw=1M/1", "unknown option \"bw\""),
            ("tap=t0,tx-ops=1", "tx-ops=AMOUNT/MS"),
            ("tap=t0,rx-bw-burst=1", "rx-bw-burst without rx-bw"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
        let mut api = NetConfig::new("t0");
        api.tx_rate_limiter.ops = bucket(1, None, 0);
        assert!(matches!(api.validate(), Err(NetError::RateLimit(_))));
    }

    #[test]
    fn net_specs_parse() {
        assert_eq!(parse("tap=tap0").unwrap(), NetConfig::new("tap0"));
        assert_eq!(
            parse("id=net0,mac=02:00:00:00:00:01,tap=kiln-tap_1").unwrap(),
            NetConfig {
                tap: "kiln-tap_1".into(),
                mac: Some(mac("02:00:00:00:00:01")),
                id: Some("net0".into()),
                ..NetConfig::new("kiln-tap_1")
            }
        );
        let upper = parse("tap=t,mac=52:54:00:AB:cd:EF").unwrap();
        assert_eq!(upper.mac_or_default().to_string(), "52:54:00:ab:cd:ef");
        let longest = "a123456789abcde";
        assert_eq!(parse(&format!("tap={longest}")).unwrap().tap, longest);
    }

    #[test]
    fn bad_net_specs_say_why() {
        for (spec, why) in [
            ("", "nothing given; use tap=NAME, mac=XX:XX:XX:XX:XX:XX, id=ID"),
            ("mac=02:00:00:00:00:01", "tap=NAME is required"),
            ("tap", "tap needs a value"),
            ("tap=", "the value of tap is empty"),
            ("tap=a,tap=b", "option tap is given more than once"),
            ("tap=a,", "stray ','"),
            ("tap=a,queues=2", "unknown option \"queues\""),
            ("tap=a123456789abcdef", "Linux allows at most 15"),
            ("tap=a/b", "'/'"),
            ("tap=tap:0", "'/', ':', '%'"),
            ("tap=tap%d", "'/', ':', '%'"),
            ("tap=.", "'.' or '..'"),
            ("tap=..", "'.' or '..'"),
            ("tap=tap 0", "printable ASCII"),
            ("tap=a,mac=02:00:00:00:00", "not six hex bytes"),
            ("tap=a,mac=02:00:00:00:00:01:02", "not six hex bytes"),
            ("tap=a,mac=02-00-00-00-00-01", "not six hex bytes"),
            ("tap=a,mac=0x:00:00:00:00:01", "not six hex bytes"),
            ("tap=a,mac=+2:00:00:00:00:01", "not six hex bytes"),
            ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=a,mac=ff:ff:ff:ff:ff:ff", "multicast"),
            (
                "tap=a,mac=00:00:00:00:00:00",
                "00:00:00:00:00:00 cannot name a card",
            ),
            ("tap=a,id=net 0", "printable"),
            ("tap=a,id=123456789012345678901", "at most 20"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--net {spec:?}: ")), "{err}");
            assert!(err.contains(why), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: {err}");
        }
    }

    #[test]
    fn tap_names_follow_the_tap_backends_rule() {
        // The same function decides, so the card cannot pass the command
        // line and then fail when the tap is opened.
        for name in ["", ".", "a/b", "x:y", "%d", "a123456789abcdef", "t\u{0}"] {
            let mut net = NetConfig::new(name);
            assert_eq!(
                net.validate().unwrap_err(),
                NetError::TapName(check_interface_name(name).unwrap_err())
            );
            net.tap = "tap0".into();
            assert_eq!(net.validate(), Ok(()));
        }
    }

    #[test]
    fn default_macs_are_stable_local_unicast_and_distinct() {
        // Pinned (also computed independently): changing the derivation
        // would renumber every guest's NIC.
        assert_eq!(default_mac("tap0").to_string(), "02:a1:09:50:1c:9e");
        assert_eq!(default_mac("tap1").to_string(), "02:86:c4:4b:8e:b6");
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096 {
            let mac = default_mac(&format!("tap{i}"));
            assert!(mac.is_locally_administered() && !mac.is_multicast(), "{mac}");
            assert_eq!(mac.bytes()[0], DEFAULT_MAC_FIRST_BYTE);
            assert_eq!(mac, default_mac(&format!("tap{i}")));
            assert!(seen.insert(mac), "tap{i} clashes: {mac}");
        }
        let net = NetConfig::new("tap0");
        assert_eq!(net.mac_or_default(), default_mac("tap0"));
        let given = mac("02:00:00:00:00:01");
        let net = NetConfig {
            mac: Some(given),
            ..net
        };
        assert_eq!(net.mac_or_default(), given);
    }
}

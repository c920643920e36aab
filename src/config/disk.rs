//! `--disk path=FILE[,root][,readonly][,id=ID][,cache=unsafe|writeback|none][,shared=on|off]`:
//! one virtio-blk disk.

use super::id::{validate_id, IdError};
use super::spec::{Key, Spec, SpecError};
use super::ConfigError;
use crate::devices::virtio::block::BlockConfig;
use crate::rate_limiter::{RateKeys, RateLimitConfigError, RateLimiterConfig};

const KEYS: &[Key] = &[
    Key::value("path", "FILE").required(),
    Key::flag("root"),
    Key::switch("readonly").alias("ro"),
    Key::value("id", "ID"),
    Key::value("cache", "unsafe|writeback|none"),
    Key::value("shared", "on|off"),
    Key::value("bw", "SIZE/MS"),
    Key::value("bw-burst", "SIZE"),
    Key::value("ops", "N/MS"),
    Key::value("ops-burst", "N"),
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Id(#[from] IdError),
    /// The cache mode's own message (its parser is the backend's).
    #[error("{0}")]
    Cache(String),
    #[error("the disk image path is empty; give the image's file")]
    NoPath,
    #[error(transparent)]
    RateLimit(#[from] RateLimitConfigError),
}

/// One disk: the block device plus whether it is the root filesystem.
/// Plain data: the command line and the API both build it, then call
/// [`DiskConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub block: BlockConfig,
    /// Becomes /dev/vda, and `root=/dev/vda` is added to the command line
    /// unless it already names a root.
    pub root: bool,
}

impl DiskConfig {
    /// Checks what this disk alone can get wrong. Rules across devices
    /// (one root, unique ids) are [`super::VmConfig::validate`]'s.
    pub fn validate(&self) -> Result<(), DiskError> {
        if self.block.path.as_os_str().is_empty() {
            return Err(DiskError::NoPath);
        }
        if let Some(id) = &self.block.id {
            validate_id(id)?;
        }
        self.block.rate_limiter.validate()?;
        Ok(())
    }
}

/// Parses and validates one `--disk` spec. The entry point for the fuzz
/// target too.
pub fn parse(spec: &str) -> Result<DiskConfig, ConfigError> {
    parse_spec(spec).map_err(|why| ConfigError::BadDisk {
        spec: spec.to_string(),
        why,
    })
}

fn parse_spec(text: &str) -> Result<DiskConfig, DiskError> {
    let spec = Spec::parse(text, KEYS)?;
    let mut block = BlockConfig::new(spec.value("path").unwrap_or_default());
    block.read_only = spec.switch("readonly")?.unwrap_or(false);
    block.id = spec.value("id").map(str::to_string);
    if let Some(cache) = spec.value("cache") {
        block.cache = cache.parse().map_err(|e| DiskError::Cache(format!("{e}")))?;
    }
    block.shared = spec.switch("shared")?.unwrap_or(false);
    let keys = RateKeys::PLAIN;
    let values = [keys.bw, keys.bw_burst, keys.ops, keys.ops_burst].map(|key| spec.value(key));
    block.rate_limiter = RateLimiterConfig::from_keys(&keys, values)?;
    let disk = DiskConfig {
        block,
        root: spec.flag("root"),
    };
    disk.validate()?;
    Ok(disk)
}

/// The spec that names every field, each once: it parses back to the
/// same disk (given a path without commas).
impl std::fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.block;
        let switch = |on: bool| if on { "on" } else { "off" };
        write!(f, "path={}", b.path.display())?;
        if self.root {
            f.write_str(",root")?;
        }
        write!(
            f,
            ",readonly={},cache={},shared={}",
            switch(b.read_only),
            b.cache.name(),
            switch(b.shared)
        )?;
        if let Some(id) = &b.id {
            write!(f, ",id={id}")?;
        }
        f.write_str(&b.rate_limiter.spec_keys(&RateKeys::PLAIN))
    }
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        parse(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_writes_back_to_a_spec_that_parses_to_it() {
        for spec in [
            "path=/a.img,root",
            "path=b,ro,id=x1,cache=none,shared=on,bw=10M/1000,bw-burst=1G,ops=5/10",
        ] {
            let d: DiskConfig = spec.parse().unwrap();
            assert_eq!(d.to_string().parse::<DiskConfig>().unwrap(), d, "{spec}");
        }
    }

    use std::path::PathBuf;

    #[test]
    fn disk_specs_parse() {
        let d: DiskConfig = "path=/img/root.ext4,root".parse().unwrap();
        assert_eq!(d.block.path, PathBuf::from("/img/root.ext4"));
        assert!(d.root && !d.block.read_only && !d.block.shared);
        let d: DiskConfig = "path=d.img,readonly,id=data-1,cache=none,shared=on"
            .parse()
            .unwrap();
        assert!(d.block.read_only && d.block.shared && !d.root);
        assert_eq!(d.block.id.as_deref(), Some("data-1"));
        assert_eq!(d.block.cache, crate::backends::CacheMode::None);
        assert!("ro=off,path=x"
            .parse::<DiskConfig>()
            .is_ok_and(|d| !d.block.read_only));
    }

    #[test]
    fn bad_disk_specs_say_why() {
        for (spec, why) in [
            ("root", "path=FILE is required"),
            ("path=", "unknown option"),
            ("path=x,cache=fast", "unknown cache mode"),
            ("path=x,id=123456789012345678901", "at most 20"),
            ("path=x,id=has space", "printable"),
            ("path=x,bogus", "unknown option \"bogus\""),
            ("path=x,shared=maybe", "expected on or off"),
        ] {
            let err = spec.parse::<DiskConfig>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn disk_spec_errors_name_the_flag_and_spec() {
        assert_eq!(
            parse("path=x,path=y").unwrap_err().to_string(),
            "--disk \"path=x,path=y\": option path is given more than once; give it once"
        );
        assert_eq!(
            parse("path=x,root=yes").unwrap_err(),
            ConfigError::BadDisk {
                spec: "path=x,root=yes".into(),
                why: DiskError::Spec(SpecError::ValueForFlag {
                    item: "root=yes".into(),
                    key: "root"
                })
            }
        );
        let unknown = parse("path=x,size=1G").unwrap_err().to_string();
        assert!(
            unknown.ends_with(
                "use path=FILE, root, readonly[=on|off], id=ID, \
                 cache=unsafe|writeback|none, shared=on|off, bw=SIZE/MS, bw-burst=SIZE, ops=N/MS, ops-burst=N"
            ),
            "{unknown}"
        );
        assert!(parse("path=x,shared").is_err(), "shared takes on or off");
        assert!(parse("path=x,").is_err(), "stray comma");
    }

    #[test]
    fn every_disk_field_round_trips() {
        let d = parse("cache=unsafe,shared=off,ro,id=A_b-9,root,path=dir/a=b.img").unwrap();
        let mut block = BlockConfig::new("dir/a=b.img");
        block.read_only = true;
        block.id = Some("A_b-9".into());
        block.cache = crate::backends::CacheMode::Unsafe;
        assert_eq!(d, DiskConfig { block, root: true });
        assert_eq!(
            parse("path=x").unwrap(),
            DiskConfig {
                block: BlockConfig::new("x"),
                root: false
            }
        );
    }

    #[test]
    fn rate_limit_keys_build_the_disks_limiter() {
        use crate::rate_limiter::TokenBucketConfig;
        let d = parse("path=x,bw=10M/1000,bw-burst=1G,ops=100/500").unwrap();
        assert_eq!(
            d.block.rate_limiter,
            RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 10 << 20,
                    one_time_burst: Some(1 << 30),
                    refill_time: 1000
                }),
                ops: Some(TokenBucketConfig {
                    size: 100,
                    one_time_burst: None,
                    refill_time: 500
                }),
            }
        );
        assert!(!parse("path=x").unwrap().block.rate_limiter.is_limited());
        assert!(!parse("path=x,bw=0/0").unwrap().block.rate_limiter.is_limited());
        for (spec, why) in [
            ("path=x,bw=10M", "bw=AMOUNT/MS"),
            ("path=x,ops-burst=5", "ops-burst without ops"),
            ("path=x,ops=5/0", "refill_time"),
            ("path=x,bw=1Q/1", "not a size"),
        ] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("--disk"), "{spec}: {err}");
        }
    }

    #[test]
    fn disk_ids_follow_the_one_id_rule() {
        // Printable ASCII other than letters, digits, '_' and '-' was a
        // valid serial before; ids now share the rule of all devices.
        assert!(parse("path=x,id=vol.1").is_err());
        assert!(parse("path=x,id=a/b").is_err());
        assert!(parse("path=x,id=12345678901234567890").is_ok());
    }

    #[test]
    fn api_built_disks_get_the_same_checks() {
        let mut disk = DiskConfig {
            block: BlockConfig::new(""),
            root: false,
        };
        assert_eq!(disk.validate(), Err(DiskError::NoPath));
        disk.block.path = "d.img".into();
        assert_eq!(disk.validate(), Ok(()));
        disk.block.id = Some(String::new());
        assert_eq!(disk.validate(), Err(DiskError::Id(IdError::Empty)));
    }
}

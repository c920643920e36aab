//! What a rate limiter is asked to be: plain data, in Firecracker's JSON
//! shape (`{"bandwidth": {"size", "one_time_burst", "refill_time"},
//! "ops": {...}}`), built by the command line or the API and checked once
//! with [`RateLimiterConfig::validate`].

use serde::{Deserialize, Serialize};

/// Longest refill time, in ms: a whole year, far past any use, and small
/// enough that its nanoseconds fit in 64 bits.
pub const MAX_REFILL_TIME_MS: u64 = 365 * 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitConfigError {
    #[error("{bucket} rate limit of {size} every 0 ms: give refill_time in ms (at least 1), or size 0 for no limit")]
    ZeroRefillTime { bucket: &'static str, size: u64 },
    #[error("{bucket} refill_time {ms} ms is over a year ({MAX_REFILL_TIME_MS} ms); give a shorter one")]
    RefillTimeTooLong { bucket: &'static str, ms: u64 },
    #[error("{key}={value:?} is not a rate: use {key}=AMOUNT/MS, e.g. {example}")]
    BadRate {
        key: &'static str,
        value: String,
        example: &'static str,
    },
    #[error("{key}={value:?} is not a size: use a whole number with an optional K, M or G suffix (powers of 1024)")]
    BadAmount { key: &'static str, value: String },
    #[error("{burst} without {rate}: a one-time burst belongs to a rate limit; add {rate}=AMOUNT/MS")]
    BurstWithoutRate { burst: &'static str, rate: &'static str },
}

/// One token bucket: `size` tokens (bytes or operations) refilled over
/// `refill_time` ms, plus `one_time_burst` tokens spent first and never
/// refilled. Size 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything.
    pub fn is_limit(&self) -> bool {
        self.size > 0
    }

    fn validate(&self, bucket: &'static str) -> Result<(), RateLimitConfigError> {
        if !self.is_limit() {
            return Ok(());
        }
        match self.refill_time {
            0 => Err(RateLimitConfigError::ZeroRefillTime {
                bucket,
                size: self.size,
            }),
            ms if ms > MAX_REFILL_TIME_MS => Err(RateLimitConfigError::RefillTimeTooLong { bucket, ms }),
            _ => Ok(()),
        }
    }
}

/// A device's rate limits: bytes (`bandwidth`) and requests or frames
/// (`ops`). `{}`, a missing bucket or a bucket of size 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        if let Some(bucket) = &self.bandwidth {
            bucket.validate("bandwidth")?;
        }
        if let Some(bucket) = &self.ops {
            bucket.validate("ops")?;
        }
        Ok(())
    }

    /// Whether any bucket limits anything.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some_and(|b| b.is_limit()) || self.ops.is_some_and(|b| b.is_limit())
    }

    /// Applies a PATCH as Firecracker does: a bucket given replaces this
    /// one (size 0 turns it off), a bucket absent stays as it is.
    pub fn update(&mut self, patch: &RateLimiterConfig) {
        if let Some(bucket) = patch.bandwidth {
            self.bandwidth = bucket.is_limit().then_some(bucket);
        }
        if let Some(bucket) = patch.ops {
            self.ops = bucket.is_limit().then_some(bucket);
        }
    }

    /// These limits as command-line keys (each after a comma), what
    /// [`RateLimiterConfig::from_keys`] reads back.
    pub fn spec_keys(&self, keys: &RateKeys) -> String {
        let mut out = String::new();
        for (rate, burst, bucket) in [
            (keys.bw, keys.bw_burst, &self.bandwidth),
            (keys.ops, keys.ops_burst, &self.ops),
        ] {
            if let Some(b) = bucket {
                out.push_str(&format!(",{rate}={}/{}", b.size, b.refill_time));
                if let Some(burst_size) = b.one_time_burst {
                    out.push_str(&format!(",{burst}={burst_size}"));
                }
            }
        }
        out
    }

    /// Builds the limits from command-line keys: `{prefix}bw=SIZE/MS`,
    /// `{prefix}bw-burst=SIZE`, `{prefix}ops=N/MS`, `{prefix}ops-burst=N`
    /// (`keys` gives the names, the values are what the spec holds).
    pub fn from_keys(keys: &RateKeys, values: [Option<&str>; 4]) -> Result<Self, RateLimitConfigError> {
        let [bw, bw_burst, ops, ops_burst] = values;
        let config = Self {
            bandwidth: bucket_from_keys((keys.bw, bw), (keys.bw_burst, bw_burst), "10M/1000")?,
            ops: bucket_from_keys((keys.ops, ops), (keys.ops_burst, ops_burst), "1000/1000")?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The names of the four rate-limit keys of one limiter on the command
/// line.
#[derive(Clone, Copy, Debug)]
pub struct RateKeys {
    pub bw: &'static str,
    pub bw_burst: &'static str,
    pub ops: &'static str,
    pub ops_burst: &'static str,
}

impl RateKeys {
    /// `--disk`.
    pub const PLAIN: Self = Self {
        bw: "bw",
        bw_burst: "bw-burst",
        ops: "ops",
        ops_burst: "ops-burst",
    };
    /// `--net`, receive side.
    pub const RX: Self = Self {
        bw: "rx-bw",
        bw_burst: "rx-bw-burst",
        ops: "rx-ops",
        ops_burst: "rx-ops-burst",
    };
    /// `--net`, transmit side.
    pub const TX: Self = Self {
        bw: "tx-bw",
        bw_burst: "tx-bw-burst",
        ops: "tx-ops",
        ops_burst: "tx-ops-burst",
    };
}

fn bucket_from_keys(
    (rate_key, rate): (&'static str, Option<&str>),
    (burst_key, burst): (&'static str, Option<&str>),
    example: &'static str,
) -> Result<Option<TokenBucketConfig>, RateLimitConfigError> {
    let Some(rate) = rate else {
        return match burst {
            Some(_) => Err(RateLimitConfigError::BurstWithoutRate {
                burst: burst_key,
                rate: rate_key,
            }),
            None => Ok(None),
        };
    };
    let bad_rate = || RateLimitConfigError::BadRate {
        key: rate_key,
        value: rate.to_string(),
        example,
    };
    let (amount, ms) = rate.split_once('/').ok_or_else(bad_rate)?;
    let size = parse_amount(rate_key, amount)?;
    let refill_time = ms.parse::<u64>().map_err(|_| bad_rate())?;
    let one_time_burst = burst.map(|b| parse_amount(burst_key, b)).transpose()?;
    let bucket = TokenBucketConfig {
        size,
        one_time_burst,
        refill_time,
    };
    Ok(bucket.is_limit().then_some(bucket))
}

/// A whole number with an optional K, M or G suffix (binary multiples).
pub fn parse_amount(key: &'static str, text: &str) -> Result<u64, RateLimitConfigError> {
    let bad = || RateLimitConfigError::BadAmount {
        key,
        value: text.to_string(),
    };
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value = digits.parse::<u64>().map_err(|_| bad())?;
    value.checked_mul(1 << shift).ok_or_else(bad)
}

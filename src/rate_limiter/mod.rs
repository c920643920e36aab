//! Rate limiters for devices, as Firecracker's: a bandwidth bucket (bytes)
//! and an operations bucket (requests or frames), each a [`TokenBucket`]
//! with a one-time burst.
//!
//! A device asks [`RateLimiter::consume`] before each request. When a
//! bucket is short, the limiter arms its one-shot timer for the moment the
//! tokens will be there and refuses everything until the device calls
//! [`RateLimiter::on_timer`]: the device leaves its work where it is (in the
//! ring, or the tap) and keeps the timer in its host events, so nothing
//! spins and nothing ticks while the device is not throttled.

mod bucket;
pub mod config;
mod timer;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use bucket::{Reduction, TokenBucket};
pub use config::{RateKeys, RateLimitConfigError, RateLimiterConfig, TokenBucketConfig};
use timer::OneShotTimer;

#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error(transparent)]
    Config(#[from] RateLimitConfigError),
    #[error("cannot create a rate limiter's timer: {0}; check the open-file limit (ulimit -n)")]
    Timer(io::Error),
}

/// Which bucket a request draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Bytes,
    Ops,
}

/// Where a limiter reads the time: the monotonic clock, or a hand-moved one
/// for tests.
#[derive(Clone)]
pub struct Clock(ClockSource);

#[derive(Clone)]
enum ClockSource {
    Monotonic(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn monotonic() -> Self {
        Self(ClockSource::Monotonic(Instant::now()))
    }

    /// A clock that stands still until [`ManualTime::advance`] moves it.
    pub fn manual() -> (Self, ManualTime) {
        let now = Arc::new(AtomicU64::new(0));
        (Self(ClockSource::Manual(now.clone())), ManualTime(now))
    }

    /// Nanoseconds since the clock was made.
    pub fn now_ns(&self) -> u64 {
        match &self.0 {
            ClockSource::Monotonic(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            ClockSource::Manual(now) => now.load(Ordering::SeqCst),
        }
    }
}

/// Moves a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualTime(Arc<AtomicU64>);

impl ManualTime {
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

/// A device's limits and the timer that ends a throttle.
pub struct RateLimiter {
    config: RateLimiterConfig,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: OneShotTimer,
    /// Refusing everything until the timer fires.
    blocked: bool,
    /// Times a request was refused (a throttle began).
    throttled: u64,
    clock: Clock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .field("blocked", &self.blocked)
            .field("throttled", &self.throttled)
            .finish()
    }
}

impl RateLimiter {
    /// The limiter `config` describes, on the monotonic clock.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        Self::with_clock(config, Clock::monotonic())
    }

    pub fn with_clock(config: &RateLimiterConfig, clock: Clock) -> Result<Self, RateLimiterError> {
        config.validate()?;
        let mut limiter = Self {
            config: RateLimiterConfig::default(),
            bandwidth: None,
            ops: None,
            timer: OneShotTimer::new().map_err(RateLimiterError::Timer)?,
            blocked: false,
            throttled: 0,
            clock,
        };
        limiter.apply(config);
        Ok(limiter)
    }

    /// The limits in force.
    pub fn config(&self) -> &RateLimiterConfig {
        &self.config
    }

    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Refusing requests until the timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// How many times a request was refused.
    pub fn throttle_count(&self) -> u64 {
        self.throttled
    }

    fn bucket(&mut self, kind: TokenKind) -> Option<&mut TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_mut(),
            TokenKind::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of `kind`; `false` (and the timer armed) if they are
    /// not there. A device that needs both kinds calls this twice and
    /// [`RateLimiter::undo`]es the first if the second fails.
    pub fn consume(&mut self, tokens: u64, kind: TokenKind) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now_ns();
        let Some(bucket) = self.bucket(kind) else {
            return true;
        };
        match bucket.reduce(tokens, now) {
            Reduction::Taken => true,
            Reduction::Wait(ns) => {
                self.block(ns);
                false
            }
        }
    }

    /// One operation whose size is known only once it is done (a received
    /// frame): takes one op now, and goes ahead while the bandwidth bucket
    /// is not empty; the caller then [`RateLimiter::charge`]s the bytes.
    pub fn consume_unsized(&mut self) -> bool {
        if !self.consume(1, TokenKind::Ops) {
            return false;
        }
        let now = self.clock.now_ns();
        let Some(bandwidth) = self.bandwidth.as_mut() else {
            return true;
        };
        if bandwidth.has_tokens(now) {
            return true;
        }
        let wait = bandwidth.time_until(1);
        self.undo(1, TokenKind::Ops);
        self.block(wait);
        false
    }

    /// Takes `tokens` already spent, even beyond what is there: the excess
    /// is repaid before the bucket grows again.
    pub fn charge(&mut self, tokens: u64, kind: TokenKind) {
        if let Some(bucket) = self.bucket(kind) {
            bucket.charge(tokens);
        }
    }

    /// Gives back tokens taken for a request that did not go ahead.
    pub fn undo(&mut self, tokens: u64, kind: TokenKind) {
        if let Some(bucket) = self.bucket(kind) {
            bucket.undo(tokens);
        }
    }

    /// The device's timer fired (or may have: calls may be spurious).
    /// Returns whether the limiter was blocked, i.e. whether the device
    /// should go back to the work it left.
    pub fn on_timer(&mut self) -> bool {
        self.timer.acknowledge();
        std::mem::replace(&mut self.blocked, false)
    }

    /// Changes the limits while the device runs, with Firecracker's PATCH
    /// rules (see [`RateLimiterConfig::update`]). A replaced bucket starts
    /// full. A throttled device is woken at once to try the new limits.
    pub fn update(&mut self, patch: &RateLimiterConfig) -> Result<(), RateLimitConfigError> {
        patch.validate()?;
        let mut config = self.config;
        config.update(patch);
        let now = self.clock.now_ns();
        if patch.bandwidth.is_some() {
            self.bandwidth = config.bandwidth.map(|b| new_bucket(&b, now));
        }
        if patch.ops.is_some() {
            self.ops = config.ops.map(|b| new_bucket(&b, now));
        }
        self.config = config;
        if self.blocked {
            self.arm(1);
        }
        Ok(())
    }

    /// Makes the timer fire as soon as possible, without throttling: for a
    /// device that stopped a pass its timer started and must come back.
    pub fn wake_soon(&mut self) {
        self.arm(1);
    }

    fn apply(&mut self, config: &RateLimiterConfig) {
        let now = self.clock.now_ns();
        self.config = RateLimiterConfig::default();
        self.config.update(config);
        self.bandwidth = self.config.bandwidth.map(|b| new_bucket(&b, now));
        self.ops = self.config.ops.map(|b| new_bucket(&b, now));
    }

    fn block(&mut self, ns: u64) {
        self.blocked = true;
        self.throttled += 1;
        self.arm(ns);
    }

    fn arm(&mut self, ns: u64) {
        if let Err(e) = self.timer.arm(Duration::from_nanos(ns)) {
            // Cannot happen with a valid timerfd; without the timer the
            // device would wait forever, so stop limiting instead.
            log::error!("rate limiter: cannot arm the timer ({e}); the device is no longer limited");
            self.blocked = false;
            self.bandwidth = None;
            self.ops = None;
        }
    }
}

impl AsRawFd for RateLimiter {
    /// The timer: readable when a throttle ends.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

fn new_bucket(config: &TokenBucketConfig, now_ns: u64) -> TokenBucket {
    // Validated: refill_time is 1 ms to a year.
    TokenBucket::new(
        config.size,
        config.one_time_burst.unwrap_or(0),
        config.refill_time.saturating_mul(1_000_000),
        now_ns,
    )
}

#[cfg(test)]
mod tests;

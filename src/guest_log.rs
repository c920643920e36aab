//! Rate-limited logging for paths a guest can drive at will.
//!
//! A guest can hit any device path as often as it likes; one log line per
//! hit would let it fill the host's disk and bury every other message. So
//! every message a guest can trigger goes through the macros below: each
//! call site logs at most once per [`INTERVAL`], and its next line says how
//! many messages it suppressed in between. (A burst that ends is reported
//! when the site logs again, not on a timer.)
//!
//! `error_guest!`, `warn_guest!`, `info_guest!` and `debug_guest!` take the
//! arguments of `log::warn!` and friends. Debug-level sites are limited too:
//! a trace of one line a second per site with a count still diagnoses a
//! misbehaving driver, a million lines a second does not.
//!
//! The macros are defined before any other module in `lib.rs`, so they are
//! in scope in the whole crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Shortest time between two lines from one call site.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Logs at `$level` if the call site's limit allows it.
macro_rules! log_guest {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::guest_log::RateLimit = $crate::guest_log::RateLimit::new();
        let level: ::log::Level = $level;
        if ::log::log_enabled!(level) {
            match LIMIT.admit() {
                Some(0) => ::log::log!(level, $($arg)+),
                Some(suppressed) => ::log::log!(
                    level,
                    "{} ({} similar messages suppressed)",
                    format_args!($($arg)+),
                    suppressed
                ),
                None => {}
            }
        }
    }};
}

macro_rules! error_guest {
    ($($arg:tt)+) => { log_guest!(::log::Level::Error, $($arg)+) };
}

macro_rules! warn_guest {
    ($($arg:tt)+) => { log_guest!(::log::Level::Warn, $($arg)+) };
}

macro_rules! info_guest {
    ($($arg:tt)+) => { log_guest!(::log::Level::Info, $($arg)+) };
}

macro_rules! debug_guest {
    ($($arg:tt)+) => { log_guest!(::log::Level::Debug, $($arg)+) };
}

/// The state of one call site: when it last logged, and how many messages
/// it dropped since.
#[derive(Debug)]
pub struct RateLimit {
    /// Milliseconds since [`epoch`] plus one; 0 means never.
    last_logged: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self {
            last_logged: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether the site may log now; if so, how many messages it dropped
    /// since its last line.
    pub fn admit(&self) -> Option<u64> {
        let since_epoch = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.admit_at(since_epoch + 1)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let interval_ms = INTERVAL.as_millis() as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        let too_soon = last != 0 && now_ms.saturating_sub(last) < interval_ms;
        // Of several threads racing for the slot, one wins.
        if too_soon
            || self
                .last_logged
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_dropped_ones() {
        let limit = RateLimit::new();
        assert_eq!(limit.admit_at(1), Some(0));
        for now in [2, 500, 1000] {
            assert_eq!(limit.admit_at(now), None, "at {now} ms");
        }
        assert_eq!(limit.admit_at(1001), Some(3));
        assert_eq!(limit.admit_at(1002), None);
        assert_eq!(limit.admit_at(5000), Some(1));
        assert_eq!(limit.admit_at(6000), Some(0));
    }

    #[test]
    fn sites_are_limited_separately() {
        let first = RateLimit::new();
        let second = RateLimit::new();
        assert_eq!(first.admit(), Some(0));
        assert_eq!(second.admit(), Some(0));
        assert_eq!(first.admit(), None);
    }

    #[test]
    fn macros_expand_with_inline_and_positional_arguments() {
        let index = 3;
        for _ in 0..3 {
            warn_guest!("queue {index} failed: {}", "reason");
            debug_guest!("plain");
        }
    }
}

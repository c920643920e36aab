use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;

fn bucket(size: u64, burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
    TokenBucketConfig {
        size,
        one_time_burst: burst,
        refill_time,
    }
}

fn limiter(config: RateLimiterConfig) -> (RateLimiter, ManualTime) {
    let (clock, time) = Clock::manual();
    (RateLimiter::with_clock(&config, clock).unwrap(), time)
}

fn bandwidth(size: u64, burst: Option<u64>, refill_time: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(bucket(size, burst, refill_time)),
        ops: None,
    }
}

#[test]
fn bucket_refills_continuously_without_losing_fractions() {
    // 1000 tokens per 1000 ms: one per ms.
    let mut b = TokenBucket::new(1000, 0, 1000 * MS, 0);
    assert_eq!(b.reduce(1000, 0), Reduction::Taken);
    assert_eq!(b.reduce(1, 0), Reduction::Wait(MS));
    // 0.4 ms, three times: 1.2 tokens, the fractions add up.
    for step in 1..=3 {
        b.refill(step * 400_000);
    }
    assert_eq!(b.budget(), 1);
    b.refill(250 * MS);
    assert_eq!(b.budget(), 250);
    // Never past the size, and no credit carried while full.
    b.refill(10_000 * MS);
    assert_eq!(b.budget(), 1000);
    assert_eq!(b.reduce(1000, 10_000 * MS), Reduction::Taken);
    b.refill(10_000 * MS + MS / 2);
    assert_eq!(b.budget(), 0);
}

#[test]
fn bucket_wait_is_exact() {
    // 3 tokens per 10 ns: refill takes ceil().
    let mut b = TokenBucket::new(3, 0, 10, 0);
    assert_eq!(b.reduce(3, 0), Reduction::Taken);
    assert_eq!(b.reduce(2, 0), Reduction::Wait(7));
    assert_eq!(b.reduce(2, 6), Reduction::Wait(1));
    assert_eq!(b.reduce(2, 7), Reduction::Taken);
}

#[test]
fn one_time_burst_is_spent_first_and_never_refilled() {
    let mut b = TokenBucket::new(100, 50, 100 * MS, 0);
    assert_eq!(b.reduce(40, 0), Reduction::Taken);
    assert_eq!((b.one_time_burst(), b.budget()), (10, 100));
    // 10 from the burst, 90 from the budget.
    assert_eq!(b.reduce(100, 0), Reduction::Taken);
    assert_eq!((b.one_time_burst(), b.budget()), (0, 10));
    b.refill(1000 * MS);
    assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
    // A refused request does not spend the burst.
    let mut b = TokenBucket::new(10, 5, 10 * MS, 0);
    assert_eq!(b.reduce(8, 0), Reduction::Taken);
    assert!(matches!(b.reduce(20, 0), Reduction::Wait(_)));
    assert_eq!((b.one_time_burst(), b.budget()), (0, 7));
    let mut b = TokenBucket::new(10, 5, 10 * MS, 0);
    assert_eq!(b.reduce(10, 0), Reduction::Taken);
    assert!(matches!(b.reduce(6, 0), Reduction::Wait(_)));
    assert_eq!(b.one_time_burst(), 0);
    let mut b = TokenBucket::new(10, 5, 10 * MS, 0);
    assert!(
        matches!(b.reduce(30, 0), Reduction::Taken),
        "oversize, bucket full"
    );
    let mut b = TokenBucket::new(10, 5, 10 * MS, 0);
    b.charge(3);
    assert!(matches!(b.reduce(16, 0), Reduction::Wait(_)));
    assert_eq!(b.one_time_burst(), 5, "refused: the burst is kept");
}

#[test]
fn a_request_larger_than_the_bucket_passes_when_full_then_pays() {
    let mut b = TokenBucket::new(100, 0, 100 * MS, 0);
    assert_eq!(b.reduce(10, 0), Reduction::Taken);
    // Not full: wait until it is (10 ms), not for 250 tokens (never).
    assert_eq!(b.reduce(250, 0), Reduction::Wait(10 * MS));
    assert_eq!(b.reduce(250, 10 * MS), Reduction::Taken);
    // The excess 150 is debt: the next token comes 151 ms later.
    assert_eq!(b.reduce(1, 10 * MS), Reduction::Wait(151 * MS));
    assert_eq!(b.reduce(1, 161 * MS), Reduction::Taken);
}

#[test]
fn limiter_blocks_until_its_timer_and_counts_throttles() {
    let (mut l, time) = limiter(RateLimiterConfig {
        bandwidth: Some(bucket(1000, None, 100)),
        ops: Some(bucket(2, None, 100)),
    });
    assert!(l.consume(1, TokenKind::Ops) && l.consume(600, TokenKind::Bytes));
    assert!(l.consume(1, TokenKind::Ops));
    assert!(!l.consume(600, TokenKind::Bytes));
    l.undo(1, TokenKind::Ops);
    assert!(l.is_blocked());
    assert_eq!(l.throttle_count(), 1);
    // Blocked: refused whatever the buckets hold, until the timer.
    time.advance(Duration::from_millis(100));
    assert!(!l.consume(1, TokenKind::Ops));
    // The real timer was armed for 20 ms (200 bytes at 10 per ms).
    std::thread::sleep(Duration::from_millis(25));
    let mut fds = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    assert_eq!(unsafe { libc::poll(&mut fds, 1, 0) }, 1, "the timer fired");
    assert!(l.on_timer());
    assert!(!l.on_timer(), "a spurious call changes nothing");
    assert!(l.consume(1, TokenKind::Ops) && l.consume(600, TokenKind::Bytes));
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::poll(&mut fds, 1, 0) },
        0,
        "acknowledged, nothing armed"
    );
}

#[test]
fn unlimited_limiters_take_anything_and_never_arm() {
    for config in [
        RateLimiterConfig::default(),
        bandwidth(0, Some(5), 0),
        RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, None, 100)),
        },
    ] {
        let (mut l, _) = limiter(config);
        assert!(!l.is_limited());
        for _ in 0..1000 {
            assert!(l.consume(u64::MAX, TokenKind::Bytes) && l.consume(1, TokenKind::Ops));
        }
        assert!(l.consume_unsized());
        assert_eq!(l.throttle_count(), 0);
    }
}

#[test]
fn unsized_operations_are_charged_after_the_fact() {
    let (mut l, time) = limiter(bandwidth(1000, None, 1000));
    assert!(l.consume_unsized());
    l.charge(1500, TokenKind::Bytes);
    assert!(!l.consume_unsized(), "500 bytes of debt");
    assert!(l.on_timer());
    time.advance(Duration::from_millis(500));
    assert!(!l.consume_unsized(), "the debt is paid, nothing left yet");
    assert!(l.on_timer());
    time.advance(Duration::from_millis(1));
    assert!(l.consume_unsized());
}

#[test]
fn updates_follow_firecrackers_patch_rules() {
    let (mut l, time) = limiter(RateLimiterConfig {
        bandwidth: Some(bucket(1000, None, 1000)),
        ops: Some(bucket(10, None, 1000)),
    });
    assert!(l.consume(1000, TokenKind::Bytes));
    // Ops only: bandwidth keeps its (empty) state.
    l.update(&RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(5, Some(1), 100)),
    })
    .unwrap();
    assert_eq!(l.config().ops, Some(bucket(5, Some(1), 100)));
    assert_eq!(l.config().bandwidth, Some(bucket(1000, None, 1000)));
    assert!(!l.consume(1, TokenKind::Bytes));
    assert!(l.on_timer());
    // A new bandwidth bucket starts full.
    l.update(&bandwidth(2000, None, 1000)).unwrap();
    assert!(l.consume(2000, TokenKind::Bytes));
    // `{}` changes nothing; size 0 removes a bucket.
    l.update(&RateLimiterConfig::default()).unwrap();
    assert!(l.is_limited());
    l.update(&bandwidth(0, None, 0)).unwrap();
    assert_eq!(l.config().bandwidth, None);
    assert!(l.consume(u64::MAX, TokenKind::Bytes));
    // A bad patch changes nothing.
    assert_eq!(
        l.update(&RateLimiterConfig {
            bandwidth: Some(bucket(10, None, 10)),
            ops: Some(bucket(1, None, 0)),
        }),
        Err(RateLimitConfigError::ZeroRefillTime {
            bucket: "ops",
            size: 1
        })
    );
    assert_eq!(l.config().bandwidth, None);
    time.advance(Duration::from_secs(1));
}

#[test]
fn an_update_wakes_a_throttled_device() {
    let (mut l, _time) = limiter(bandwidth(10, None, 1_000_000));
    assert!(!l.consume(100, TokenKind::Bytes) || !l.consume(100, TokenKind::Bytes));
    assert!(l.is_blocked());
    l.update(&bandwidth(0, None, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(l.on_timer());
    assert!(l.consume(100, TokenKind::Bytes));
}

#[test]
fn config_json_matches_firecracker() {
    // From Firecracker's API description and Kata's empty limiters.
    let full: RateLimiterConfig = serde_json::from_str(
        r#"{"bandwidth": {"size": 1048576, "one_time_burst": 10485760, "refill_time": 1000},
            "ops": {"size": 100, "refill_time": 1000}}"#,
    )
    .unwrap();
    assert_eq!(
        full,
        RateLimiterConfig {
            bandwidth: Some(bucket(1 << 20, Some(10 << 20), 1000)),
            ops: Some(bucket(100, None, 1000)),
        }
    );
    assert_eq!(
        serde_json::to_string(&full).unwrap(),
        r#"{"bandwidth":{"size":1048576,"one_time_burst":10485760,"refill_time":1000},"ops":{"size":100,"refill_time":1000}}"#
    );
    let empty: RateLimiterConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, RateLimiterConfig::default());
    assert!(!empty.is_limited());
    assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
    let zero: RateLimiterConfig =
        serde_json::from_str(r#"{"bandwidth": {"size": 0, "refill_time": 0}}"#).unwrap();
    assert!(!zero.is_limited() && zero.validate().is_ok());
    for bad in [
        r#"{"bandwidth": {"size": 1, "refill_time": 1, "burst": 2}}"#,
        r#"{"bw": {}}"#,
        r#"{"ops": {"size": 1}}"#,
        r#"{"ops": {"size": -1, "refill_time": 1}}"#,
    ] {
        assert!(serde_json::from_str::<RateLimiterConfig>(bad).is_err(), "{bad}");
    }
    let no_refill: RateLimiterConfig =
        serde_json::from_str(r#"{"ops": {"size": 5, "refill_time": 0}}"#).unwrap();
    let err = no_refill.validate().unwrap_err().to_string();
    assert!(err.contains("refill_time") && !err.contains('\n'), "{err}");
    assert!(bandwidth(1, None, MAX_REFILL_TIME_MS + 1).validate().is_err());
}

use config::{parse_amount, MAX_REFILL_TIME_MS};

#[test]
fn command_line_keys_build_buckets() {
    let keys = &RateKeys::PLAIN;
    let config =
        RateLimiterConfig::from_keys(keys, [Some("10M/1000"), Some("64K"), Some("500/100"), None]).unwrap();
    assert_eq!(
        config,
        RateLimiterConfig {
            bandwidth: Some(bucket(10 << 20, Some(64 << 10), 1000)),
            ops: Some(bucket(500, None, 100)),
        }
    );
    assert_eq!(
        RateLimiterConfig::from_keys(keys, [None; 4]).unwrap(),
        RateLimiterConfig::default()
    );
    assert_eq!(parse_amount("bw", "1G"), Ok(1 << 30));
    assert_eq!(parse_amount("bw", "7k"), Ok(7 << 10));
    for (values, why) in [
        ([Some("10M"), None, None, None], "bw=AMOUNT/MS"),
        ([Some("10X/1"), None, None, None], "not a size"),
        ([Some("/1"), None, None, None], "not a size"),
        ([Some("1/x"), None, None, None], "not a rate"),
        ([Some("1/0"), None, None, None], "refill_time"),
        ([None, Some("1M"), None, None], "bw-burst without bw"),
        ([None, None, None, Some("1")], "ops-burst without ops"),
        ([Some("20000000000G/1"), None, None, None], "not a size"),
        ([None, None, Some("-1/5"), None], "not a size"),
    ] {
        let err = RateLimiterConfig::from_keys(keys, values)
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{values:?}: {err}");
    }
    let err = RateLimiterConfig::from_keys(&RateKeys::TX, [None, Some("1"), None, None]).unwrap_err();
    assert!(err.to_string().contains("tx-bw-burst without tx-bw"), "{err}");
}

//! Benchmarks (tools/bench-vsock): one-way throughput against a `sink` or
//! `source` listener, round-trip latency against an `echo` listener. Each
//! prints one line that tools/bench-vsock parses; keep the formats.

use std::time::{Duration, Instant};

use crate::serve::pattern_block;
use crate::sock::{Addr, Conn};

const MIB: usize = 1 << 20;

fn connect(addr: &Addr, timeout: Duration) -> Result<Conn, String> {
    let c = Conn::connect(addr, timeout).map_err(|e| e.to_string())?;
    c.set_timeout(Some(timeout))
        .map_err(|e| format!("set timeout: {e}"))?;
    Ok(c)
}

fn rate(mib: usize, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64().max(1e-9)
}

/// `bench-send`: `mib` MiB to a sink, timed until the sink has counted them.
pub fn send(addr: &Addr, mib: usize, timeout: Duration) -> Result<(), String> {
    let conn = connect(addr, timeout)?;
    let block = pattern_block(1, MIB);
    let t = Instant::now();
    for _ in 0..mib {
        conn.write_all(&block).map_err(|e| format!("send: {e}"))?;
    }
    conn.shutdown_write().map_err(|e| format!("shutdown: {e}"))?;
    let answer = crate::serve::read_to_end(&conn, 32).map_err(|e| format!("the sink's count: {e}"))?;
    let d = t.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    let want = (mib * MIB).to_string();
    if answer.trim_end() != want {
        return Err(format!(
            "the sink counted '{}' bytes, want {want}",
            answer.trim_end()
        ));
    }
    println!(
        "bench-send {mib} MiB {:.3} s {:.1} MiB/s",
        d.as_secs_f64(),
        rate(mib, d)
    );
    Ok(())
}

/// `bench-recv`: `mib` MiB from a source, timed from the connection.
pub fn recv(addr: &Addr, mib: usize, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    let conn = connect(addr, timeout)?;
    let mut buf = vec![0u8; MIB];
    for i in 0..mib {
        conn.read_exact(&mut buf)
            .map_err(|e| format!("receive MiB {i}: {e}"))?;
    }
    let d = t.elapsed();
    println!(
        "bench-recv {mib} MiB {:.3} s {:.1} MiB/s",
        d.as_secs_f64(),
        rate(mib, d)
    );
    Ok(())
}

/// Nearest-rank percentile `p` (0 < p <= 100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

/// `bench-latency`: `rounds` 64-byte round trips on one connection, then
/// `rounds / 10` (at least 10) fresh connections each timed from connect
/// to its first echo.
pub fn latency(addr: &Addr, rounds: usize, timeout: Duration) -> Result<(), String> {
    let msg = pattern_block(2, 64);
    let mut back = vec![0u8; msg.len()];
    let round_trip = |conn: &Conn, back: &mut [u8]| -> Result<(), String> {
        conn.write_all(&msg).map_err(|e| format!("send: {e}"))?;
        conn.read_exact(back).map_err(|e| format!("echo: {e}"))?;
        if back != msg.as_slice() {
            return Err("the echo differs from what was sent".into());
        }
        Ok(())
    };
    let conn = connect(addr, timeout)?;
    let mut rtt = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        round_trip(&conn, &mut back)?;
        rtt.push(t.elapsed());
    }
    drop(conn);
    let n_conn = (rounds / 10).max(10);
    let mut first = Vec::with_capacity(n_conn);
    for i in 0..n_conn {
        let t = Instant::now();
        let conn = connect(addr, timeout).map_err(|e| format!("connection {i}: {e}"))?;
        round_trip(&conn, &mut back)?;
        first.push(t.elapsed());
    }
    rtt.sort();
    first.sort();
    println!(
        "bench-latency rtt median {} us p90 {} us over {rounds}; connect+echo median {} us p90 {} us over {n_conn}",
        us(percentile(&rtt, 50)),
        us(percentile(&rtt, 90)),
        us(percentile(&first, 50)),
        us(percentile(&first, 90))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<Duration> = (1..=10).map(Duration::from_micros).collect();
        assert_eq!(percentile(&s, 50), Duration::from_micros(5));
        assert_eq!(percentile(&s, 90), Duration::from_micros(9));
        assert_eq!(percentile(&s, 100), Duration::from_micros(10));
        assert_eq!(percentile(&s[..1], 90), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}

//! The end-to-end checks: each prints one result line and returns Err with
//! one line when the check fails.

use std::thread;
use std::time::{Duration, Instant};

use crate::serve::{pattern_block, read_to_end, source_block};
use crate::sock::{io_error, Addr, Conn, ConnectError};

/// Connects, retrying a refused connection (no socket yet, or nothing
/// listening yet) until `retry` has passed.
pub fn connect_retrying(addr: &Addr, answer_timeout: Duration, retry: Duration) -> Result<Conn, String> {
    let deadline = Instant::now() + retry;
    loop {
        match Conn::connect(addr, answer_timeout) {
            Ok(c) => return Ok(c),
            Err(ConnectError::Refused(_)) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sends `data` (then half-closes) while reading the echo to EOF; the echo
/// must be `data` exactly.
pub fn echo_once(conn: &Conn, data: &[u8], timeout: Duration) -> Result<(), String> {
    conn.set_timeout(Some(timeout))
        .map_err(|e| format!("set timeout: {e}"))?;
    thread::scope(|s| {
        let writer = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn_scoped(s, || {
                conn.write_all(data)
                    .and_then(|()| conn.shutdown_write())
                    .map_err(|e| format!("send: {}", io_error(&e)))
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let got = read_to_end(conn, data.len()).map_err(|e| format!("read the echo: {}", io_error(&e)));
        writer
            .join()
            .unwrap_or_else(|_| Err("writer thread died".into()))?;
        let got = got?;
        if let Some(at) = got.iter().zip(data).position(|(a, b)| a != b) {
            return Err(format!("echo differs from what was sent at byte {at}"));
        }
        if got.len() != data.len() {
            return Err(format!("echo ended after {} of {} bytes", got.len(), data.len()));
        }
        Ok(())
    })
}

/// `echo-many`: `n` connections open at once, each echoing its own pattern.
pub fn echo_many(
    addr: &Addr,
    n: usize,
    bytes: usize,
    timeout: Duration,
    retry: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        // Only the first may wait for the listener to appear.
        let retry = if i == 0 { retry } else { Duration::ZERO };
        conns
            .push(connect_retrying(addr, timeout, retry).map_err(|e| format!("connection {i} of {n}: {e}"))?);
    }
    let opened = start.elapsed();
    let results: Vec<Result<(), String>> = thread::scope(|s| {
        let handles: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, conn)| {
                thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, move || {
                        echo_once(conn, &pattern_block(i as u64 + 1, bytes), timeout)
                            .map_err(|e| format!("connection {i}: {e}"))
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a connection thread died".into())),
                Err(e) => Err(format!("cannot start a thread: {e}")),
            })
            .collect()
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        return Err(format!(
            "{} of {n} connections failed; first: {first}",
            failed.len()
        ));
    }
    println!(
        "echo-many ok: {n} connections open at once (opened in {:.2}s), each echoed {bytes} bytes intact, {:.2}s in all",
        opened.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `stall-check`: a connection to a `source` listener that we never read
/// must not hold up an echo on a second connection; afterwards the first
/// still delivers the source pattern from its first byte.
pub fn stall_check(
    source: &Addr,
    echo: &Addr,
    bytes: usize,
    stall: Duration,
    timeout: Duration,
) -> Result<(), String> {
    let stalled = Conn::connect(source, timeout).map_err(|e| format!("stalled connection: {e}"))?;
    // Let the source fill every buffer between it and us.
    thread::sleep(stall);
    let t = Instant::now();
    let second = Conn::connect(echo, timeout).map_err(|e| format!("second connection: {e}"))?;
    echo_once(&second, &pattern_block(99, bytes), timeout).map_err(|e| format!("second connection: {e}"))?;
    let second_took = t.elapsed();
    drop(second);
    stalled
        .set_timeout(Some(timeout))
        .map_err(|e| format!("set timeout: {e}"))?;
    let block = source_block();
    let mut got = vec![0u8; 1 << 20];
    stalled
        .read_exact(&mut got)
        .map_err(|e| format!("the stalled connection, read at last: {}", io_error(&e)))?;
    if let Some(at) = got.iter().zip(block.iter().cycle()).position(|(a, b)| a != b) {
        return Err(format!(
            "the stalled connection's data differs from the source pattern at byte {at}"
        ));
    }
    println!(
        "stall-check ok: with the first connection unread for {:.1}s, a second echoed {bytes} bytes in {:.2}s; \
         the first then delivered {} intact bytes",
        stall.as_secs_f64(),
        second_took.as_secs_f64(),
        got.len()
    );
    Ok(())
}

/// `expect-refused`: nothing listens at `addr`, so the connection must be
/// refused, reset or (hybrid) closed without `OK`, within `within`.
pub fn expect_refused(addr: &Addr, within: Duration) -> Result<(), String> {
    let t = Instant::now();
    match Conn::connect(addr, within) {
        Ok(_) => Err(format!(
            "{addr}: the connection was accepted, but nothing should listen there"
        )),
        Err(ConnectError::Failed(e)) => Err(e),
        Err(ConnectError::Refused(why)) if t.elapsed() <= within => {
            println!("expect-refused ok: {why} after {:.2}s", t.elapsed().as_secs_f64());
            Ok(())
        }
        Err(ConnectError::Refused(why)) => Err(format!(
            "{why}, but only after {:.2}s (bound {:.1}s)",
            t.elapsed().as_secs_f64(),
            within.as_secs_f64()
        )),
    }
}

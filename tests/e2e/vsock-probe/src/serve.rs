//! What a connection does once it is up: the listener modes, the stdio
//! pump shared by `stream` and `listen ... stdio`, and the data pattern.

use std::io::{self, Read, Write};
use std::thread;

use crate::sock::{io_error, Conn};

const CHUNK: usize = 64 * 1024;

/// What a listener does with each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write back everything read; at the peer's EOF, shut down writing.
    Echo,
    /// Read to EOF, then answer "<bytes read>\n" and close.
    Sink,
    /// Send [`source_block`] over and over until the peer goes away.
    Source,
    /// stdin to the connection (half-close at EOF), the connection to stdout.
    Stdio,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "echo" => Mode::Echo,
            "sink" => Mode::Sink,
            "source" => Mode::Source,
            "stdio" => Mode::Stdio,
            _ => return Err(format!("unknown mode '{s}': use echo, sink, source or stdio")),
        })
    }

    pub fn serve(self, conn: &Conn) -> Result<(), String> {
        match self {
            Mode::Echo => echo(conn),
            Mode::Sink => sink(conn),
            Mode::Source => source(conn),
            Mode::Stdio => pump_stdio(conn),
        }
    }
}

fn echo(conn: &Conn) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match conn.read(&mut buf).map_err(|e| format!("echo: read: {e}"))? {
            0 => return conn.shutdown_write().map_err(|e| format!("echo: shutdown: {e}")),
            n => conn
                .write_all(&buf[..n])
                .map_err(|e| format!("echo: write: {e}"))?,
        }
    }
}

fn sink(conn: &Conn) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        match conn
            .read(&mut buf)
            .map_err(|e| format!("sink: read after {total} bytes: {e}"))?
        {
            0 => break,
            n => total += n as u64,
        }
    }
    conn.write_all(format!("{total}\n").as_bytes())
        .map_err(|e| format!("sink: answer: {e}"))
}

/// What a `source` connection sends, repeated: the first 64 KiB of the
/// seed-0 pattern (computed once, so the sender is not what a benchmark measures).
pub fn source_block() -> Vec<u8> {
    pattern_block(0, CHUNK)
}

fn source(conn: &Conn) -> Result<(), String> {
    let block = source_block();
    loop {
        if let Err(e) = conn.write_all(&block) {
            // The peer closing is how a source connection ends.
            return match e.raw_os_error() {
                Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => Ok(()),
                _ => Err(format!("source: write: {e}")),
            };
        }
    }
}

/// stdin to `conn`, then `shutdown(SHUT_WR)`; `conn` to stdout until the
/// peer's EOF. Both directions at once, so neither can block the other.
pub fn pump_stdio(conn: &Conn) -> Result<(), String> {
    thread::scope(|s| {
        let up = s.spawn(|| -> Result<u64, String> {
            let n = io::copy(&mut io::stdin().lock(), &mut &*conn)
                .map_err(|e| format!("stdin to the connection: {}", io_error(&e)))?;
            conn.shutdown_write()
                .map_err(|e| format!("shutdown after stdin: {e}"))?;
            Ok(n)
        });
        let down = copy_to_stdout(conn);
        let up = up.join().unwrap_or_else(|_| Err("stdin thread died".into()));
        down.and(up.map(drop))
    })
}

fn copy_to_stdout(conn: &Conn) -> Result<(), String> {
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = conn
            .read(&mut buf)
            .map_err(|e| format!("connection to stdout after {total} bytes: {}", io_error(&e)))?;
        if n == 0 {
            return out.flush().map_err(|e| format!("stdout: {e}"));
        }
        out.write_all(&buf[..n]).map_err(|e| format!("stdout: {e}"))?;
        total += n as u64;
    }
}

/// A reproducible byte stream: 64-bit words of xorshift64* from `seed`,
/// little-endian. Every prefix of a longer stream is the shorter one.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        // Never zero (xorshift's fixed point); distinct seeds stay distinct.
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// Fills `buf`, whose length must be a multiple of 8 except on the last call.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

/// The first `len` bytes of the pattern of `seed`.
pub fn pattern_block(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

/// `gen BYTES SEED`: the pattern on stdout.
pub fn gen(bytes: u64, seed: u64) -> Result<(), String> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    let mut out = io::stdout().lock();
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| format!("stdout: {e}"))?;
        left -= n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}

/// Reads until EOF, keeping at most `limit` bytes (more is an error).
pub fn read_to_end(conn: &Conn, limit: usize) -> io::Result<Vec<u8>> {
    let mut got = Vec::with_capacity(limit);
    let mut r = conn.take(limit as u64 + 1);
    r.read_to_end(&mut got)?;
    if got.len() > limit {
        return Err(io::Error::other(format!(
            "peer sent more than the {limit} bytes expected"
        )));
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("echo"), Ok(Mode::Echo));
        assert_eq!(Mode::parse("stdio"), Ok(Mode::Stdio));
        assert!(Mode::parse("cat")
            .unwrap_err()
            .contains("echo, sink, source or stdio"));
    }

    #[test]
    fn pattern_is_chunking_independent_and_seeded() {
        let whole = pattern_block(7, 100);
        let mut p = Pattern::new(7);
        let mut parts = vec![0u8; 100];
        p.fill(&mut parts[..64]);
        p.fill(&mut parts[64..]);
        assert_eq!(whole, parts);
        assert_eq!(&pattern_block(7, 200)[..100], &whole[..]);
        assert_ne!(pattern_block(8, 100), whole);
        assert_ne!(pattern_block(0, 8), vec![0u8; 8]);
    }
}

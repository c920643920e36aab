//! `http SOCK METHOD PATH [BODY]`: one HTTP/1.1 request to a Unix socket
//! (kiln's Firecracker-style API), for the nested host, which has no curl.
//! Prints `STATUS BODY` on one line; exit 0 whatever the status, 1 if the
//! exchange failed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

pub fn main(args: &[String]) -> ExitCode {
    let (sock, method, path, body) = match args {
        [s, m, p] => (s, m, p, ""),
        [s, m, p, b] => (s, m, p, b.as_str()),
        _ => {
            eprintln!("vsock-probe: http SOCK METHOD PATH [BODY]");
            return ExitCode::from(2);
        }
    };
    match exchange(sock, method, path, body) {
        Ok((status, body)) => {
            println!("{status} {}", body.replace('\n', " "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vsock-probe: http {method} {path}: {e}");
            ExitCode::from(1)
        }
    }
}

fn exchange(sock: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {reply:?}")))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

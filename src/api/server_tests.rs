use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::tempdir::TempDir;

use super::*;

struct Running {
    path: PathBuf,
    exit: Arc<EventFd>,
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<io::Result<()>>>,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

/// A server whose dispatcher echoes the method and path as JSON.
fn start() -> Running {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let (e, s) = (exit.clone(), served.clone());
    let thread = std::thread::spawn(move || {
        serve(listener, &e, |r| {
            s.fetch_add(1, Ordering::SeqCst);
            Response::json(
                200,
                serde_json::json!({"m": r.method, "p": r.path, "n": r.body.len()}).to_string(),
            )
        })
    });
    Running {
        path,
        exit,
        served,
        thread: Some(thread),
        _dir: dir,
    }
}

/// Sends `raw` and reads one response (head and Content-Length body).
fn exchange(stream: &mut UnixStream, raw: &[u8]) -> String {
    stream.write_all(raw).unwrap();
    read_response(stream)
}

fn read_response(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return String::from_utf8_lossy(&got).to_string();
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn requests_on_one_connection_are_answered_in_order() {
    let s = start();
    let mut c = UnixStream::connect(&s.path).unwrap();
    let r = exchange(&mut c, b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200 OK") && r.contains(r#""p":"/""#),
        "{r}"
    );
    let r = exchange(&mut c, b"PUT /drives/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    assert!(r.contains(r#""m":"PUT""#) && r.contains(r#""n":2"#), "{r}");
}

#[test]
fn a_stalled_client_does_not_hold_up_another() {
    let s = start();
    // Half a request, never finished.
    let mut stalled = UnixStream::connect(&s.path).unwrap();
    stalled
        .write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    // A client that never reads its replies.
    let mut deaf = UnixStream::connect(&s.path).unwrap();
    for _ in 0..50 {
        deaf.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    let mut good = UnixStream::connect(&s.path).unwrap();
    let r = exchange(&mut good, b"GET /version HTTP/1.1\r\n\r\n");
    assert!(r.contains(r#""p":"/version""#), "{r}");
}

#[test]
fn garbage_gets_a_400_and_the_connection_closes() {
    let s = start();
    let mut c = UnixStream::connect(&s.path).unwrap();
    let r = exchange(&mut c, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("fault_message"),
        "{r}"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(s.served.load(Ordering::SeqCst), 0);
}

#[test]
fn a_huge_body_is_refused_without_reading_it() {
    let s = start();
    let mut c = UnixStream::connect(&s.path).unwrap();
    let r = exchange(
        &mut c,
        b"PUT /drives/a HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
}

#[test]
fn more_clients_than_the_limit_evict_the_idle_ones() {
    let s = start();
    let mut idle: Vec<UnixStream> = (0..MAX_CLIENTS + 5)
        .map(|_| UnixStream::connect(&s.path).unwrap())
        .collect();
    let mut c = UnixStream::connect(&s.path).unwrap();
    let r = exchange(&mut c, b"GET / HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    idle.clear();
}

#[test]
fn a_closed_peer_still_gets_its_answer_written() {
    let s = start();
    let mut c = UnixStream::connect(&s.path).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert!(
        all.starts_with("HTTP/1.1 200") && all.contains("Connection: close"),
        "{all}"
    );
}

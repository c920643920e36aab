//! The API server's request path on arbitrary bytes from a client: the
//! connection's buffering and httparse framing (fed in pieces of the
//! sizes the input chooses, as a socket delivers them), then routing and
//! body parsing. No panic; every refusal is a 4xx/5xx carrying a JSON
//! `fault_message`; nothing is buffered past the connection's bounds.
#![no_main]

use std::io::{self, Read};

use kiln::api::http::{Connection, Parsed, MAX_BODY};
use kiln::api::routes::{route, Routed};
use libfuzzer_sys::fuzz_target;

/// Hands out the input in pieces: each piece's length is the byte before it.
struct Pieces<'a>(&'a [u8]);

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((&len, rest)) = self.0.split_first() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = (usize::from(len) + 1).min(rest.len()).min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.0 = &rest[n..];
        Ok(n)
    }
}

/// `{"fault_message":"..."}`, as `ApiError::json` writes it.
fn is_fault(body: Option<&str>) -> bool {
    body.is_some_and(|b| b.starts_with(r#"{"fault_message":""#) && b.ends_with(r#""}"#))
}

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::default();
    let mut input = Pieces(data);
    for _ in 0..64 {
        let open = conn.read_from(&mut input).unwrap_or(false);
        loop {
            match conn.next_request() {
                Parsed::Request(request, _) => {
                    assert!(request.body.len() <= MAX_BODY);
                    match route(&request) {
                        Routed::Now(r) => {
                            assert!(r.status == 200 || r.status == 400, "{r:?}");
                            if r.status == 400 {
                                assert!(is_fault(r.body.as_deref()), "{r:?}");
                            }
                        }
                        Routed::Action(_) => {}
                    }
                }
                Parsed::Refused(r) => {
                    assert!(r.status >= 400, "{r:?}");
                    assert!(is_fault(r.body.as_deref()), "{r:?}");
                    return;
                }
                Parsed::Incomplete => break,
            }
        }
        if !open || input.0.is_empty() {
            break;
        }
    }
    assert!(!conn.output_overflowed());
});

use super::*;

fn feed(conn: &mut Connection, bytes: &[u8]) {
    let mut src = bytes;
    conn.read_from(&mut src).unwrap();
}

fn request(conn: &mut Connection) -> (Request, bool) {
    match conn.next_request() {
        Parsed::Request(r, close) => (r, close),
        other => panic!("{other:?}"),
    }
}

fn refused(conn: &mut Connection) -> Response {
    match conn.next_request() {
        Parsed::Refused(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_with_a_body_parses_and_the_query_is_dropped() {
    let mut c = Connection::default();
    feed(
        &mut c,
        b"PUT /drives/rootfs?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    );
    let (r, close) = request(&mut c);
    assert_eq!(
        (r.method.as_str(), r.path.as_str(), &r.body[..]),
        ("PUT", "/drives/rootfs", &b"hello"[..])
    );
    assert!(!close);
    assert_eq!(c.next_request(), Parsed::Incomplete);
}

#[test]
fn pieces_and_pipelined_requests_come_out_one_by_one() {
    let mut c = Connection::default();
    let wire = b"GET / HTTP/1.1\r\n\r\nPUT /vm HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /version HTTP/1.1\r\n\r\n";
    for chunk in wire.chunks(7) {
        feed(&mut c, chunk);
    }
    assert_eq!(request(&mut c).0.path, "/");
    assert_eq!(request(&mut c).0.body, b"abc");
    assert_eq!(request(&mut c).0.path, "/version");
    assert!(!c.has_partial_request());
}

#[test]
fn a_body_still_on_its_way_is_incomplete() {
    let mut c = Connection::default();
    feed(&mut c, b"PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345");
    assert_eq!(c.next_request(), Parsed::Incomplete);
    assert!(c.has_partial_request());
    feed(&mut c, b"67890");
    assert_eq!(request(&mut c).0.body, b"1234567890");
}

#[test]
fn expect_continue_gets_100_once() {
    let mut c = Connection::default();
    feed(
        &mut c,
        b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(c.next_request(), Parsed::Incomplete);
    assert_eq!(c.next_request(), Parsed::Incomplete);
    let mut out = Vec::new();
    c.write_to(&mut out).unwrap();
    assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    feed(&mut c, b"{}");
    assert_eq!(request(&mut c).0.body, b"{}");
}

#[test]
fn close_and_http_1_0_end_the_connection_after_the_reply() {
    let mut c = Connection::default();
    feed(
        &mut c,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    );
    assert!(request(&mut c).1);
    assert!(c.closing);
    // Nothing after a close is served.
    assert_eq!(c.next_request(), Parsed::Incomplete);
    let mut c = Connection::default();
    feed(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    assert!(request(&mut c).1);
    c.queue(&Response::no_content());
    let mut out = Vec::new();
    c.write_to(&mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("Connection: close\r\n"));
}

#[test]
fn garbage_is_refused_with_400_and_the_connection_closes() {
    let mut c = Connection::default();
    feed(&mut c, b"\x00\x01garbage\r\n\r\n");
    let r = refused(&mut c);
    assert_eq!(r.status, 400);
    assert!(r.body.unwrap().contains("fault_message"));
    assert!(c.closing);
}

#[test]
fn oversized_heads_bodies_and_chunked_bodies_are_refused() {
    let mut c = Connection::default();
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    while head.len() <= MAX_HEAD {
        head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    feed(&mut c, &head);
    assert!([431].contains(&refused(&mut c).status));

    let mut c = Connection::default();
    feed(&mut c, b"PUT /vm HTTP/1.1\r\nContent-Length: 999999\r\n\r\n");
    assert_eq!(refused(&mut c).status, 413);

    let mut c = Connection::default();
    feed(&mut c, b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(refused(&mut c).status, 501);

    let mut c = Connection::default();
    feed(
        &mut c,
        b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
    );
    assert_eq!(refused(&mut c).status, 400);
}

#[test]
fn many_headers_are_refused() {
    let mut c = Connection::default();
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        head.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    feed(&mut c, &head);
    assert_eq!(refused(&mut c).status, 431);
}

#[test]
fn reading_stops_at_what_one_request_may_need() {
    let mut c = Connection::default();
    let flood = vec![b'a'; 1 << 20];
    let mut src = &flood[..];
    c.read_from(&mut src).unwrap();
    assert!(c.input.len() <= MAX_HEAD + MAX_BODY + 4096);
    assert!(matches!(c.next_request(), Parsed::Refused(_)));
}

#[test]
fn responses_encode_status_length_and_body() {
    let text = String::from_utf8(Response::json(200, "{\"a\":1}".into()).encode(false)).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains("Content-Length: 7\r\n"));
    assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    let text = String::from_utf8(Response::no_content().encode(false)).unwrap();
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n") && !text.contains("Content-Length"));
    let fault = Response::fault(400, "bad \"thing\"");
    let v: serde_json::Value = serde_json::from_str(fault.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["fault_message"], "bad \"thing\"");
}

#[test]
fn a_reader_that_takes_little_gets_the_rest_later() {
    struct Slow(Vec<u8>, usize);
    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.1 -= 1;
            let n = b.len().min(3);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Connection::default();
    c.queue(&Response::no_content());
    let mut w = Slow(Vec::new(), 2);
    c.write_to(&mut w).unwrap();
    assert!(c.has_output());
    w.1 = usize::MAX;
    c.write_to(&mut w).unwrap();
    assert!(!c.has_output());
    assert!(w.0.starts_with(b"HTTP/1.1 204"));
}

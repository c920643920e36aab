//! HTTP/1.1 on one API connection: requests parsed with `httparse`, bodies
//! by `Content-Length`, responses with JSON bodies.
//!
//! Everything is bounded, since the peer may be hostile: the header block
//! (8 KiB, 32 headers), the body (Firecracker's 50 KiB), and the replies
//! waiting for a peer that does not read. The connection only buffers; the
//! server decides when to read, write and give up.

use std::io::{self, Read, Write};

/// Longest request head (request line and headers) kiln reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest request body (Firecracker's limit: 51,200 bytes).
pub const MAX_BODY: usize = 50 * 1024;
/// Replies kept for a peer that does not read before it is dropped.
pub const MAX_PENDING_OUTPUT: usize = 256 * 1024;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// One reply: a status and, unless it is 204, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    pub fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
        }
    }

    /// Firecracker's error body, `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl AsRef<str>) -> Self {
        Self::json(status, super::model::ApiError::json(message.as_ref()))
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            _ => "Unknown",
        }
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\nServer: kiln\r\n", self.status, self.reason());
        if close {
            head.push_str("Connection: close\r\n");
        }
        match &self.body {
            Some(body) => {
                head.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ));
                let mut out = head.into_bytes();
                out.extend_from_slice(body.as_bytes());
                out
            }
            None => {
                head.push_str("\r\n");
                head.into_bytes()
            }
        }
    }
}

/// What the next bytes of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request, and whether the peer asked to close after it.
    Request(Request, bool),
    /// Not a whole request yet.
    Incomplete,
    /// A request kiln refuses; the reply goes out and the connection closes
    /// (what follows on the stream cannot be framed).
    Refused(Response),
}

/// The input and output buffers of one connection.
#[derive(Default)]
pub struct Connection {
    input: Vec<u8>,
    output: Vec<u8>,
    /// `100 Continue` already sent for the request being read.
    continued: bool,
    /// No more requests: close once the output is written.
    pub closing: bool,
}

/// A parsed request head.
struct RequestHead {
    /// Bytes of the head itself.
    len: usize,
    method: String,
    path: String,
    body_len: usize,
    close: bool,
    expect_continue: bool,
}

enum Head {
    Incomplete,
    Bad(Response),
    Done(RequestHead),
}

fn parse_head(input: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
            return Head::Bad(Response::fault(431, "the request head is over 8 KiB"))
        }
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Bad(Response::fault(431, format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Head::Bad(Response::fault(400, format!("malformed HTTP request: {e}"))),
    };
    if len > MAX_HEAD {
        return Head::Bad(Response::fault(431, "the request head is over 8 KiB"));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default().to_string();
    // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless
    // asked to close.
    let mut close = req.version == Some(0);
    let (mut body_len, mut expect_continue) = (None, false);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if body_len.is_none_or(|m| m == n) => body_len = Some(n),
                _ => return Head::Bad(Response::fault(400, "a bad or repeated Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Bad(Response::fault(
                501,
                "Transfer-Encoding is not supported; send the body with a Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Head::Bad(Response::fault(400, format!("cannot meet Expect: {value}")));
            }
            expect_continue = true;
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Head::Bad(Response::fault(
            413,
            format!("the body is {body_len} bytes; at most {MAX_BODY} are accepted"),
        ));
    }
    Head::Done(RequestHead {
        len,
        method,
        path,
        body_len,
        close,
        expect_continue,
    })
}

impl Connection {
    /// Reads what `stream` has (it should be non-blocking), up to what one
    /// request may need. `Ok(false)`: the peer closed its side.
    pub fn read_from(&mut self, stream: &mut impl Read) -> io::Result<bool> {
        const LIMIT: usize = MAX_HEAD + MAX_BODY + 4096;
        let mut buf = [0u8; 4096];
        // One head and one body, plus a little of the next request.
        while self.input.len() < LIMIT {
            let room = (LIMIT - self.input.len()).min(buf.len());
            match stream.read(&mut buf[..room]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether part of a request has arrived but not all of it.
    pub fn has_partial_request(&self) -> bool {
        !self.input.is_empty()
    }

    /// The next whole request in the input, if there is one.
    pub fn next_request(&mut self) -> Parsed {
        if self.closing {
            return Parsed::Incomplete;
        }
        let head = match parse_head(&self.input) {
            Head::Incomplete => return Parsed::Incomplete,
            Head::Bad(response) => {
                self.closing = true;
                self.input.clear();
                return Parsed::Refused(response);
            }
            Head::Done(head) => head,
        };
        let end = head.len + head.body_len;
        if self.input.len() < end {
            if head.expect_continue && !self.continued {
                self.continued = true;
                self.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            return Parsed::Incomplete;
        }
        let body = self.input[head.len..end].to_vec();
        self.input.drain(..end);
        self.continued = false;
        if head.close {
            self.closing = true;
        }
        let request = Request {
            method: head.method,
            path: head.path,
            body,
        };
        Parsed::Request(request, head.close)
    }

    /// Queues `response`; it goes out with the next [`Connection::write_to`].
    pub fn queue(&mut self, response: &Response) {
        self.output.extend_from_slice(&response.encode(self.closing));
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether the peer has left more replies unread than kiln keeps.
    pub fn output_overflowed(&self) -> bool {
        self.output.len() > MAX_PENDING_OUTPUT
    }

    /// Writes what `stream` takes of the queued output.
    pub fn write_to(&mut self, stream: &mut impl Write) -> io::Result<()> {
        while !self.output.is_empty() {
            match stream.write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;

//! Raw-socket helpers for the hardening tests: requests written byte by
//! byte as an attacker (or a broken client) would, responses read back
//! without an HTTP client library (a client would refuse to send most of
//! these requests, or fix them), and the server's resident memory and
//! sockets read from /proc. Well-formed requests go through
//! [`crate::http`].

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Resident memory of a process, in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// Sockets a process has open (its listener and accepted connections).
pub fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// Opens `n` connections that send nothing, in batches, and waits until the
/// server (process `pid`, with no other connection open) has accepted them
/// all: a client's `connect` returns once the kernel queued the
/// connection, and with a full accept queue the server side completes
/// only at a later SYN-ACK retransmit, so without the wait a timeout
/// measured from `connect` would start late.
pub fn open_idle(addr: SocketAddr, pid: u32, n: usize) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(100) {
        let k = (n - chunk * 100).min(100);
        conns.extend((0..k).map(|_| Conn::open(addr).expect("connect")));
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    // The listener and the n connections.
    while open_sockets(pid) < n + 1 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server accepted {} of {n} connections",
            open_sockets(pid).saturating_sub(1)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    conns
}

/// Raises this process's open-file limit to its hard limit (children
/// started afterwards inherit it): the tests open thousands of sockets.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack value we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// The socket address of a `http://HOST:PORT` URL.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("a socket address")
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> Option<String> {
        self.json()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
    }
}

/// What reading a response found.
#[derive(Debug)]
pub enum Read1 {
    Response(RawResponse),
    /// The server closed the connection without (a complete) response.
    Closed(Vec<u8>),
    /// Nothing complete arrived before the deadline.
    TimedOut(Vec<u8>),
}

fn find(h: &[u8], pat: &[u8]) -> Option<usize> {
    h.windows(pat.len()).position(|w| w == pat)
}

/// Parses one response at the start of `buf`: (response, bytes used).
fn parse(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = end + 4;
    if buf.len() < start + len {
        return None;
    }
    Some((
        RawResponse {
            status,
            headers,
            body: buf[start..start + len].to_vec(),
        },
        start + len,
    ))
}

/// A raw connection to the server.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes bytes; false when the server already closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads one response, waiting at most `wait`.
    pub fn read_response(&mut self, wait: Duration) -> Read1 {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((r, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Read1::Response(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Read1::TimedOut(std::mem::take(&mut self.buf));
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 16 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read1::Closed(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Read1::TimedOut(std::mem::take(&mut self.buf))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset after the server answered and closed.
                Err(_) => return Read1::Closed(std::mem::take(&mut self.buf)),
            }
        }
    }

    /// Whether the server closes the connection within `wait` (after any
    /// response it sends first).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// One whole request on a fresh connection: the response, or what
/// happened instead.
pub fn request(addr: SocketAddr, raw: &[u8], wait: Duration) -> Read1 {
    let mut c = match Conn::open(addr) {
        Ok(c) => c,
        Err(e) => panic!("connecting to {addr}: {e}"),
    };
    let _ = c.send(raw);
    c.read_response(wait)
}

/// A `POST` with a JSON body, as raw bytes.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A `GET`, as raw bytes.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// Asks `GET /v2/health/live` on a fresh connection and returns how long
/// the answer took; panics if it is not a 200.
pub fn live_within(addr: SocketAddr, wait: Duration) -> Duration {
    let t = Instant::now();
    match request(addr, &get("/v2/health/live"), wait) {
        Read1::Response(r) if r.status == 200 => t.elapsed(),
        other => panic!("/v2/health/live: {other:?}"),
    }
}

//! A minimal blocking HTTP/1.1 client with keep-alive, for `abmesh report
//! --url`, the ingest benchmark's load generator and the tests.
//!
//! Plain `http://` only (the sidecar's admin port is local); responses
//! must carry `Content-Length` or close the connection, which is what
//! `abmesh serve` does. Anything richer should use a real client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response, whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to `host:port`, reopened when the server
/// closes it.
pub struct Client {
    authority: String,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

/// Splits `http://host:port[/...]` into the authority.
pub fn authority(url: &str) -> io::Result<String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url:?}: only http:// URLs are supported"),
        )
    })?;
    let auth = rest.split('/').next().unwrap_or_default();
    if auth.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url:?}: no host"),
        ));
    }
    Ok(if auth.contains(':') {
        auth.to_owned()
    } else {
        format!("{auth}:80")
    })
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8000`).
    pub fn new(base: &str) -> io::Result<Client> {
        Ok(Client {
            authority: authority(base)?,
            conn: None,
            timeout: Duration::from_secs(120),
        })
    }

    /// Sets the read/write timeout of later connections.
    pub fn timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    fn connect(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.authority)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::with_capacity(64 << 10, s));
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.request("GET", path, headers, &[])
    }

    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> io::Result<Response> {
        self.request("POST", path, &[("content-type", content_type)], body)
    }

    /// Sends one request and reads its response. A request on a reused
    /// connection that the server had closed is retried once on a new one
    /// (only before any response byte arrived).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, headers, body) {
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) =>
            {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
            r => r,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let authority = self.authority.clone();
        let conn = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (n, v) in headers {
            head.push_str(n);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let result = (|| {
            let s = conn.get_mut();
            s.write_all(head.as_bytes())?;
            s.write_all(body)?;
            s.flush()?;
            read_response(conn)
        })();
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a response; also says whether the connection may be reused.
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(Response, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the headers",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header {l:?}")))?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let body = match find("content-length") {
        Some(n) => {
            let n: usize = n.parse().map_err(|_| bad("bad content-length"))?;
            let mut b = vec![0; n];
            r.read_exact(&mut b)?;
            b
        }
        None if find("transfer-encoding").is_some() => {
            return Err(bad("chunked responses are not supported"))
        }
        None => {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            return Ok((
                Response {
                    status,
                    headers,
                    body: b,
                },
                false,
            ));
        }
    };
    Ok((
        Response {
            status,
            headers,
            body,
        },
        !close,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            authority("http://127.0.0.1:8000").unwrap(),
            "127.0.0.1:8000"
        );
        assert_eq!(authority("http://localhost/admin").unwrap(), "localhost:80");
        assert!(authority("https://x").is_err());
        assert!(authority("http://").is_err());
    }
}

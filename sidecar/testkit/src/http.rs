//! The one HTTP/1.1 client of the tests and benchmarks: hyper's client
//! over a keep-alive connection, with an async face ([`AsyncClient`], for
//! tests that run in tokio, like the Envoy tests) and a blocking one
//! ([`Client`], for plain `#[test]`s and load generators), both on the
//! same request code.
//!
//! What the tests need from it, and ordinary clients do not all give:
//! header values sent as raw bytes (not UTF-8: cookies, ids), the exact
//! status and headers back, the body whole, JSON helpers, a readiness
//! probe, and a choice between a connection that is reopened when the
//! server closed it ([`Client::new`], [`AsyncClient::new`]) and one that is
//! not ([`Client::connect`]: "the same connection still serves the next
//! request" must be a real check).
//!
//! Requests that must be malformed on the wire (slow, torn, oversized
//! heads) are written with [`crate::raw`] instead.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response, whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The first header of that name, if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the status and body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` message of a JSON error response; panics without one.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_owned()
    }
}

/// `host:port` of `http://host:port[/...]`.
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

/// The async client: one keep-alive connection to `authority`.
pub struct AsyncClient {
    authority: String,
    /// The `Host` header sent unless a request gives its own.
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Open a new connection when the server closed the last one (and
    /// retry a request that met a connection closed under it, once).
    reconnect: bool,
    timeout: Duration,
}

fn closed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

impl AsyncClient {
    /// A client of `127.0.0.1:port`, reconnecting when the server closed
    /// the connection. It sends `Host: abmesh.test` (a name that does not
    /// change with the port, so tests through Envoy can expect it).
    pub fn new(port: u16) -> AsyncClient {
        AsyncClient {
            authority: format!("127.0.0.1:{port}"),
            host: "abmesh.test".to_owned(),
            sender: None,
            reconnect: true,
            timeout: Duration::from_secs(120),
        }
    }

    /// A client of the server at `url` (`http://127.0.0.1:8000`),
    /// reconnecting when the server closed the connection.
    pub fn to(url: &str) -> io::Result<AsyncClient> {
        let authority = authority(url)?;
        Ok(AsyncClient {
            host: authority.clone(),
            authority,
            ..AsyncClient::new(0)
        })
    }

    async fn open(&self) -> io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            // The connection ends when the server closes it or the client
            // is dropped; either is the client's business, not an error.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// The connection to send on: the current one, or a new one when there
    /// is none yet or (reconnecting) the server closed it. Also says
    /// whether it was used before.
    async fn connection(&mut self) -> io::Result<(&mut SendRequest<Full<Bytes>>, bool)> {
        let usable = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        let reused = usable;
        if !usable {
            if self.sender.is_some() && !self.reconnect {
                return Err(closed("the server closed the connection"));
            }
            self.sender = Some(self.open().await?);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| closed("no connection"))?;
        Ok((sender, reused))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &Bytes,
    ) -> io::Result<Request<Full<Bytes>>> {
        let invalid =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req = req.header(HOST, self.host.as_str());
        }
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(&e))?,
                HeaderValue::from_bytes(value).map_err(|e| invalid(&e))?,
            );
        }
        req.body(Full::new(body.clone())).map_err(|e| invalid(&e))
    }

    async fn send_once(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, (io::Error, bool)> {
        let (sender, reused) = self.connection().await.map_err(|e| (e, false))?;
        let result = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        }
        .await;
        result.map_err(|e| {
            // Closed under the request (the server's keep-alive timeout
            // ended a reused connection): worth one retry.
            let retry = reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message());
            self.sender = None;
            (io::Error::other(e), retry)
        })
    }

    /// Sends a request with raw header values and a body; connection
    /// errors and timeouts are errors.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> io::Result<Response> {
        let body = body.into();
        let timeout = self.timeout;
        let attempt = async {
            let req = self.request(method, path, headers, &body)?;
            match self.send_once(req).await {
                Ok(r) => Ok(r),
                Err((_, true)) if self.reconnect => {
                    let req = self.request(method, path, headers, &body)?;
                    self.send_once(req).await.map_err(|(e, _)| e)
                }
                Err((e, _)) => Err(e),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{method} {path}: no response within {timeout:?}"),
                ))
            }
        }
    }

    /// Sends `method path` with raw header values and no body; panics on a
    /// connection error.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
        self.send_body(method, path, headers, Bytes::new()).await
    }

    /// Sends `method path` with raw header values and a body; panics on a
    /// connection error.
    pub async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Response {
        let authority = self.authority.clone();
        self.try_send(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} http://{authority}{path}: {e}"))
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        self.send("GET", path, headers).await
    }

    /// POSTs a JSON document.
    pub async fn post_json(
        &mut self,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &serde_json::Value,
    ) -> Response {
        let mut h = headers.to_vec();
        h.push(("content-type", b"application/json"));
        self.send_body("POST", path, &h, body.to_string()).await
    }

    /// A GET on a fresh connection that reports failure instead of
    /// panicking: the status, or None when nothing answered (a readiness
    /// probe).
    pub async fn try_get(&mut self, path: &str) -> Option<StatusCode> {
        let r = self
            .probe(Duration::from_secs(10))
            .try_send("GET", path, &[], Bytes::new())
            .await
            .ok()?;
        StatusCode::from_u16(r.status).ok()
    }

    /// A client like this one on a fresh connection that is not reopened
    /// when it closes, waiting at most `timeout`: for probing servers that
    /// may be down.
    fn probe(&self, timeout: Duration) -> AsyncClient {
        AsyncClient {
            authority: self.authority.clone(),
            host: self.host.clone(),
            sender: None,
            reconnect: false,
            timeout,
        }
    }

    /// The body of a GET answered 200 on a fresh connection, or None
    /// (nothing answered, another status).
    pub async fn try_get_body(&mut self, path: &str) -> Option<Bytes> {
        let r = self
            .probe(Duration::from_secs(10))
            .try_send("GET", path, &[], Bytes::new())
            .await
            .ok()?;
        (r.status == 200).then_some(r.body)
    }

    /// POSTs a JSON document on a fresh connection: the status and body, or
    /// None when the connection fails (a server being killed) instead of
    /// panicking. It waits as long as this client does (a durable write may
    /// wait out a broker's leader election).
    pub async fn try_post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Option<(u16, Bytes)> {
        let r = self
            .probe(self.timeout)
            .try_send(
                "POST",
                path,
                &[("content-type", b"application/json")],
                body.to_string(),
            )
            .await
            .ok()?;
        Some((r.status, r.body))
    }
}

/// The blocking client: an [`AsyncClient`] on a runtime of its own.
pub struct Client {
    rt: tokio::runtime::Runtime,
    inner: AsyncClient,
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8000`): the
    /// connection opens with the first request and is reopened when the
    /// server closed it.
    pub fn new(base: &str) -> io::Result<Client> {
        Ok(Client {
            rt: runtime()?,
            inner: AsyncClient::to(base)?,
        })
    }

    /// One connection to `127.0.0.1:port`, opened now and never reopened:
    /// once the server closes it, requests fail. Panics if it cannot
    /// connect.
    pub fn connect(port: u16) -> Client {
        let mut c = Client {
            rt: runtime().expect("a tokio runtime"),
            inner: AsyncClient {
                reconnect: false,
                timeout: Duration::from_secs(60),
                ..AsyncClient::new(port)
            },
        };
        let Client { rt, inner } = &mut c;
        let sender = rt
            .block_on(inner.open())
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        inner.sender = Some(sender);
        c
    }

    /// Sets how long a request may take, response included.
    pub fn timeout(mut self, t: Duration) -> Client {
        self.inner.timeout = t;
        self
    }

    /// Sends one request (header values as text).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let body = Bytes::copy_from_slice(body);
        self.rt
            .block_on(self.inner.try_send(method, path, &headers, body))
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.send("GET", path, headers, &[])
    }

    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> io::Result<Response> {
        self.send("POST", path, &[("content-type", content_type)], body)
    }
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

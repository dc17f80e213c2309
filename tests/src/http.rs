//! A minimal HTTP/1.1 client over one keep-alive connection, able to send
//! header values that are not UTF-8.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub struct Client {
    port: u16,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(port: u16) -> Self {
        Client { port, sender: None }
    }

    /// A new keep-alive connection.
    async fn connect(&self) -> std::io::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn sender(&mut self) -> &mut SendRequest<Full<Bytes>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let port = self.port;
            let sender = self
                .connect()
                .await
                .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
            self.sender = Some(sender);
        }
        self.sender.as_mut().unwrap()
    }

    /// Sends `method path` with raw header values and no body.
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.send_body(method, path, headers, Bytes::new()).await
    }

    /// Sends `method path` with raw header values and a body.
    pub async fn send_body(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "abmesh.test");
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).expect("valid header bytes"),
            );
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let sender = self.sender().await;
        sender.ready().await.expect("connection ready");
        let resp = sender.send_request(req).await.expect("send request");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A GET that reports connection errors instead of panicking (for
    /// readiness probes).
    pub async fn try_get(&mut self, path: &str) -> Option<StatusCode> {
        let mut sender = self.connect().await.ok()?;
        let req = Request::builder()
            .uri(path)
            .header("host", "abmesh.test")
            .body(Full::new(Bytes::new()))
            .ok()?;
        Some(sender.send_request(req).await.ok()?.status())
    }

    /// The body of a GET answered 200, or None (connection refused, other
    /// status): for probing servers that may be down.
    pub async fn try_get_body(&mut self, path: &str) -> Option<Bytes> {
        let mut sender = self.connect().await.ok()?;
        let req = Request::builder()
            .uri(path)
            .header("host", "abmesh.test")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        Some(resp.into_body().collect().await.ok()?.to_bytes())
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.send("GET", path, headers).await
    }

    /// POSTs a JSON document on a fresh connection; None when the
    /// connection fails (a server being killed) instead of panicking.
    pub async fn try_post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> Option<(u16, Bytes)> {
        let mut sender = self.connect().await.ok()?;
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "abmesh.test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.into_body().collect().await.ok()?.to_bytes()))
    }

    /// POSTs a JSON document.
    pub async fn post_json(
        &mut self,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &serde_json::Value,
    ) -> Reply {
        let mut h = headers.to_vec();
        h.push(("content-type", b"application/json"));
        self.send_body("POST", path, &h, body.to_string()).await
    }
}

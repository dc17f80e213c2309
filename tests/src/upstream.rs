//! Real HTTP upstreams that say who served a request and what they saw.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;

/// Starts an upstream named `name` on an ephemeral port; returns the port.
/// It answers every request with a JSON object:
/// `{"upstream", "path", "authority", "headers": {name: value}}` where
/// header values are shown lossily as UTF-8.
pub async fn start(name: &'static str) -> u16 {
    start_on(name, 0).await
}

/// Like [`start`], on a given port (0: any free port).
pub async fn start_on(name: &'static str, port: u16) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("bind upstream {name} on 127.0.0.1:{port}: {e}"));
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(describe(name, &req))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn describe<B>(name: &str, req: &Request<B>) -> Bytes {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "authority": req.headers().get("host").map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        "headers": headers,
    });
    Bytes::from(body.to_string())
}

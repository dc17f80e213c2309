//! The halt webhook against a real HTTP server: payloads arrive as JSON
//! POSTs, in order; 5xx answers and refused connections are retried with
//! backoff; 4xx is not retried; a full queue drops instead of blocking.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abmesh_server::webhook::{Webhook, WebhookOptions};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
}

#[derive(Default)]
struct Receiver {
    /// Statuses to answer with, in order; 200 once exhausted.
    script: VecDeque<u16>,
    /// Delay before answering.
    delay: Duration,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Receiver>>;

async fn handle(
    state: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (status, delay) = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method,
            path,
            content_type,
            body,
        });
        (s.script.pop_front().unwrap_or(200), s.delay)
    };
    tokio::time::sleep(delay).await;
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(resp)
}

async fn serve(script: &[u16], delay: Duration) -> (SocketAddr, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state: Shared = Arc::new(Mutex::new(Receiver {
        script: script.iter().copied().collect(),
        delay,
        seen: Vec::new(),
    }));
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(s.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, state)
}

fn fast() -> WebhookOptions {
    WebhookOptions {
        timeout: Duration::from_secs(2),
        retries: 5,
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        queue: 16,
    }
}

fn url(addr: SocketAddr, path: &str) -> http::Uri {
    format!("http://{addr}{path}").parse().unwrap()
}

#[tokio::test]
async fn delivers_json_posts_in_order() {
    let (addr, state) = serve(&[], Duration::ZERO).await;
    let hook = Webhook::spawn_with(url(addr, "/hooks/abmesh?k=1"), fast()).unwrap();
    for i in 0..3 {
        hook.notify(json!({"event": "halt", "n": i}));
    }
    assert_eq!(hook.url(), &url(addr, "/hooks/abmesh?k=1"));
    // close() delivers what is queued before returning.
    hook.close().await;
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/hooks/abmesh?k=1");
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        assert_eq!(s.body, json!({"event": "halt", "n": i}));
    }
}

#[tokio::test]
async fn retries_5xx_and_delivers_exactly_once() {
    let (addr, state) = serve(&[503, 500], Duration::ZERO).await;
    let hook = Webhook::spawn_with(url(addr, "/"), fast()).unwrap();
    let payload = json!({"event": "halt", "experiment": "scorer", "variant": "v3"});
    hook.notify(payload.clone());
    let start = Instant::now();
    while hook.delivered() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "not delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Backoff: 20 ms, then 40 ms.
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert_eq!((hook.delivered(), hook.failed(), hook.dropped()), (1, 0, 0));
    hook.close().await;
    let seen = state.lock().unwrap().seen.clone();
    // Two failed attempts and one success; the payload is the same each
    // time, and the receiver accepted it once.
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == payload));
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (addr, state) = serve(&[400], Duration::ZERO).await;
    let hook = Webhook::spawn_with(url(addr, "/"), fast()).unwrap();
    hook.notify(json!({"a": 1}));
    hook.notify(json!({"a": 2}));
    let start = Instant::now();
    while hook.delivered() + hook.failed() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((hook.delivered(), hook.failed()), (1, 1));
    hook.close().await;
    let bodies: Vec<Value> = state
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(bodies, [json!({"a": 1}), json!({"a": 2})]);
}

#[tokio::test]
async fn gives_up_after_the_retries_when_nobody_listens() {
    // A port that was just free: connections are refused.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let options = WebhookOptions {
        retries: 3,
        ..fast()
    };
    let hook = Webhook::spawn_with(url(addr, "/"), options).unwrap();
    hook.notify(json!({"event": "srm"}));
    let start = Instant::now();
    while hook.failed() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never gave up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 4 attempts, with 20 + 40 + 80 ms of backoff between them.
    assert!(start.elapsed() >= Duration::from_millis(140));
    assert_eq!((hook.delivered(), hook.failed(), hook.dropped()), (0, 1, 0));
    hook.close().await;
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_blocking() {
    // The receiver answers after 300 ms; one notification is in flight and
    // one queued, the rest are dropped at once.
    let (addr, state) = serve(&[], Duration::from_millis(300)).await;
    let options = WebhookOptions { queue: 1, ..fast() };
    let hook = Webhook::spawn_with(url(addr, "/"), options).unwrap();
    hook.notify(json!(0));
    // Let the task take the first one off the queue.
    let start = Instant::now();
    while state.lock().unwrap().seen.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let start = Instant::now();
    for i in 1..=10 {
        hook.notify(json!(i));
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "notify blocked"
    );
    assert_eq!(hook.dropped(), 9);
    hook.close().await;
    let bodies: Vec<Value> = state
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(bodies, [json!(0), json!(1)]);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let (addr, state) = serve(&[], Duration::from_millis(400)).await;
    let options = WebhookOptions {
        timeout: Duration::from_millis(100),
        retries: 1,
        ..fast()
    };
    let hook = Webhook::spawn_with(url(addr, "/"), options).unwrap();
    hook.notify(json!({"slow": true}));
    let start = Instant::now();
    while hook.failed() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(hook.delivered(), 0);
    hook.close().await;
    assert_eq!(state.lock().unwrap().seen.len(), 2);
}

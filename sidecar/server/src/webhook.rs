//! Outgoing notifications (`abmesh serve --webhook URL`): a JSON POST for
//! every new halt and sample-ratio alarm.
//!
//! [`Webhook::notify`] never blocks and never fails: it puts the payload on
//! a bounded queue and returns. One background task delivers the queue in
//! order, one request per connection (`Connection: close`), each attempt
//! bounded by a timeout. Transport errors (refused connection, reset,
//! timeout) and 5xx answers are retried with exponential backoff; any other
//! answer ends the attempt (2xx: delivered; 1xx/3xx/4xx: rejected, logged,
//! not retried — redirects are not followed). Delivery is at least once: a
//! receiver that timed out after acting on a request sees it again. When
//! the queue is full (the receiver is down and retries are backing off),
//! new notifications are dropped with a warning and counted.
//!
//! Plain `http://` only; the process has no TLS stack. Logs name the
//! receiver by scheme and authority only, never its path or query (webhook
//! URLs often carry a secret there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

/// Why a webhook could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebhookError {
    #[error("webhook URL {url}: only http:// URLs are supported")]
    UnsupportedScheme { url: String },
    #[error("webhook URL {url}: no host")]
    MissingHost { url: String },
    #[error("webhook URL {url}: user information is not supported")]
    UserInfo { url: String },
    #[error("the webhook must be started inside a tokio runtime")]
    NoRuntime,
}

/// Delivery settings; [`Default`] is what `abmesh serve` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// Bound of one attempt: connect, send, and read the answer.
    pub timeout: Duration,
    /// Attempts after the first one (transport errors and 5xx only).
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Cap of the wait between retries.
    pub max_backoff: Duration,
    /// Notifications waiting for delivery before new ones are dropped.
    pub queue: usize,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            queue: 256,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Where to POST, parsed once.
#[derive(Debug, Clone)]
struct Target {
    /// For `connect` (IPv6 without brackets).
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    path: String,
    /// `http://authority`, for logs.
    display: String,
}

impl Target {
    fn parse(url: &Uri) -> Result<Target, WebhookError> {
        let err_url = url.to_string();
        match url.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            _ => return Err(WebhookError::UnsupportedScheme { url: err_url }),
        }
        let Some(authority) = url.authority() else {
            return Err(WebhookError::MissingHost { url: err_url });
        };
        if authority.as_str().contains('@') {
            return Err(WebhookError::UserInfo { url: err_url });
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(WebhookError::MissingHost { url: err_url });
        }
        let port = authority.port_u16().unwrap_or(80);
        let path = url
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path,
            display: format!("http://{}", authority.as_str()),
        })
    }
}

/// A running webhook sender. Dropping it lets the task deliver what is
/// queued and stop; [`Webhook::close`] does the same and waits for it.
#[derive(Debug)]
pub struct Webhook {
    tx: mpsc::Sender<serde_json::Value>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
    url: Uri,
}

impl Webhook {
    /// Validates `url` (http, with a host) and starts the delivery task on
    /// the current tokio runtime, with the default options.
    pub fn spawn(url: Uri) -> Result<Webhook, WebhookError> {
        Webhook::spawn_with(url, WebhookOptions::default())
    }

    /// [`Webhook::spawn`] with explicit delivery settings.
    pub fn spawn_with(url: Uri, options: WebhookOptions) -> Result<Webhook, WebhookError> {
        let target = Target::parse(&url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let counters = Arc::new(Counters::default());
        let task = runtime.spawn(deliver(target, options, rx, counters.clone()));
        Ok(Webhook {
            tx,
            counters,
            task,
            url,
        })
    }

    /// Queues `body` for delivery; returns at once. A full queue drops it
    /// (warning, [`Webhook::dropped`]).
    pub fn notify(&self, body: serde_json::Value) {
        match self.tx.try_send(body) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    dropped = n,
                    "webhook queue is full (the receiver is slow or down); notification dropped"
                );
            }
            Err(TrySendError::Closed(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    dropped = n,
                    "webhook task has stopped; notification dropped"
                );
            }
        }
    }

    /// The configured URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Notifications the receiver accepted (2xx).
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }

    /// Notifications given up on (rejected, or retries exhausted).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Notifications dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Stops accepting notifications, delivers (or gives up on) those
    /// queued, and waits for the task to end.
    pub async fn close(self) {
        let Webhook { tx, task, .. } = self;
        drop(tx);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "webhook task ended abnormally");
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Retry (transport error, timeout, 5xx).
    Retry(String),
    /// Give up (any other status).
    Rejected(StatusCode),
}

async fn deliver(
    target: Target,
    options: WebhookOptions,
    mut rx: mpsc::Receiver<serde_json::Value>,
    counters: Arc<Counters>,
) {
    let url = target.display.as_str();
    while let Some(value) = rx.recv().await {
        let body = Bytes::from(value.to_string());
        let mut delay = options.backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome =
                match tokio::time::timeout(options.timeout, post(&target, body.clone())).await {
                    Ok(Ok(s)) if s.is_success() => Attempt::Delivered,
                    Ok(Ok(s)) if s.is_server_error() => Attempt::Retry(format!("HTTP {s}")),
                    Ok(Ok(s)) => Attempt::Rejected(s),
                    Ok(Err(e)) => Attempt::Retry(e.to_string()),
                    Err(_) => Attempt::Retry(format!("no answer within {:?}", options.timeout)),
                };
            match outcome {
                Attempt::Delivered => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url, attempt, "webhook delivered");
                    break;
                }
                Attempt::Rejected(status) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url, %status, "webhook receiver rejected the notification; not retrying");
                    break;
                }
                Attempt::Retry(error) if attempt > options.retries => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url, attempt, %error, "webhook failed; notification dropped after {attempt} attempts");
                    break;
                }
                Attempt::Retry(error) => {
                    tracing::warn!(url, attempt, %error, retry_in = ?delay, "webhook attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(options.max_backoff);
                }
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One POST on a fresh connection; the status of the answer.
async fn post(target: &Target, body: Bytes) -> Result<StatusCode, BoxError> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let request = Request::post(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "abmesh-sidecar")
        .header(header::CONNECTION, "close")
        .body(Full::new(body))?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read the answer to the end so the connection closes cleanly.
        response.into_body().collect().await?;
        drop(sender);
        Ok::<_, BoxError>(status)
    };
    // The connection is driven alongside the exchange, in this future, so
    // the attempt's timeout bounds both.
    let (status, conn) = tokio::join!(exchange, conn);
    let status = status?;
    if let Err(e) = conn {
        tracing::debug!(error = %e, "webhook connection ended with an error");
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Target, WebhookError> {
        Target::parse(&s.parse::<Uri>().unwrap())
    }

    #[test]
    fn accepts_http_urls() {
        let t = parse("http://hooks.internal:8080/abmesh?token=x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("hooks.internal", 8080));
        assert_eq!(t.authority, "hooks.internal:8080");
        assert_eq!(t.path, "/abmesh?token=x");
        assert_eq!(t.display, "http://hooks.internal:8080");
        let t = parse("http://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        let t = parse("HTTP://example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
    }

    #[test]
    fn rejects_other_urls() {
        assert!(matches!(
            parse("https://example.com/hook"),
            Err(WebhookError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            parse("/relative/path"),
            Err(WebhookError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            parse("http://user:secret@example.com/"),
            Err(WebhookError::UserInfo { .. })
        ));
        assert_eq!(
            parse("ftp://example.com/").unwrap_err().to_string(),
            "webhook URL ftp://example.com/: only http:// URLs are supported"
        );
    }

    #[test]
    fn spawn_needs_a_runtime() {
        let err = Webhook::spawn("http://127.0.0.1:9/".parse().unwrap()).unwrap_err();
        assert_eq!(err, WebhookError::NoRuntime);
    }
}

//! Serving one listener: accept loop, HTTP/1.1 connections (keep-alive,
//! header read timeout), the listener's [`Gate`] before its [`Router`],
//! and graceful shutdown. `abmesh serve` runs two of these (data plane and
//! admin) on one `AppState`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::auth::Gate;
use crate::router::Router;
use crate::state::AppState;

/// Connection-level settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// A client that does not finish sending request headers in this time is
    /// disconnected (slow-loris protection).
    pub header_read_timeout: Duration,
    /// On shutdown, how long requests in flight get to finish.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (up to the grace period) for open requests. Every
/// request passes `gate` first (authentication, paths this listener does
/// not serve).
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    state: AppState,
    options: ConnectionOptions,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let gate = Arc::new(gate);
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let state = state.clone();
        let gate = gate.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let state = state.clone();
            let refused = gate.check(req.uri().path(), req.headers());
            async move {
                if let Some(r) = refused {
                    return Ok::<_, Infallible>(r);
                }
                Ok::<_, Infallible>(router.handle(req, state).await)
            }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "requests still open after the grace period; stopping anyway");
        }
    }
    Ok(())
}

//! Serving the gRPC service on its own listener (`--grpc-listen`): HTTP/2
//! connections with hyper, as the HTTP listeners are served
//! (`crate::serve`), and the same graceful shutdown. tonic's own transport
//! is not used, so the process has one HTTP stack.
//!
//! Request bodies follow the HTTP listeners' rules
//! ([`crate::body::Metered`]): their bytes count against
//! `--body-bytes-in-flight` as they arrive, and a request must arrive
//! whole within `--body-read-timeout` of its headers; a message over
//! `--body-limit` is refused by tonic (`RESOURCE_EXHAUSTED`).

use std::future::Future;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Inference;
use crate::body::Metered;
use crate::serve::ConnectionOptions;

/// Serves the gRPC service on `listener` until `shutdown` resolves, then
/// stops accepting and waits (up to the grace period) for open calls.
pub async fn serve_grpc(
    listener: TcpListener,
    service: Inference,
    options: ConnectionOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let bodies = service.state.bodies().clone();
    let server = service.into_server();
    let graceful = GracefulShutdown::new();
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Pings find dead peers; a peer that does not answer within the
    // header read timeout is disconnected.
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(options.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (server, bodies) = (server.clone(), bodies.clone());
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut server = server.clone();
            let req = req.map(|body| Metered::new(body, &bodies));
            tonic::codegen::Service::call(&mut server, req)
        });
        let conn = graceful.watch(http2.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("gRPC: all connections closed"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "gRPC calls still open after the grace period; stopping anyway");
        }
    }
    Ok(())
}

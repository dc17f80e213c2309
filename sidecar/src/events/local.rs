//! An in-process sidecar with only the outcome log and reports, on a free
//! loopback port: what the tests, the benchmark's checks and tools that
//! embed the evaluation use instead of spawning `abmesh serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::http::{routes, Ingest, DEFAULT_INGEST_BODY_LIMIT};
use crate::aggregate::{Definitions, EngineOptions};
use crate::report::{ReportSettings, Settings};
use crate::server::{self, AppState, ConnectionOptions, ServerLimits};
use crate::store::{Recovery, StoreOptions};
use crate::webhook::Webhook;

/// Options of a [`LocalServer`].
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub definitions: Option<Arc<Definitions>>,
    pub settings: Settings,
    pub store: StoreOptions,
    pub engine: EngineOptions,
    /// Ingest body limit (default [`DEFAULT_INGEST_BODY_LIMIT`]).
    pub body_limit: Option<usize>,
    /// Where to POST notices of new halts and SRM alarms.
    pub webhook: Option<http::Uri>,
}

/// A running in-process server; stopped (with a final snapshot) on
/// [`LocalServer::stop`] or drop.
pub struct LocalServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub addr: SocketAddr,
    pub ingest: Ingest,
    pub recovery: Recovery,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalServer {
    /// Opens `dir` and serves it on 127.0.0.1 (a free port), with the
    /// outcome-log, report and admin routes and `/metrics`.
    pub fn start(dir: &Path, options: LocalOptions) -> Result<LocalServer> {
        let limit = options.body_limit.unwrap_or(DEFAULT_INGEST_BODY_LIMIT);
        let mut builder = AppState::builder(ServerLimits {
            body_limit: limit.max(ServerLimits::default().body_limit),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let webhook = match options.webhook {
            Some(url) => {
                let _guard = rt.enter();
                Some(Arc::new(Webhook::spawn(url)?))
            }
            None => None,
        };
        let (ingest, recovery) = Ingest::open(
            dir,
            options.definitions,
            options.store,
            options.engine,
            limit,
            Some(builder.registry_mut()),
            webhook,
        )
        .with_context(|| format!("opening {}", dir.display()))?;
        builder.insert(ingest.clone());
        builder.insert(ReportSettings(Arc::new(options.settings)));
        let state = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("abmesh-local-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let shutdown = async {
                        let _ = stopped.await;
                    };
                    let opts = ConnectionOptions {
                        shutdown_grace: std::time::Duration::from_secs(5),
                        ..ConnectionOptions::default()
                    };
                    let router = routes().route(
                        http::Method::GET,
                        "/metrics",
                        server::metrics_endpoint::metrics,
                    );
                    let _ = server::serve(listener, Arc::new(router), state, opts, shutdown).await;
                });
            })?;
        Ok(LocalServer {
            url: format!("http://{addr}"),
            addr,
            ingest,
            recovery,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops serving, then closes the log (final snapshot).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ingest.store.shutdown();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

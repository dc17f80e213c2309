//! An in-process sidecar with the outcome log and reports (no models), on
//! two free loopback ports (data plane and admin, as `abmesh serve` splits
//! them, with the same route tables, [`crate::routes`]): what the tests
//! and tools that embed the evaluation use instead of spawning `abmesh
//! serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use abmesh_eval::aggregate::{Definitions, EngineOptions};
use abmesh_eval::report::Settings;
use abmesh_store::{Recovery, StoreOptions};

use crate::auth::{Gate, Token};
use crate::handlers::reports::ReportSettings;
use crate::ingest::{Ingest, DEFAULT_INGEST_BODY_LIMIT};
use crate::routes::{admin_router, data_router};
use crate::serve::{serve, ConnectionOptions};
use crate::state::{AppState, ServerLimits};
use crate::webhook::{Webhook, WebhookError};

/// Why a [`LocalServer`] did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("starting the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("opening {dir}: {source}")]
    Open {
        dir: std::path::PathBuf,
        source: abmesh_store::StoreError,
    },
    #[error("binding a loopback port: {0}")]
    Bind(std::io::Error),
    #[error("starting the server thread: {0}")]
    Thread(std::io::Error),
}

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
    /// Required on every admin request when set (`--admin-token-file`).
    pub admin_token: Option<Token>,
    /// Required on `/v1/*` when set (`--ingest-token-file`).
    pub ingest_token: Option<Token>,
}

/// A running in-process server; stopped (with a final snapshot) on
/// [`LocalServer::stop`] or drop.
pub struct LocalServer {
    /// The data plane, `http://127.0.0.1:PORT`: `/v1/*` and `/metrics`.
    pub url: String,
    pub addr: SocketAddr,
    /// The admin listener, `http://127.0.0.1:PORT`: `/admin/*`.
    pub admin_url: String,
    pub admin_addr: SocketAddr,
    pub ingest: Ingest,
    pub recovery: Recovery,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalServer {
    /// Opens `dir` and serves it on 127.0.0.1 (two free ports): ingestion
    /// and `/metrics` on the data plane, the report, state and halt routes
    /// on the admin listener, each behind its [`Gate`].
    pub fn start(dir: &Path, options: LocalOptions) -> Result<LocalServer, LocalError> {
        let limit = options.body_limit.unwrap_or(DEFAULT_INGEST_BODY_LIMIT);
        let mut builder = AppState::builder(ServerLimits {
            body_limit: limit.max(ServerLimits::default().body_limit),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(LocalError::Runtime)?;
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
        .map_err(|source| LocalError::Open {
            dir: dir.to_owned(),
            source,
        })?;
        builder.insert(ingest.clone());
        let bandit_ingest = ingest.clone();
        builder.insert(ReportSettings(Arc::new(options.settings)));
        let state = builder.build();
        let bind = || -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            let a = l.local_addr()?;
            Ok((l, a))
        };
        let (data, addr) = bind().map_err(LocalError::Bind)?;
        let (admin, admin_addr) = bind().map_err(LocalError::Bind)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let gates = (
            Gate::Data {
                ingest_token: options.ingest_token,
            },
            Gate::Admin {
                token: options.admin_token,
            },
        );
        let thread = std::thread::Builder::new()
            .name("abmesh-local-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let bandit = bandit_ingest.spawn_bandit_task();
                    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
                    let opts = ConnectionOptions {
                        shutdown_grace: std::time::Duration::from_secs(5),
                        ..ConnectionOptions::default()
                    };
                    let (data, admin) = match (
                        tokio::net::TcpListener::from_std(data),
                        tokio::net::TcpListener::from_std(admin),
                    ) {
                        (Ok(d), Ok(a)) => (d, a),
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!(error = %e, "local server: cannot register the listeners");
                            return;
                        }
                    };
                    let data_plane = serve(
                        data,
                        Arc::new(data_router()),
                        state.clone(),
                        opts,
                        gates.0,
                        async {
                            let _ = stopped.await;
                            let _ = stop_admin.send(());
                        },
                    );
                    let admin_plane = serve(
                        admin,
                        Arc::new(admin_router()),
                        state,
                        opts,
                        gates.1,
                        async {
                            let _ = admin_stopped.await;
                        },
                    );
                    let _ = tokio::join!(data_plane, admin_plane);
                    bandit.abort();
                });
            })
            .map_err(LocalError::Thread)?;
        Ok(LocalServer {
            url: format!("http://{addr}"),
            addr,
            admin_url: format!("http://{admin_addr}"),
            admin_addr,
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

//! The one place that wires `abmesh serve`, in the manner of linkerd's
//! `Config::build`: a validated [`ServeConfig`] builds a [`Service`] (the
//! model host started, the outcome log recovered, both listeners bound),
//! and [`Service::run`] serves until its shutdown future resolves, then
//! drains and closes everything it owns.
//!
//! Nothing here parses or re-checks flags (`crate::serve` did), and
//! nothing elsewhere starts a listener or a component of the service.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use abmesh_model_host::dylib;
use abmesh_model_host::metrics::HostMetrics;
use abmesh_model_host::repository::Repository;
use abmesh_model_host::{ModelHost, Runtime};
use abmesh_server::auth::{listens_on_loopback, Gate};
use abmesh_server::grpc::listener::serve_grpc;
use abmesh_server::grpc::Inference;
use abmesh_server::routes;
use abmesh_server::serve::{serve, ConnectionOptions};
use abmesh_server::state::AppState;
use anyhow::{Context, Result};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::evaluation::{self, Installed};
use crate::serve::ServeConfig;

/// A built service: everything started and both ports bound, not serving
/// yet.
pub struct Service {
    state: AppState,
    host: Option<Arc<ModelHost>>,
    outcome_log: Option<Installed>,
    data: TcpListener,
    admin: TcpListener,
    /// `--grpc-listen`, when given.
    grpc: Option<(TcpListener, Inference)>,
    data_gate: Gate,
    admin_gate: Gate,
    connections: ConnectionOptions,
}

impl ServeConfig {
    /// Starts the model host (loading every version of `--models`), opens
    /// and recovers the outcome log (`--data-dir`), and binds both
    /// listeners; logs where they listen. Must run inside the tokio
    /// runtime.
    pub async fn build(self) -> Result<Service> {
        let mut state = AppState::builder(self.limits);
        state.body_limits(self.body_limits);
        let host = match &self.models {
            Some(dir) => {
                let host = start_model_host(&self, dir, state.registry_mut()).await?;
                state.models(host.clone());
                Some(host)
            }
            None => {
                tracing::info!("no --models: this server hosts no models");
                None
            }
        };
        // Opened, recovered and installed before the port opens; closed
        // after the server stops (`Service::run`).
        let outcome_log = evaluation::install(&self.evaluation, &mut state).await?;
        let state = state.build();

        // Both ports are bound before either is announced, so whoever
        // reads the "listening on" lines can use both.
        let data = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {} (--listen)", self.listen))?;
        let admin = TcpListener::bind(self.admin_listen)
            .await
            .with_context(|| format!("listening on {} (--admin-listen)", self.admin_listen))?;
        let grpc = match self.grpc_listen {
            Some(addr) => Some((
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (--grpc-listen)"))?,
                Inference::new(state.clone(), self.admin_token.clone()),
            )),
            None => None,
        };
        let service = Service {
            state,
            host,
            outcome_log,
            data,
            admin,
            grpc,
            data_gate: Gate::Data {
                ingest_token: self.ingest_token.clone(),
            },
            admin_gate: Gate::Admin {
                token: self.admin_token.clone(),
            },
            connections: self.connections,
        };
        service.announce(&self)?;
        Ok(service)
    }
}

impl Service {
    /// The data plane's bound address.
    pub fn data_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.local_addr()
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The "listening on" lines. The address ends each (scripts and tests
    /// read it from there); what the listeners require goes on lines of
    /// its own.
    fn announce(&self, config: &ServeConfig) -> Result<()> {
        let (data_addr, admin_addr) = (self.data_addr()?, self.admin_addr()?);
        tracing::info!(
            "data plane: ingestion {}",
            match (&config.ingest_token, listens_on_loopback(data_addr)) {
                (Some(_), _) => "needs the --ingest-token-file bearer token",
                (None, true) => "is open to this host (loopback)",
                (None, false) => "is unauthenticated (--allow-unauthenticated-ingest)",
            }
        );
        tracing::info!("listening on http://{data_addr}");
        tracing::info!(
            "admin: {}",
            if config.admin_token.is_some() {
                "every request needs the --admin-token-file bearer token"
            } else {
                "no token; open to this host only (loopback)"
            }
        );
        tracing::info!("admin listening on http://{admin_addr}");
        if let Some((grpc, _)) = &self.grpc {
            tracing::info!(
                "gRPC: model load/unload {}",
                if config.admin_token.is_some() {
                    "need the --admin-token-file bearer token"
                } else {
                    "are refused (no --admin-token-file; use the admin listener)"
                }
            );
            // Not "http://": the lines tests read the HTTP ports from stay
            // the only ones that say it.
            tracing::info!("grpc listening on grpc://{}", grpc.local_addr()?);
        }
        Ok(())
    }

    /// Serves both listeners until `shutdown` resolves; then the model
    /// host drains, both listeners stop accepting and wait (up to the
    /// grace period) for requests in flight, and the outcome log closes
    /// (final snapshot).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Service {
            state,
            host,
            outcome_log,
            data,
            admin,
            grpc,
            data_gate,
            admin_gate,
            connections,
        } = self;
        // One signal stops both listeners.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            if let Some(h) = host {
                h.start_draining();
            }
            let _ = stop.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let data_plane = serve(
            data,
            Arc::new(routes::data_router()),
            state.clone(),
            connections,
            data_gate,
            until_stopped(stopped.clone()),
        );
        let grpc_plane = {
            let stopped = stopped.clone();
            async move {
                match grpc {
                    Some((listener, service)) => {
                        serve_grpc(listener, service, connections, until_stopped(stopped)).await
                    }
                    None => Ok(()),
                }
            }
        };
        let admin_plane = serve(
            admin,
            Arc::new(routes::admin_router()),
            state,
            connections,
            admin_gate,
            until_stopped(stopped),
        );
        let (d, a, g) = tokio::join!(data_plane, admin_plane, grpc_plane);
        d.context("the data-plane listener")?;
        a.context("the admin listener")?;
        g.context("the gRPC listener")?;
        evaluation::shutdown(outcome_log).await;
        Ok(())
    }
}

/// Loads ONNX Runtime, opens the repository and loads every version in it.
async fn start_model_host(
    config: &ServeConfig,
    dir: &Path,
    registry: &mut Registry,
) -> Result<Arc<ModelHost>> {
    let library = dylib::locate(config.ort_library.as_deref())?;
    tracing::info!(
        path = %library.path.display(),
        found_by = %library.source,
        "loading ONNX Runtime"
    );
    let runtime = Arc::new(Runtime::init(library, config.device)?);
    tracing::info!(device = %runtime.device(), "models run on {}", runtime.device());
    let repository = Repository::open(dir)?;
    let metrics = HostMetrics::register(registry.sub_registry_with_prefix("model"));
    let host = Arc::new(ModelHost::new(repository, runtime, config.host, metrics));
    let loader = host.clone();
    let loaded = tokio::task::spawn_blocking(move || loader.load_all_blocking())
        .await
        .context("loading the models")??;
    if loaded == 0 {
        tracing::warn!(
            repository = %dir.display(),
            "no models found: expected {{name}}/{{version}}/model.onnx; load them later with POST /admin/models/{{name}}/versions/{{version}}/load"
        );
    }
    Ok(host)
}

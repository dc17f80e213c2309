//! `AppState`: what every handler can reach.
//!
//! It is built once at startup with [`AppStateBuilder`] and is cheap to
//! clone (one `Arc`). Components register their Prometheus metrics on the
//! builder's registry while it is being built; after `build` the registry is
//! read-only, so `/metrics` encodes it without a lock.
//!
//! The model host has a field of its own; other components are stored as
//! extensions, one value per type, which keeps this file from knowing them:
//! the outcome log ([`crate::ingest::Ingest`]) and the report settings
//! ([`crate::handlers::reports::ReportSettings`]) are installed so when
//! `abmesh serve` has `--data-dir`:
//!
//! ```ignore
//! let mut builder = AppState::builder(limits);
//! let (ingest, _) = Ingest::open(dir, None, store, engine, limit, Some(builder.registry_mut()), None)?;
//! builder.insert(ingest);                      // any Clone + Send + Sync type
//! // ... and in a handler:
//! let ingest = Ingest::from_state(&state)?;    // state.get::<Ingest>(), or a 404
//! ```

use std::sync::Arc;

use prometheus_client::registry::Registry;

use abmesh_model_host::ModelHost;

use crate::body::{Bodies, BodyLimits};

/// Limits and settings of the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body accepted, in bytes (larger gets a 413).
    pub body_limit: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            body_limit: 64 << 20,
        }
    }
}

/// Shared state of the running service.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    limits: ServerLimits,
    bodies: Bodies,
    registry: Registry,
    models: Option<Arc<ModelHost>>,
    extensions: http::Extensions,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.0.limits)
            .field("models", &self.0.models.is_some())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Starts building the state. The registry's metric names are prefixed
    /// with `abmesh_`.
    pub fn builder(limits: ServerLimits) -> AppStateBuilder {
        AppStateBuilder {
            limits,
            body_limits: BodyLimits::default(),
            registry: Registry::with_prefix("abmesh"),
            models: None,
            extensions: http::Extensions::new(),
        }
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.0.limits
    }

    /// The body limit for handlers that read a body.
    pub fn body_limit(&self) -> usize {
        self.0.limits.body_limit
    }

    /// The deadline and the shared memory budget of request bodies
    /// (`server::body`).
    pub fn bodies(&self) -> &Bodies {
        &self.0.bodies
    }

    /// All the metrics of the process, for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The model host, when this process serves models.
    pub fn models(&self) -> Option<&Arc<ModelHost>> {
        self.0.models.as_ref()
    }

    /// A component stored with [`AppStateBuilder::insert`].
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.extensions.get::<T>()
    }
}

/// Collects the parts of an [`AppState`].
pub struct AppStateBuilder {
    limits: ServerLimits,
    body_limits: BodyLimits,
    registry: Registry,
    models: Option<Arc<ModelHost>>,
    extensions: http::Extensions,
}

impl AppStateBuilder {
    /// The registry components register their metrics in. Use a
    /// `sub_registry_with_prefix` per component (`abmesh_model_*`, ...).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The body read deadline and the cap on body bytes in flight
    /// (default [`BodyLimits::default`]: 60 s, 256 MiB).
    pub fn body_limits(&mut self, limits: BodyLimits) -> &mut Self {
        self.body_limits = limits;
        self
    }

    pub fn models(&mut self, host: Arc<ModelHost>) -> &mut Self {
        self.models = Some(host);
        self
    }

    /// Stores a component that handlers fetch with [`AppState::get`]; one
    /// value per type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, component: T) -> &mut Self {
        self.extensions.insert(component);
        self
    }

    /// Finishes the state; registers `abmesh_http_body_*`.
    pub fn build(mut self) -> AppState {
        let bodies = Bodies::registered(
            self.body_limits,
            self.registry.sub_registry_with_prefix("http"),
        );
        AppState(Arc::new(Inner {
            limits: self.limits,
            bodies,
            registry: self.registry,
            models: self.models,
            extensions: self.extensions,
        }))
    }
}

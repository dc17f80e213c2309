//! The model host: which versions are loaded, and loading, unloading and
//! reloading them while traffic flows.
//!
//! Loaded versions live in a map of `Arc<LoadedVersion>`. A request takes a
//! clone of the `Arc` and queues itself on that version's pool; an admin
//! operation swaps or removes the map entry under a write lock that is held
//! only for the swap (sessions are built before it is taken). A version that
//! leaves the map keeps running until the last request that holds it, and
//! everything already queued on it, has been served: no request that reached
//! a version is failed because the version was unloaded or replaced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::batching::BatchConfig;
use super::error::InferError;
use super::metrics::{HostMetrics, VersionMetrics};
use super::pool::{Pool, PoolSpec};
use super::repository::{parse_version, Entry, Repository, RepositoryError};
use super::runtime::{Runtime, SessionError, SessionOptions};
use super::signature::{Signature, SignatureError};
use super::tensor::{NamedTensor, OutputTensor};
use abmesh_common::quote::clip;

/// Settings every version is loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Sessions (and worker threads) per version.
    pub instances: usize,
    pub session: SessionOptions,
    pub batching: BatchConfig,
    /// Requests that may wait per version before new ones get a 503.
    pub queue_capacity: usize,
    /// A request whose run is expected to take at most this long runs on
    /// the request's own thread when a session is idle, batched with the
    /// other such requests waiting, instead of going through the session
    /// worker threads (zero, the default: never). Only used without a queue
    /// delay. See `pool`: it saves the thread hand-offs of the worker path.
    pub inline_budget: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            instances: 1,
            session: SessionOptions::default(),
            batching: BatchConfig::default(),
            queue_capacity: 1024,
            inline_budget: Duration::ZERO,
        }
    }
}

/// One model version in service.
pub struct LoadedVersion {
    name: Arc<str>,
    version: u64,
    path: PathBuf,
    signature: Arc<Signature>,
    pool: Pool,
    metrics: VersionMetrics,
    loaded_at: SystemTime,
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LoadedVersion {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Checks a request against the signature, queues it and waits for its
    /// outputs. `outputs` names the outputs wanted (`None`: all).
    pub async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Option<&[String]>,
    ) -> Result<Vec<OutputTensor>, InferError> {
        let prepared = self.signature.prepare(inputs, outputs)?;
        let (reply, inline) = self.pool.submit(prepared)?;
        if inline {
            // Let the other requests that are ready on this thread (and the
            // sockets that became readable) queue theirs first: they then
            // share this request's run instead of each starting its own.
            tokio::task::yield_now().await;
            self.pool.run_inline();
        }
        reply.await.unwrap_or_else(|_| {
            Err(InferError::Stopped {
                model: self.name.to_string(),
                version: self.version,
            })
        })
    }
}

/// A request named a model or version that is not being served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown model '{}'", clip(.0))]
    UnknownModel(String),
    #[error("model '{}' has no version '{}' loaded", clip(.model), clip(.version))]
    UnknownVersion { model: String, version: String },
}

/// An admin operation failed; the versions in service are unchanged.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("model '{name}' version {version} ({path}) cannot be served: {source}")]
    Signature {
        name: String,
        version: u64,
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("model '{name}' version {version} is not loaded")]
    NotLoaded { name: String, version: u64 },
    #[error("model '{name}' has no version in the repository {}: no folder {name}/N/model.onnx", .repository.display())]
    NoVersions { name: String, repository: PathBuf },
    #[error("starting the session threads of model '{name}' version {version}: {source}")]
    Threads {
        name: String,
        version: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("loading was interrupted: {0}")]
    Interrupted(String),
}

/// What a load or reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded,
    AlreadyLoaded,
    Reloaded,
}

/// A version in the repository or in service, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    pub name: String,
    pub version: u64,
    /// `Some` while the version is in service.
    pub loaded_at: Option<SystemTime>,
    /// False when the version is in service but its folder has since been
    /// removed from the repository.
    pub on_disk: bool,
}

type Versions = BTreeMap<String, BTreeMap<u64, Arc<LoadedVersion>>>;

/// All the model versions this process serves.
pub struct ModelHost {
    repository: Repository,
    runtime: Arc<Runtime>,
    config: HostConfig,
    metrics: HostMetrics,
    loaded: RwLock<Versions>,
    /// Serialises load/unload/reload so two of them never build the same
    /// version at once.
    admin: tokio::sync::Mutex<()>,
    draining: AtomicBool,
}

impl ModelHost {
    pub fn new(
        repository: Repository,
        runtime: Arc<Runtime>,
        config: HostConfig,
        metrics: HostMetrics,
    ) -> ModelHost {
        ModelHost {
            repository,
            runtime,
            config,
            metrics,
            loaded: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Ready for traffic: not shutting down. (Serving starts only after the
    /// startup loads have succeeded.)
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    /// Marks the host as shutting down, so readiness probes fail while the
    /// requests in flight finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Loads every version in the repository; stops at the first failure.
    /// For startup, before any traffic; returns how many were loaded.
    pub fn load_all_blocking(&self) -> Result<usize, AdminError> {
        let entries = self.repository.scan()?;
        for entry in &entries {
            let version = self.build(entry.clone())?;
            self.insert(version);
        }
        Ok(entries.len())
    }

    /// Looks up a version in service; `version: None` is the highest loaded
    /// version of the model.
    pub fn get(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, LookupError> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let versions = loaded
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| LookupError::UnknownModel(name.to_owned()))?;
        let found = match version {
            None => versions.values().next_back(),
            Some(v) => parse_version(v).ok().and_then(|v| versions.get(&v)),
        };
        found.cloned().ok_or_else(|| LookupError::UnknownVersion {
            model: name.to_owned(),
            version: version.unwrap_or("latest").to_owned(),
        })
    }

    /// The loaded versions of a model, ascending.
    pub fn loaded_versions(&self, name: &str) -> Vec<u64> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every version in service, by name then version.
    pub fn loaded_all(&self) -> Vec<Arc<LoadedVersion>> {
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        loaded.values().flat_map(|v| v.values().cloned()).collect()
    }

    /// Every version in the repository or in service.
    pub fn status(&self) -> Result<Vec<VersionStatus>, RepositoryError> {
        let on_disk = self.repository.scan()?;
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<(String, u64), VersionStatus> = BTreeMap::new();
        for e in on_disk {
            out.insert(
                (e.name.clone(), e.version),
                VersionStatus {
                    name: e.name,
                    version: e.version,
                    loaded_at: None,
                    on_disk: true,
                },
            );
        }
        for (name, versions) in loaded.iter() {
            for (&version, v) in versions {
                out.entry((name.clone(), version))
                    .or_insert(VersionStatus {
                        name: name.clone(),
                        version,
                        loaded_at: None,
                        on_disk: false,
                    })
                    .loaded_at = Some(v.loaded_at);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Loads a version from the repository; a no-op if it is loaded.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        version: u64,
    ) -> Result<LoadOutcome, AdminError> {
        let _admin = self.admin.lock().await;
        if self.get(name, Some(&version.to_string())).is_ok() {
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        let entry = self.repository.entry(name, version)?;
        let built = self.build_off_runtime(entry).await?;
        self.insert(built);
        Ok(LoadOutcome::Loaded)
    }

    /// Loads every version of a model that is in the repository and not in
    /// service (Triton's repository `load` of a whole model, under a
    /// version policy of "all"); versions already in service stay as they
    /// are. Returns the versions it loaded. Stops at the first failure,
    /// keeping the versions loaded before it.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<Vec<u64>, AdminError> {
        super::repository::validate_name(name)?;
        let entries: Vec<Entry> = self
            .repository
            .scan()?
            .into_iter()
            .filter(|e| e.name == name)
            .collect();
        if entries.is_empty() {
            return Err(AdminError::NoVersions {
                name: name.to_owned(),
                repository: self.repository.root().to_path_buf(),
            });
        }
        let mut loaded = Vec::new();
        for e in entries {
            if self.load(name, e.version).await? == LoadOutcome::Loaded {
                loaded.push(e.version);
            }
        }
        Ok(loaded)
    }

    /// Takes every version of a model out of service (Triton's repository
    /// `unload`); returns the versions it unloaded, none if none was in
    /// service.
    pub async fn unload_model(&self, name: &str) -> Result<Vec<u64>, AdminError> {
        let mut unloaded = Vec::new();
        for version in self.loaded_versions(name) {
            match self.unload(name, version).await {
                Ok(()) => unloaded.push(version),
                // Unloaded by another call meanwhile.
                Err(AdminError::NotLoaded { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(unloaded)
    }

    /// Reads a version's file again and swaps the new sessions in. Requests
    /// queued on the old sessions finish there; if the new file cannot be
    /// loaded, the old version stays in service.
    pub async fn reload(
        self: &Arc<Self>,
        name: &str,
        version: u64,
    ) -> Result<LoadOutcome, AdminError> {
        let _admin = self.admin.lock().await;
        let entry = self.repository.entry(name, version)?;
        let built = self.build_off_runtime(entry).await?;
        Ok(match self.insert(built) {
            Some(_) => LoadOutcome::Reloaded,
            None => LoadOutcome::Loaded,
        })
    }

    /// Takes a version out of service. Requests it has already accepted still
    /// complete; new ones get a 404.
    pub async fn unload(&self, name: &str, version: u64) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        let removed = {
            let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
            let removed = loaded.get_mut(name).and_then(|v| v.remove(&version));
            if loaded.get(name).is_some_and(BTreeMap::is_empty) {
                loaded.remove(name);
            }
            removed
        };
        let Some(removed) = removed else {
            return Err(AdminError::NotLoaded {
                name: name.to_owned(),
                version,
            });
        };
        removed.metrics.loaded.set(0);
        tracing::info!(model = name, version, "unloaded");
        Ok(())
    }

    async fn build_off_runtime(
        self: &Arc<Self>,
        entry: Entry,
    ) -> Result<LoadedVersion, AdminError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build(entry))
            .await
            .map_err(|e| AdminError::Interrupted(e.to_string()))?
    }

    /// Creates the sessions and starts the pool of one version.
    fn build(&self, entry: Entry) -> Result<LoadedVersion, AdminError> {
        let started = std::time::Instant::now();
        let mut sessions = Vec::with_capacity(self.config.instances);
        for _ in 0..self.config.instances.max(1) {
            sessions.push(self.runtime.session(&entry.path, &self.config.session)?);
        }
        let signature =
            Signature::from_session(&sessions[0]).map_err(|source| AdminError::Signature {
                name: entry.name.clone(),
                version: entry.version,
                path: entry.path.clone(),
                source,
            })?;
        for (name, ty) in &signature.skipped_outputs {
            tracing::warn!(model = %entry.name, version = entry.version, output = %name, r#type = %ty,
                "output is not a tensor and is not served");
        }
        let signature = Arc::new(signature);
        let name: Arc<str> = entry.name.as_str().into();
        let metrics = self.metrics.version(
            &entry.name,
            entry.version,
            self.config.batching.max_batch_size,
        );
        let pool = Pool::start(
            PoolSpec {
                model: name.clone(),
                version: entry.version,
                signature: signature.clone(),
                batching: self.config.batching,
                queue_capacity: self.config.queue_capacity,
                inline_budget: self.config.inline_budget,
                metrics: metrics.clone(),
            },
            sessions,
        )
        .map_err(|source| AdminError::Threads {
            name: entry.name.clone(),
            version: entry.version,
            source,
        })?;
        tracing::info!(
            model = %entry.name,
            version = entry.version,
            path = %entry.path.display(),
            device = %self.runtime.device(),
            sessions = self.config.instances,
            batching = signature.batchable && self.config.batching.max_batch_size > 1,
            took = ?Duration::from_millis(started.elapsed().as_millis() as u64),
            "loaded"
        );
        Ok(LoadedVersion {
            name,
            version: entry.version,
            path: entry.path,
            signature,
            pool,
            metrics,
            loaded_at: SystemTime::now(),
        })
    }

    /// Puts a version in service, returning the one it replaces.
    fn insert(&self, version: LoadedVersion) -> Option<Arc<LoadedVersion>> {
        version.metrics.loaded.set(1);
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        loaded
            .entry(version.name.to_string())
            .or_default()
            .insert(version.version, Arc::new(version))
    }
}

//! [`ConfigError`]: a flag value of `abmesh serve` that cannot work. Used by
//! the validation of `serve`'s flags and of its limits (`limits.rs`), which
//! both import it from here rather than from each other.

use std::net::SocketAddr;
use std::path::PathBuf;

use abmesh_server::auth::TokenError;

/// A flag value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} must be at least {min} (got {got})")]
    TooSmall {
        flag: &'static str,
        min: usize,
        got: usize,
    },
    #[error("--{flag} must be at most {max} (got {got})")]
    TooLarge {
        flag: &'static str,
        max: usize,
        got: usize,
    },
    #[error("--models {0}: not a folder")]
    NotAFolder(PathBuf),
    #[error("--admin-listen {0} is not a loopback address, and the admin API (reports with user data, state export and merge, halts, model unload) must not be open beyond this host: give --admin-token-file FILE (a bearer token of at least 16 characters), or listen on 127.0.0.1")]
    AdminNeedsToken(SocketAddr),
    #[error("--listen {0} is not a loopback address and --data-dir is given, so anyone who reaches the port could write exposures, outcomes and experiment definitions: give --ingest-token-file FILE (and the same token as `sidecar.token` in the filter's config), or --allow-unauthenticated-ingest if the mesh already authenticates callers (e.g. Istio mTLS with an AuthorizationPolicy)")]
    IngestNeedsToken(SocketAddr),
    #[error("--listen and --admin-listen are both {0}: the data plane and admin need a port each")]
    SameAddress(SocketAddr),
    #[error("--grpc-listen {0} is also the address of --listen or --admin-listen: gRPC needs a port of its own")]
    GrpcSameAddress(SocketAddr),
    #[error(transparent)]
    Token(#[from] TokenError),
}

//! The route tables of `abmesh serve`: one line per endpoint, one table
//! per listener (DESIGN.md, contract 6).
//!
//! * [`data_router`] (`--listen`): KServe v2 inference, ingestion
//!   (`/v1/events`, `/v1/exposures`) and `/metrics`;
//! * [`admin_router`] (`--admin-listen`): everything under `/admin/`, i.e.
//!   every operation that changes state other than ingestion, and every
//!   report (reports hold user counts and outcomes; `/admin/state` holds
//!   raw user ids).
//!
//! To add an endpoint, add a `.route(Method, "/path/{param}", handler)`
//! line to the table of the listener it belongs to; a handler is an
//! `async fn(Request, AppState) -> HandlerResult` (see `server::router`).
//! A component with many endpoints can build its own `Router` and
//! `.merge(...)` it here. [`super::auth::Gate`] runs before either table.

use http::Method;

use super::router::Router;
use super::{admin_models, metrics_endpoint};
use crate::kserve::handlers as v2;

/// The data-plane listener's endpoints.
pub fn data_router() -> Router {
    Router::new()
        // KServe Open Inference Protocol v2 (DESIGN.md, contract 4).
        .route(Method::GET, "/v2/health/live", v2::live)
        .route(Method::GET, "/v2/health/ready", v2::ready)
        .route(Method::GET, "/v2", v2::server_metadata)
        .route(Method::GET, "/v2/models/{name}", v2::model_metadata)
        .route(
            Method::GET,
            "/v2/models/{name}/versions/{version}",
            v2::version_metadata,
        )
        .route(
            Method::GET,
            "/v2/models/{name}/ready",
            v2::model_ready_latest,
        )
        .route(
            Method::GET,
            "/v2/models/{name}/versions/{version}/ready",
            v2::model_ready_version,
        )
        .route(Method::POST, "/v2/models/{name}/infer", v2::infer_latest)
        .route(
            Method::POST,
            "/v2/models/{name}/versions/{version}/infer",
            v2::infer_version,
        )
        // Prometheus.
        .route(Method::GET, "/metrics", metrics_endpoint::metrics)
        // Outcome log: /v1/events, /v1/exposures.
        .merge(crate::events::http::data_routes())
}

/// The admin listener's endpoints: all of `/admin/*`.
pub fn admin_router() -> Router {
    Router::new()
        // Model administration.
        .route(Method::GET, "/admin/models", admin_models::list)
        .route(
            Method::POST,
            "/admin/models/{name}/versions/{version}/load",
            admin_models::load,
        )
        .route(
            Method::POST,
            "/admin/models/{name}/versions/{version}/unload",
            admin_models::unload,
        )
        .route(
            Method::POST,
            "/admin/models/{name}/versions/{version}/reload",
            admin_models::reload,
        )
        // Outcome log and reports: /admin/experiments[/{name}],
        // /admin/state[/merge], /admin/halts, halt and lift.
        .merge(crate::events::http::admin_routes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_routes_live_on_the_admin_listener_only() {
        let data: Vec<_> = data_router().routes().map(|(_, p)| p).collect();
        let admin: Vec<_> = admin_router().routes().map(|(_, p)| p).collect();
        assert!(data.iter().all(|p| !p.starts_with("/admin")), "{data:?}");
        assert!(admin.iter().all(|p| p.starts_with("/admin/")), "{admin:?}");
        for p in [
            "/v1/events",
            "/v1/exposures",
            "/metrics",
            "/v2/models/{name}/infer",
        ] {
            assert!(data.contains(&p), "{p}");
        }
        for p in [
            "/admin/state",
            "/admin/state/merge",
            "/admin/halts",
            "/admin/experiments/{name}/variants/{variant}/halt",
            "/admin/experiments/{name}/variants/{variant}/lift",
            "/admin/experiments",
            "/admin/experiments/{name}",
            "/admin/models",
            "/admin/models/{name}/versions/{version}/unload",
        ] {
            assert!(admin.contains(&p), "{p}");
        }
    }
}

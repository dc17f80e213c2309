//! Every endpoint of `abmesh serve`, both listeners, one line each (DESIGN.md,
//! contract 6). This is the only file that adds routes.
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
//! `async fn(Request, AppState) -> HandlerResult` (see [`crate::router`]),
//! kept in [`crate::handlers`]. [`crate::auth::Gate`] runs before either
//! table.

use http::Method;

use crate::handlers::{events, kserve as v2, metrics, models, reports};
use crate::router::Router;

/// The data-plane listener's endpoints.
#[rustfmt::skip] // one line per endpoint
pub fn data_router() -> Router {
    Router::new()
        // KServe Open Inference Protocol v2 (DESIGN.md, contract 4).
        .route(Method::GET, "/v2/health/live", v2::live)
        .route(Method::GET, "/v2/health/ready", v2::ready)
        .route(Method::GET, "/v2", v2::server_metadata)
        .route(Method::GET, "/v2/models/{name}", v2::model_metadata)
        .route(Method::GET, "/v2/models/{name}/versions/{version}", v2::version_metadata)
        .route(Method::GET, "/v2/models/{name}/ready", v2::model_ready_latest)
        .route(Method::GET, "/v2/models/{name}/versions/{version}/ready", v2::model_ready_version)
        .route(Method::POST, "/v2/models/{name}/infer", v2::infer_latest)
        .route(Method::POST, "/v2/models/{name}/versions/{version}/infer", v2::infer_version)
        // Prometheus.
        .route(Method::GET, "/metrics", metrics::metrics)
        // Outcome log: ingestion.
        .route(Method::POST, "/v1/events", events::post_events)
        .route(Method::POST, "/v1/exposures", events::post_exposures)
}

/// The admin listener's endpoints: all of `/admin/*`.
#[rustfmt::skip] // one line per endpoint
pub fn admin_router() -> Router {
    Router::new()
        // Model administration.
        .route(Method::GET, "/admin/models", models::list)
        .route(Method::POST, "/admin/models/{name}/versions/{version}/load", models::load)
        .route(Method::POST, "/admin/models/{name}/versions/{version}/unload", models::unload)
        .route(Method::POST, "/admin/models/{name}/versions/{version}/reload", models::reload)
        // Outcome log: state export and merge, halts and lifts.
        .route(Method::GET, "/admin/state", events::get_state)
        .route(Method::POST, "/admin/state/merge", events::post_merge)
        .route(Method::POST, "/admin/experiments/{name}/variants/{variant}/halt", events::post_halt)
        .route(Method::POST, "/admin/experiments/{name}/variants/{variant}/lift", events::post_lift)
        .route(Method::GET, "/admin/halts", events::get_halts)
        // Reports.
        .route(Method::GET, "/admin/experiments", reports::list_experiments)
        .route(Method::GET, "/admin/experiments/{name}", reports::get_experiment)
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

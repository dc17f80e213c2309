//! Every endpoint of `abmesh serve`, both listeners, one line each (DESIGN.md,
//! contract 6). This is the only file that adds routes.
//!
//! * [`data_router`] (`--listen`): KServe v2 inference, ingestion
//!   (`/v1/events`, `/v1/exposures`) and `/metrics`;
//! * [`admin_router`] (`--admin-listen`): everything under `/admin/`, i.e.
//!   every operation that changes state other than ingestion, and every
//!   report (reports hold user counts and outcomes; `/admin/state` holds
//!   raw user ids); and Triton's repository load and unload
//!   (`/v2/repository/models/{name}/load|unload`, [`ADMIN_V2_PREFIX`]),
//!   which change what is served, so a Triton client that loads models is
//!   pointed here, with the admin token.
//!
//! To add an endpoint, add a `.route(Method, "/path/{param}", handler)`
//! line to the table of the listener it belongs to; a handler is an
//! `async fn(Request, AppState) -> HandlerResult` (see [`crate::router`]),
//! kept in [`crate::handlers`]. [`crate::auth::Gate`] runs before either
//! table.

use http::Method;

use crate::handlers::{events, kserve as v2, metrics, models, reports, triton};
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
        // Triton's extensions (model configuration, statistics, repository
        // index); a literal segment wins over `{name}`, so
        // `/v2/models/stats` is the statistics, not a model's metadata.
        .route(Method::GET, "/v2/models/{name}/config", triton::config_latest)
        .route(Method::GET, "/v2/models/{name}/versions/{version}/config", triton::config_version)
        .route(Method::GET, "/v2/models/stats", triton::stats_all)
        .route(Method::GET, "/v2/models/{name}/stats", triton::stats_model)
        .route(Method::GET, "/v2/models/{name}/versions/{version}/stats", triton::stats_version)
        .route(Method::POST, "/v2/repository/index", triton::repository_index)
        // Prometheus.
        .route(Method::GET, "/metrics", metrics::metrics)
        // Outcome log: ingestion.
        .route(Method::POST, "/v1/events", events::post_events)
        .route(Method::POST, "/v1/exposures", events::post_exposures)
}

/// Where the admin listener's Triton routes live: the repository's model
/// control (`{ADMIN_V2_PREFIX}{name}/load|unload`). The data plane's gate
/// answers these 404, pointing at the admin listener.
pub const ADMIN_V2_PREFIX: &str = "/v2/repository/models/";

/// The admin listener's endpoints: all of `/admin/*`, and Triton's model
/// control.
#[rustfmt::skip] // one line per endpoint
pub fn admin_router() -> Router {
    Router::new()
        // Triton's model repository control (`tritonclient`'s load_model
        // and unload_model): every version of a model at once.
        .route(Method::POST, "/v2/repository/models/{name}/load", triton::repository_load)
        .route(Method::POST, "/v2/repository/models/{name}/unload", triton::repository_unload)
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
        let admin_only = |p: &str| p.starts_with("/admin") || p.starts_with(ADMIN_V2_PREFIX);
        assert!(data.iter().all(|p| !admin_only(p)), "{data:?}");
        assert!(admin.iter().all(|p| admin_only(p)), "{admin:?}");
        // What the data plane's gate sends away is what the admin listener
        // serves.
        for p in &admin {
            let path = p
                .replace("{name}", "m")
                .replace("{version}", "1")
                .replace("{variant}", "v");
            let refused = crate::auth::Gate::Data { ingest_token: None }
                .check(&path, &http::HeaderMap::new())
                .map(|r| r.status());
            assert_eq!(refused, Some(http::StatusCode::NOT_FOUND), "{p}");
        }
        for p in [
            "/v1/events",
            "/v1/exposures",
            "/metrics",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/config",
            "/v2/models/{name}/versions/{version}/config",
            "/v2/models/stats",
            "/v2/models/{name}/stats",
            "/v2/models/{name}/versions/{version}/stats",
            "/v2/repository/index",
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
            "/v2/repository/models/{name}/load",
            "/v2/repository/models/{name}/unload",
        ] {
            assert!(admin.contains(&p), "{p}");
        }
    }
}

//! The route table of `abmesh serve`: one line per endpoint.
//!
//! To add an endpoint, add a `.route(Method, "/path/{param}", handler)`
//! line; a handler is an `async fn(Request, AppState) -> HandlerResult`
//! (see `server::router`). A component with many endpoints can build its
//! own `Router` and `.merge(...)` it here.

use http::Method;

use super::router::Router;
use super::{admin_models, metrics_endpoint};
use crate::kserve::handlers as v2;

/// Every endpoint of the service.
pub fn router() -> Router {
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
        // Model administration (DESIGN.md, contract 6).
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
        // Prometheus.
        .route(Method::GET, "/metrics", metrics_endpoint::metrics)
        // Outcome log and reports: /v1/events, /v1/exposures,
        // /admin/experiments[/{name}], /admin/state[/merge].
        .merge(crate::events::http::routes())
}

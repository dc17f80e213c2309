//! `GET /admin/experiments` and `GET /admin/experiments/{name}`: JSON by
//! default, HTML with `Accept: text/html` or `?format=html` (DESIGN.md,
//! contract 6); a report also as plain text with `?format=text` (what
//! `abmesh report` prints).

use http::{Method, StatusCode};

use super::{html, list, report, text, ReportSettings, Settings};
use crate::events::http::Ingest;
use crate::server::response::{self, clip, ApiError};
use crate::server::router::{HandlerResult, Request, Router};
use crate::server::state::AppState;

/// The report routes (merged into the outcome log's admin routes).
pub fn routes() -> Router {
    Router::new()
        .route(Method::GET, "/admin/experiments", list_experiments)
        .route(Method::GET, "/admin/experiments/{name}", get_experiment)
}

fn parts(state: &AppState) -> Result<(Ingest, std::sync::Arc<Settings>), ApiError> {
    let ingest = state.get::<Ingest>().cloned().ok_or_else(|| {
        ApiError::not_found("this server keeps no outcome log (start it with --data-dir DIR)")
    })?;
    let settings = state.get::<ReportSettings>().cloned().unwrap_or_default().0;
    Ok((ingest, settings))
}

/// `GET /admin/experiments`.
pub async fn list_experiments(req: Request, state: AppState) -> HandlerResult {
    let (ingest, settings) = parts(&state)?;
    let listing = list(&ingest.aggregates, &settings);
    if req.wants_html() {
        return Ok(response::with_body(
            StatusCode::OK,
            response::HTML,
            html::list_page(&listing.experiments),
        ));
    }
    Ok(response::json(&listing))
}

/// `GET /admin/experiments/{name}`.
pub async fn get_experiment(req: Request, state: AppState) -> HandlerResult {
    let (ingest, settings) = parts(&state)?;
    let name = req.param("name");
    let Some(r) = report(&ingest.aggregates, name, &settings) else {
        let known: Vec<String> = {
            let agg = ingest.aggregates.lock().expect("aggregates lock");
            agg.experiments.iter().map(|e| e.name.clone()).collect()
        };
        return Err(ApiError::not_found(format!(
            "no experiment {:?}: it is neither defined nor seen in exposures (known: {})",
            clip(name),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    if req.wants_html() {
        return Ok(response::with_body(
            StatusCode::OK,
            response::HTML,
            html::report_page(&r),
        ));
    }
    if req.query("format").as_deref() == Some("text") {
        return Ok(response::with_body(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            text::render(&r),
        ));
    }
    Ok(response::json(&r))
}

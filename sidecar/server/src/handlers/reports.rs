//! `GET /admin/experiments` and `GET /admin/experiments/{name}`: JSON by
//! default, HTML with `Accept: text/html` or `?format=html` (DESIGN.md,
//! contract 6); a report also as plain text with `?format=text` (what
//! `abmesh report` prints).

use std::sync::Arc;

use abmesh_common::quote::clip;
use abmesh_eval::report::{html, list, report, text, Settings};
use http::StatusCode;

use crate::ingest::Ingest;
use crate::response::{self, ApiError};
use crate::router::{HandlerResult, Request};
use crate::state::AppState;

/// The evaluation settings, as installed in the `AppState`
/// (`state.get::<ReportSettings>()`; defaults when absent).
#[derive(Debug, Clone, Default)]
pub struct ReportSettings(pub Arc<Settings>);

fn parts(state: &AppState) -> Result<(Ingest, Arc<Settings>), ApiError> {
    let ingest = Ingest::from_state(state)?;
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
            let agg = ingest.aggregates.lock();
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

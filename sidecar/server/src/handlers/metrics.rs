//! `GET /metrics`: every registered metric, in the OpenMetrics text format
//! (which Prometheus scrapes natively).

use http::StatusCode;
use prometheus_client::encoding::text::encode;

use crate::response::{self, ApiError};
use crate::router::{HandlerResult, Request};
use crate::state::AppState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(_: Request, state: AppState) -> HandlerResult {
    let mut text = String::with_capacity(16 << 10);
    encode(&mut text, state.registry())
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(response::with_body(StatusCode::OK, OPENMETRICS, text))
}

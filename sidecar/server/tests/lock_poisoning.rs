//! A handler that panics while it holds the shared aggregates answers 500
//! (the router catches the panic), and the lock it held stays usable:
//! every later request that takes it (reports, ingestion, halts) is served
//! as before, instead of meeting a poisoned lock and answering 500 too.

use std::sync::Arc;

use abmesh_eval::aggregate::EngineOptions;
use abmesh_server::handlers::{events, reports};
use abmesh_server::ingest::{Ingest, DEFAULT_INGEST_BODY_LIMIT};
use abmesh_server::router::{HandlerResult, Request, Router};
use abmesh_server::state::{AppState, ServerLimits};
use abmesh_store::StoreOptions;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A bug that input reaches while the aggregates are locked.
async fn panics_holding_the_aggregates(_: Request, state: AppState) -> HandlerResult {
    let ingest = Ingest::from_state(&state)?;
    let _held = ingest.aggregates.lock();
    panic!("a bug while the aggregates are locked");
}

async fn call(
    r: &Router,
    state: &AppState,
    method: &str,
    uri: &str,
    body: &'static [u8],
) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = r.handle(req, state.clone()).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_under_the_aggregates_lock_does_not_fail_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder = AppState::builder(ServerLimits::default());
    let (ingest, _) = Ingest::open(
        dir.path(),
        None,
        StoreOptions::default(),
        EngineOptions::default(),
        DEFAULT_INGEST_BODY_LIMIT,
        Some(builder.registry_mut()),
        None,
    )
    .unwrap();
    builder.insert(ingest.clone());
    builder.insert(reports::ReportSettings(Arc::new(Default::default())));
    let state = builder.build();
    // The listeners' own handlers, beside the panicking one (a router of
    // the test's own: the route tables of `abmesh serve` have no such
    // endpoint).
    let router = Router::new()
        .route(http::Method::GET, "/panic", panics_holding_the_aggregates)
        .route(
            http::Method::GET,
            "/admin/experiments",
            reports::list_experiments,
        )
        .route(http::Method::POST, "/v1/exposures", events::post_exposures)
        .route(http::Method::POST, "/v1/events", events::post_events)
        .route(
            http::Method::GET,
            "/admin/experiments/{name}",
            reports::get_experiment,
        );

    let (s, body) = call(&router, &state, "GET", "/panic", b"").await;
    assert_eq!(s, 500, "{body}");

    let (s, body) = call(&router, &state, "GET", "/admin/experiments", b"").await;
    assert_eq!(s, 200, "the report after the panic: {body}");
    let batch = br#"{"instance":"t/1","seq":1,"dropped":0,"experiments":[{"name":"ranker","variants":["control","treatment"]}],"exposures":[[1777000000000,0,0,"u1"],[1777000000000,0,1,"u2"]]}"#;
    let (s, body) = call(&router, &state, "POST", "/v1/exposures", batch).await;
    assert_eq!(s, 200, "exposures after the panic: {body}");
    let (s, body) = call(
        &router,
        &state,
        "POST",
        "/v1/events",
        br#"[{"user":"u1","metric":"m","id":"e1"}]"#,
    )
    .await;
    assert_eq!(s, 200, "events after the panic: {body}");
    let (s, body) = call(&router, &state, "GET", "/admin/experiments/ranker", b"").await;
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"experiment\":\"ranker\""), "{body}");

    // And again: a second panic, then the same requests.
    let (s, _) = call(&router, &state, "GET", "/panic", b"").await;
    assert_eq!(s, 500);
    let (s, body) = call(&router, &state, "GET", "/admin/experiments", b"").await;
    assert_eq!(s, 200, "{body}");
    ingest.store.shutdown();
}

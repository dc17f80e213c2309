//! The router: method + path pattern → async handler, matched with
//! `matchit` (a radix tree per method: a lookup walks the path once and
//! allocates nothing; only the winner's parameters are decoded into
//! strings).
//!
//! Patterns are literal segments and `{name}` parameters, each matching one
//! whole path segment (percent-decoded): `/v2/models/{name}/versions/{version}`.
//! A literal segment wins over a parameter at the same place, so
//! `/admin/models/index` can sit beside `/admin/models/{name}`; two
//! patterns that would match the same paths (the same pattern twice, or
//! `{a}` beside `{b}`) are refused when the table is built. Paths are
//! matched as the gate reads them: empty segments do not count (`//v1/x`
//! is `/v1/x`, `/v2/` is `/v2`). A path that matches with another method
//! gets a 405 with `Allow`; no match is a 404. Both are JSON errors like
//! every other.
//!
//! A handler is any `async fn(Request, AppState) -> Result<Response, ApiError>`;
//! adding an endpoint is one `.route(...)` line in [`crate::routes`].
//!
//! A handler that panics answers 500 (`{"error": "internal error ..."}`)
//! and the panic is logged with the request's method and path: one request
//! that meets a bug must not stop model serving, ingestion and admin for
//! everyone. (The release profile unwinds for this; see the root
//! Cargo.toml.)

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, Uri};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use abmesh_common::quote::{bound, clip};

use crate::body::{self, Body, BoxError};
use crate::response::{ApiError, Response};
use crate::state::AppState;

/// What handlers return.
pub type HandlerResult = Result<Response, ApiError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// An endpoint. Implemented for every `Fn(Request, AppState) -> impl Future`
/// of the right output, so plain `async fn`s are handlers.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request, state: AppState) -> BoxFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request, AppState) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, req: Request, state: AppState) -> BoxFuture {
        Box::pin(self(req, state))
    }
}

/// A request as handlers see it: head, path parameters, and a body to read
/// under a limit.
pub struct Request {
    head: http::request::Parts,
    params: Vec<(&'static str, String)>,
    body: Option<Body>,
}

impl Request {
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    pub fn uri(&self) -> &Uri {
        &self.head.uri
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A `{name}` parameter of the route's pattern (percent-decoded).
    ///
    /// # Panics
    /// If the route's pattern has no such parameter: a bug in the route
    /// table, caught by the first request that reaches the handler.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("route has no parameter {{{name}}}"))
    }

    /// The first value of a query-string parameter (percent-decoded).
    pub fn query(&self, key: &str) -> Option<String> {
        self.head.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true)? == key).then(|| percent_decode(v, true))?
        })
    }

    /// Whether a person is asking (admin pages): `?format=html`, or an
    /// `Accept` header that prefers `text/html`. JSON otherwise.
    pub fn wants_html(&self) -> bool {
        match self.query("format").as_deref() {
            Some("html") => return true,
            Some(_) => return false,
            None => {}
        }
        self.header("accept").is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|m| m.trim().starts_with("text/html"))
        })
    }

    /// Reads the whole body, at most `limit` bytes (413 beyond). The body
    /// can be read once; later calls return an empty body.
    pub async fn body(&mut self, limit: usize) -> Result<Bytes, ApiError> {
        match self.body.take() {
            Some(b) => body::read_limited(b, &self.head.headers, limit).await,
            None => Ok(Bytes::new()),
        }
    }

    /// Reads the body as JSON (400 with serde's message when it is not).
    pub async fn json<T: DeserializeOwned>(&mut self, limit: usize) -> Result<T, ApiError> {
        let bytes = self.body(limit).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(bound(format!("invalid JSON body: {e}"))))
    }
}

struct Route {
    method: Method,
    pattern: &'static str,
    /// The names of the pattern's `{name}` parameters.
    params: Vec<&'static str>,
    handler: Arc<dyn Handler>,
}

/// The route table.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    /// Per method, in the order first seen: the tree of its patterns, each
    /// leading to its index in `routes`.
    trees: Vec<(Method, matchit::Router<usize>)>,
}

/// The `{name}` parameters of a pattern, checked.
fn parameters(pattern: &'static str) -> Vec<&'static str> {
    assert!(
        pattern.starts_with('/'),
        "route pattern {pattern:?} must start with '/'"
    );
    pattern
        .split('/')
        .filter_map(|s| {
            let rest = s.strip_prefix('{')?;
            Some(
                rest.strip_suffix('}')
                    .filter(|n| !n.is_empty() && !n.contains(['{', '}', '*']))
                    .unwrap_or_else(|| panic!("bad parameter {s:?} in route {pattern:?}")),
            )
        })
        .collect()
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds an endpoint.
    ///
    /// # Panics
    /// On a malformed pattern (not starting with `/`, an empty or unclosed
    /// `{}`), a (method, pattern) pair already present, or a pattern that
    /// conflicts with one of the same method: route tables are static, so
    /// these are bugs to catch at startup.
    pub fn route(mut self, method: Method, pattern: &'static str, handler: impl Handler) -> Router {
        let params = parameters(pattern);
        let index = self.routes.len();
        let tree = match self.trees.iter().position(|(m, _)| *m == method) {
            Some(i) => &mut self.trees[i].1,
            None => {
                self.trees.push((method.clone(), matchit::Router::new()));
                &mut self.trees.last_mut().expect("just pushed").1
            }
        };
        match tree.insert(pattern, index) {
            Ok(()) => {}
            Err(matchit::InsertError::Conflict { with }) if with == pattern => {
                panic!("route {method} {pattern} is defined twice")
            }
            Err(e) => panic!("route {method} {pattern}: {e}"),
        }
        self.routes.push(Route {
            method,
            pattern,
            params,
            handler: Arc::new(handler),
        });
        self
    }

    /// The (method, pattern) pairs, in the order they were added.
    pub fn routes(&self) -> impl Iterator<Item = (&Method, &'static str)> {
        self.routes.iter().map(|r| (&r.method, r.pattern))
    }

    /// The route of `method` that matches `path`, with its parameters
    /// decoded; None if none does (or a parameter is not valid
    /// percent-encoded UTF-8).
    fn find(&self, method: &Method, path: &str) -> Option<(&Route, Vec<(&'static str, String)>)> {
        let (_, tree) = self.trees.iter().find(|(m, _)| m == method)?;
        let matched = tree.at(path).ok()?;
        let route = &self.routes[*matched.value];
        let mut params = Vec::with_capacity(route.params.len());
        for (key, value) in matched.params.iter() {
            let name = route.params.iter().find(|n| **n == key)?;
            params.push((*name, percent_decode(value, false)?));
        }
        Some((route, params))
    }

    /// Dispatches a request to its handler; errors become JSON responses.
    pub async fn handle<B>(&self, req: http::Request<B>, state: AppState) -> Response
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (head, body) = req.into_parts();
        let path = head.uri.path();
        let normalized = normalize(path);
        let Some((route, params)) = self.find(&head.method, &normalized) else {
            let allowed: Vec<&str> = self
                .trees
                .iter()
                .filter(|(m, _)| *m != head.method)
                .filter(|(m, _)| self.find(m, &normalized).is_some())
                .map(|(m, _)| m.as_str())
                .collect();
            let err = if allowed.is_empty() {
                ApiError::not_found(format!("no endpoint {} {}", head.method, clip(path)))
            } else {
                ApiError::method_not_allowed(&head.method, path, allowed)
            };
            return err.into_response();
        };
        // Kept for the log line of a panic: the request moves into the
        // handler.
        let method = head.method.clone();
        let uri = head.uri.clone();
        let request = Request {
            head,
            params,
            body: Some(Body::new(
                body.map_err(Into::into).boxed_unsync(),
                state.bodies(),
            )),
        };
        // The handler's state after a panic is not looked at again: its
        // future is dropped, and what it shares (`AppState`) stays
        // consistent at every await. The locks it may hold do not poison
        // (parking_lot): handlers only read the aggregates (the log's
        // applier thread writes them), so a panic under the lock leaves
        // them whole, and later requests take it as usual
        // (tests/lock_poisoning.rs).
        let handled = AssertUnwindSafe(async move { route.handler.call(request, state).await })
            .catch_unwind()
            .await;
        match handled {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => e.into_response(),
            Err(panic) => {
                tracing::error!(
                    method = %method,
                    path = %clip(uri.path()),
                    panic = %bound(panic_message(panic.as_ref()).to_owned()),
                    "request handler panicked; answered 500 and serving on"
                );
                ApiError::internal(format!(
                    "internal error while handling {method} {}; the server logged it and keeps serving",
                    clip(uri.path())
                ))
                .into_response()
            }
        }
    }
}

/// The message of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

/// `path` with its empty segments left out, as the gate reads it
/// (`//v1/events` is `/v1/events`, `/v2/` is `/v2`); borrowed unless it
/// has any.
fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    let has_empty = path.contains("//") || (path.len() > 1 && path.ends_with('/'));
    if !has_empty {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// Decodes `%XX` escapes (and, in query strings, `+` as a space); `None`
/// if the result is not UTF-8 or an escape is malformed.
fn percent_decode(s: &str, plus_as_space: bool) -> Option<String> {
    let escaped = s.contains('%') || (plus_as_space && s.contains('+'));
    if !escaped {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response;
    use crate::state::ServerLimits;
    use http_body_util::{BodyExt, Full};

    async fn echo(req: Request, _: AppState) -> HandlerResult {
        Ok(response::json(&serde_json::json!({
            "name": req.param("name"),
            "pattern": "param",
        })))
    }

    async fn index(_: Request, _: AppState) -> HandlerResult {
        Ok(response::json(&serde_json::json!({"pattern": "literal"})))
    }

    async fn sized(mut req: Request, state: AppState) -> HandlerResult {
        let body = req.body(state.body_limit()).await?;
        Ok(response::json(&body.len()))
    }

    async fn panics(req: Request, _: AppState) -> HandlerResult {
        let index: usize = req.query("at").and_then(|a| a.parse().ok()).unwrap_or(9);
        // A bug that input reaches: indexing out of bounds.
        let v = [1, 2, 3];
        Ok(response::json(&v[index]))
    }

    async fn panics_after_await(mut req: Request, state: AppState) -> HandlerResult {
        let body = req.body(state.body_limit()).await?;
        tokio::task::yield_now().await;
        panic!("a bug after reading {} bytes", body.len());
    }

    fn router() -> Router {
        Router::new()
            .route(Method::GET, "/m/{name}", echo)
            .route(Method::GET, "/m/index", index)
            .route(Method::GET, "/m/{name}/ready", echo)
            .route(Method::POST, "/m/{name}", sized)
            .route(Method::GET, "/panic", panics)
            .route(Method::POST, "/panic", panics_after_await)
    }

    async fn call(
        r: &Router,
        method: Method,
        uri: &str,
        body: &'static [u8],
    ) -> (u16, serde_json::Value, HeaderMap) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let state = AppState::builder(ServerLimits { body_limit: 4 }).build();
        let resp = r.handle(req, state).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap(), headers)
    }

    #[tokio::test]
    async fn matches_params_literals_methods_and_limits() {
        let r = router();
        let (s, v, _) = call(&r, Method::GET, "/m/a%20b", b"").await;
        assert_eq!((s, v["name"].as_str()), (200, Some("a b")));
        let (_, v, _) = call(&r, Method::GET, "/m/index", b"").await;
        assert_eq!(v["pattern"], "literal");
        // Past the literal, the parameter still matches: `/v2/models/stats`
        // (the statistics) hides only a model named "stats"'s metadata,
        // not its other routes.
        let (s, v, _) = call(&r, Method::GET, "/m/index/ready", b"").await;
        assert_eq!((s, v["name"].as_str()), (200, Some("index")), "{v}");
        let (s, v, _) = call(&r, Method::GET, "/m/a/b", b"").await;
        assert_eq!(s, 404);
        assert_eq!(v["error"], "no endpoint GET /m/a/b");
        let (s, _, h) = call(&r, Method::DELETE, "/m/x", b"").await;
        assert_eq!(s, 405);
        assert_eq!(h["allow"], "GET, POST");
        let (s, v, _) = call(&r, Method::POST, "/m/x", b"1234").await;
        assert_eq!((s, v.as_u64()), (200, Some(4)));
        let (s, v, _) = call(&r, Method::POST, "/m/x", b"12345").await;
        assert_eq!(s, 413);
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 4 bytes"));
    }

    /// A panicking handler answers 500 with a JSON error; the router (and
    /// the task that runs it) carries on with the next request.
    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_router_serves_on() {
        let r = router();
        let (s, v, h) = call(&r, Method::GET, "/panic?at=7", b"").await;
        assert_eq!(s, 500);
        assert_eq!(h["content-type"], "application/json");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with("internal error while handling GET /panic;"),
            "{msg}"
        );
        // The panic's message stays in the log, out of the response.
        assert!(!msg.contains("index out of bounds"), "{msg}");
        let (s, v, _) = call(&r, Method::GET, "/panic?at=1", b"").await;
        assert_eq!((s, v.as_u64()), (200, Some(2)));
        let (s, v, _) = call(&r, Method::POST, "/panic", b"abc").await;
        assert_eq!(s, 500);
        assert!(v["error"].as_str().unwrap().contains("POST /panic"));
        let (s, v, _) = call(&r, Method::GET, "/m/a", b"").await;
        assert_eq!((s, v["name"].as_str()), (200, Some("a")));
    }

    /// 404 and 405 messages quote the path clipped.
    #[tokio::test]
    async fn errors_quote_long_paths_clipped() {
        let r = router();
        // (`http` takes URIs of up to 64 KiB.)
        let long = format!("/x/{}", "a".repeat(60_000));
        let req = http::Request::builder()
            .uri(long.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let state = AppState::builder(ServerLimits { body_limit: 4 }).build();
        let resp = r.handle(req, state).await;
        assert_eq!(resp.status(), 404);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(bytes.len() < 400, "{} bytes", bytes.len());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .ends_with(&format!("… ({} bytes)", long.len())));
    }

    #[test]
    #[should_panic(expected = "defined twice")]
    fn duplicate_routes_are_a_startup_bug() {
        let _ = Router::new()
            .route(Method::GET, "/x", index)
            .route(Method::GET, "/x", index);
    }

    #[test]
    #[should_panic(expected = "conflict")]
    fn patterns_that_match_the_same_paths_are_a_startup_bug() {
        let _ = Router::new().route(Method::GET, "/m/{name}", echo).route(
            Method::GET,
            "/m/{other}",
            echo,
        );
    }

    /// Empty segments do not count, as the gate reads paths: `//m/a` and
    /// `/m/a/` are `/m/a`.
    #[tokio::test]
    async fn empty_segments_are_left_out() {
        let r = router();
        for path in ["//m/a", "/m//a", "/m/a/", "///m/a//"] {
            let (s, v, _) = call(&r, Method::GET, path, b"").await;
            assert_eq!((s, v["name"].as_str()), (200, Some("a")), "{path}");
        }
        let (s, _, _) = call(&r, Method::GET, "/m/", b"").await;
        assert_eq!(s, 404);
        let (s, v, _) = call(&r, Method::GET, "/m/bad%zz", b"").await;
        assert_eq!(s, 404, "{v}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c", true).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }
}

//! Who may call what on which listener (DESIGN.md, contract 6).
//!
//! `abmesh serve` has two listeners, each with a [`Gate`] that every
//! request passes before the router sees it:
//!
//! * **admin** (`--admin-listen`, default `127.0.0.1:8001`): all of
//!   `/admin/*`. With `--admin-token-file` every request needs
//!   `Authorization: Bearer TOKEN`, whatever its peer; without one the
//!   listener must be on loopback (checked at startup).
//! * **data plane** (`--listen`): KServe v2, `/v1/events`, `/v1/exposures`,
//!   `/metrics`. `/admin/*` and Triton's model control
//!   (`/v2/repository/models/{name}/load|unload`, served on the admin
//!   listener) are a 404 here that says where they went. With
//!   `--ingest-token-file`, every `/v1/*` request needs that token.
//!
//! A token is compared in constant time ([`subtle`]), and never logged or
//! echoed: `Token`'s `Debug` prints `Token(<redacted>)`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use abmesh_common::quote::clip;

use crate::response::{ApiError, Response};

/// A bearer token: the trimmed contents of a token file. No `PartialEq`:
/// the one comparison is `Token::matches`, in constant time.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token cannot be used. Messages say where it came from (the flag
/// and the file), never the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{origin}: cannot read it: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}: the file holds no token (it is empty or only whitespace); write one of at least {min} characters, e.g. `openssl rand -hex 32 > FILE`", min = Token::MIN_LEN)]
    Empty { origin: String },
    #[error("{origin}: the token is {len} bytes; it must be at least {min} (e.g. `openssl rand -hex 32 > FILE`)", min = Token::MIN_LEN)]
    TooShort { origin: String, len: usize },
    #[error("{origin}: the token is {len} bytes; it may be at most {max}", max = Token::MAX_LEN)]
    TooLong { origin: String, len: usize },
    #[error("{origin}: the token must be visible ASCII (no spaces or control characters inside it); byte {at} is not")]
    NotVisible { origin: String, at: usize },
}

impl Token {
    /// The shortest token accepted, in bytes.
    pub const MIN_LEN: usize = 16;
    /// The longest token accepted, in bytes (what the filter's
    /// `sidecar.token` takes).
    pub const MAX_LEN: usize = 4096;

    /// Reads a token file: its contents, trimmed of surrounding whitespace
    /// (a trailing newline is the usual case). `flag` names the option in
    /// errors (`--admin-token-file`).
    pub fn from_file(flag: &str, path: &Path) -> Result<Token, TokenError> {
        let origin = format!("{flag} {}", path.display());
        match std::fs::read(path) {
            Ok(bytes) => Token::parse(origin, &bytes),
            Err(source) => Err(TokenError::Read { origin, source }),
        }
    }

    /// A token from text (trimmed); `origin` says where it came from, for
    /// errors.
    pub fn parse(origin: impl Into<String>, text: &[u8]) -> Result<Token, TokenError> {
        let trimmed = text.trim_ascii();
        let origin = origin.into();
        if trimmed.is_empty() {
            return Err(TokenError::Empty { origin });
        }
        let len = trimmed.len();
        if len < Token::MIN_LEN {
            return Err(TokenError::TooShort { origin, len });
        }
        if len > Token::MAX_LEN {
            return Err(TokenError::TooLong { origin, len });
        }
        if let Some(at) = trimmed.iter().position(|b| !b.is_ascii_graphic()) {
            return Err(TokenError::NotVisible { origin, at });
        }
        Ok(Token(trimmed.into()))
    }

    /// `Bearer TOKEN`, the `Authorization` value a client sends.
    pub fn bearer(&self) -> String {
        // Visible ASCII, checked when it was read.
        format!("Bearer {}", String::from_utf8_lossy(&self.0))
    }

    /// Whether an `Authorization` value (`Bearer TOKEN`) carries this
    /// token: the gRPC listener's check of its `authorization` metadata.
    pub fn authorizes(&self, authorization: &[u8]) -> bool {
        bearer_token(authorization).is_some_and(|t| self.matches(t))
    }

    /// Whether `presented` is this token. Constant time in the contents;
    /// only the length can be told apart, which is not secret enough to
    /// matter with tokens of 16 bytes or more.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }
}

/// Whether an address only this host can reach: 127.0.0.0/8, `::1`, or
/// `::ffff:127.x.y.z`. `0.0.0.0` and `::` (every interface) are not.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether a listen address is on loopback only.
pub fn listens_on_loopback(addr: SocketAddr) -> bool {
    is_loopback(addr.ip())
}

/// What a listener lets through to its router.
#[derive(Debug, Clone)]
pub enum Gate {
    /// The admin listener: every request needs the token, when there is
    /// one.
    Admin { token: Option<Token> },
    /// The data plane: `/admin/*` is elsewhere; `/v1/*` (ingestion) needs
    /// the ingest token, when there is one.
    Data { ingest_token: Option<Token> },
}

/// The realm of each listener's `WWW-Authenticate` challenge.
const ADMIN_REALM: &str = "abmesh-admin";
const INGEST_REALM: &str = "abmesh-ingest";

impl Gate {
    /// `Some(response)` when the request is answered here (401, or a 404
    /// for `/admin/*` on the data plane); `None` lets it through.
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Option<Response> {
        let mut response = match self {
            Gate::Admin { token } => token.as_ref().and_then(|token| {
                refuse_unless_authenticated(
                    token,
                    headers,
                    ADMIN_REALM,
                    "the admin API",
                    "--admin-token-file",
                )
            }),
            Gate::Data { .. } if is_admin_path(path) => Some(
                ApiError::not_found(format!(
                    "no endpoint {} on the data-plane listener: /admin/* is served on the admin listener (`abmesh serve --admin-listen`, default 127.0.0.1:8001)",
                    clip(path)
                ))
                .into_response(),
            ),
            Gate::Data { .. } if is_model_control_path(path) => Some(
                ApiError::not_found(format!(
                    "no endpoint {} on the data-plane listener: model load and unload (/v2/repository/models/NAME/load|unload) are served on the admin listener (`abmesh serve --admin-listen`, default 127.0.0.1:8001), with its token when it has one",
                    clip(path)
                ))
                .into_response(),
            ),
            Gate::Data {
                ingest_token: Some(token),
            } if is_ingest_path(path) => refuse_unless_authenticated(
                token,
                headers,
                INGEST_REALM,
                "ingestion (/v1/*)",
                "--ingest-token-file",
            ),
            Gate::Data { .. } => None,
        }?;
        // The body was not read, so the connection cannot carry another
        // request after this answer.
        if declares_body(headers) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Some(response)
    }
}

/// The first segment of a path as the router sees it: it skips empty
/// segments (`//v1/events` is routed like `/v1/events`), so this must too,
/// or a doubled slash would walk past the gate.
fn first_segment(path: &str) -> &str {
    path.split('/').find(|s| !s.is_empty()).unwrap_or_default()
}

fn is_admin_path(path: &str) -> bool {
    first_segment(path) == "admin"
}

/// `/v2/repository/models/...` (Triton's model control), read as the
/// router reads paths (empty segments skipped).
fn is_model_control_path(path: &str) -> bool {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    segments.next() == Some("v2")
        && segments.next() == Some("repository")
        && segments.next() == Some("models")
}

fn is_ingest_path(path: &str) -> bool {
    first_segment(path) == "v1"
}

fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Checks `Authorization: Bearer TOKEN`: `None` when it is `token`, else
/// the 401 to send.
fn refuse_unless_authenticated(
    token: &Token,
    headers: &HeaderMap,
    realm: &str,
    what: &str,
    flag: &str,
) -> Option<Response> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (None, _) => {
            let message = format!(
                "{what} needs `Authorization: Bearer TOKEN` (the token of `abmesh serve {flag}`)"
            );
            return Some(unauthorized(message, format!("Bearer realm=\"{realm}\"")));
        }
        // Two credentials: neither is taken.
        (Some(_), Some(_)) => None,
        (Some(v), None) => bearer_token(v.as_bytes()),
    };
    if presented.is_some_and(|t| token.matches(t)) {
        return None;
    }
    let message = format!(
        "{what}: the bearer token is not valid (send one `Authorization: Bearer TOKEN` header with the token of `abmesh serve {flag}`)"
    );
    Some(unauthorized(
        message,
        format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
    ))
}

/// The token of a `Bearer TOKEN` value (the scheme is case-insensitive,
/// RFC 7235), if it is one.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

fn unauthorized(message: String, challenge: String) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Result<Token, TokenError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, text).unwrap();
        Token::from_file("--admin-token-file", &p)
    }

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let t = token("  0123456789abcdef\n").unwrap();
        assert_eq!(t.bearer(), "Bearer 0123456789abcdef");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        for (text, words) in [
            ("", "holds no token"),
            (" \n\t", "holds no token"),
            ("0123456789abcde", "is 15 bytes; it must be at least 16"),
            ("0123456789 abcdef", "visible ASCII"),
        ] {
            let e = token(text).unwrap_err().to_string();
            assert!(e.starts_with("--admin-token-file "), "{e}");
            assert!(e.contains(words), "{e:?} lacks {words:?}");
            if text.trim().len() > 3 {
                assert!(!e.contains(text.trim()), "quotes the token: {e}");
            }
        }
        let e = token(&"k".repeat(4097)).unwrap_err().to_string();
        assert!(e.contains("at most 4096"), "{e}");
        let e = Token::from_file(
            "--ingest-token-file",
            Path::new("/nonexistent/abmesh-token"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--ingest-token-file /nonexistent/abmesh-token: cannot read it"),
            "{e}"
        );
    }

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(listens_on_loopback(a.parse().unwrap()), "{a}");
        }
        for a in ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "[::ffff:10.0.0.1]:1"] {
            assert!(!listens_on_loopback(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn the_admin_gate_needs_the_token_when_there_is_one() {
        let t = token("0123456789abcdef").unwrap();
        let gate = Gate::Admin { token: Some(t) };
        assert!(gate
            .check("/admin/state", &headers(&["Bearer 0123456789abcdef"]))
            .is_none());
        assert!(gate
            .check("/admin/state", &headers(&["bearer   0123456789abcdef "]))
            .is_none());
        for bad in [
            &[][..],
            &["Bearer 0123456789abcdeF"],
            &["Bearer 0123456789abcdef0"],
            &["Bearer 0123456789abcde"],
            &["Basic 0123456789abcdef"],
            &["Bearer"],
            &["Bearer0123456789abcdef"],
            &["Bearer 0123456789abcdef", "Bearer 0123456789abcdef"],
        ] {
            let r = gate.check("/admin/state", &headers(bad)).expect("refused");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            let challenge = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"abmesh-admin\""),
                "{challenge}"
            );
            assert_eq!(
                challenge.contains("invalid_token"),
                !bad.is_empty(),
                "{bad:?}"
            );
        }
        // Every path, known or not: nothing about the API leaks without it.
        assert!(gate.check("/nope", &headers(&[])).is_some());
        // No token: loopback only, open.
        assert!(Gate::Admin { token: None }
            .check("/admin/state", &headers(&[]))
            .is_none());
    }

    #[test]
    fn the_data_gate_sends_admin_away_and_guards_ingestion() {
        let t = token("ingest-0123456789").unwrap();
        for gate in [
            Gate::Data { ingest_token: None },
            Gate::Data {
                ingest_token: Some(t.clone()),
            },
        ] {
            for p in [
                "/admin",
                "/admin/state",
                "/admin/models/x/versions/1/unload",
            ] {
                let r = gate
                    .check(p, &headers(&["Bearer ingest-0123456789"]))
                    .expect("404");
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
            }
            for p in [
                "/v2/repository/models/m/load",
                "//v2/repository//models/m/unload",
                "/v2/repository/models/m/unload/",
            ] {
                let r = gate
                    .check(p, &headers(&["Bearer ingest-0123456789"]))
                    .expect("404");
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
            }
            for p in [
                "/v2/health/ready",
                "/metrics",
                "/administrator",
                "/v2/repository/index",
                "/v2/models/m/stats",
            ] {
                assert!(gate.check(p, &headers(&[])).is_none(), "{p}");
            }
        }
        let gate = Gate::Data {
            ingest_token: Some(t),
        };
        // However the router would read the path.
        for p in [
            "/v1/events",
            "//v1/events",
            "/v1//exposures",
            "/v1/events/",
            "/v1",
        ] {
            let r = gate.check(p, &headers(&[])).expect("401");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{p}");
        }
        for p in ["//admin/state", "/admin//halts"] {
            let r = Gate::Data { ingest_token: None }
                .check(p, &headers(&[]))
                .expect("404");
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
        }
        let r = gate.check("/v1/events", &headers(&[])).expect("401");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"abmesh-ingest\""
        );
        assert!(gate
            .check("/v1/exposures", &headers(&["Bearer ingest-0123456789"]))
            .is_none());
        assert!(Gate::Data { ingest_token: None }
            .check("/v1/events", &headers(&[]))
            .is_none());
    }
}

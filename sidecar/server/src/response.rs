//! Responses and the one error shape every endpoint uses:
//! `{"error": "..."}` with the status that says whose fault it is.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use http_body_util::Full;
use serde::Serialize;

use abmesh_common::quote::{bound_to, clip};

/// The response type of every handler.
pub type Response = http::Response<Full<Bytes>>;

pub const JSON: &str = "application/json";

/// The longest error message a response carries (see [`ApiError::new`]).
pub const MAX_ERROR_BYTES: usize = 4096;
pub const HTML: &str = "text/html; charset=utf-8";

/// A response with a body and content type.
pub fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `200` with a JSON body.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
    json_status(StatusCode::OK, value)
}

/// A JSON body with any status.
pub fn json_status<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, JSON, body),
        Err(e) => ApiError::internal(format!("encoding the response: {e}")).into_response(),
    }
}

/// An error response: the status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Close the connection after the response (the request body was not
    /// read to its end, so the connection cannot carry another request).
    close: bool,
    allow: Option<String>,
    /// `Retry-After` in seconds (a 503 the client may retry).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with a message for the client. Values quoted in it should
    /// be quoted with [`clip`]; as a last resort the message is bounded
    /// here to [`MAX_ERROR_BYTES`] (head and tail kept), so that no error
    /// body grows with the request that caused it.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: bound_to(message.into(), MAX_ERROR_BYTES),
            close: false,
            allow: None,
            retry_after: None,
        }
    }

    /// 400: the request is malformed or does not fit the endpoint.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: what the URL names does not exist (or is not being served).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 503: try again later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 405, with the methods the path does take.
    pub fn method_not_allowed(method: &http::Method, path: &str, allow: Vec<&str>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} does not take {method}; it takes {}",
                clip(path),
                allow.join(", ")
            ),
        );
        e.allow = Some(allow.join(", "));
        e
    }

    /// Asks for the connection to be closed after this response.
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    /// Tells the client to retry after `seconds` (`Retry-After`).
    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: &self.message,
        })
        .unwrap_or_else(|_| br#"{"error":"unprintable error"}"#.to_vec());
        let mut r = with_body(self.status, JSON, body);
        if self.close {
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            r.headers_mut().insert(ALLOW, allow);
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a message quotes, an error body stays small.
    #[test]
    fn error_messages_are_bounded() {
        let e = ApiError::bad_request(format!("bad {}: the end", "v".repeat(10 << 20)));
        assert!(e.message().len() <= MAX_ERROR_BYTES + 64);
        assert!(e.message().starts_with("bad vvv"));
        assert!(e.message().ends_with("vvv: the end"));
        assert_eq!(ApiError::bad_request("short").message(), "short");
        let m = ApiError::method_not_allowed(&http::Method::PUT, &"/p".repeat(5000), vec!["GET"]);
        assert!(m.message().len() < 300, "{}", m.message());
    }
}

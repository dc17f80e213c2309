//! Request bodies, read whole and under a size limit.
//!
//! A body over the limit gets a 413. How the connection survives that
//! matters to clients: a server that answers and closes while the client is
//! still sending makes the client's kernel see a reset, and many clients
//! then report "connection reset" instead of the 413. So a body that is over
//! the limit by a bounded amount ([`DRAIN_FACTOR`] times the limit) is read
//! to its end and discarded, and the connection stays usable; beyond that,
//! or when the client sent `Expect: 100-continue` (it waits for our answer
//! before sending), the 413 goes out at once and the connection is closed.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT};
use http::{HeaderMap, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use super::response::ApiError;

/// The error type bodies are boxed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body, whatever produced it (hyper, or a test).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Over-limit bodies up to this many times the limit are drained.
pub const DRAIN_FACTOR: u64 = 4;

fn too_large(limit: usize, got: Option<u64>) -> ApiError {
    let msg = match got {
        Some(n) => format!("request body of {n} bytes is over the limit of {limit} bytes"),
        None => format!("request body is over the limit of {limit} bytes"),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain_cap = (limit as u64).saturating_mul(DRAIN_FACTOR);
    if let Some(n) = declared {
        let expects_continue = headers.contains_key(EXPECT);
        if n > limit as u64 && (expects_continue || n > drain_cap) {
            return Err(too_large(limit, Some(n)).closing());
        }
    }

    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: u64 = 0;
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if total > limit as u64 {
            over = true;
            first = None;
            rest = None;
            if total > drain_cap {
                return Err(too_large(limit, declared).closing());
            }
            continue;
        }
        match (&mut first, &mut rest) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let cap = declared.map_or(0, |n| n as usize).max(f.len() + data.len());
                let mut buf = BytesMut::with_capacity(cap.min(limit));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                first = None;
                rest = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    if over {
        return Err(too_large(limit, Some(total)));
    }
    Ok(match (first, rest) {
        (Some(f), _) => f,
        (None, Some(buf)) => buf.freeze(),
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that arrives in the given chunks.
    struct Chunks(VecDeque<&'static [u8]>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn body_of(chunks: Vec<&'static [u8]>) -> Body {
        Chunks(chunks.into()).boxed_unsync()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn joins_chunks_under_the_limit() {
        let got = rt()
            .block_on(read_limited(
                body_of(vec![b"ab", b"cd", b"e"]),
                &HeaderMap::new(),
                5,
            ))
            .unwrap();
        assert_eq!(&got[..], b"abcde");
        let one = Full::new(Bytes::from_static(b"xyz"))
            .map_err(|e| match e {})
            .boxed_unsync();
        assert_eq!(
            &rt()
                .block_on(read_limited(one, &HeaderMap::new(), 3))
                .unwrap()[..],
            b"xyz"
        );
    }

    #[test]
    fn refuses_bodies_over_the_limit() {
        let e = rt()
            .block_on(read_limited(
                body_of(vec![b"abc", b"def"]),
                &HeaderMap::new(),
                5,
            ))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            e.message(),
            "request body of 6 bytes is over the limit of 5 bytes"
        );
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "1000".parse().unwrap());
        let e = rt()
            .block_on(read_limited(body_of(vec![b"abc"]), &h, 5))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e
            .into_response()
            .headers()
            .contains_key(http::header::CONNECTION));
    }
}

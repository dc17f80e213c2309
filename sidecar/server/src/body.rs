//! Request bodies, read whole, under a size limit, a deadline and a shared
//! memory budget.
//!
//! # Size
//!
//! A body over the limit gets a 413. How the connection survives that
//! matters to clients: a server that answers and closes while the client is
//! still sending makes the client's kernel see a reset, and many clients
//! then report "connection reset" instead of the 413. So a body that is over
//! the limit by a bounded amount ([`DRAIN_FACTOR`] times the limit) is read
//! to its end and discarded, and the connection stays usable; beyond that,
//! or when the client sent `Expect: 100-continue` (it waits for our answer
//! before sending), the 413 goes out at once and the connection is closed.
//!
//! # Memory follows what arrived
//!
//! The buffer grows from the bytes actually received (doubling, at least
//! [`MIN_BUFFER`], never past the limit, and never past the declared
//! `Content-Length` once that many bytes are on their way): a declared
//! length is a claim, not a reason to reserve memory. 200 connections that
//! each declare 64 MiB and send 2 bytes hold about 200 × 8 KiB, not
//! 200 × 64 MiB.
//!
//! # A deadline for the whole body
//!
//! The body must arrive whole within [`BodyLimits::read_timeout`] of the
//! moment its headers were read (`--body-read-timeout`). A timeout on the
//! gap between chunks only would let a client send one byte every few
//! seconds forever; a total deadline bounds how long any body holds a
//! connection and its buffer. Past it the answer is a 408 and the
//! connection is closed (the rest of the body is not read).
//!
//! # A budget for all bodies together
//!
//! Bytes of bodies being read or still held by their handler are counted
//! across all connections ([`InFlight`]), as they arrive, against
//! [`BodyLimits::max_in_flight`] (`--body-bytes-in-flight`). A chunk that
//! would take the total past it ends that request with a 503 and
//! `Retry-After` (retryable: the budget frees up as other requests end),
//! and closes the connection. The bytes are given back when the last
//! reference to the body's buffer is dropped (a guard travels inside the
//! returned [`Bytes`]), and at once on every error path, so a body that the
//! handler hands on (to the log writer, say) stays counted until it is
//! really freed. Accounting by arrival rather than by declaration means a
//! few clients that declare huge bodies and send nothing cannot exhaust
//! the budget for everyone else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT};
use http::{HeaderMap, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use abmesh_common::metrics::Register;
use tokio::time::Instant;

use crate::response::ApiError;

/// The error type bodies are boxed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What hyper (or a test) produces, boxed.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Over-limit bodies up to this many times the limit are drained.
pub const DRAIN_FACTOR: u64 = 4;

/// The smallest buffer a multi-chunk body starts with.
pub const MIN_BUFFER: usize = 8 << 10;

/// Seconds a client is told to wait (`Retry-After`) when the bodies in
/// flight are at their cap.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// Limits every body read shares (`--body-read-timeout`,
/// `--body-bytes-in-flight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A body must arrive whole within this time of its headers.
    pub read_timeout: Duration,
    /// Most bytes of request bodies held at once, across all connections.
    pub max_in_flight: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            read_timeout: Duration::from_secs(60),
            max_in_flight: 256 << 20,
        }
    }
}

/// Prometheus metrics of body reading (`abmesh_http_body_*`).
#[derive(Clone, Debug, Default)]
struct BodyMetrics {
    in_flight: Gauge,
    timeouts: Counter,
    over_budget: Counter,
}

#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    cap: usize,
    metrics: BodyMetrics,
}

/// The bytes of request bodies held now, across all connections; cheap to
/// clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct InFlight(Arc<Budget>);

impl InFlight {
    fn with_metrics(cap: usize, metrics: BodyMetrics) -> InFlight {
        InFlight(Arc::new(Budget {
            used: AtomicUsize::new(0),
            cap,
            metrics,
        }))
    }

    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> InFlight {
        InFlight::with_metrics(cap, BodyMetrics::default())
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.0.cap
    }

    /// Takes `n` more bytes if they fit under the cap.
    fn take(&self, n: usize) -> bool {
        let cap = self.0.cap;
        let ok = self
            .0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= cap)
            })
            .is_ok();
        if ok {
            self.0.metrics.in_flight.inc_by(n as i64);
        }
        ok
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.0.used.fetch_sub(n, Ordering::AcqRel);
            self.0.metrics.in_flight.dec_by(n as i64);
        }
    }
}

/// What every body of one server shares: its deadline length and its
/// budget. Built once (by the `AppState`); cheap to clone.
#[derive(Clone, Debug)]
pub struct Bodies {
    read_timeout: Duration,
    in_flight: InFlight,
}

impl Bodies {
    /// Bodies under `limits`, with no metrics.
    pub fn new(limits: BodyLimits) -> Bodies {
        Bodies {
            read_timeout: limits.read_timeout,
            in_flight: InFlight::new(limits.max_in_flight),
        }
    }

    /// Bodies under `limits`, with `abmesh_http_body_bytes_in_flight`,
    /// `abmesh_http_body_timeouts_total` and
    /// `abmesh_http_body_over_budget_total` registered in `registry` (give
    /// it an `http` sub-registry).
    pub fn registered(limits: BodyLimits, registry: &mut Registry) -> Bodies {
        let m = BodyMetrics::default();
        Register(registry)
            .metric(
                "body_bytes_in_flight",
                "Bytes of request bodies held now, across all connections",
                &m.in_flight,
            )
            .metric(
                "body_timeouts",
                "Request bodies that did not arrive within --body-read-timeout (408)",
                &m.timeouts,
            )
            .metric(
                "body_over_budget",
                "Request bodies refused because the bodies in flight were at --body-bytes-in-flight (503)",
                &m.over_budget,
            );
        Bodies {
            read_timeout: limits.read_timeout,
            in_flight: InFlight::with_metrics(limits.max_in_flight, m),
        }
    }

    /// The shared budget.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }
}

/// A request body not read yet: what produced it, when it must have
/// arrived, and the budget it counts against.
pub struct Body {
    inner: BoxBody,
    deadline: Option<Instant>,
    timeout: Duration,
    in_flight: Option<InFlight>,
}

impl Body {
    /// A body whose headers were read now, under `bodies`' deadline and
    /// budget.
    pub fn new(inner: BoxBody, bodies: &Bodies) -> Body {
        Body {
            inner,
            deadline: Instant::now().checked_add(bodies.read_timeout),
            timeout: bodies.read_timeout,
            in_flight: Some(bodies.in_flight.clone()),
        }
    }

    /// A body with no deadline and no budget (tests, in-process callers).
    pub fn unbounded(inner: BoxBody) -> Body {
        Body {
            inner,
            deadline: None,
            timeout: Duration::ZERO,
            in_flight: None,
        }
    }
}

/// Bytes counted against the budget, given back when dropped.
struct Reservation {
    in_flight: Option<InFlight>,
    bytes: usize,
}

impl Reservation {
    fn grow(&mut self, n: usize) -> bool {
        match &self.in_flight {
            Some(b) if !b.take(n) => false,
            _ => {
                self.bytes += n;
                true
            }
        }
    }

    fn release(&mut self) {
        if let Some(b) = &self.in_flight {
            b.give_back(self.bytes);
        }
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

/// A body's buffer with its reservation: the owner of the [`Bytes`]
/// returned, so the bytes stay counted until the last clone is dropped.
struct Held<T> {
    data: T,
    _reservation: Reservation,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Held<T> {
    fn as_ref(&self) -> &[u8] {
        self.data.as_ref()
    }
}

fn too_large(limit: usize, got: Option<u64>) -> ApiError {
    let msg = match got {
        Some(n) => format!("request body of {n} bytes is over the limit of {limit} bytes"),
        None => format!("request body is over the limit of {limit} bytes"),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
}

fn timed_out(timeout: Duration, got: u64, declared: Option<u64>) -> ApiError {
    let of = declared.map_or_else(String::new, |n| format!(" of {n}"));
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} s of its headers (received {got}{of} bytes); send it faster, or raise --body-read-timeout",
            timeout.as_secs_f64()
        ),
    )
    .closing()
}

fn over_budget(cap: usize) -> ApiError {
    ApiError::unavailable(format!(
        "the server holds as many request-body bytes as it may ({cap} bytes across all connections, --body-bytes-in-flight); retry in a moment"
    ))
    .closing()
    .retry_after(RETRY_AFTER_SECONDS)
}

/// Appends `data`, growing the buffer from what arrived: doubling, at
/// least [`MIN_BUFFER`], at most `limit`, and at most the declared length
/// when it covers what is needed.
fn append(buf: &mut Vec<u8>, data: &[u8], declared: Option<u64>, limit: usize) {
    let need = buf.len() + data.len();
    if need > buf.capacity() {
        let mut cap = buf.capacity().saturating_mul(2).max(MIN_BUFFER);
        if let Some(d) = declared.and_then(|d| usize::try_from(d).ok()) {
            if d >= need {
                cap = cap.min(d);
            }
        }
        let cap = cap.min(limit).max(need);
        buf.reserve_exact(cap - buf.len());
    }
    buf.extend_from_slice(data);
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

    let Body {
        mut inner,
        deadline,
        timeout,
        in_flight,
    } = body;
    let mut reservation = Reservation {
        in_flight,
        bytes: 0,
    };
    let mut first: Option<Bytes> = None;
    let mut rest: Option<Vec<u8>> = None;
    let mut total: u64 = 0;
    let mut over = false;
    loop {
        let frame = match deadline {
            Some(d) => match tokio::time::timeout_at(d, inner.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    if let Some(b) = &reservation.in_flight {
                        b.0.metrics.timeouts.inc();
                    }
                    return Err(timed_out(timeout, total, declared));
                }
            },
            None => inner.frame().await,
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if total > limit as u64 {
            if !over {
                over = true;
                first = None;
                rest = None;
                reservation.release();
            }
            if total > drain_cap {
                return Err(too_large(limit, declared).closing());
            }
            continue;
        }
        if !reservation.grow(data.len()) {
            if let Some(b) = &reservation.in_flight {
                b.0.metrics.over_budget.inc();
                return Err(over_budget(b.cap()));
            }
        }
        match (&mut first, &mut rest) {
            (None, None) => first = Some(data),
            (Some(f), None) => {
                let mut buf = Vec::new();
                append(&mut buf, f, declared, limit);
                append(&mut buf, &data, declared, limit);
                first = None;
                rest = Some(buf);
            }
            (_, Some(buf)) => append(buf, &data, declared, limit),
        }
    }
    if over {
        return Err(too_large(limit, Some(total)));
    }
    Ok(match (first, rest) {
        (Some(f), _) => Bytes::from_owner(Held {
            data: f,
            _reservation: reservation,
        }),
        (None, Some(buf)) => Bytes::from_owner(Held {
            data: buf,
            _reservation: reservation,
        }),
        (None, None) => Bytes::new(),
    })
}

/// A request body that is streamed to its consumer rather than read whole
/// here (the gRPC listener's: tonic reads the message itself), held to the
/// same rules as [`read_limited`]'s bodies: each data frame counts against
/// the shared budget as it arrives (the bytes are given back when the body
/// is dropped), and the body must have arrived whole within the read
/// timeout of its headers. Either failure ends the body with an error
/// (tonic answers the call with an error status), so a slow or stalled
/// client holds neither memory nor a stream past the deadline.
pub struct Metered<B> {
    inner: B,
    reservation: Reservation,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

/// Why a [`Metered`] body ended early.
#[derive(Debug, thiserror::Error)]
pub enum MeteredError {
    #[error("the request did not arrive within {} s of its headers; send it faster, or raise --body-read-timeout", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the server holds as many request-body bytes as it may ({0} bytes across all connections, --body-bytes-in-flight); retry in a moment")]
    OverBudget(usize),
}

impl<B> Metered<B> {
    /// A body whose headers were read now, under `bodies`' deadline and
    /// budget.
    pub fn new(inner: B, bodies: &Bodies) -> Metered<B> {
        Metered {
            inner,
            reservation: Reservation {
                in_flight: Some(bodies.in_flight.clone()),
                bytes: 0,
            },
            deadline: Some(Box::pin(tokio::time::sleep(bodies.read_timeout))),
            timeout: bodies.read_timeout,
        }
    }
}

impl<B> hyper::body::Body for Metered<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if std::future::Future::poll(deadline.as_mut(), cx).is_ready() {
                this.deadline = None;
                this.reservation.release();
                if let Some(b) = &this.reservation.in_flight {
                    b.0.metrics.timeouts.inc();
                }
                return Poll::Ready(Some(Err(MeteredError::Timeout(this.timeout).into())));
            }
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                if !this.reservation.grow(n) {
                    this.reservation.release();
                    let cap = this.reservation.in_flight.as_ref().map_or(0, |b| {
                        b.0.metrics.over_budget.inc();
                        b.cap()
                    });
                    return Poll::Ready(Some(Err(MeteredError::OverBudget(cap).into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                // Arrived whole: the deadline no longer applies.
                this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Frame;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that arrives in the given chunks, then (optionally) never
    /// ends or fails.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        end: End,
    }

    #[derive(Clone, Copy)]
    enum End {
        Done,
        Stall,
        Fail,
    }

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.chunks.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(c))))),
                None => match self.end {
                    End::Done => Poll::Ready(None),
                    End::Stall => Poll::Pending,
                    End::Fail => Poll::Ready(Some(Err("connection reset".into()))),
                },
            }
        }
    }

    fn boxed(chunks: Vec<&[u8]>, end: End) -> BoxBody {
        Chunks {
            chunks: chunks.into_iter().map(<[u8]>::to_vec).collect(),
            end,
        }
        .boxed_unsync()
    }

    fn body_of(chunks: Vec<&[u8]>) -> Body {
        Body::unbounded(boxed(chunks, End::Done))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn bodies(timeout_s: u64, cap: usize) -> Bodies {
        Bodies::new(BodyLimits {
            read_timeout: Duration::from_secs(timeout_s),
            max_in_flight: cap,
        })
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
                .block_on(read_limited(Body::unbounded(one), &HeaderMap::new(), 3))
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

    #[test]
    fn the_buffer_grows_from_what_arrived_not_from_the_declared_length() {
        let limit = 64 << 20;
        let declared = Some(64u64 << 20);
        let mut buf = Vec::new();
        append(&mut buf, b"a", declared, limit);
        append(&mut buf, b"b", declared, limit);
        assert_eq!(buf.capacity(), MIN_BUFFER, "2 bytes of a declared 64 MiB");
        let chunk = vec![0u8; 9000];
        append(&mut buf, &chunk, declared, limit);
        assert_eq!(buf.capacity(), 2 * MIN_BUFFER, "doubles");
        // Never beyond the declared length once it covers what is needed,
        // nor beyond the limit.
        let mut b = Vec::new();
        append(&mut b, &[0; 5000], Some(6000), limit);
        append(&mut b, &[0; 1000], Some(6000), limit);
        assert_eq!(b.capacity(), 6000);
        let mut c = Vec::new();
        append(&mut c, &[0; 3000], None, 4000);
        assert_eq!(c.capacity(), 4000);
        // A declared length that is too small does not stop the growth
        // (the limit does, later).
        let mut d = Vec::new();
        append(&mut d, &[0; 100], Some(10), limit);
        assert_eq!(d.len(), 100);
    }

    #[test]
    fn the_whole_body_must_arrive_before_the_deadline() {
        let rt = rt();
        let b = bodies(60, 1 << 20);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "100".parse().unwrap());
        let e = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"ab", b"c"], End::Stall), &b),
                &h,
                1000,
            ))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(
            e.message()
                .starts_with("the request body did not arrive within 60 s of its headers (received 3 of 100 bytes)"),
            "{}",
            e.message()
        );
        let resp = e.into_response();
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(b.in_flight().used(), 0, "a timeout gives the bytes back");
    }

    /// A client sending a byte every 7 s would never be stopped by a
    /// timeout on the gaps; the deadline is for the whole body.
    struct Trickle {
        left: usize,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl hyper::body::Body for Trickle {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let this = &mut *self;
            let s = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_secs(7))));
            match s.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.sleep = None;
                    self.left -= 1;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b" ")))))
                }
            }
        }
    }

    #[test]
    fn a_trickle_is_stopped_by_the_total_deadline() {
        let rt = rt();
        let b = bodies(60, 1 << 20);
        let started = rt.block_on(async { Instant::now() });
        let e = rt
            .block_on(read_limited(
                Body::new(
                    Trickle {
                        left: 1000,
                        sleep: None,
                    }
                    .boxed_unsync(),
                    &b,
                ),
                &HeaderMap::new(),
                1 << 20,
            ))
            .unwrap_err();
        let took = rt.block_on(async { Instant::now() }) - started;
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(
            e.message().contains("(received 8 bytes)"),
            "{}",
            e.message()
        );
        assert!(took >= Duration::from_secs(60) && took < Duration::from_secs(61));
    }

    #[test]
    fn bytes_in_flight_are_counted_until_the_last_clone_is_dropped() {
        let rt = rt();
        let b = bodies(60, 10);
        let one = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"abc", b"def"], End::Done), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap();
        assert_eq!(b.in_flight().used(), 6);
        let single = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"xyz"], End::Done), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap();
        assert_eq!(b.in_flight().used(), 9);
        let part = one.slice(1..3);
        drop(one);
        assert_eq!(b.in_flight().used(), 9, "a slice keeps the buffer");
        drop(part);
        assert_eq!(b.in_flight().used(), 3);
        drop(single);
        assert_eq!(b.in_flight().used(), 0);
    }

    #[test]
    fn a_body_past_the_budget_gets_a_retryable_503_and_gives_back_what_it_held() {
        let rt = rt();
        let b = bodies(60, 10);
        let held = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"123456"], End::Done), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap();
        let e = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"ab", b"cd", b"ef"], End::Done), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message().contains("--body-bytes-in-flight"),
            "{}",
            e.message()
        );
        let resp = e.into_response();
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(
            b.in_flight().used(),
            6,
            "the refused body's 4 bytes came back"
        );
        drop(held);
        assert_eq!(b.in_flight().used(), 0);
        // The budget is free again.
        let ok = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"0123456789"], End::Done), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap();
        assert_eq!(ok.len(), 10);
    }

    #[test]
    fn errors_and_oversized_bodies_give_their_bytes_back() {
        let rt = rt();
        let b = bodies(60, 1000);
        let e = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"abc", b"def"], End::Fail), &b),
                &HeaderMap::new(),
                100,
            ))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("connection reset"), "{}", e.message());
        assert_eq!(b.in_flight().used(), 0);
        // Over the limit but drained: nothing is kept while draining.
        let e = rt
            .block_on(read_limited(
                Body::new(boxed(vec![b"abcd", b"efgh", b"ijkl"], End::Done), &b),
                &HeaderMap::new(),
                5,
            ))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(b.in_flight().used(), 0);
        // A read abandoned half way (the handler's future dropped).
        let headers = HeaderMap::new();
        let fut = read_limited(
            Body::new(boxed(vec![b"abc"], End::Stall), &b),
            &headers,
            100,
        );
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
        });
        assert_eq!(b.in_flight().used(), 0);
    }

    /// Streamed (gRPC) bodies: counted as they arrive and given back when
    /// dropped; over the budget or past the deadline they end with an
    /// error.
    #[test]
    fn metered_bodies_follow_the_budget_and_the_deadline() {
        let rt = rt();
        let b = bodies(60, 8);
        rt.block_on(async {
            let mut m = Metered::new(
                Chunks {
                    chunks: vec![b"abc".to_vec(), b"de".to_vec()].into(),
                    end: End::Done,
                },
                &b,
            );
            let f = m.frame().await.unwrap().unwrap();
            assert_eq!(f.data_ref().map(Bytes::len), Some(3));
            assert_eq!(b.in_flight().used(), 3);
            m.frame().await.unwrap().unwrap();
            assert_eq!(b.in_flight().used(), 5);
            assert!(m.frame().await.is_none());
            drop(m);
            assert_eq!(
                b.in_flight().used(),
                0,
                "dropping the body gives the bytes back"
            );

            let mut m = Metered::new(
                Chunks {
                    chunks: vec![b"abcdef".to_vec(), b"ghi".to_vec()].into(),
                    end: End::Done,
                },
                &b,
            );
            m.frame().await.unwrap().unwrap();
            let e = m.frame().await.unwrap().unwrap_err().to_string();
            assert!(e.contains("--body-bytes-in-flight"), "{e}");
            assert_eq!(b.in_flight().used(), 0);

            let started = Instant::now();
            let mut m = Metered::new(
                Trickle {
                    left: 1000,
                    sleep: None,
                },
                &b,
            );
            let e = loop {
                match m.frame().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => panic!("a trickle of 1000 s arrived within 60 s"),
                }
            };
            assert!(e.contains("did not arrive within 60 s"), "{e}");
            assert!(Instant::now() - started <= Duration::from_secs(61));
            assert_eq!(b.in_flight().used(), 0);
        });
    }
}

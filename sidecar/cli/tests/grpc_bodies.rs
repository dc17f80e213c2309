//! The gRPC listener (`--grpc-listen`) holds request bodies to the HTTP
//! listeners' rules (issue 9, item 2): a client that sends the start of a
//! message and then stalls gets an error status once `--body-read-timeout`
//! has passed, its bytes are given back, and the server serves on.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use abmesh_testkit::serve::Server;

/// A request body that sends `first` and then never ends.
struct Stall {
    first: Option<Bytes>,
}

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A metric's value in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn a_stalled_grpc_request_is_cut_at_the_body_read_timeout() {
    let grpc = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&["--grpc-listen", &grpc, "--body-read-timeout", "1"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (status, message) = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&grpc).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // A gRPC frame header announcing a 1 MiB message, then 3 bytes of it.
        let mut first = vec![0u8, 0, 0x10, 0, 0];
        first.extend_from_slice(b"\x0a\x01m");
        let req = http::Request::post(format!(
            "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Stall {
            first: Some(Bytes::from(first)),
        })
        .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), async {
            let resp = sender.send_request(req).await.unwrap();
            let headers = resp.headers().clone();
            let trailers = resp
                .into_body()
                .collect()
                .await
                .ok()
                .and_then(|c| c.trailers().cloned());
            (headers, trailers)
        })
        .await
        .expect("an answer before 20 s");
        let field = |name: &str| {
            resp.0
                .get(name)
                .or_else(|| resp.1.as_ref().and_then(|t| t.get(name)))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (field("grpc-status"), field("grpc-message"))
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        status.as_deref().is_some_and(|s| s != "0"),
        "{status:?} {message:?}"
    );
    let message = message.unwrap_or_default().replace("%20", " ");
    assert!(message.contains("did not arrive within 1 s"), "{message}");
    let metrics = server.get("/metrics").text();
    assert_eq!(metric(&metrics, "abmesh_http_body_bytes_in_flight"), 0.0);
    assert!(metric(&metrics, "abmesh_http_body_timeouts_total") >= 1.0);
    assert_eq!(server.get("/v2/health/live").status, 200);
}

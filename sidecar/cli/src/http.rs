//! The one HTTP request of the CLI: `abmesh report --url` asks a running
//! sidecar's admin listener for a report (hyper's client, one GET, plain
//! `http://`: the admin listener is local or behind the mesh).

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// What the request ran into before a response came.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?}: only http://HOST:PORT URLs are supported")]
    Url(String),
    #[error("invalid request path {0:?}")]
    Path(String),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A response, whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// `GET {base}{path}`, with `authorization: {bearer}` when given.
pub fn get(base: &str, path: &str, bearer: Option<&str>) -> Result<Response, HttpError> {
    let uri: Uri = base.parse().map_err(|_| HttpError::Url(base.to_owned()))?;
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => match a.port_u16() {
            Some(_) => a.as_str().to_owned(),
            None => format!("{}:80", a.host()),
        },
        _ => return Err(HttpError::Url(base.to_owned())),
    };
    let mut req = Request::get(path).header(HOST, authority.as_str());
    if let Some(b) = bearer {
        req = req.header(AUTHORIZATION, b);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|_| HttpError::Path(path.to_owned()))?;
    let timeout = Duration::from_secs(120);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?;
    rt.block_on(async {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|source| HttpError::Connect {
                    authority: authority.clone(),
                    source,
                })?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    })
}

//! The replicated log: a NATS JetStream stream that every sidecar replica
//! appends to and consumes in order (`abmesh serve --log nats://...`).
//!
//! # Why JetStream
//!
//! Replicas of the sidecar must agree on one order of requests (exposure
//! batches, outcome events, learned configurations, halts and lifts,
//! merges): the state is a deterministic function of that order, so with
//! one order every replica holds the same state, decides the same
//! guardrail halts at the same position and answers the same reports.
//! JetStream is a replicated log with exactly those properties (a RAFT
//! group per stream, a publish acknowledged once a quorum of the stream's
//! replicas stored it, consumers that read it in order), run by a server
//! users already operate, so abmesh does not grow a consensus protocol of
//! its own.
//!
//! # A write
//!
//! A request's validated body is published to the stream's subject as one
//! message: a 13-byte frame ([`FRAME_MAGIC`], the record kind, the receive
//! time) then the body, with a `Nats-Msg-Id` of this process's random
//! replica id and a counter. The request waits first for JetStream's
//! publish acknowledgment (the stream's quorum stored it), then for this
//! replica's own consumer to apply it: the answer is what applying it
//! returned, so a report read after a 200 includes the record (read your
//! own writes). An attempt that gets no acknowledgment is retried with the
//! same message id until the write timeout, so a message stored but not
//! acknowledged is not stored twice (JetStream drops duplicates of an id
//! within the stream's duplicate window); after the timeout the request
//! gets [`StoreError::Unavailable`] (a 503), e.g. when two of three
//! servers are down and the stream has no quorum.
//!
//! # Applying
//!
//! Every replica consumes the whole stream with an ordered consumer and
//! hands each message, with its stream sequence as the LSN, to the same
//! applier thread the file log uses. Records this process appended carry
//! their request's reply; the others are applied without one (and are
//! not `local`, so side effects such as webhook notices happen once, on
//! the replica that took the request).
//!
//! # Snapshots and catch-up
//!
//! Snapshots are local files in the data directory, as with the file log,
//! named by the stream sequence they cover; a restart loads the newest and
//! consumes the stream from the next sequence. Every snapshot is also put
//! in the JetStream object store bucket `<STREAM>_snapshots` (the newest
//! two are kept), so a replica that starts with an empty data directory
//! starts from the newest snapshot there instead of the stream's first
//! message. A new replica's catch-up therefore reads at most one snapshot
//! interval of the stream (`--snapshot-every`) plus one snapshot, and the
//! stream's retention (`max_age`, `max_bytes` in the log URL) may discard
//! what every snapshot covers. A replica whose newest snapshot is older
//! than the stream's first message refuses to start (records are gone).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, object_store, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::{Mutex, MutexGuard};
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::io::AsyncReadExt;

use super::{
    io_err, read_snapshot_bytes, snapshot_file_bytes, Applier, ApplierTx, Backend, Item, Recovery,
    Reply, Shared, SidecarId, StateMachine, Store, StoreError, StoreMetrics, StoreOptions,
    APPLIER_QUEUE,
};

/// First bytes of every message abmesh publishes, and its version.
pub const FRAME_MAGIC: &[u8; 4] = b"ABR1";
/// Bytes before the record's payload: magic, kind (u8), receive time
/// (i64 LE, Unix ms).
pub const FRAME_HEADER: usize = 13;
/// Room left in a message for its subject and headers.
const MESSAGE_OVERHEAD: usize = 512;
/// Most messages in one atomic batch (the server's limit).
const MAX_PARTS: usize = 1000;
/// Header naming a part of a record split over several messages: `i/n`.
const PART_HEADER: &str = "Abmesh-Part";
/// How long startup retries creating or opening the stream while the
/// NATS cluster cannot answer yet.
const STREAM_SETUP_PATIENCE: Duration = Duration::from_secs(30);
/// How long one pull request of the stream consumer waits (see
/// `consume`): bounds how fast a dead NATS node is noticed.
const CONSUMER_EXPIRES: Duration = Duration::from_secs(2);
/// Snapshots kept in the object store.
const KEEP_SNAPSHOTS: usize = 2;

/// Where the log is: `nats://HOST:PORT[,HOST:PORT...]/STREAM[?OPTIONS]`.
///
/// Options: `replicas=N` (stream replicas when it is created, 1 to 5,
/// default 3), `max_age=DURATION` (`30d`, `12h`, `90m`, `3600s`; default:
/// keep everything), `max_bytes=SIZE` (`64GiB`; default: no limit). The
/// scheme `tls://` requires TLS (see [`NatsAuth`] for certificates).
#[derive(Clone, PartialEq, Eq)]
pub struct LogUrl {
    pub servers: Vec<String>,
    pub stream: String,
    pub replicas: usize,
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub tls: bool,
}

impl fmt::Debug for LogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for LogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(
            f,
            "{scheme}://{}/{}?replicas={}",
            self.servers.join(","),
            self.stream,
            self.replicas
        )
    }
}

/// Why a `--log` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogUrlError {
    #[error("expected nats://HOST:PORT[,HOST:PORT...]/STREAM[?replicas=N], got {0:?}")]
    Shape(String),
    #[error("unsupported scheme {0:?}: use nats:// or tls://")]
    Scheme(String),
    #[error("server {0:?}: expected HOST:PORT")]
    Server(String),
    #[error("stream name {0:?}: 1 to 64 of A-Z a-z 0-9 _ -")]
    Stream(String),
    #[error("{key}={value:?}: {why}")]
    Option {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("credentials in the URL are not sent by the NATS client: use --nats-user, --nats-password-file, --nats-token-file or --nats-creds")]
    Credentials,
}

impl FromStr for LogUrl {
    type Err = LogUrlError;

    fn from_str(s: &str) -> Result<LogUrl, LogUrlError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| LogUrlError::Shape(s.to_owned()))?;
        let tls = match scheme {
            "nats" => false,
            "tls" => true,
            other => return Err(LogUrlError::Scheme(other.to_owned())),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or_else(|| LogUrlError::Shape(s.to_owned()))?;
        if hosts.contains('@') {
            return Err(LogUrlError::Credentials);
        }
        let servers = hosts
            .split(',')
            .map(|h| {
                let h = h.trim();
                let (host, port) = h
                    .rsplit_once(':')
                    .ok_or_else(|| LogUrlError::Server(h.to_owned()))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(LogUrlError::Server(h.to_owned()));
                }
                Ok(format!("{scheme}://{h}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (stream, query) = path.split_once('?').unwrap_or((path, ""));
        let valid = !stream.is_empty()
            && stream.len() <= 64
            && stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(LogUrlError::Stream(stream.to_owned()));
        }
        let mut url = LogUrl {
            servers,
            stream: stream.to_owned(),
            replicas: 3,
            max_age: None,
            max_bytes: None,
            tls,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why| LogUrlError::Option {
                key: key.to_owned(),
                value: value.to_owned(),
                why,
            };
            match key {
                "replicas" => {
                    url.replicas = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=5).contains(n))
                        .ok_or_else(|| bad("a number of replicas from 1 to 5"))?;
                }
                "max_age" => {
                    url.max_age = Some(
                        parse_duration(value)
                            .ok_or_else(|| bad("a duration such as 30d, 12h, 90m or 3600s"))?,
                    );
                }
                "max_bytes" => {
                    url.max_bytes = Some(
                        parse_bytes(value)
                            .ok_or_else(|| bad("a size such as 64GiB, 512MiB or 1000000"))?,
                    );
                }
                _ => return Err(bad("unknown option (replicas, max_age, max_bytes)")),
            }
        }
        Ok(url)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn parse_bytes(s: &str) -> Option<u64> {
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..i].parse().ok()?;
    let mult: u64 = match &s[i..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

/// How the sidecar authenticates to NATS and checks its servers. Secrets
/// are read from files by the CLI and never printed.
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// A `.creds` file (JWT + nkey seed), as `nsc` writes them.
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// Root certificates (PEM) that sign the servers' certificates.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .finish()
    }
}

/// Settings of the replicated log.
#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    pub url: LogUrl,
    pub auth: NatsAuth,
    /// How long one write may take to be acknowledged by the stream,
    /// retries included, before its request gets a 503.
    pub write_timeout: Duration,
    /// How long a request waits, after the acknowledgment, for this
    /// replica to apply its record.
    pub apply_timeout: Duration,
}

impl JetStreamOptions {
    pub fn new(url: LogUrl) -> JetStreamOptions {
        JetStreamOptions {
            url,
            auth: NatsAuth::default(),
            write_timeout: Duration::from_secs(10),
            apply_timeout: Duration::from_secs(30),
        }
    }
}

/// The writing side of the replicated log, shared by every handle of a
/// [`Store`].
pub(super) struct Writer<S: StateMachine> {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// Random id of this process: the prefix of its message ids.
    replica: String,
    next: AtomicU64,
    /// Requests waiting for their record, by message counter.
    pending: Mutex<HashMap<u64, Reply<S::Output>>>,
    options: JetStreamOptions,
    /// Largest message the servers take.
    max_message: usize,
    metrics: StoreMetrics,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Appends the frame of a record and its payload to `out`.
pub fn encode_frame(kind: u8, received_ms: i64, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME_HEADER + payload.len());
    b.put_slice(FRAME_MAGIC);
    b.put_u8(kind);
    b.put_i64_le(received_ms);
    b.put_slice(payload);
    b.freeze()
}

/// Reads a message abmesh published: (kind, receive time, payload).
pub fn decode_frame(message: &Bytes) -> Result<(u8, i64, Bytes), String> {
    if message.len() < FRAME_HEADER || &message[..4] != FRAME_MAGIC {
        return Err("not an abmesh record (no ABR1 frame)".into());
    }
    let kind = message[4];
    let mut t = [0u8; 8];
    t.copy_from_slice(&message[5..13]);
    Ok((kind, i64::from_le_bytes(t), message.slice(FRAME_HEADER..)))
}

fn random_u128() -> Result<u128, StoreError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| StoreError::Setup(format!("random id: {e}")))?;
    Ok(u128::from_le_bytes(b))
}

/// The id of the state a stream holds, the same on every replica: a hash
/// of the stream's name and creation time (a stream deleted and created
/// again is another state).
fn stream_id(name: &str, created: &str) -> SidecarId {
    let mut h = SipHasher13::new_with_keys(0x6162_6d65_7368_2d6a, 0x6574_7374_7265_616d);
    std::hash::Hasher::write(&mut h, name.as_bytes());
    std::hash::Hasher::write(&mut h, &[0xff]);
    std::hash::Hasher::write(&mut h, created.as_bytes());
    SidecarId(h.finish128().as_u128())
}

/// The file in a replica's data directory naming the stream its snapshots
/// come from.
const STREAM_ID_FILE: &str = "stream-id";

async fn connect(options: &JetStreamOptions) -> Result<async_nats::Client, StoreError> {
    let setup = |what: &str, e: &dyn fmt::Display| StoreError::Setup(format!("{what}: {e}"));
    let addrs: Vec<async_nats::ServerAddr> = options
        .url
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| setup("NATS server address", &e))?;
    let a = &options.auth;
    let mut o = async_nats::ConnectOptions::new()
        .name("abmesh-sidecar")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(2)))
        .ping_interval(Duration::from_secs(10))
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            tracing::info!(%event, "NATS connection");
        });
    if let Some(f) = &a.creds_file {
        o = o
            .credentials_file(f)
            .await
            .map_err(|e| setup(&format!("--nats-creds {}", f.display()), &e))?;
    }
    if let (Some(u), Some(p)) = (&a.user, &a.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &a.token {
        o = o.token(t.clone());
    }
    if let Some(seed) = &a.nkey_seed {
        o = o.nkey(seed.clone());
    }
    if let Some(ca) = &a.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &a.tls_cert {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    if options.url.tls || a.tls_ca.is_some() || a.tls_cert.is_some() {
        o = o.require_tls(true);
    }
    let client = o.connect(addrs).await.map_err(|e| {
        setup(
            &format!("connecting to NATS at {}", options.url.servers.join(",")),
            &e,
        )
    })?;
    // With retry_on_initial_connect, connect() returns before the
    // connection is up; a flush waits for it (and fails on bad credentials).
    tokio::time::timeout(Duration::from_secs(30), client.flush())
        .await
        .map_err(|_| {
            StoreError::Setup(format!(
                "no NATS server of {} answered within 30 s",
                options.url.servers.join(",")
            ))
        })?
        .map_err(|e| setup("connecting to NATS", &e))?;
    Ok(client)
}

fn stream_config(url: &LogUrl, subject: &str) -> stream::Config {
    stream::Config {
        name: url.stream.clone(),
        description: Some(
            "abmesh sidecar log (requests in the order every replica applies them)".into(),
        ),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: url.replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: url.max_age.unwrap_or_default(),
        max_bytes: url.max_bytes.map_or(-1, |b| b as i64),
        max_messages: -1,
        max_message_size: -1,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        // Records larger than one message are published as an atomic batch
        // of parts (NATS 2.12+): all parts are stored, contiguously, or none.
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// A snapshot found at startup: where, which sequence, the state.
struct Found {
    lsn: u64,
    payload: Vec<u8>,
    from: String,
}

/// The newest local snapshot that checks out.
fn newest_local(dir: &Path) -> Result<Option<Found>, StoreError> {
    for (_, path) in super::numbered(dir, "snapshot-", ".bin")?.into_iter().rev() {
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|d| read_snapshot_bytes(&d).map_err(|e| e.to_string()))
        {
            Ok((lsn, payload)) => {
                return Ok(Some(Found {
                    lsn,
                    payload,
                    from: path.display().to_string(),
                }))
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping a snapshot that does not check out")
            }
        }
    }
    Ok(None)
}

/// The newest snapshot of the object store `bucket_name` that checks out.
async fn newest_shared(bucket: &object_store::ObjectStore, bucket_name: &str) -> Option<Found> {
    let mut names = Vec::new();
    match bucket.list().await {
        Ok(mut list) => {
            while let Some(Ok(info)) = list.next().await {
                if let Some(lsn) = snapshot_lsn(&info.name) {
                    names.push((lsn, info.name));
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing the shared snapshots failed; catching up from the stream");
            return None;
        }
    }
    names.sort();
    for (_, name) in names.into_iter().rev() {
        let mut data = Vec::new();
        let read = async {
            let mut object = bucket.get(&name).await.map_err(|e| e.to_string())?;
            object
                .read_to_end(&mut data)
                .await
                .map_err(|e| e.to_string())
        };
        match read
            .await
            .and_then(|_| read_snapshot_bytes(&data).map_err(|e| e.to_string()))
        {
            Ok((lsn, payload)) => {
                return Some(Found {
                    lsn,
                    payload,
                    from: format!("object store {bucket_name}/{name}"),
                })
            }
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "skipping a shared snapshot that does not check out")
            }
        }
    }
    None
}

fn snapshot_name(lsn: u64) -> String {
    format!("snapshot-{lsn:020}")
}

fn snapshot_lsn(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?.parse().ok()
}

/// Puts every snapshot the applier writes into the object store, newest
/// first when several wait, and keeps the newest [`KEEP_SNAPSHOTS`].
async fn upload_snapshots(
    bucket: object_store::ObjectStore,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
) {
    while let Some(mut next) = rx.recv().await {
        while let Ok(newer) = rx.try_recv() {
            next = newer;
        }
        let (lsn, bytes) = next;
        let name = snapshot_name(lsn);
        let t = Instant::now();
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(960 << 10),
            ..Default::default()
        };
        match bucket.put(meta, &mut bytes.as_slice()).await {
            Ok(_) => {
                tracing::info!(object = %name, bytes = bytes.len(), ms = t.elapsed().as_millis() as u64, "snapshot shared in the object store");
            }
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "sharing a snapshot failed; new replicas catch up from an older one or the stream");
                continue;
            }
        }
        let mut names = Vec::new();
        if let Ok(mut list) = bucket.list().await {
            while let Some(Ok(info)) = list.next().await {
                if let Some(l) = snapshot_lsn(&info.name) {
                    names.push((l, info.name));
                }
            }
        }
        names.sort();
        let old = names.len().saturating_sub(KEEP_SNAPSHOTS);
        for (_, n) in &names[..old] {
            let _ = bucket.delete(n).await;
        }
    }
}

/// Opens the replicated log (see the module docs): connects, creates the
/// stream if missing, restores the newest snapshot (local or shared),
/// starts consuming, and returns once this replica has applied everything
/// the stream held when it opened.
pub(super) async fn open<S: StateMachine, E: std::error::Error>(
    dir: &Path,
    options: StoreOptions,
    js_options: JetStreamOptions,
    metrics: StoreMetrics,
    restore: impl FnOnce(Option<&[u8]>) -> Result<S, E>,
) -> Result<(Store<S>, Recovery), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let lock = super::lock_dir(dir)?;
    if !super::numbered(dir, "log-", ".seg")?.is_empty() {
        return Err(StoreError::Setup(format!(
            "{} holds an embedded file log (log-*.seg): with --log the data directory holds only this replica's snapshots; give another --data-dir",
            dir.display()
        )));
    }
    let temp_files = super::remove_temp_files(dir)?;
    let url = &js_options.url;
    let client = connect(&js_options).await?;
    let max_message = client.server_info().max_payload;
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let subject = format!("abmesh.{}.log", url.stream);
    let setup = |what: String, e: &dyn fmt::Display| StoreError::Setup(format!("{what}: {e}"));
    // A cluster that has just started (or is electing a meta leader) may
    // time out the first requests: retry them for a while before giving up.
    let started = Instant::now();
    let mut stream = loop {
        match js.get_or_create_stream(stream_config(url, &subject)).await {
            Ok(stream) => break stream,
            Err(e) if started.elapsed() < STREAM_SETUP_PATIENCE => {
                tracing::warn!(error = %e, stream = %url.stream, "opening the JetStream stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(setup(
                    format!("opening the JetStream stream {}", url.stream),
                    &e,
                ));
            }
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| setup(format!("reading the JetStream stream {}", url.stream), &e))?
        .clone();
    if !info.config.subjects.iter().any(|s| s == &subject) {
        return Err(StoreError::Setup(format!(
            "the JetStream stream {} exists but does not take {subject} (its subjects: {:?}): is it another application's stream?",
            url.stream, info.config.subjects
        )));
    }
    if !info.config.allow_atomic_publish {
        let mut config = info.config.clone();
        config.allow_atomic_publish = true;
        if let Err(e) = js.update_stream(config).await {
            tracing::warn!(stream = %url.stream, error = %e, "could not allow atomic batches on the stream: records larger than one NATS message will be refused (413)");
        }
    }
    if info.config.num_replicas != url.replicas {
        tracing::warn!(
            stream = %url.stream,
            has = info.config.num_replicas,
            asked = url.replicas,
            "the stream exists with another number of replicas; keeping it (change it with the nats CLI)"
        );
    }
    let id = stream_id(&url.stream, &info.created.to_string());
    let first_seq = info.state.first_sequence;
    let last_seq = info.state.last_sequence;
    let bucket_name = format!("{}_snapshots", url.stream);
    let bucket = match js.get_object_store(&bucket_name).await {
        Ok(b) => Some(b),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket_name.clone(),
                description: Some("abmesh sidecar snapshots of the stream's state".into()),
                num_replicas: url.replicas.min(info.config.num_replicas.max(1)),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                tracing::warn!(bucket = %bucket_name, error = %e, "no object store for shared snapshots; new replicas catch up from the stream alone");
            })
            .ok(),
    };

    // This replica's snapshots are of this stream only.
    let id_file = dir.join(STREAM_ID_FILE);
    let known = std::fs::read_to_string(&id_file).ok();
    if known.as_deref().map(str::trim) != Some(&id.to_string()) {
        if known.is_some() {
            tracing::warn!(dir = %dir.display(), "the data directory's snapshots are of another stream (deleted and created again?): ignoring them");
        }
        for (_, p) in super::numbered(dir, "snapshot-", ".bin")? {
            let _ = std::fs::remove_file(p);
        }
        let tmp = dir.join(format!("{STREAM_ID_FILE}.tmp"));
        std::fs::write(&tmp, format!("{id}\n"))
            .and_then(|()| std::fs::rename(&tmp, &id_file))
            .map_err(|e| io_err(&id_file, e))?;
    }
    let local = newest_local(dir)?;
    let shared = match &bucket {
        Some(b) => newest_shared(b, &bucket_name).await,
        None => None,
    };
    let found = match (local, shared) {
        (Some(l), Some(s)) if s.lsn > l.lsn => Some(s),
        (Some(l), _) => Some(l),
        (None, s) => s,
    };
    let snapshot_lsn = found.as_ref().map_or(0, |f| f.lsn);
    if snapshot_lsn > last_seq {
        return Err(StoreError::Setup(format!(
            "the newest snapshot ({}) covers sequence {snapshot_lsn}, but the stream {} ends at {last_seq}: the stream lost acknowledged records, or is not the one the snapshot came from",
            found.as_ref().map_or("", |f| f.from.as_str()),
            url.stream
        )));
    }
    if first_seq > snapshot_lsn + 1 && last_seq >= first_seq {
        return Err(StoreError::Setup(format!(
            "the stream {} starts at sequence {first_seq} (its retention discarded the records before), and no snapshot covers them (newest: {snapshot_lsn}); start this replica with the data directory of another one, or restore a snapshot into the object store",
            url.stream
        )));
    }
    let state = match &found {
        Some(f) => {
            tracing::info!(from = %f.from, lsn = f.lsn, "restoring the newest snapshot");
            restore(Some(&f.payload)).map_err(|e| StoreError::Restore {
                file: PathBuf::from(&f.from),
                message: e.to_string(),
            })?
        }
        None => restore(None).map_err(|e| StoreError::Restore {
            file: dir.to_owned(),
            message: e.to_string(),
        })?,
    };

    let shared_state = Arc::new(Shared {
        dir: dir.to_owned(),
        id,
        failed: std::sync::OnceLock::new(),
        segments: Mutex::new(Vec::new()),
        options,
        metrics: metrics.clone(),
        lock: Mutex::new(Some(lock)),
    });
    let (atx, arx) = tokio::sync::mpsc::channel::<Vec<Item<S>>>(APPLIER_QUEUE);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(snapshot_lsn);
    let mut applier = Applier::new(shared_state.clone(), state, snapshot_lsn, false);
    applier.progress = Some(progress_tx);
    let (upload_tx, upload_rx) = tokio::sync::mpsc::unbounded_channel();
    if bucket.is_some() {
        applier.on_snapshot = Some(Box::new(move |lsn, payload| {
            let _ = upload_tx.send((lsn, snapshot_file_bytes(lsn, payload)));
        }));
    }
    let applier_thread = applier.spawn(arx)?;

    let writer = Arc::new(Writer {
        js,
        stream: url.stream.clone(),
        subject,
        replica: format!("{:032x}", random_u128()?),
        next: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        options: js_options.clone(),
        max_message: max_message.max(1 << 16),
        metrics,
        tasks: Mutex::new(Vec::new()),
    });
    let consumer_task = tokio::spawn(writer.clone().consume(
        stream.clone(),
        snapshot_lsn + 1,
        atx.clone(),
    ));
    let mut tasks = vec![consumer_task];
    if let Some(b) = bucket {
        tasks.push(tokio::spawn(upload_snapshots(b, upload_rx)));
    }
    writer.tasks.lock().extend(tasks);

    // Catch up with what the stream held when we opened it.
    let t = Instant::now();
    let mut last_log = Instant::now();
    while *progress.borrow_and_update() < last_seq {
        match tokio::time::timeout(Duration::from_secs(5), progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => {}
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                applied = *progress.borrow(),
                of = last_seq,
                "catching up with the stream"
            );
        }
    }
    let replayed = last_seq.saturating_sub(snapshot_lsn);
    tracing::info!(
        stream = %url.stream,
        snapshot_lsn,
        replayed,
        ms = t.elapsed().as_millis() as u64,
        "caught up with the stream"
    );
    let rec = Recovery {
        snapshot_lsn,
        replayed,
        truncated_bytes: 0,
        last_lsn: last_seq,
        segments: 0,
        temp_files_removed: temp_files,
    };
    let _ = stream.info().await; // refresh the cached info for later calls
    Ok((
        Store {
            backend: Backend::JetStream {
                log: writer,
                applier: atx,
            },
            shared: shared_state,
            threads: Arc::new(Mutex::new(vec![applier_thread])),
        },
        rec,
    ))
}

impl<S: StateMachine> Writer<S> {
    /// Publishes a record and waits until this replica applied it.
    pub(super) async fn append(
        &self,
        kind: u8,
        received_ms: i64,
        payload: Bytes,
    ) -> Result<S::Output, StoreError> {
        let frame = encode_frame(kind, received_ms, &payload);
        let part = self.max_message.saturating_sub(MESSAGE_OVERHEAD).max(1);
        if frame.len().div_ceil(part) > MAX_PARTS {
            return Err(StoreError::TooLarge {
                bytes: payload.len(),
                max: part * MAX_PARTS - FRAME_HEADER,
            });
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{n}", self.replica);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending_map().insert(n, tx);
        let t = Instant::now();
        let published = if frame.len() > part {
            self.publish_parts(&id, &frame, part).await
        } else {
            self.publish(&id, frame.clone()).await
        };
        if let Err(e) = published {
            self.pending_map().remove(&n);
            return Err(e);
        }
        self.metrics.records.inc();
        self.metrics.bytes.inc_by(frame.len() as u64);
        self.metrics.sync_seconds.observe(t.elapsed().as_secs_f64());
        match tokio::time::timeout(self.options.apply_timeout, rx).await {
            Ok(Ok(out)) => out,
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                self.pending_map().remove(&n);
                Err(StoreError::NotYetApplied(self.options.apply_timeout))
            }
        }
    }

    fn pending_map(&self) -> MutexGuard<'_, HashMap<u64, Reply<S::Output>>> {
        self.pending.lock()
    }

    /// One message, acknowledged by the stream's quorum, retried with the
    /// same id until the write timeout.
    async fn publish(&self, id: &str, frame: Bytes) -> Result<(), StoreError> {
        use jetstream::context::PublishErrorKind as K;
        let deadline = Instant::now() + self.options.write_timeout;
        let mut attempt = 0u32;
        let last = loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let one = async {
                let ack = self
                    .js
                    .send_publish(
                        self.subject.clone(),
                        jetstream::message::PublishMessage::build()
                            .payload(frame.clone())
                            .message_id(id),
                    )
                    .await?;
                ack.await
            };
            let why = match tokio::time::timeout(remaining.min(Duration::from_secs(2)), one).await {
                Ok(Ok(_ack)) => return Ok(()),
                Ok(Err(e)) if e.kind() == K::MaxPayloadExceeded => {
                    return Err(StoreError::TooLarge {
                        bytes: frame.len(),
                        max: self.max_message,
                    })
                }
                Ok(Err(e)) => match e.kind() {
                    K::StreamNotFound => {
                        "the stream has no leader (no quorum: are most of its servers down?)"
                            .to_owned()
                    }
                    K::TimedOut => "no acknowledgment from the stream in time".to_owned(),
                    _ => e.to_string(),
                },
                Err(_) => "no acknowledgment from the stream in time".to_owned(),
            };
            if Instant::now() + Duration::from_millis(100) >= deadline {
                break why;
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(5)))).await;
        };
        Err(StoreError::Unavailable(format!(
            "the JetStream stream {} did not acknowledge the write within {:?} ({attempt} attempts, last: {last}); the stream has lost its quorum (most of its NATS servers down?) or no NATS server is reachable",
            self.stream, self.options.write_timeout
        )))
    }

    /// A record larger than one message: its parts as one atomic batch
    /// (every part stored, contiguously, or none), the last one committing
    /// it with the record's message id. Retried as a whole until the write
    /// timeout; a batch the stream already committed answers "already
    /// stored" (10201), which is success.
    async fn publish_parts(&self, id: &str, frame: &Bytes, part: usize) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.options.write_timeout;
        let n = frame.len().div_ceil(part);
        let client = self.js.client();
        let mut attempt = 0u32;
        let last = loop {
            attempt += 1;
            let batch = format!("{id}.{attempt}");
            let one = async {
                for i in 0..n {
                    let chunk = frame.slice(i * part..((i + 1) * part).min(frame.len()));
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Batch-Id", batch.as_str());
                    h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
                    h.insert(PART_HEADER, format!("{}/{n}", i + 1).as_str());
                    if i + 1 < n {
                        client
                            .publish_with_headers(self.subject.clone(), h, chunk)
                            .await
                            .map_err(|e| e.to_string())?;
                    } else {
                        h.insert("Nats-Batch-Commit", "1");
                        h.insert("Nats-Msg-Id", id);
                        let ack = self
                            .js
                            .publish_with_headers(self.subject.clone(), h, chunk)
                            .await
                            .map_err(|e| e.to_string())?;
                        return ack.await.map(|_| ()).map_err(|e| e.to_string());
                    }
                }
                Ok(())
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let why = match tokio::time::timeout(remaining.min(Duration::from_secs(5)), one).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if e.contains("10201") => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "no acknowledgment from the stream in time".to_owned(),
            };
            if Instant::now() + Duration::from_millis(100) >= deadline {
                break why;
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(5)))).await;
        };
        Err(StoreError::Unavailable(format!(
            "the JetStream stream {} did not acknowledge a record of {} bytes in {n} parts within {:?} ({attempt} attempts, last: {last}); the stream has lost its quorum (most of its NATS servers down?), no NATS server is reachable, or the stream does not allow atomic batches",
            self.stream,
            frame.len(),
            self.options.write_timeout
        )))
    }

    /// Reads the stream in order from `from` and hands every record to the
    /// applier; records this process appended carry their reply. Runs for
    /// the life of the store; the ordered consumer re-creates itself after
    /// server failures and resumes where it was.
    async fn consume(self: Arc<Self>, stream: stream::Stream, from: u64, applier: ApplierTx<S>) {
        let mut next = from;
        // The parts of a record split over several messages, so far.
        let mut parts: Option<(usize, BytesMut)>;
        loop {
            // A consumer re-created mid-record delivers its parts again.
            parts = None;
            let config = consumer::pull::OrderedConfig {
                deliver_policy: if next <= 1 {
                    consumer::DeliverPolicy::All
                } else {
                    consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    }
                },
                // Pull requests expire after 2 s, so the server's idle
                // heartbeats come every 1 s and a consumer whose NATS node
                // died is re-created after ~4 s (two missed heartbeats).
                // With async-nats' defaults (30 s / 15 s) a replica stalled
                // for up to a minute: its writes outlived the apply timeout
                // and it fell behind the others.
                max_expires: CONSUMER_EXPIRES,
                ..Default::default()
            };
            let messages = match stream.create_consumer(config).await {
                Ok(c) => c.messages().await,
                Err(e) => {
                    tracing::warn!(error = %e, from = next, "creating the stream consumer failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, from = next, "reading the stream failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(m) = messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the stream: resuming");
                        break;
                    }
                };
                let seq = match m.info() {
                    Ok(i) => i.stream_sequence,
                    Err(e) => {
                        tracing::warn!(error = %e, "a stream message without its sequence; resuming");
                        break;
                    }
                };
                if seq < next {
                    continue; // delivered again after a consumer reset
                }
                next = seq + 1;
                let part = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(PART_HEADER))
                    .and_then(|v| {
                        let (i, n) = v.as_str().split_once('/')?;
                        Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?))
                    });
                let payload = match part {
                    None => m.payload.clone(),
                    Some((i, n)) => {
                        if i == 1 {
                            parts = Some((n, BytesMut::with_capacity(n * m.payload.len())));
                        }
                        match parts.as_mut() {
                            Some((total, buf)) if *total == n => buf.extend_from_slice(&m.payload),
                            _ => {
                                // A part without its first: a record the
                                // stream's retention cut. Every replica
                                // skips it alike.
                                tracing::error!(
                                    seq,
                                    part = i,
                                    of = n,
                                    "skipping a part of a record whose first part is gone"
                                );
                                parts = None;
                            }
                        }
                        if i < n || parts.is_none() {
                            if applier.send(vec![Item::Skip(seq)]).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        match parts.take() {
                            Some((_, buf)) => buf.freeze(),
                            None => continue,
                        }
                    }
                };
                let reply = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .and_then(|id| id.as_str().strip_prefix(self.replica.as_str()))
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .and_then(|n| self.pending_map().remove(&n));
                let frame = decode_frame(&payload).and_then(|(kind, t, p)| {
                    if S::knows_kind(kind) {
                        Ok((kind, t, p))
                    } else {
                        Err(format!("record kind {kind} is not one this version knows"))
                    }
                });
                let item = match frame {
                    Ok((kind, received_ms, payload)) => Item::Record {
                        lsn: seq,
                        kind,
                        received_ms,
                        payload,
                        reply,
                    },
                    Err(e) => {
                        // Something else published on our subject: every
                        // replica skips it alike.
                        tracing::error!(seq, error = %e, "skipping a stream message that is not an abmesh record");
                        Item::Skip(seq)
                    }
                };
                if applier.send(vec![item]).await.is_err() {
                    return; // the store is shutting down
                }
            }
        }
    }

    /// Stops consuming (at shutdown).
    pub(super) fn stop(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Opens a replicated log; see [`open`]. Must run inside a tokio runtime.
impl<S: StateMachine> Store<S> {
    pub async fn open_jetstream<E: std::error::Error>(
        dir: &Path,
        options: StoreOptions,
        js_options: JetStreamOptions,
        metrics: StoreMetrics,
        restore: impl FnOnce(Option<&[u8]>) -> Result<S, E>,
    ) -> Result<(Store<S>, Recovery), StoreError> {
        open(dir, options, js_options, metrics, restore).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_urls() {
        let u: LogUrl = "nats://a:4222,b:4223/ABMESH?replicas=3&max_age=7d"
            .parse()
            .unwrap();
        assert_eq!(u.servers, ["nats://a:4222", "nats://b:4223"]);
        assert_eq!(u.stream, "ABMESH");
        assert_eq!(u.replicas, 3);
        assert_eq!(u.max_age, Some(Duration::from_secs(7 * 86_400)));
        let u: LogUrl = "tls://h:1/s".parse().unwrap();
        assert!(u.tls);
        assert_eq!(u.replicas, 3);
        for (bad, want) in [
            ("http://h:1/s", "unsupported scheme"),
            ("nats://h:1", "expected nats://"),
            ("nats://h/s", "expected HOST:PORT"),
            ("nats://h:1/", "stream name"),
            ("nats://h:1/a.b", "stream name"),
            ("nats://h:1/s?replicas=7", "replicas=\"7\""),
            ("nats://h:1/s?replica=3", "unknown option"),
            ("nats://u:p@h:1/s", "credentials in the URL"),
            ("nats://h:1/s?max_bytes=10MB", "max_bytes"),
        ] {
            let e = bad.parse::<LogUrl>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn frames_round_trip() {
        let f = encode_frame(7, -5, b"{}");
        assert_eq!(f.len(), FRAME_HEADER + 2);
        let (k, t, p) = decode_frame(&f).unwrap();
        assert_eq!((k, t, &p[..]), (7, -5, &b"{}"[..]));
        assert!(decode_frame(&Bytes::from_static(b"ABR1")).is_err());
        assert!(decode_frame(&Bytes::from_static(b"XXXX\x01\0\0\0\0\0\0\0\0")).is_err());
        // Kinds are the state machine's vocabulary: the frame carries any
        // byte, and the consumer skips kinds the machine does not know.
        let (k, _, _) = decode_frame(&Bytes::from_static(b"ABR1\x09\0\0\0\0\0\0\0\0")).unwrap();
        assert_eq!(k, 9);
    }

    #[test]
    fn stream_ids_differ_by_name_and_creation() {
        let a = stream_id("S", "2026-12-01 10:00:00");
        assert_eq!(a, stream_id("S", "2026-12-01 10:00:00"));
        assert_ne!(a, stream_id("S", "2026-12-01 10:00:01"));
        assert_ne!(a, stream_id("T", "2026-12-01 10:00:00"));
    }
}

//! abmesh-store: the outcome log, an append-only, checksummed log with
//! group commit, and snapshots so that a restart replays only the tail.
//!
//! Why a crate of its own: durability is one concern, with its own failure
//! modes (torn writes, full disks, fsync errors) and tests against a real
//! disk, and it knows nothing of what it stores. Records carry an opaque
//! kind byte and a payload; a [`StateMachine`] (the evaluation engine,
//! joined to it by `abmesh-server`) gives them meaning. A second backend
//! (NATS JetStream, for scale-out) is to come here behind a feature.
//!
//! # Why a log of our own rather than an embedded database
//!
//! What the sidecar stores is append-only (request bodies, in arrival
//! order), read back only at startup, and summarized in memory by a
//! deterministic state machine (`abmesh_eval`'s engine, behind a
//! [`StateMachine`]). A log is the whole
//! requirement: no random reads, no updates in place, no queries. An
//! embedded database (SQLite, RocksDB, redb) would add a B-tree or LSM
//! write path, its own WAL *and* our aggregates on top, and a C/C++ build
//! for two of them; the log is one `write` and one `fdatasync` per group of
//! requests, which is the floor for "acknowledged means durable".
//!
//! # Durability and group commit
//!
//! Requests hand their validated body to one writer thread. The writer
//! takes everything that queued up while its previous `fdatasync` ran,
//! writes it as one buffer, calls `fdatasync` once, and only then passes
//! the records on to be applied and acknowledged: concurrent requests share
//! one sync, and a 200 always means the bytes are on disk. If a write or
//! sync fails the log stops taking writes (every later request gets a 503)
//! until the process restarts and recovers from what is really on disk;
//! retrying `fsync` after a failure can report success for data the kernel
//! already dropped.
//!
//! # Applying, snapshots and recovery
//!
//! One applier thread applies records to the [`StateMachine`] in log order
//! (the order replay uses, so a restart rebuilds exactly the same state),
//! then answers the request. Every `snapshot_every_bytes` of log it writes
//! the state to `snapshot-<LSN>.bin` (temp file, fsync, rename, fsync of the
//! directory), keeps it and the one before, and deletes the segments the
//! older of the two covers: replay after a restart is bounded by one
//! snapshot interval whatever the history, and a damaged newest snapshot
//! still leaves the older one and the log after it.
//!
//! At startup the newest snapshot that checks out is loaded and the records
//! after it are replayed. A torn record at the end of the last segment (a
//! crash mid-write; never acknowledged, since acknowledgment follows the
//! sync) is truncated with a warning; a bad record anywhere else is
//! corruption and stops the start with the file and offset.
//!
//! # Temporary files
//!
//! A snapshot is written to `snapshot-<LSN>.tmp` and renamed; the sidecar
//! id to `sidecar-id.<pid>.tmp` and linked. A write that fails (a full
//! disk, say, including the final snapshot of a SIGTERM) removes its
//! temporary file at once, and every start removes any that a crash left,
//! before recovery: they are never complete and never read.
//!
//! # The sidecar id
//!
//! Every data directory has a random 128-bit id, created atomically at the
//! first start and kept in its `sidecar-id` file ([`identity`]). Exported
//! states carry it with the LSN they cover, as their idempotency key.

pub mod identity;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use abmesh_common::metrics::Register;

use abmesh_common::SidecarId;
pub use record::RecordRef;

/// What the log feeds: applies records in order and can write itself out.
pub trait StateMachine: Send + 'static {
    /// What applying one record tells its sender.
    type Output: Send + 'static;
    /// Whether `kind` is a record kind of this state machine's vocabulary.
    /// The log stores kinds as opaque bytes; at recovery, a record of an
    /// unknown kind (written by a newer version) stops the replay like a
    /// damaged one, and [`Store::append`] refuses one.
    fn knows_kind(kind: u8) -> bool;
    /// Applies one record. Must be deterministic: replay calls it again
    /// with the same records in the same order after a restart.
    fn apply(&mut self, record: &RecordRef<'_>) -> Self::Output;
    /// Why a snapshot could not be encoded.
    type SnapshotError: std::error::Error + Send + Sync + 'static;
    /// Appends the whole state to `out`, as `open`'s `restore` reads it.
    fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), Self::SnapshotError>;
}

/// Tuning of the log.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// A snapshot is written after this many bytes of log since the last.
    pub snapshot_every_bytes: u64,
    /// At most this many bytes go into one group commit.
    pub max_group_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 << 20,
            snapshot_every_bytes: 256 << 20,
            max_group_bytes: 32 << 20,
        }
    }
}

/// Failures of the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("the data directory {0} is in use by another abmesh process")]
    Locked(PathBuf),
    #[error("{file}: corrupt record at byte {offset}: {stop}; only the last segment may end in a torn record, so this is damage, not a crash (restore the directory from a backup, or move this file and the later ones away to keep what precedes it)")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        stop: String,
    },
    #[error("{file}: expected a record with LSN {expected}, found {found}: segments are missing")]
    Gap {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("restoring {file}: {message}")]
    Restore { file: PathBuf, message: String },
    #[error("the outcome log stopped taking writes after an I/O error and needs a restart: {0}")]
    Failed(String),
    #[error("the outcome log is shut down")]
    Closed,
    #[error("record kind {0} is not one the state machine knows")]
    UnknownKind(u8),
    /// The replicated log cannot take the write now (a JetStream stream
    /// without its quorum, the NATS servers out of reach): retryable.
    #[error("the replicated outcome log is unavailable, nothing was written; retry later: {0}")]
    Unavailable(String),
    /// The replicated log stored the record, but this replica has not
    /// applied it in time (it will, and every replica will).
    #[error("the record was stored by the replicated log but not yet applied here after {0:?}; it will be applied, and a retry is safe for events with ids")]
    NotYetApplied(Duration),
    /// Connecting to or setting up the replicated log failed at startup.
    #[error("{0}")]
    Setup(String),
    /// A record larger than the replicated log's servers take in one
    /// message (their `max_payload`).
    #[error("a request body of {bytes} bytes is larger than the replicated log takes in one record ({max} bytes: the NATS servers' max_payload); send smaller batches, or raise max_payload in the NATS server configuration")]
    TooLarge { bytes: usize, max: usize },
}

fn io_err(path: &Path, e: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// What recovery found, for the log line at startup (and for tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// LSN covered by the snapshot loaded (0: none).
    pub snapshot_lsn: u64,
    /// Records replayed after the snapshot.
    pub replayed: u64,
    /// Bytes of a torn tail removed from the last segment.
    pub truncated_bytes: u64,
    /// LSN of the last record (0: empty log).
    pub last_lsn: u64,
    /// Segment files present after recovery.
    pub segments: usize,
    /// Temporary files of interrupted writes removed before recovery.
    pub temp_files_removed: usize,
}

/// Prometheus metrics of the log (`abmesh_log_*`).
#[derive(Clone)]
pub struct StoreMetrics {
    records: Counter,
    bytes: Counter,
    syncs: Counter,
    snapshots: Counter,
    sync_seconds: Histogram,
    group_records: Histogram,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics::new()
    }
}

impl StoreMetrics {
    pub fn new() -> Self {
        StoreMetrics {
            records: Counter::default(),
            bytes: Counter::default(),
            syncs: Counter::default(),
            snapshots: Counter::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            group_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        }
    }

    /// Registers under `registry` (give it a `log` sub-registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics::new();
        Register(registry)
            .metric("records", "Records appended to the outcome log", &m.records)
            .metric("bytes", "Bytes appended to the outcome log", &m.bytes)
            .metric("syncs", "fdatasync calls (one per group commit)", &m.syncs)
            .metric("snapshots", "Snapshots written", &m.snapshots)
            .metric(
                "sync_seconds",
                "Time of one write + fdatasync",
                &m.sync_seconds,
            )
            .metric(
                "group_records",
                "Records per group commit",
                &m.group_records,
            );
        m
    }
}

type Reply<O> = tokio::sync::oneshot::Sender<Result<O, StoreError>>;
type Call<S> = Box<dyn FnOnce(&mut S, u64) + Send>;
/// What feeds the applier thread: bounded, so a replica catching up from a
/// replicated log cannot queue more than this many groups in memory.
type ApplierTx<S> = tokio::sync::mpsc::Sender<Vec<Item<S>>>;
type ApplierRx<S> = tokio::sync::mpsc::Receiver<Vec<Item<S>>>;
const APPLIER_QUEUE: usize = 256;

enum Msg<S: StateMachine> {
    Append {
        kind: u8,
        received_ms: i64,
        payload: Bytes,
        reply: Reply<S::Output>,
    },
    /// Runs on the applier thread after every record sent before it.
    Call(Call<S>),
    Close(std::sync::mpsc::Sender<()>),
}

enum Item<S: StateMachine> {
    Record {
        lsn: u64,
        kind: u8,
        received_ms: i64,
        payload: Bytes,
        /// The request waiting for this record, when this process appended
        /// it (`None` for records of other replicas).
        reply: Option<Reply<S::Output>>,
    },
    Call(Call<S>),
    /// A position of a replicated log that holds no record of ours (a
    /// message something else published on the subject): the LSN moves on.
    #[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
    Skip(u64),
    Close(std::sync::mpsc::Sender<()>),
}

struct Shared {
    dir: PathBuf,
    id: SidecarId,
    failed: OnceLock<String>,
    /// (first LSN, path) of every segment, oldest first.
    segments: Mutex<Vec<(u64, PathBuf)>>,
    options: StoreOptions,
    metrics: StoreMetrics,
    /// The flock on `LOCK`; released by `shutdown` (or when the last
    /// handle and thread are gone).
    lock: Mutex<Option<File>>,
}

/// A handle on the running log; cheap to clone.
pub struct Store<S: StateMachine> {
    backend: Backend<S>,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Where appends go.
enum Backend<S: StateMachine> {
    /// The embedded file log: the writer thread, which also passes calls
    /// on to the applier in order.
    File(mpsc::Sender<Msg<S>>),
    /// A NATS JetStream stream: appends are published; the applier is fed
    /// by this replica's consumer of the stream, and calls go to it
    /// directly.
    #[cfg(feature = "jetstream")]
    JetStream {
        log: Arc<jetstream::Writer<S>>,
        applier: ApplierTx<S>,
    },
}

impl<S: StateMachine> Clone for Backend<S> {
    fn clone(&self) -> Self {
        match self {
            Backend::File(tx) => Backend::File(tx.clone()),
            #[cfg(feature = "jetstream")]
            Backend::JetStream { log, applier } => Backend::JetStream {
                log: log.clone(),
                applier: applier.clone(),
            },
        }
    }
}

impl<S: StateMachine> Clone for Store<S> {
    fn clone(&self) -> Self {
        Store {
            backend: self.backend.clone(),
            shared: self.shared.clone(),
            threads: self.threads.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for Store<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("log-{first_lsn:020}.seg"))
}

fn snapshot_path(dir: &Path, lsn: u64) -> PathBuf {
    dir.join(format!("snapshot-{lsn:020}.bin"))
}

/// Numbered files `{prefix}{number:020}{suffix}` in `dir`, sorted by number.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        if let Ok(n) = num.parse::<u64>() {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"ABMSNAP1";

/// Why a snapshot file is skipped at recovery.
#[derive(Debug, thiserror::Error)]
enum SnapshotFileError {
    #[error("{0}")]
    Read(#[from] io::Error),
    #[error("not a snapshot file")]
    NotASnapshot,
    #[error("checksum or length mismatch")]
    Checksum,
}

/// Reads a snapshot file: (LSN, payload) if its checksum holds.
fn read_snapshot(path: &Path) -> Result<(u64, Vec<u8>), SnapshotFileError> {
    read_snapshot_bytes(&fs::read(path)?)
}

/// Reads the bytes of a snapshot (a file, or a replicated log's shared
/// copy): (LSN, payload) if its checksum holds.
fn read_snapshot_bytes(data: &[u8]) -> Result<(u64, Vec<u8>), SnapshotFileError> {
    if data.len() < 28 || &data[..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotFileError::NotASnapshot);
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let lsn = word(8);
    let len = word(16);
    let mut c = [0u8; 4];
    c.copy_from_slice(&data[24..28]);
    let crc = u32::from_le_bytes(c);
    let payload = &data[28..];
    if payload.len() as u64 != len || crc32fast::hash(payload) != crc {
        return Err(SnapshotFileError::Checksum);
    }
    Ok((lsn, payload.to_vec()))
}

/// The 28 bytes before a snapshot's payload: magic, LSN, length, CRC-32.
fn snapshot_header(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(28);
    head.extend_from_slice(SNAPSHOT_MAGIC);
    head.extend_from_slice(&lsn.to_le_bytes());
    head.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    head.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    head
}

/// The bytes of a snapshot file of the state `payload` at `lsn`.
#[cfg_attr(not(feature = "jetstream"), allow(dead_code))]
fn snapshot_file_bytes(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = snapshot_header(lsn, payload);
    out.extend_from_slice(payload);
    out
}

fn write_snapshot_file(dir: &Path, lsn: u64, payload: &[u8]) -> Result<PathBuf, StoreError> {
    let path = snapshot_path(dir, lsn);
    let tmp = path.with_extension("tmp");
    let head = snapshot_header(lsn, payload);
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&head)?;
            f.write_all(payload)?;
            f.sync_all()
        })
        .map_err(|e| io_err(&tmp, e))
        .and_then(|()| fs::rename(&tmp, &path).map_err(|e| io_err(&path, e)));
    if written.is_err() {
        // A full disk, typically: leave no partial file behind.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)?;
    Ok(path)
}

/// Whether a file name is one of the temporary files this module writes.
fn is_temp_file(name: &str) -> bool {
    name.ends_with(".tmp")
        && (name.starts_with("snapshot-")
            || name.starts_with(identity::FILE)
            || name.starts_with("stream-id"))
}

/// Removes the temporary files a crash left (see the module docs); returns
/// how many.
fn remove_temp_files(dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temp_file) {
            continue;
        }
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        tracing::warn!(file = %path.display(), "removed a temporary file left by an interrupted write");
        removed += 1;
    }
    Ok(removed)
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // SAFETY: flock on a file descriptor we own; the lock is released when
    // the file is closed, including when the process dies.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Locked(dir.to_owned()));
        }
        return Err(io_err(&path, e));
    }
    Ok(f)
}

/// Where the log ends after recovery.
struct Tail {
    next_lsn: u64,
    /// The last segment, its first LSN and its valid length.
    last: Option<(u64, PathBuf, u64)>,
}

/// What `recover` returns: the state, the report, where the log ends, and
/// the segments (first LSN, path).
type Recovered<S> = (S, Recovery, Tail, Vec<(u64, PathBuf)>);

/// Loads the newest good snapshot and replays the log after it into the
/// state `restore` builds. `repair` truncates a torn tail (a writer's
/// open); without it a torn tail just ends the replay (a reader's load).
fn recover<S: StateMachine, E: std::error::Error>(
    dir: &Path,
    repair: bool,
    restore: impl FnOnce(Option<&[u8]>) -> Result<S, E>,
) -> Result<Recovered<S>, StoreError> {
    let mut rec = Recovery::default();
    let mut snapshot: Option<(u64, Vec<u8>, PathBuf)> = None;
    for (_, path) in numbered(dir, "snapshot-", ".bin")?.into_iter().rev() {
        match read_snapshot(&path) {
            Ok((lsn, payload)) => {
                snapshot = Some((lsn, payload, path));
                break;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping a snapshot that does not check out")
            }
        }
    }
    let mut state = match &snapshot {
        Some((lsn, payload, path)) => {
            rec.snapshot_lsn = *lsn;
            restore(Some(payload)).map_err(|e| StoreError::Restore {
                file: path.clone(),
                message: e.to_string(),
            })?
        }
        None => restore(None).map_err(|e| StoreError::Restore {
            file: dir.to_owned(),
            message: e.to_string(),
        })?,
    };
    let mut segments = numbered(dir, "log-", ".seg")?;
    let mut next_lsn = rec.snapshot_lsn + 1;
    let mut last = None;
    let count = segments.len();
    let mut drop_last = false;
    for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let data = fs::read(path).map_err(|e| io_err(path, e))?;
        let Some(header_lsn) = record::parse_segment_header(&data) else {
            if is_last && repair {
                // A crash while a new segment was being started.
                tracing::warn!(file = %path.display(), "removing a segment whose header was never completed");
                fs::remove_file(path).map_err(|e| io_err(path, e))?;
                drop_last = true;
                break;
            }
            if is_last {
                break;
            }
            return Err(StoreError::Corrupt {
                file: path.clone(),
                offset: 0,
                stop: "bad segment header".into(),
            });
        };
        if header_lsn != *first {
            return Err(StoreError::Corrupt {
                file: path.clone(),
                offset: 8,
                stop: format!("header names LSN {header_lsn}, file name {first}"),
            });
        }
        if header_lsn > next_lsn {
            return Err(StoreError::Gap {
                file: path.clone(),
                expected: next_lsn,
                found: header_lsn,
            });
        }
        let mut lsn_expected = header_lsn;
        let mut off = record::SEGMENT_HEADER;
        loop {
            let decoded = record::decode(&data[off..]).and_then(|r| match r {
                Some((r, _)) if !S::knows_kind(r.kind) => Err(record::Stop::UnknownKind(r.kind)),
                r => Ok(r),
            });
            match decoded {
                Ok(None) => break,
                Ok(Some((r, n))) => {
                    if r.lsn != lsn_expected {
                        return Err(StoreError::Gap {
                            file: path.clone(),
                            expected: lsn_expected,
                            found: r.lsn,
                        });
                    }
                    if r.lsn >= next_lsn {
                        state.apply(&r);
                        rec.replayed += 1;
                        next_lsn = r.lsn + 1;
                    }
                    lsn_expected += 1;
                    off += n;
                }
                Err(stop) => {
                    if !is_last {
                        return Err(StoreError::Corrupt {
                            file: path.clone(),
                            offset: off as u64,
                            stop: stop.to_string(),
                        });
                    }
                    let torn = data.len() - off;
                    rec.truncated_bytes = torn as u64;
                    if repair {
                        tracing::warn!(
                            file = %path.display(),
                            offset = off,
                            bytes = torn,
                            reason = %stop,
                            "truncating a torn record at the end of the log (written during a crash, never acknowledged)"
                        );
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|e| io_err(path, e))?;
                        f.set_len(off as u64)
                            .and_then(|()| f.sync_all())
                            .map_err(|e| io_err(path, e))?;
                    }
                    break;
                }
            }
        }
        next_lsn = next_lsn.max(lsn_expected);
        if is_last {
            last = Some((*first, path.clone(), off as u64));
        }
    }
    if drop_last {
        segments.pop();
    }
    rec.last_lsn = next_lsn - 1;
    rec.segments = segments.len();
    Ok((state, rec, Tail { next_lsn, last }, segments))
}

/// Rebuilds the state of a data directory without writing to it (for
/// `abmesh report --data-dir`): a torn tail ends the replay and stays.
pub fn load<S: StateMachine, E: std::error::Error>(
    dir: &Path,
    restore: impl FnOnce(Option<&[u8]>) -> Result<S, E>,
) -> Result<(S, Recovery), StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Io {
            path: dir.to_owned(),
            message: "not a directory".into(),
        });
    }
    let (state, rec, _, _) = recover(dir, false, restore)?;
    Ok((state, rec))
}

impl<S: StateMachine> Store<S> {
    /// Opens (creating if needed) the log in `dir`, recovers the state, and
    /// starts the writer and applier threads.
    pub fn open<E: std::error::Error>(
        dir: &Path,
        options: StoreOptions,
        metrics: StoreMetrics,
        restore: impl FnOnce(Option<&[u8]>) -> Result<S, E>,
    ) -> Result<(Store<S>, Recovery), StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_dir(dir)?;
        let temp_files = remove_temp_files(dir)?;
        let id = identity::load_or_create(dir)?;
        let (state, mut rec, tail, mut segments) = recover(dir, true, restore)?;
        rec.temp_files_removed = temp_files;
        let (file, path, seg_len) = match tail.last {
            Some((_, path, len)) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                (f, path, len)
            }
            None => {
                let (f, path) = new_segment(dir, tail.next_lsn)?;
                segments.push((tail.next_lsn, path.clone()));
                rec.segments = segments.len();
                (f, path, record::SEGMENT_HEADER as u64)
            }
        };
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            id,
            failed: OnceLock::new(),
            segments: Mutex::new(segments),
            options,
            metrics,
            lock: Mutex::new(Some(lock)),
        });
        let (tx, rx) = mpsc::channel::<Msg<S>>();
        let (atx, arx) = tokio::sync::mpsc::channel::<Vec<Item<S>>>(APPLIER_QUEUE);
        let writer = Writer {
            shared: shared.clone(),
            file,
            path,
            seg_len,
            next_lsn: tail.next_lsn,
            buf: Vec::with_capacity(1 << 20),
        };
        let w = std::thread::Builder::new()
            .name("abmesh-log-writer".into())
            .spawn(move || writer.run(rx, atx))
            .map_err(|e| io_err(dir, e))?;
        let applier = Applier::new(shared.clone(), state, rec.last_lsn, rec.replayed > 0);
        let a = applier.spawn(arx)?;
        Ok((
            Store {
                backend: Backend::File(tx),
                shared,
                threads: Arc::new(Mutex::new(vec![w, a])),
            },
            rec,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The data directory's id ([`identity`]).
    pub fn sidecar_id(&self) -> SidecarId {
        self.shared.id
    }

    /// Appends a record received now; resolves once it is durable and
    /// applied, with what applying it returned.
    pub async fn append(&self, kind: u8, payload: Bytes) -> Result<S::Output, StoreError> {
        self.append_at(kind, now_ms(), payload).await
    }

    /// [`Store::append`] with an explicit receive time.
    pub async fn append_at(
        &self,
        kind: u8,
        received_ms: i64,
        payload: Bytes,
    ) -> Result<S::Output, StoreError> {
        if !S::knows_kind(kind) {
            return Err(StoreError::UnknownKind(kind));
        }
        if let Some(msg) = self.shared.failed.get() {
            return Err(StoreError::Failed(msg.clone()));
        }
        match &self.backend {
            Backend::File(tx) => {
                let (reply, rx) = tokio::sync::oneshot::channel();
                tx.send(Msg::Append {
                    kind,
                    received_ms,
                    payload,
                    reply,
                })
                .map_err(|_| StoreError::Closed)?;
                rx.await.map_err(|_| StoreError::Closed)?
            }
            #[cfg(feature = "jetstream")]
            Backend::JetStream { log, .. } => log.append(kind, received_ms, payload).await,
        }
    }

    /// Runs `f` on the state after every record appended before this call
    /// was applied; `f` also gets the LSN applied so far.
    pub async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S, u64) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call: Call<S> = Box::new(move |s, lsn| {
            let _ = tx.send(f(s, lsn));
        });
        match &self.backend {
            Backend::File(writer) => writer
                .send(Msg::Call(call))
                .map_err(|_| StoreError::Closed)?,
            // Every record whose append has returned was applied before
            // it returned, so the applier's order is enough.
            #[cfg(feature = "jetstream")]
            Backend::JetStream { applier, .. } => applier
                .send(vec![Item::Call(call)])
                .await
                .map_err(|_| StoreError::Closed)?,
        }
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// The error that stopped writes, if one did.
    pub fn failure(&self) -> Option<&str> {
        self.shared.failed.get().map(String::as_str)
    }

    /// Finishes what was sent, writes a final snapshot (so the next start
    /// replays nothing) and stops the threads. Later appends fail with
    /// [`StoreError::Closed`].
    pub fn shutdown(&self) {
        let (tx, rx) = mpsc::channel();
        let sent = match &self.backend {
            Backend::File(writer) => writer.send(Msg::Close(tx)).is_ok(),
            #[cfg(feature = "jetstream")]
            Backend::JetStream { log, applier } => {
                log.stop();
                applier.blocking_send(vec![Item::Close(tx)]).is_ok()
            }
        };
        if sent {
            let _ = rx.recv_timeout(Duration::from_secs(120));
        }
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        // Nothing writes any more: another process may open the directory.
        self.shared.lock.lock().take();
    }
}

fn new_segment(dir: &Path, first_lsn: u64) -> Result<(File, PathBuf), StoreError> {
    let path = segment_path(dir, first_lsn);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    f.write_all(&record::segment_header(first_lsn))
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    let f = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    Ok((f, path))
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    seg_len: u64,
    next_lsn: u64,
    buf: Vec<u8>,
}

impl Writer {
    fn run<S: StateMachine>(mut self, rx: mpsc::Receiver<Msg<S>>, to_applier: ApplierTx<S>) {
        while let Ok(first) = rx.recv() {
            let mut closed = false;
            let mut msgs = vec![first];
            let mut bytes = 0usize;
            while bytes < self.shared.options.max_group_bytes {
                match rx.try_recv() {
                    Ok(m) => {
                        if let Msg::Append { payload, .. } = &m {
                            bytes += record::framed_len(payload.len());
                        }
                        msgs.push(m);
                    }
                    Err(_) => break,
                }
            }
            self.buf.clear();
            let mut items = Vec::with_capacity(msgs.len());
            let mut records = 0u64;
            for m in msgs {
                match m {
                    Msg::Append {
                        kind,
                        received_ms,
                        payload,
                        reply,
                    } => {
                        if closed {
                            let _ = reply.send(Err(StoreError::Closed));
                            continue;
                        }
                        let lsn = self.next_lsn;
                        self.next_lsn += 1;
                        records += 1;
                        record::encode(&mut self.buf, lsn, kind, received_ms, &payload);
                        items.push(Item::Record {
                            lsn,
                            kind,
                            received_ms,
                            payload,
                            reply: Some(reply),
                        });
                    }
                    Msg::Call(f) => items.push(Item::Call(f)),
                    Msg::Close(ack) => {
                        closed = true;
                        items.push(Item::Close(ack));
                    }
                }
            }
            if records > 0 {
                if let Err(e) = self.commit() {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "outcome log write failed; refusing further writes");
                    let _ = self.shared.failed.set(msg.clone());
                    // Nothing of this group is acknowledged or applied.
                    let rest: Vec<Item<S>> = items
                        .into_iter()
                        .filter_map(|it| match it {
                            Item::Record { reply, .. } => {
                                if let Some(reply) = reply {
                                    let _ = reply.send(Err(StoreError::Failed(msg.clone())));
                                }
                                None
                            }
                            other => Some(other),
                        })
                        .collect();
                    self.fail_rest(&rx, &to_applier, rest, &msg);
                    return;
                }
                let m = &self.shared.metrics;
                m.records.inc_by(records);
                m.bytes.inc_by(self.buf.len() as u64);
                m.group_records.observe(records as f64);
            }
            if to_applier.blocking_send(items).is_err() || closed {
                // Appends after Close get StoreError::Closed: their sends
                // fail once the receiver is gone.
                return;
            }
            if self.seg_len >= self.shared.options.segment_bytes {
                if let Err(e) = self.roll() {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "starting a new log segment failed; refusing further writes");
                    let _ = self.shared.failed.set(msg.clone());
                    self.fail_rest(&rx, &to_applier, Vec::new(), &msg);
                    return;
                }
            }
        }
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let t = Instant::now();
        let path = &self.path;
        self.file
            .write_all(&self.buf)
            .map_err(|e| io_err(path, e))?;
        self.file.sync_data().map_err(|e| io_err(path, e))?;
        self.seg_len += self.buf.len() as u64;
        self.shared.metrics.syncs.inc();
        self.shared
            .metrics
            .sync_seconds
            .observe(t.elapsed().as_secs_f64());
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        let (f, path) = new_segment(&self.shared.dir, self.next_lsn)?;
        self.file = f;
        self.path = path.clone();
        self.seg_len = record::SEGMENT_HEADER as u64;
        self.shared.segments.lock().push((self.next_lsn, path));
        Ok(())
    }

    /// After a failure: answers every later append with the error, still
    /// forwards calls (reports keep working on what was applied) and the
    /// close.
    fn fail_rest<S: StateMachine>(
        &self,
        rx: &mpsc::Receiver<Msg<S>>,
        to_applier: &ApplierTx<S>,
        first: Vec<Item<S>>,
        msg: &str,
    ) {
        if !first.is_empty() && to_applier.blocking_send(first).is_err() {
            return;
        }
        while let Ok(m) = rx.recv() {
            let item = match m {
                Msg::Append { reply, .. } => {
                    let _ = reply.send(Err(StoreError::Failed(msg.to_owned())));
                    continue;
                }
                Msg::Call(f) => Item::Call(f),
                Msg::Close(ack) => Item::Close(ack),
            };
            let close = matches!(item, Item::Close(_));
            if to_applier.blocking_send(vec![item]).is_err() || close {
                return;
            }
        }
    }
}

/// Called with every snapshot written: (LSN, state).
type SnapshotHook = Box<dyn Fn(u64, &[u8]) + Send>;

/// Applies records to the state in log order, answers their requests, and
/// writes snapshots; one thread, whatever the backend.
struct Applier<S: StateMachine> {
    shared: Arc<Shared>,
    state: S,
    applied_lsn: u64,
    since_snapshot: u64,
    /// Told the LSN applied after every group (a replicated log waits on
    /// it to know a replica has caught up).
    progress: Option<tokio::sync::watch::Sender<u64>>,
    /// Also given every snapshot written (a replicated log keeps one in
    /// its object store for replicas that start empty).
    on_snapshot: Option<SnapshotHook>,
}

impl<S: StateMachine> Applier<S> {
    fn new(shared: Arc<Shared>, state: S, applied_lsn: u64, replayed: bool) -> Self {
        Applier {
            shared,
            state,
            applied_lsn,
            since_snapshot: u64::from(replayed),
            progress: None,
            on_snapshot: None,
        }
    }

    fn spawn(self, rx: ApplierRx<S>) -> Result<JoinHandle<()>, StoreError> {
        let dir = self.shared.dir.clone();
        std::thread::Builder::new()
            .name("abmesh-log-applier".into())
            .spawn(move || self.run(rx))
            .map_err(|e| io_err(&dir, e))
    }

    fn run(mut self, mut rx: ApplierRx<S>) {
        while let Some(items) = rx.blocking_recv() {
            let mut close = None;
            for item in items {
                match item {
                    Item::Record {
                        lsn,
                        kind,
                        received_ms,
                        payload,
                        reply,
                    } => {
                        let r = RecordRef {
                            lsn,
                            kind,
                            received_ms,
                            payload: &payload,
                            local: reply.is_some(),
                        };
                        let out = self.state.apply(&r);
                        self.applied_lsn = lsn;
                        self.since_snapshot += record::framed_len(payload.len()) as u64;
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(out));
                        }
                    }
                    Item::Call(f) => f(&mut self.state, self.applied_lsn),
                    Item::Skip(lsn) => self.applied_lsn = lsn,
                    Item::Close(ack) => close = Some(ack),
                }
            }
            if let Some(p) = &self.progress {
                p.send_replace(self.applied_lsn);
            }
            let due = self.since_snapshot >= self.shared.options.snapshot_every_bytes;
            if due || (close.is_some() && self.since_snapshot > 0) {
                self.snapshot();
            }
            if let Some(ack) = close {
                let _ = ack.send(());
                return;
            }
        }
    }

    fn snapshot(&mut self) {
        let t = Instant::now();
        let mut buf = Vec::new();
        if let Err(e) = self.state.write_snapshot(&mut buf) {
            tracing::error!(error = %e, "encoding a snapshot failed; the log keeps growing until one succeeds");
            return;
        }
        let lsn = self.applied_lsn;
        let dir = &self.shared.dir;
        match write_snapshot_file(dir, lsn, &buf) {
            Ok(path) => {
                self.since_snapshot = 0;
                self.shared.metrics.snapshots.inc();
                // Keep this snapshot and the one before it, and the log
                // from the older one on: a damaged newest snapshot then
                // still leaves a complete way back (older snapshot + log).
                let kept = numbered(dir, "snapshot-", ".bin").unwrap_or_default();
                let keep_from = kept.len().saturating_sub(2);
                for (_, p) in &kept[..keep_from] {
                    let _ = fs::remove_file(p);
                }
                let covered = if kept.len() >= 2 {
                    Some(kept[keep_from].0)
                } else {
                    None
                };
                let mut segs = self.shared.segments.lock();
                // A segment is covered when the next one starts at or
                // before lsn + 1; the last (active) one always stays.
                let mut removed = 0;
                if let Some(c) = covered {
                    while segs.len() >= 2 && segs[1].0 <= c + 1 {
                        let (_, p) = segs.remove(0);
                        if let Err(e) = fs::remove_file(&p) {
                            tracing::warn!(file = %p.display(), error = %e, "could not delete a covered log segment");
                        }
                        removed += 1;
                    }
                }
                drop(segs);
                tracing::info!(
                    file = %path.display(),
                    lsn,
                    bytes = buf.len(),
                    segments_removed = removed,
                    ms = t.elapsed().as_millis() as u64,
                    "snapshot written"
                );
                if let Some(f) = &self.on_snapshot {
                    f(lsn, &buf);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "writing a snapshot failed; the log keeps growing until one succeeds")
            }
        }
    }
}

//! The state machine behind the outcome log: per-user totals, the joining
//! rule, de-duplication, snapshots and merges.
//!
//! # Joining rule
//!
//! * A user is in variant V of experiment E if an exposure batch said so.
//!   The earliest exposure wins (ties: the lower variant index), so the
//!   result does not depend on arrival order; rows naming another variant
//!   are counted as conflicts. When definitions are loaded, every exposure
//!   is also recomputed with the filter's assignment core and disagreements
//!   are counted as mismatches (a stale config on one side).
//! * An outcome event with `experiment: E` counts for E only; one without
//!   counts for every experiment the user is exposed in. Either way it is
//!   kept with the user until an exposure arrives, so outcomes that arrive
//!   before their (batched) exposure are not lost, and counted from then on.
//! * Only exposed users are counted, all of them (with zeros when they have
//!   no events).
//!
//! Every operation commutes, so the state is a function of the set of
//! records, whatever their order, which is what makes replay, merge and
//! out-of-order delivery agree.
//!
//! # Definitions, health and halts
//!
//! The engine also follows the filters' configuration (a
//! [`RecordKind::Config`] record replaces the definitions), adds up the health
//! rows of exposure batches per (experiment, variant), and after every
//! fresh exposure batch runs the guardrails of each defined experiment
//! ([`super::checks::checks`]): a breach halts the variant. Halts (and
//! [`RecordKind::Admin`] halts and lifts) are state like the rest, decided in log
//! order, so replay reproduces them. These steps depend on the order of
//! records (a halt is decided at a point of the log); they are what the
//! sidecar *did*, not a statistic of the data, so a merge unites them
//! rather than recomputing them.
//!
//! New halts, lifts and sample-ratio alarms are also sent to the notice
//! sink ([`Engine::notice_slot`]), which is empty while a restart replays
//! the log, so a replay notifies nobody twice.
//!
//! # Exported states and merges
//!
//! `GET /admin/state` exports the state (the snapshot encoding) in an
//! envelope ([`Engine::export_state`]):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | `ABMSTATE` |
//! | 4 | envelope format, little-endian (1) |
//! | 16 | the exporting sidecar's id (`abmesh_store::identity`), little-endian |
//! | 8 | the LSN the export covers (every record up to it), little-endian |
//! | 8 | payload length, little-endian |
//! | n | payload: the snapshot encoding |
//! | 4 | CRC-32C of everything before it, little-endian |
//!
//! The checksum covers the header too, so any damage, a single flipped bit
//! included, is refused before anything is decoded. (It protects against
//! accidents, not forgery: who may merge is the admin listener's business.)
//!
//! (sidecar id, LSN) is the export's idempotency key. The engine remembers
//! the keys it merged, and the keys those states had merged in turn, as
//! part of its state (snapshotted, and exported with it). A merge of a key
//! it holds is a no-op, said as such (`"merged": false, "duplicate":
//! true`); a state that holds records of a sidecar whose records this one
//! already holds under another LSN (a later export of a sidecar merged
//! before, or a sidecar that merged a third one this one merged too) is
//! refused, since adding it would count those records twice. So is a state
//! that holds this sidecar's own records (exported here, or by a sidecar
//! that merged this one's state); that check needs only the request and the
//! sidecar id and is made before appending. The state-dependent checks are
//! made before appending and again when the record is applied, so two
//! racing merges of one state merge it once, and replay decides the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use serde_json::json;
use siphasher::sip128::{Hasher128, SipHasher13};
use smallvec::SmallVec;

use super::bandit::{self, BanditHistory, BanditRecord};
use super::checks;
use super::definitions::Definitions;
use super::guard::{GuardState, Halt, HaltSource, HaltedRef};
use super::segments::SegmentRegistry;
use super::sums::{Aggregates, Counters, MetricInfo, Place, UserValue, BUCKET_MS};
use crate::ingest::exposure::format_config_id;
use crate::ingest::{parse_exposures, parse_outcomes, ExposureBatch, Outcome};
use crate::kind::RecordKind;
use abmesh_common::SidecarId;
use abmesh_stats::guardrail::Health;
use abmesh_stats::{srm, srm_by_period, SRM_ALERT_P};

mod derived_hooks;

/// Scope of an event without an experiment.
const ANY: u32 = u32::MAX;
/// Snapshot format version: 2 adds the definitions learned from filters,
/// health, halts and overrides after the version 1 fields; 3 adds the keys
/// of the states merged (versions 1 and 2 are still read).
/// 4 adds the bandit periods (`V4Section`).
const SNAPSHOT_VERSION: u32 = 4;

/// First bytes of an exported state (see the module docs).
const STATE_MAGIC: &[u8; 8] = b"ABMSTATE";
/// Envelope format of exported states.
const STATE_FORMAT: u32 = 1;
/// Magic, format, sidecar id, LSN, payload length.
const STATE_HEADER: usize = 8 + 4 + 16 + 8 + 8;
/// The sample-ratio alarm needs this many expected users in every variant
/// (the chi-square approximation's usual condition).
const SRM_MIN_EXPECTED: f64 = 5.0;

/// Where the engine sends notices (new halts, lifts, SRM alarms) as JSON:
/// the webhook and the Prometheus counters. Installed after a restart's
/// replay, so replayed records notify nobody.
pub type NoticeSink = Box<dyn Fn(serde_json::Value) + Send>;

/// Tuning of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Event ids remembered for de-duplication: at least half this many of
    /// the most recent ids are always remembered (two generations).
    pub dedup_capacity: usize,
    /// Out-of-order batch numbers remembered per filter instance.
    pub batch_window: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            dedup_capacity: 32 << 20,
            batch_window: 4096,
        }
    }
}

/// What applying a record did, for the response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Applied {
    Events {
        accepted: u64,
        duplicates: u64,
    },
    Exposures {
        accepted: u64,
        duplicate_batch: bool,
        /// Every currently halted variant (after this batch).
        halted: Vec<HaltedRef>,
        /// The batch has a `config_id` this sidecar has not stored, and no
        /// `config`: the filter should send it.
        config_needed: bool,
        /// The current weights of every bandit experiment past its first
        /// period; the filters apply them (absent when there are none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        allocations: Vec<bandit::AllocationOut>,
    },
    Merge {
        /// False when nothing was merged (`duplicate`).
        merged: bool,
        /// The state had been merged before: a no-op.
        duplicate: bool,
        /// Users in the merged state (0 when nothing was merged).
        users: u64,
        /// The exporting sidecar and the LSN its export covers (absent for
        /// merges logged by older versions, which had no key).
        #[serde(skip_serializing_if = "Option::is_none")]
        sidecar: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lsn: Option<u64>,
        /// What happened, in words.
        message: String,
    },
    /// The merge would double count records (see [`MergeRefusal`]); the
    /// state is unchanged.
    MergeRefused {
        error: String,
    },
    Config {
        config_id: String,
        /// False when the configuration was already the current one.
        changed: bool,
    },
    Admin {
        action: String,
        experiment: String,
        variant: String,
        /// False when there was nothing to do (already halted, not halted).
        changed: bool,
        halted: Vec<HaltedRef>,
    },
    /// A bandit record: `changed` when it started the next period (a
    /// replica that raced to append the same period gets false, and why).
    Bandit {
        experiment: String,
        period: u32,
        changed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    /// Cannot happen for records written by this version (they were
    /// validated before being logged); counted and skipped.
    Unreadable {
        error: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Exposure {
    exp: u32,
    variant: u16,
    t_ms: i64,
    /// Seen in more than one variant (counted once per user, so the count
    /// does not depend on arrival order).
    conflicted: bool,
    /// The bandit allocation period of this (first) exposure; 0 for the
    /// configured weights. Not in the version 1 user encoding: snapshots
    /// from version 4 on carry the non-zero ones in a section of their own
    /// ([`V4Section`]).
    #[serde(skip)]
    period: u32,
}

impl Exposure {
    fn place(&self) -> Place {
        Place {
            exp: self.exp,
            variant: self.variant,
            t_ms: self.t_ms,
            period: self.period,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct UserMetric {
    /// Experiment id, or [`ANY`].
    scope: u32,
    metric: u32,
    count: u64,
    sum: f64,
    cov: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct UserState {
    exposures: SmallVec<[Exposure; 1]>,
    metrics: SmallVec<[UserMetric; 2]>,
    /// (dimension id, value id) of the user's segments, one per dimension
    /// (`super::segments`). Not in the version 1 encoding: version 4
    /// snapshots carry them in [`V4Section`].
    #[serde(skip)]
    segments: SmallVec<[(u32, u32); 2]>,
    /// Event values of quantile inputs; stored in the snapshot's derived
    /// section, not here ([`derived_hooks`]).
    #[serde(skip)]
    events: super::derived::UserEvents,
}

impl UserState {
    /// The user's totals for `metric` in experiment `exp`: events scoped
    /// to `exp` plus unscoped ones.
    fn value(&self, exp: u32, metric: u32) -> UserValue {
        let mut v = UserValue::default();
        for m in &self.metrics {
            if m.metric == metric && (m.scope == ANY || m.scope == exp) {
                v.count += m.count;
                v.y += m.sum;
                v.x += m.cov;
            }
        }
        v
    }

    /// Totals of every metric that applies in `exp`, by metric id.
    fn values(&self, exp: u32) -> SmallVec<[(u32, UserValue); 4]> {
        let mut out: SmallVec<[(u32, UserValue); 4]> = SmallVec::new();
        for m in &self.metrics {
            if (m.scope == ANY || m.scope == exp) && !out.iter().any(|(id, _)| *id == m.metric) {
                out.push((m.metric, self.value(exp, m.metric)));
            }
        }
        out
    }
}

/// Remembered event ids (128-bit SipHash of the id), in two generations:
/// when the current one is full it becomes the previous one and the
/// previous one is forgotten.
#[derive(Clone, Debug, Default)]
struct IdSet {
    current: HashSet<u128>,
    previous: HashSet<u128>,
    half: usize,
}

impl IdSet {
    fn new(capacity: usize) -> IdSet {
        IdSet {
            half: (capacity / 2).max(1),
            ..IdSet::default()
        }
    }

    /// Whether `h` is remembered.
    fn contains(&self, h: u128) -> bool {
        self.current.contains(&h) || self.previous.contains(&h)
    }

    /// True if `h` was not seen (and remembers it).
    fn insert(&mut self, h: u128) -> bool {
        if self.previous.contains(&h) || !self.current.insert(h) {
            return false;
        }
        if self.current.len() >= self.half {
            self.previous = std::mem::take(&mut self.current);
        }
        true
    }
}

/// The key an event id is remembered by.
pub fn id_hash(id: &str) -> u128 {
    // Fixed keys: the hashes are stored in snapshots and compared across
    // restarts and sidecars.
    let mut h = SipHasher13::new_with_keys(0x6162_6d65_7368_2d69, 0x642d_6465_6475_7031);
    std::hash::Hasher::write(&mut h, id.as_bytes());
    h.finish128().as_u128()
}

/// Batch numbers seen from one filter instance: every seq below `floor`,
/// and those in `seen`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SeqWindow {
    floor: u64,
    seen: BTreeSet<u64>,
}

impl SeqWindow {
    fn insert(&mut self, seq: u64, window: usize) -> bool {
        if seq < self.floor || !self.seen.insert(seq) {
            return false;
        }
        while self.seen.remove(&self.floor) {
            self.floor += 1;
        }
        while self.seen.len() > window {
            // A gap that was never filled (a batch the filter dropped):
            // give up on it.
            let first = self.seen.pop_first().expect("non-empty");
            self.floor = first + 1;
            while self.seen.remove(&self.floor) {
                self.floor += 1;
            }
        }
        true
    }
}

/// The event ids the engine remembers, readable by request handlers
/// without going through the applier thread (which would make each
/// request wait for the previous group's fsync): `POST /v1/events` drops
/// the events whose ids are already known before appending, so re-sent
/// batches do not grow the log. The applier holds the write lock only
/// while it inserts one record's ids. A handler's answer can be stale in
/// one direction only: an id applied after it looked is not known yet, so
/// two concurrent requests carrying the same new id may both be appended;
/// applying them de-duplicates the second, exactly as before.
#[derive(Clone, Debug)]
pub struct KnownIds(Arc<RwLock<IdSet>>);

impl KnownIds {
    fn read(&self) -> RwLockReadGuard<'_, IdSet> {
        // The lock does not poison (parking_lot), and the set stays
        // consistent whatever panicked while holding it (inserts are
        // single HashSet operations).
        self.0.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, IdSet> {
        self.0.write()
    }

    /// For each [`id_hash`] (`None`: an event without id), whether it is
    /// known; one read lock for the whole batch.
    pub fn known(&self, hashes: &[Option<u128>]) -> Vec<bool> {
        let ids = self.read();
        hashes
            .iter()
            .map(|h| h.is_some_and(|h| ids.contains(h)))
            .collect()
    }
}

/// The idempotency key of an exported state: who exported it and the LSN
/// it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    pub sidecar: SidecarId,
    pub lsn: u64,
}

impl std::fmt::Display for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sidecar {} at LSN {}", self.sidecar, self.lsn)
    }
}

/// Why an exported state cannot be merged (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not an exported abmesh state (it does not start with ABMSTATE); export one with GET /admin/state")]
    NotAState,
    #[error("a state without checksum or idempotency key, as abmesh exported it before; export it again from the sidecar (GET /admin/state)")]
    Unkeyed,
    #[error("the state is {got} bytes but its header says {want}: it was truncated or padded")]
    Length { got: u64, want: u64 },
    #[error("the state's checksum does not match (CRC-32C {got:08x}, expected {want:08x}): it was damaged in transit or storage")]
    Checksum { got: u32, want: u32 },
    #[error("exported-state format {0} (this abmesh reads format {STATE_FORMAT})")]
    Format(u32),
    #[error(transparent)]
    Payload(#[from] SnapshotError),
}

/// Why a snapshot, or the payload of an exported state, cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not an abmesh state: {0}")]
    Decode(String),
    #[error("state version {0} (this abmesh reads 1 to {SNAPSHOT_VERSION})")]
    Version(u32),
    #[error("not an abmesh state: {0} bytes after its end")]
    Trailing(usize),
    #[error("time buckets of {0} ms (this abmesh uses {BUCKET_MS})")]
    Buckets(i64),
    /// The state names an experiment, variant or metric it does not list.
    #[error("{0} the state does not list")]
    Dangling(&'static str),
}

/// Why the state could not be written out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoding the state: {0}")]
pub struct EncodeError(String);

/// Why a config or admin record of the log cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{kind} record: {message}")]
    Json { kind: &'static str, message: String },
    #[error("config record: bad config_id {0:?}")]
    ConfigId(String),
    #[error("config record: invalid configuration: {0}")]
    Configuration(String),
    #[error("admin record: unknown action {0:?}")]
    Action(String),
}

/// Why a merge is refused although the state is sound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeRefusal {
    /// The state holds this sidecar's own records.
    #[error(
        "this state holds this sidecar's own records ({key}): merging it would double count them"
    )]
    Own { key: StateKey },
    /// The state and this sidecar both hold a third sidecar's records.
    #[error("this sidecar already holds the records of sidecar {sidecar} up to LSN {have}, and this state holds them up to LSN {incoming}: merging it would double count them (merge each sidecar's state once, into a sidecar that holds none of its records)")]
    Overlap {
        sidecar: SidecarId,
        have: u64,
        incoming: u64,
    },
}

/// What the envelope of a sound exported state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateInfo {
    pub key: StateKey,
    /// The keys whose records the state holds: its own, then those it
    /// merged.
    pub holds: Vec<StateKey>,
    /// Users in the state.
    pub users: usize,
}

impl StateInfo {
    /// The refusal when the state holds the records of the sidecar `own`.
    pub fn holds_own(&self, own: SidecarId) -> Option<MergeRefusal> {
        self.holds
            .iter()
            .find(|k| k.sidecar == own)
            .map(|&key| MergeRefusal::Own { key })
    }
}

/// What merging a sound state would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeVerdict {
    Merge,
    /// Merged before: a no-op.
    Duplicate,
    Refused(MergeRefusal),
}

/// Per-user state, de-duplication memory, and the shared aggregates.
pub struct Engine {
    users: HashMap<Box<str>, UserState>,
    ids: KnownIds,
    /// The LSN up to which the records of each sidecar are held by merges
    /// (the keys merged, and the keys they held).
    merged: BTreeMap<SidecarId, u64>,
    batches: HashMap<Box<str>, SeqWindow>,
    shared: Arc<Mutex<Aggregates>>,
    definitions: Option<Arc<Definitions>>,
    decisions: Option<abmesh_filter::Decisions>,
    /// The filter's allocation per (definition index, bandit period), to
    /// check rows tagged with a period; cleared with the definitions.
    allocations: HashMap<(usize, u32), Option<abmesh_filter::Allocation>>,
    options: EngineOptions,
    notices: Arc<Mutex<Option<NoticeSink>>>,
    /// Whether the record being applied was appended by this process (the
    /// log's `RecordRef::local`, set by [`Engine::set_local`]): notices are
    /// sent only then, so with a replicated log each halt is notified once,
    /// by the replica that took the request that caused it.
    local: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// The snapshot, as written (borrowing) ...
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    base: BaseOut<'a>,
    extra: Extra,
    merged: Vec<(u128, u64)>,
    bandits: V4Section,
    /// After version 4's section: the derived metrics' per-user buckets.
    derived: derived_hooks::Section,
}

/// A user's segment values: (user, (dimension id, value id) pairs).
type UserSegments = (Box<str>, Vec<(u32, u32)>);

/// What version 4 adds after the merged keys: bandit experiments' periods,
/// the period of every user's first exposure that is not period 0, and
/// the segments (registry and users' values).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct V4Section {
    histories: Vec<(String, BanditHistory)>,
    /// (user, experiment id, period).
    periods: Vec<(Box<str>, u32, u32)>,
    registry: SegmentRegistry,
    /// (user, its (dimension id, value id) pairs).
    segments: Vec<UserSegments>,
}

/// ... (the version 1 fields) ...
#[derive(Serialize)]
struct BaseOut<'a> {
    bucket_ms: i64,
    experiments: Vec<ExperimentRecord>,
    metrics: &'a [MetricInfo],
    counters: &'a Counters,
    applied_lsn: u64,
    users: &'a HashMap<Box<str>, UserState>,
    ids_previous: &'a HashSet<u128>,
    ids_current: &'a HashSet<u128>,
    batches: &'a HashMap<Box<str>, SeqWindow>,
}

/// ... and as read (after the version).
#[derive(Deserialize)]
struct SnapshotIn {
    #[serde(skip)]
    extra: Extra,
    /// Version 3: (sidecar id, LSN) of the states merged.
    #[serde(skip)]
    merged: Vec<(u128, u64)>,
    /// Version 4: bandit periods (exposures' periods already attached to
    /// `users`).
    #[serde(skip)]
    bandits: Vec<(String, BanditHistory)>,
    /// Version 4: the segment registry (users' values already attached).
    #[serde(skip)]
    registry: SegmentRegistry,
    /// The derived metrics' section, when the snapshot has one.
    #[serde(skip)]
    derived: derived_hooks::Section,
    bucket_ms: i64,
    experiments: Vec<ExperimentRecord>,
    metrics: Vec<MetricInfo>,
    counters: Counters,
    applied_lsn: u64,
    users: HashMap<Box<str>, UserState>,
    ids_previous: HashSet<u128>,
    ids_current: HashSet<u128>,
    batches: HashMap<Box<str>, SeqWindow>,
}

/// What version 2 adds after the version 1 fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Extra {
    /// The current definitions, if a filter's configuration gave them.
    learned: Option<LearnedConfig>,
    known_configs: Vec<u64>,
    /// Per experiment record, per variant (same order).
    health: Vec<Vec<Health>>,
    guard: GuardState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LearnedConfig {
    id: u64,
    bytes: Vec<u8>,
}

/// A [`RecordKind::Config`] record.
#[derive(Deserialize)]
struct ConfigRecord<'a> {
    #[serde(borrow)]
    config_id: &'a str,
    #[serde(borrow)]
    config: &'a serde_json::value::RawValue,
}

/// A [`RecordKind::Admin`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminAction {
    /// `halt` or `lift`.
    pub action: String,
    pub experiment: String,
    pub variant: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ExperimentRecord {
    name: String,
    variants: Vec<String>,
    exposure_rows: u64,
    mismatches: u64,
    conflicts: u64,
}

impl Engine {
    /// An empty engine.
    pub fn new(definitions: Option<Arc<Definitions>>, options: EngineOptions) -> Engine {
        Engine {
            users: HashMap::new(),
            ids: KnownIds(Arc::new(RwLock::new(IdSet::new(options.dedup_capacity)))),
            merged: BTreeMap::new(),
            batches: HashMap::new(),
            shared: Arc::new(Mutex::new(Aggregates::new(definitions.clone()))),
            decisions: definitions.as_ref().map(|d| d.decisions()),
            allocations: HashMap::new(),
            definitions,
            options,
            notices: Arc::default(),
            local: true,
        }
    }

    /// Rebuilds an engine from a snapshot (`None`: empty), for
    /// `abmesh_store::Store::open`.
    pub fn restore(
        snapshot: Option<&[u8]>,
        definitions: Option<Arc<Definitions>>,
        options: EngineOptions,
    ) -> Result<Engine, SnapshotError> {
        let snapshot = snapshot.map(decode_snapshot).transpose()?;
        // Definitions learned from a filter replace --experiments.
        let learned = snapshot
            .as_ref()
            .and_then(|s| s.extra.learned.as_ref())
            .and_then(|c| match Definitions::from_json_with_id(&c.bytes, c.id) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::error!(config_id = %format_config_id(c.id), error = %e, "the snapshot's learned configuration no longer parses; using --experiments until a filter sends it again");
                    None
                }
            });
        let mut engine = match learned {
            Some(d) => {
                if definitions.is_some() {
                    tracing::info!(config_id = %format_config_id(d.id()), "experiment definitions learned from a filter's configuration replace --experiments");
                }
                let e = Engine::new(Some(d.clone()), options);
                e.shared.lock().learned = true;
                e
            }
            None => Engine::new(definitions, options),
        };
        if let Some(s) = snapshot {
            engine.merged = s
                .merged
                .iter()
                .map(|&(id, lsn)| (SidecarId(id), lsn))
                .collect();
            {
                let mut ids = engine.ids.write();
                ids.previous = s.ids_previous;
                ids.current = s.ids_current;
            }
            engine.batches = s.batches;
            let users = s.users;
            let mut agg = engine.shared.lock();
            agg.applied_lsn = s.applied_lsn;
            agg.counters = s.counters;
            // Ids in the snapshot index these registries; the definitions
            // registered theirs first, so the ids may have moved.
            let exp_map = register_experiments(&mut agg, &s.experiments);
            let metric_map = register_metrics(&mut agg, &s.metrics, true);
            for (rec, (id, _)) in s.experiments.iter().zip(&exp_map) {
                let e = &mut agg.experiments[*id as usize];
                e.exposure_rows = rec.exposure_rows;
                e.mismatches = rec.mismatches;
            }
            add_extra(&mut agg, &s.extra, &exp_map);
            agg.guard = s.extra.guard.clone();
            agg.bandits = s.bandits.iter().cloned().collect();
            agg.segments = s.registry.clone();
            drop(agg);
            if exp_map.iter().enumerate().all(|(i, &(e, ref vs))| {
                e == i as u32 && vs.iter().enumerate().all(|(j, &v)| v == j as u16)
            }) && metric_map.iter().enumerate().all(|(i, &m)| m == i as u32)
            {
                // The usual case: ids are unchanged; rebuild the sums.
                engine.users = users;
                let mut agg = engine.shared.lock();
                for user in engine.users.values() {
                    for e in &user.exposures {
                        agg.add_user(e.place(), &user.segments, &user.values(e.exp), 1.0);
                        derived_hooks::add_user_events(user, &mut agg, e.exp, e.variant, 1.0);
                        if e.conflicted {
                            agg.experiments[e.exp as usize].conflicts += 1;
                        }
                    }
                }
            } else {
                // The definitions registered names in another order than
                // the snapshot's: fold users in through the id maps.
                for (name, user) in users {
                    let segs = user.segments.clone();
                    engine.fold_user(&name, &user, &exp_map, &metric_map, &segs);
                }
            }
        }
        Ok(engine)
    }

    /// The aggregates reports read.
    pub fn aggregates(&self) -> Arc<Mutex<Aggregates>> {
        self.shared.clone()
    }

    /// The remembered event ids, for request handlers.
    pub fn known_ids(&self) -> KnownIds {
        self.ids.clone()
    }

    /// Number of users with any state (exposed or not).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Applies a validated `POST /v1/events` body.
    pub fn apply_outcomes(&mut self, events: &[Outcome<'_>]) -> Applied {
        // Hash outside the lock, insert under it (briefly: handlers read
        // the set concurrently), then aggregate.
        let hashes: Vec<Option<u128>> = events
            .iter()
            .map(|e| e.id.as_ref().map(|id| id_hash(id.as_str())))
            .collect();
        let fresh: Vec<bool> = {
            let mut ids = self.ids.write();
            hashes
                .iter()
                .map(|h| h.is_none_or(|h| ids.insert(h)))
                .collect()
        };
        let shared = self.shared.clone();
        let mut agg = shared.lock();
        let (mut accepted, mut duplicates) = (0u64, 0u64);
        for (ev, fresh) in events.iter().zip(fresh) {
            if !fresh {
                duplicates += 1;
                continue;
            }
            accepted += 1;
            let metric = agg.metric_id(ev.metric.as_str());
            {
                let info = &mut agg.metrics[metric as usize];
                if ev.value.is_some() {
                    info.value_events += 1;
                } else if ev.covariate.is_none() {
                    info.conversion_events += 1;
                }
                if ev.covariate.is_some() {
                    info.covariate_events += 1;
                }
            }
            let scope = match &ev.experiment {
                Some(name) => agg.experiment_id(name.as_str()),
                None => ANY,
            };
            let delta = UserMetric {
                scope,
                metric,
                count: u64::from(ev.is_outcome()),
                sum: ev.amount(),
                cov: ev.covariate.map_or(0.0, |c| c.0),
            };
            let user = user_mut(&mut self.users, ev.user.as_str());
            if let Some(segs) = &ev.segments {
                for (dim, value) in &segs.0 {
                    if let Some(d) = agg.segments.dimension_id(dim.as_str()) {
                        let v = agg.segments.value_id(d, value.as_str());
                        set_segment(user, &mut agg, d, v);
                    }
                }
            }
            add_metric(user, &mut agg, delta);
            derived_hooks::record_event(user, &mut agg, scope, metric, ev.value.map(|v| v.0));
        }
        agg.counters.events += accepted;
        agg.counters.duplicate_events += duplicates;
        Applied::Events {
            accepted,
            duplicates,
        }
    }

    /// Applies a validated `POST /v1/exposures` batch (outside the log: the
    /// time of halts it causes is its latest exposure time).
    pub fn apply_exposures(&mut self, batch: &ExposureBatch<'_>) -> Applied {
        let t = batch.exposures.iter().map(|r| r.t_ms()).max().unwrap_or(0);
        self.apply_batch(batch, t, 0)
    }

    /// Applies a validated exposure batch received at `received_ms` as log
    /// record `lsn`: exposures, health rows, then the guardrails and the
    /// sample-ratio alarms of the defined experiments.
    pub fn apply_batch(
        &mut self,
        batch: &ExposureBatch<'_>,
        received_ms: i64,
        lsn: u64,
    ) -> Applied {
        let shared = self.shared.clone();
        let mut agg = shared.lock();
        let config_needed = batch.config.is_none()
            && batch
                .config_id()
                .is_some_and(|id| !agg.known_configs.contains(&id));
        let window = self.options.batch_window;
        let fresh = match self.batches.get_mut(batch.instance.as_str()) {
            Some(w) => w.insert(batch.seq, window),
            None => {
                let mut w = SeqWindow::default();
                w.insert(batch.seq, window);
                self.batches.insert(batch.instance.as_str().into(), w);
                true
            }
        };
        if !fresh {
            agg.counters.duplicate_batches += 1;
            return Applied::Exposures {
                accepted: 0,
                duplicate_batch: true,
                halted: agg.halted(),
                config_needed,
                allocations: bandit::allocations(&agg),
            };
        }
        agg.counters.exposure_batches += 1;
        agg.counters.dropped_exposures += batch.dropped;
        agg.counters.exposure_rows += batch.exposures.len() as u64;
        // Batch indexes → (experiment id, variant ids, definition index).
        let mut map: Vec<(u32, Vec<u16>, Option<usize>)> =
            Vec::with_capacity(batch.experiments.len());
        for e in &batch.experiments {
            let id = agg.experiment_id(e.name.as_str());
            let exp = &mut agg.experiments[id as usize];
            let variants = e.variants.iter().map(|v| exp.variant(v.as_str())).collect();
            let def = self
                .definitions
                .as_ref()
                .and_then(|d| d.get(e.name.as_str()))
                .map(|(i, _)| i);
            map.push((id, variants, def));
        }
        for row in &batch.exposures {
            let (exp, ref variants, def) = map[row.experiment()];
            let variant = variants[row.variant()];
            agg.experiments[exp as usize].exposure_rows += 1;
            // A period this sidecar never started (a filter with another
            // sidecar's state, or a buggy one) is not trusted: the row
            // counts in period 0 and as a mismatch, so a stream of made-up
            // periods cannot grow the per-period cells or the cache below.
            let period = bandit::known_period(&agg, exp, row.period());
            if let (Some(d), Some(i), Some(buf)) = (&self.definitions, def, self.decisions.as_mut())
            {
                let agg = &mut *agg;
                let expected = match (row.period(), period) {
                    (0, _) => d.assign(row.user(), i, buf),
                    (_, None) => None,
                    (_, Some(p)) => self
                        .allocations
                        .entry((i, p))
                        .or_insert_with(|| bandit::allocation(agg, d, i, p))
                        .as_ref()
                        .and_then(|a| d.assign_with(row.user(), i, a, buf)),
                };
                let e = &mut agg.experiments[exp as usize];
                if expected != Some(e.variants[variant as usize].as_str()) {
                    e.mismatches += 1;
                }
            }
            let user = user_mut(&mut self.users, row.user());
            add_exposure(
                user,
                &mut agg,
                exp,
                variant,
                row.t_ms(),
                period.unwrap_or(0),
                false,
            );
        }
        for row in &batch.health {
            let (exp, ref variants, _) = map[row.experiment()];
            let variant = variants[row.variant()];
            agg.experiments[exp as usize].cells[variant as usize]
                .health
                .merge(&row.health());
        }
        bandit::start_periods(&mut agg, received_ms, lsn);
        let notices = evaluate_guardrails(&mut agg, received_ms, lsn);
        let out = Applied::Exposures {
            accepted: batch.exposures.len() as u64,
            duplicate_batch: false,
            halted: agg.halted(),
            config_needed,
            allocations: bandit::allocations(&agg),
        };
        drop(agg);
        self.notify(notices);
        out
    }

    /// Applies a [`RecordKind::Config`] record: the configuration replaces the
    /// definitions, unless it is already the current one.
    pub fn apply_config(&mut self, payload: &[u8]) -> Result<Applied, RecordError> {
        let rec: ConfigRecord = serde_json::from_slice(payload).map_err(|e| RecordError::Json {
            kind: "config",
            message: e.to_string(),
        })?;
        let id = crate::ingest::exposure::parse_config_id(rec.config_id)
            .ok_or_else(|| RecordError::ConfigId(rec.config_id.to_owned()))?;
        let mut agg = self.shared.lock();
        agg.known_configs.insert(id);
        if self.definitions.as_ref().is_some_and(|d| d.id() == id) {
            return Ok(Applied::Config {
                config_id: format_config_id(id),
                changed: false,
            });
        }
        let defs = Definitions::from_json_with_id(rec.config.get().as_bytes(), id)
            .map_err(|e| RecordError::Configuration(e.to_string()))?;
        let defs = Arc::new(defs);
        let before = if agg.learned {
            "the previous filter configuration"
        } else if self.definitions.is_some() {
            "--experiments"
        } else {
            "no definitions"
        };
        if self.live() {
            tracing::info!(
                config_id = %format_config_id(id),
                experiments = defs.experiments().len(),
                "experiment definitions learned from a filter's configuration; they replace {before}"
            );
        }
        agg.set_definitions(defs.clone(), true);
        derived_hooks::rebuild(&self.users, &mut agg);
        self.decisions = Some(defs.decisions());
        self.allocations.clear();
        self.definitions = Some(defs);
        Ok(Applied::Config {
            config_id: format_config_id(id),
            changed: true,
        })
    }

    /// Applies a [`RecordKind::Admin`] record: an operator halts or lifts a
    /// variant.
    pub fn apply_admin(
        &mut self,
        payload: &[u8],
        received_ms: i64,
        lsn: u64,
    ) -> Result<Applied, RecordError> {
        let a: AdminAction = serde_json::from_slice(payload).map_err(|e| RecordError::Json {
            kind: "admin",
            message: e.to_string(),
        })?;
        let mut agg = self.shared.lock();
        let mut notices = Vec::new();
        let changed = match a.action.as_str() {
            "halt" => {
                if agg.guard.active(&a.experiment, &a.variant).is_some() {
                    false
                } else {
                    let halt = Halt {
                        experiment: a.experiment.clone(),
                        variant: a.variant.clone(),
                        time_ms: received_ms,
                        lsn,
                        source: HaltSource::Manual,
                        rule: None,
                        message: a
                            .reason
                            .clone()
                            .unwrap_or_else(|| "no reason given".to_owned()),
                        estimate: None,
                        ci_low: None,
                        ci_high: None,
                        limit: None,
                        p_value: None,
                        lifted_ms: None,
                        lift_reason: None,
                    };
                    notices.push(halt.notice());
                    agg.guard.halts.push(halt);
                    true
                }
            }
            "lift" => lift(&mut agg, &a, received_ms, &mut notices),
            other => return Err(RecordError::Action(other.to_owned())),
        };
        let out = Applied::Admin {
            action: a.action,
            experiment: a.experiment,
            variant: a.variant,
            changed,
            halted: agg.halted(),
        };
        drop(agg);
        self.notify(notices);
        Ok(out)
    }

    /// Applies a [`RecordKind::Bandit`] record: the next allocation period
    /// of a bandit experiment starts (a record for any other period, e.g.
    /// a second replica's for the same period, changes nothing).
    pub fn apply_bandit(&mut self, payload: &[u8], lsn: u64) -> Result<Applied, RecordError> {
        let rec: BanditRecord = serde_json::from_slice(payload).map_err(|e| RecordError::Json {
            kind: "bandit",
            message: e.to_string(),
        })?;
        let mut agg = self.shared.lock();
        let out = match bandit::apply(&mut agg, &rec, lsn) {
            Ok(p) => {
                let notice = json!({
                    "event": "bandit",
                    "experiment": rec.experiment,
                    "period": p.period,
                    "weights": rec.weights,
                    "time_ms": p.started_ms,
                });
                drop(agg);
                if self.live() {
                    tracing::info!(experiment = %rec.experiment, period = p.period, weights = ?rec.weights, "bandit allocation period started");
                }
                self.notify(vec![notice]);
                Applied::Bandit {
                    experiment: rec.experiment,
                    period: rec.period,
                    changed: true,
                    refused: None,
                }
            }
            Err(why) => Applied::Bandit {
                experiment: rec.experiment.clone(),
                period: rec.period,
                changed: false,
                refused: Some(why.to_string()),
            },
        };
        Ok(out)
    }

    /// The slot of the notice sink: empty while replaying; whoever opens
    /// the log fills it once recovery is done.
    pub fn notice_slot(&self) -> Arc<Mutex<Option<NoticeSink>>> {
        self.notices.clone()
    }

    /// Whether notices go anywhere (false during a restart's replay).
    fn live(&self) -> bool {
        self.notices.lock().is_some()
    }

    fn notify(&self, notices: Vec<serde_json::Value>) {
        if notices.is_empty() || !self.local {
            return;
        }
        if let Some(sink) = self.notices.lock().as_ref() {
            for n in notices {
                sink(n);
            }
        }
    }

    /// Writes the whole state (the snapshot format; also what
    /// `GET /admin/state` exports and [`Engine::merge_state`] reads).
    pub fn encode_state(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let agg = self.shared.lock();
        let extra = Extra {
            learned: self
                .definitions
                .as_ref()
                .filter(|_| agg.learned)
                .map(|d| LearnedConfig {
                    id: d.id(),
                    bytes: d.raw().to_vec(),
                }),
            known_configs: agg.known_configs.iter().copied().collect(),
            health: agg
                .experiments
                .iter()
                .map(|e| e.cells.iter().map(|c| c.health.clone()).collect())
                .collect(),
            guard: agg.guard.clone(),
        };
        let ids = self.ids.read();
        let s = SnapshotOut {
            version: SNAPSHOT_VERSION,
            base: self.base(&agg, &ids),
            extra,
            merged: self.merged.iter().map(|(id, &lsn)| (id.0, lsn)).collect(),
            bandits: V4Section {
                histories: agg
                    .bandits
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                periods: self
                    .users
                    .iter()
                    .flat_map(|(name, u)| {
                        u.exposures
                            .iter()
                            .filter(|e| e.period > 0)
                            .map(move |e| (name.clone(), e.exp, e.period))
                    })
                    .collect(),
                registry: agg.segments.clone(),
                segments: self
                    .users
                    .iter()
                    .filter(|(_, u)| !u.segments.is_empty())
                    .map(|(name, u)| (name.clone(), u.segments.to_vec()))
                    .collect(),
            },
            derived: derived_hooks::section(&self.users),
        };
        let bytes = postcard::to_stdvec(&s).map_err(|e| EncodeError(e.to_string()))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// The version 1 fields of the snapshot.
    fn base<'a>(&'a self, agg: &'a Aggregates, ids: &'a IdSet) -> BaseOut<'a> {
        BaseOut {
            bucket_ms: BUCKET_MS,
            experiments: agg
                .experiments
                .iter()
                .map(|e| ExperimentRecord {
                    name: e.name.clone(),
                    variants: e.variants.clone(),
                    exposure_rows: e.exposure_rows,
                    mismatches: e.mismatches,
                    conflicts: e.conflicts,
                })
                .collect(),
            metrics: &agg.metrics,
            counters: &agg.counters,
            applied_lsn: agg.applied_lsn,
            users: &self.users,
            ids_previous: &ids.previous,
            ids_current: &ids.current,
            batches: &self.batches,
        }
    }

    /// The state in its export envelope (see the module docs), as
    /// `GET /admin/state` serves it: exported by sidecar `sidecar`,
    /// covering every record up to `lsn`.
    pub fn export_state(
        &self,
        sidecar: SidecarId,
        lsn: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&STATE_FORMAT.to_le_bytes());
        out.extend_from_slice(&sidecar.0.to_le_bytes());
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        let payload = out.len();
        self.encode_state(out)?;
        let len = (out.len() - payload) as u64;
        out[payload - 8..payload].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Checks an exported state (envelope, checksum, then every part of
    /// the payload) and says what it holds, without merging it.
    pub fn inspect_state(bytes: &[u8]) -> Result<StateInfo, StateError> {
        let (key, payload) = open_envelope(bytes)?;
        let s = decode_snapshot(payload)?;
        Ok(state_info(key, &s))
    }

    /// Checks that `bytes` is an exported state this version can merge
    /// ([`Engine::inspect_state`] without what it found).
    pub fn validate_state(bytes: &[u8]) -> Result<(), StateError> {
        Engine::inspect_state(bytes).map(|_| ())
    }

    /// Checks a state's idempotency key against the merges this state
    /// holds (see the module docs).
    pub fn merge_verdict(&self, info: &StateInfo) -> MergeVerdict {
        if info.key.lsn == 0 {
            // An export of an empty log holds no records.
            return MergeVerdict::Merge;
        }
        if self.merged.get(&info.key.sidecar) == Some(&info.key.lsn) {
            return MergeVerdict::Duplicate;
        }
        for k in &info.holds {
            if let Some(&have) = self.merged.get(&k.sidecar) {
                return MergeVerdict::Refused(MergeRefusal::Overlap {
                    sidecar: k.sidecar,
                    have,
                    incoming: k.lsn,
                });
            }
        }
        MergeVerdict::Merge
    }

    /// Merges another sidecar's exported state: users' totals add, the
    /// earliest exposure wins, event ids and batch numbers are united, and
    /// counters add. Exact for any split of the events between the two,
    /// users seen by both included (see the module docs of
    /// [`crate::aggregate`]). Health counters add; a variant halted on
    /// either side is halted; the other side's learned definitions are
    /// adopted when this one has none learned.
    ///
    /// A state merged before is a no-op, and one that would double count
    /// records is refused ([`Applied::MergeRefused`]); see the module docs.
    /// Besides exported states (what `POST /admin/state/merge` appends),
    /// this reads the bare snapshot encoding that older versions logged as
    /// merge records, so their logs replay as before.
    pub fn merge_state(&mut self, bytes: &[u8]) -> Result<Applied, StateError> {
        let (key, s) = if bytes.starts_with(STATE_MAGIC) {
            let (key, payload) = open_envelope(bytes)?;
            (Some(key), decode_snapshot(payload)?)
        } else {
            (None, decode_snapshot(bytes)?)
        };
        let info = key.map(|k| state_info(k, &s));
        if let Some(info) = &info {
            match self.merge_verdict(info) {
                MergeVerdict::Merge => {}
                MergeVerdict::Duplicate => {
                    return Ok(Applied::Merge {
                        merged: false,
                        duplicate: true,
                        users: 0,
                        sidecar: Some(info.key.sidecar.to_string()),
                        lsn: Some(info.key.lsn),
                        message: format!(
                            "this state ({}) was merged before: nothing changed",
                            info.key
                        ),
                    });
                }
                MergeVerdict::Refused(r) => {
                    return Ok(Applied::MergeRefused {
                        error: r.to_string(),
                    })
                }
            }
            if info.key.lsn > 0 {
                for k in &info.holds {
                    self.merged.insert(k.sidecar, k.lsn);
                }
            }
        }
        let users = self.merge_snapshot(s);
        Ok(match key {
            Some(k) => Applied::Merge {
                merged: true,
                duplicate: false,
                users,
                sidecar: Some(k.sidecar.to_string()),
                lsn: Some(k.lsn),
                message: format!("merged {users} users from {k}"),
            },
            None => Applied::Merge {
                merged: true,
                duplicate: false,
                users,
                sidecar: None,
                lsn: None,
                message: format!("merged {users} users from a state without key"),
            },
        })
    }

    fn merge_snapshot(&mut self, s: SnapshotIn) -> u64 {
        let mut agg = self.shared.lock();
        if let (false, Some(c)) = (agg.learned, &s.extra.learned) {
            if let Ok(d) = Definitions::from_json_with_id(&c.bytes, c.id) {
                let d = Arc::new(d);
                agg.set_definitions(d.clone(), true);
                derived_hooks::rebuild(&self.users, &mut agg);
                self.decisions = Some(d.decisions());
                self.allocations.clear();
                self.definitions = Some(d);
            }
        }
        let exp_map = register_experiments(&mut agg, &s.experiments);
        let metric_map = register_metrics(&mut agg, &s.metrics, false);
        agg.counters.merge(&s.counters);
        for (i, rec) in s.experiments.iter().enumerate() {
            let e = &mut agg.experiments[exp_map[i].0 as usize];
            e.exposure_rows += rec.exposure_rows;
            e.mismatches += rec.mismatches;
            // Conflicts are users: recounted as the users are folded in.
        }
        add_extra(&mut agg, &s.extra, &exp_map);
        agg.guard.merge(&s.extra.guard);
        // A bandit's periods are decisions, like halts: a merged state's
        // are adopted where this one has none.
        for (name, h) in &s.bandits {
            agg.bandits.entry(name.clone()).or_insert_with(|| h.clone());
        }
        drop(agg);
        {
            let mut ids = self.ids.write();
            for h in s.ids_previous.into_iter().chain(s.ids_current) {
                ids.insert(h);
            }
        }
        let window = self.options.batch_window;
        for (inst, w) in s.batches {
            let mine = self.batches.entry(inst).or_default();
            mine.floor = mine.floor.max(w.floor);
            let floor = mine.floor;
            mine.seen.retain(|&q| q >= floor);
            for q in w.seen {
                mine.insert(q, window);
            }
        }
        let users = s.users.len() as u64;
        // The other state's segment ids, in this one's registry.
        let seg_map: Vec<Option<(u32, Vec<u32>)>> = {
            let mut agg = self.shared.lock();
            s.registry
                .dimensions
                .iter()
                .map(|d| {
                    let id = agg.segments.dimension_id(&d.name)?;
                    let values = d
                        .values
                        .iter()
                        .map(|v| agg.segments.value_id(id, v))
                        .collect();
                    Some((id, values))
                })
                .collect()
        };
        for (name, user) in &s.users {
            let segs: Vec<(u32, u32)> = user
                .segments
                .iter()
                .filter_map(|&(d, v)| {
                    let (id, values) = seg_map.get(d as usize)?.as_ref()?;
                    Some((*id, *values.get(v as usize)?))
                })
                .collect();
            self.fold_user(name, user, &exp_map, &metric_map, &segs);
        }
        users
    }

    /// Adds a user's state from another id space.
    /// `segments` are the user's segment values in this engine's ids.
    fn fold_user(
        &mut self,
        name: &str,
        other: &UserState,
        exp_map: &[(u32, Vec<u16>)],
        metric_map: &[u32],
        segments: &[(u32, u32)],
    ) {
        let shared = self.shared.clone();
        let mut agg = shared.lock();
        let user = user_mut(&mut self.users, name);
        for &(d, v) in segments {
            set_segment(user, &mut agg, d, v);
        }
        for m in &other.metrics {
            let scope = if m.scope == ANY {
                ANY
            } else {
                exp_map[m.scope as usize].0
            };
            add_metric(
                user,
                &mut agg,
                UserMetric {
                    scope,
                    metric: metric_map[m.metric as usize],
                    ..*m
                },
            );
        }
        derived_hooks::fold_events(user, &mut agg, other, exp_map, metric_map);
        for e in &other.exposures {
            let (exp, ref variants) = exp_map[e.exp as usize];
            add_exposure(
                user,
                &mut agg,
                exp,
                variants[e.variant as usize],
                e.t_ms,
                e.period,
                e.conflicted,
            );
        }
    }
}

/// Checks an export envelope: its key and its payload.
fn open_envelope(bytes: &[u8]) -> Result<(StateKey, &[u8]), StateError> {
    if !bytes.starts_with(STATE_MAGIC) {
        // The bare snapshot encoding (what older versions exported) starts
        // with its version, a small varint.
        return Err(match bytes.first() {
            Some(&v) if (1..=SNAPSHOT_VERSION).contains(&u32::from(v)) => StateError::Unkeyed,
            _ => StateError::NotAState,
        });
    }
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let got = bytes.len() as u64;
    if bytes.len() < STATE_HEADER + 4 {
        return Err(StateError::Length {
            got,
            want: (STATE_HEADER + 4) as u64,
        });
    }
    let want = le64(STATE_HEADER - 8).saturating_add((STATE_HEADER + 4) as u64);
    if got != want {
        return Err(StateError::Length { got, want });
    }
    let body = &bytes[..bytes.len() - 4];
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[bytes.len() - 4..]);
    let (want, got) = (u32::from_le_bytes(crc), crc32c::crc32c(body));
    if want != got {
        return Err(StateError::Checksum { got, want });
    }
    let mut format = [0u8; 4];
    format.copy_from_slice(&bytes[8..12]);
    let format = u32::from_le_bytes(format);
    if format != STATE_FORMAT {
        return Err(StateError::Format(format));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[12..28]);
    let key = StateKey {
        sidecar: SidecarId(u128::from_le_bytes(id)),
        lsn: le64(28),
    };
    Ok((key, &body[STATE_HEADER..]))
}

fn state_info(key: StateKey, s: &SnapshotIn) -> StateInfo {
    let mut holds = vec![key];
    holds.extend(s.merged.iter().map(|&(id, lsn)| StateKey {
        sidecar: SidecarId(id),
        lsn,
    }));
    StateInfo {
        key,
        holds,
        users: s.users.len(),
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotIn, SnapshotError> {
    let bad = |e: postcard::Error| SnapshotError::Decode(e.to_string());
    let (version, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(bad)?;
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(SnapshotError::Version(version));
    }
    let (mut s, rest) = postcard::take_from_bytes::<SnapshotIn>(rest).map_err(bad)?;
    if version >= 2 {
        let (extra, rest) = postcard::take_from_bytes::<Extra>(rest).map_err(bad)?;
        s.extra = extra;
        let mut rest = rest;
        if version >= 3 {
            let (merged, after) =
                postcard::take_from_bytes::<Vec<(u128, u64)>>(rest).map_err(bad)?;
            s.merged = merged;
            rest = after;
        }
        if version >= 4 {
            let (b, after) = postcard::take_from_bytes::<V4Section>(rest).map_err(bad)?;
            rest = after;
            for (name, exp, period) in b.periods {
                let e = s
                    .users
                    .get_mut(&name)
                    .and_then(|u| u.exposures.iter_mut().find(|e| e.exp == exp))
                    .ok_or(SnapshotError::Dangling(
                        "a bandit period names a user or exposure",
                    ))?;
                e.period = period;
            }
            s.bandits = b.histories;
            let mut registry = b.registry;
            registry.reindex();
            for (name, segs) in b.segments {
                let fits = segs.iter().all(|&(d, v)| {
                    registry
                        .dimensions
                        .get(d as usize)
                        .is_some_and(|x| (v as usize) < x.values.len())
                });
                let user =
                    s.users
                        .get_mut(&name)
                        .filter(|_| fits)
                        .ok_or(SnapshotError::Dangling(
                            "a user's segment names a user, dimension or value",
                        ))?;
                user.segments = segs.into();
            }
            s.registry = registry;
            // Then the derived metrics' section (may be absent).
            let (derived, after) = derived_hooks::take_section(rest)?;
            s.derived = derived;
            rest = after;
        }
        if version >= 3 && !rest.is_empty() {
            return Err(SnapshotError::Trailing(rest.len()));
        }
    }
    if !s.extra.health.is_empty() {
        let fits = s.extra.health.len() == s.experiments.len()
            && s.extra
                .health
                .iter()
                .zip(&s.experiments)
                .all(|(h, e)| h.len() <= e.variants.len());
        if !fits {
            return Err(SnapshotError::Dangling(
                "health counters name experiments or variants",
            ));
        }
    }
    if s.bucket_ms != BUCKET_MS {
        return Err(SnapshotError::Buckets(s.bucket_ms));
    }
    let section = std::mem::take(&mut s.derived);
    derived_hooks::distribute(section, &mut s.users, s.experiments.len(), s.metrics.len())?;
    let n_exp = s.experiments.len();
    let n_metric = s.metrics.len();
    for u in s.users.values() {
        for e in &u.exposures {
            if e.exp as usize >= n_exp
                || e.variant as usize >= s.experiments[e.exp as usize].variants.len()
            {
                return Err(SnapshotError::Dangling(
                    "an exposure names an experiment or variant",
                ));
            }
        }
        for m in &u.metrics {
            if (m.scope != ANY && m.scope as usize >= n_exp) || m.metric as usize >= n_metric {
                return Err(SnapshotError::Dangling(
                    "a user's metric names an experiment or metric",
                ));
            }
        }
    }
    Ok(s)
}

/// Registers the experiments (and variants) of a state; returns the map
/// from its ids to ours.
fn register_experiments(
    agg: &mut Aggregates,
    records: &[ExperimentRecord],
) -> Vec<(u32, Vec<u16>)> {
    records
        .iter()
        .map(|r| {
            let id = agg.experiment_id(&r.name);
            let e = &mut agg.experiments[id as usize];
            let vs = r.variants.iter().map(|v| e.variant(v)).collect();
            (id, vs)
        })
        .collect()
}

/// Registers the metrics of a state; `restore` copies their counters,
/// otherwise they are added.
fn register_metrics(agg: &mut Aggregates, metrics: &[MetricInfo], restore: bool) -> Vec<u32> {
    metrics
        .iter()
        .map(|m| {
            let id = agg.metric_id(&m.name);
            let mine = &mut agg.metrics[id as usize];
            if restore {
                *mine = m.clone();
            } else {
                mine.value_events += m.value_events;
                mine.conversion_events += m.conversion_events;
                mine.covariate_events += m.covariate_events;
            }
            id
        })
        .collect()
}

/// Adds a state's health counters (through its id maps) and known
/// configuration ids.
fn add_extra(agg: &mut Aggregates, extra: &Extra, exp_map: &[(u32, Vec<u16>)]) {
    for (health, (id, vmap)) in extra.health.iter().zip(exp_map) {
        for (h, &v) in health.iter().zip(vmap) {
            agg.experiments[*id as usize].cells[v as usize]
                .health
                .merge(h);
        }
    }
    agg.known_configs
        .extend(extra.known_configs.iter().copied());
}

/// After a fresh exposure batch: every defined experiment's guardrails (a
/// breach halts the variant, unless it is the control, already halted, or
/// the rule was overridden for it) and sample-ratio check (notified once
/// until it clears). Returns the notices.
fn evaluate_guardrails(agg: &mut Aggregates, time_ms: i64, lsn: u64) -> Vec<serde_json::Value> {
    let mut notices = Vec::new();
    let Some(defs) = agg.definitions.clone() else {
        return notices;
    };
    for def in defs.experiments() {
        if def.guardrails.is_some() {
            if let Some(c) = checks::checks(agg, &def.name) {
                for check in c.checks.iter().filter(|c| checks::breaches(c)) {
                    let variant = &c.variants[check.variant];
                    if check.variant == c.control
                        || agg.guard.active(&def.name, variant).is_some()
                        || agg.guard.overridden(&def.name, variant, &check.rule)
                    {
                        continue;
                    }
                    let halt = Halt {
                        experiment: def.name.clone(),
                        variant: variant.clone(),
                        time_ms,
                        lsn,
                        source: HaltSource::Guardrail,
                        rule: Some(check.rule.clone()),
                        message: check.message.clone(),
                        estimate: check.estimate,
                        ci_low: check.ci_low,
                        ci_high: check.ci_high,
                        limit: Some(check.limit),
                        p_value: check.p_value,
                        lifted_ms: None,
                        lift_reason: None,
                    };
                    notices.push(halt.notice());
                    agg.guard.halts.push(halt);
                }
            }
        }
        if let Some(n) = srm_alarm(agg, def, time_ms) {
            notices.push(n);
        }
    }
    notices
}

/// The sample-ratio check of a defined experiment on its users per
/// variant against the configured weights, halted variants left out (their
/// users go to the control, so their count stops growing). Notifies when
/// it starts failing; forgets once it passes again.
fn srm_alarm(
    agg: &mut Aggregates,
    def: &super::definitions::Defined,
    time_ms: i64,
) -> Option<serde_json::Value> {
    let e = agg.experiment(&def.name)?;
    let mut names = Vec::new();
    let mut counts = Vec::new();
    let mut weights = Vec::new();
    for (v, w) in def.variants.iter().zip(&def.weights) {
        if agg.guard.active(&def.name, v).is_some() {
            continue;
        }
        let users = e
            .variant_index(v)
            .map_or(0, |i| e.cells[i].total.users.max(0) as u64);
        names.push(v.clone());
        counts.push(users);
        weights.push(*w);
    }
    let total: u64 = counts.iter().sum();
    let weight_sum: f64 = weights.iter().sum();
    let enough = counts.len() >= 2
        && weights
            .iter()
            .all(|w| total as f64 * w / weight_sum >= SRM_MIN_EXPECTED);
    let adaptive = agg
        .bandits
        .get(&def.name)
        .is_some_and(|h| h.periods.len() > 1);
    let p = if adaptive {
        // Weights changed over time: each period against its own weights.
        srm_by_period(&bandit::period_counts(agg, def), SRM_MIN_EXPECTED)
            .ok()
            .map(|r| r.p_value)
    } else if enough {
        srm(&counts, &weights).ok().map(|r| r.p_value)
    } else {
        None
    };
    let alarmed = agg.guard.srm_alarms.contains(&def.name);
    match p {
        Some(p) if p < SRM_ALERT_P && !alarmed => {
            agg.guard.srm_alarms.insert(def.name.clone());
            Some(json!({
                "event": "srm",
                "experiment": def.name,
                "p_value": p,
                "variants": names,
                "counts": counts,
                "expected_shares": weights.iter().map(|w| w / weight_sum).collect::<Vec<_>>(),
                "adaptive": adaptive,
                "time_ms": time_ms,
            }))
        }
        Some(p) if p >= SRM_ALERT_P && alarmed => {
            agg.guard.srm_alarms.remove(&def.name);
            None
        }
        _ => None,
    }
}

/// Lifts a halted variant: the experiment's health window starts again,
/// and the metric guardrails that breach for the variant now (the health
/// rules cannot, on an empty window) are overridden for it, as is the rule
/// that halted it if it was a metric rule. False if it was not halted.
fn lift(
    agg: &mut Aggregates,
    a: &AdminAction,
    time_ms: i64,
    notices: &mut Vec<serde_json::Value>,
) -> bool {
    let Some(h) = agg.guard.active_mut(&a.experiment, &a.variant) else {
        return false;
    };
    h.lifted_ms = Some(time_ms);
    h.lift_reason = a.reason.clone();
    let halted_by = h.rule.clone();
    if let Some(id) = agg.exp_index.get(&a.experiment).copied() {
        for c in &mut agg.experiments[id as usize].cells {
            c.health = Health::default();
        }
    }
    let mut overrides: Vec<String> = halted_by
        .into_iter()
        .filter(|r| r.starts_with("metric:"))
        .collect();
    if let Some(c) = checks::checks(agg, &a.experiment) {
        overrides.extend(
            c.checks
                .iter()
                .filter(|k| checks::breaches(k) && c.variants[k.variant] == a.variant)
                .map(|k| k.rule.clone()),
        );
    }
    for rule in overrides {
        agg.guard
            .overrides
            .insert((a.experiment.clone(), a.variant.clone(), rule));
    }
    notices.push(json!({
        "event": "lift",
        "experiment": a.experiment,
        "variant": a.variant,
        "reason": a.reason,
        "time_ms": time_ms,
    }));
    true
}

fn user_mut<'a>(users: &'a mut HashMap<Box<str>, UserState>, name: &str) -> &'a mut UserState {
    if !users.contains_key(name) {
        users.insert(name.into(), UserState::default());
    }
    users.get_mut(name).expect("just inserted")
}

/// Adds `delta` (count, sum, covariate) to the user's (scope, metric)
/// totals and updates every exposed experiment it applies to.
fn add_metric(user: &mut UserState, agg: &mut Aggregates, delta: UserMetric) {
    let affected: SmallVec<[(Exposure, UserValue); 2]> = user
        .exposures
        .iter()
        .filter(|e| delta.scope == ANY || delta.scope == e.exp)
        .map(|e| (*e, user.value(e.exp, delta.metric)))
        .collect();
    let touch = derived_hooks::ratio_before(user, agg, &delta);
    match user
        .metrics
        .iter_mut()
        .find(|m| m.scope == delta.scope && m.metric == delta.metric)
    {
        Some(m) => {
            m.count += delta.count;
            m.sum += delta.sum;
            m.cov += delta.cov;
        }
        None => user.metrics.push(delta),
    }
    for (e, old) in affected {
        let new = user.value(e.exp, delta.metric);
        agg.change_user(e.place(), &user.segments, delta.metric, &old, &new);
    }
    derived_hooks::ratio_after(user, agg, touch);
}

/// Records an exposure: the earliest (time, variant) wins. `conflicted`:
/// the exposure comes from a state where the user was already seen in two
/// variants.
#[allow(clippy::too_many_arguments)]
fn add_exposure(
    user: &mut UserState,
    agg: &mut Aggregates,
    exp: u32,
    variant: u16,
    t_ms: i64,
    period: u32,
    conflicted: bool,
) {
    match user.exposures.iter().position(|e| e.exp == exp) {
        None => {
            user.exposures.push(Exposure {
                exp,
                variant,
                t_ms,
                conflicted,
                period,
            });
            if conflicted {
                agg.experiments[exp as usize].conflicts += 1;
            }
            let at = Place {
                exp,
                variant,
                t_ms,
                period,
            };
            agg.add_user(at, &user.segments, &user.values(exp), 1.0);
            derived_hooks::add_user_events(user, agg, exp, variant, 1.0);
        }
        Some(i) => {
            let old = user.exposures[i];
            let mut new = old;
            if !old.conflicted && (conflicted || old.variant != variant) {
                new.conflicted = true;
                agg.experiments[exp as usize].conflicts += 1;
            }
            if (t_ms, variant) < (old.t_ms, old.variant) {
                let values = user.values(exp);
                let segs = &user.segments;
                let at = Place {
                    exp,
                    variant,
                    t_ms,
                    period,
                };
                agg.add_user(old.place(), segs, &values, -1.0);
                agg.add_user(at, segs, &values, 1.0);
                derived_hooks::add_user_events(user, agg, exp, old.variant, -1.0);
                derived_hooks::add_user_events(user, agg, exp, variant, 1.0);
                new.variant = variant;
                new.t_ms = t_ms;
                new.period = period;
            }
            user.exposures[i] = new;
        }
    }
}

/// Gives the user value `value` of dimension `dim` (interned ids). A user
/// has one value per dimension: a different one replaces it only if its
/// name is first in byte order (so the result does not depend on the
/// order of records), and either way the disagreement is counted. The
/// user's cells move with it.
fn set_segment(user: &mut UserState, agg: &mut Aggregates, dim: u32, value: u32) {
    let old = user.segments.iter().position(|&(d, _)| d == dim);
    if let Some(i) = old {
        let was = user.segments[i].1;
        if was == value {
            return;
        }
        agg.segments.conflicts += 1;
        if agg.segments.value(dim, value) >= agg.segments.value(dim, was) {
            return;
        }
        for e in user.exposures.clone() {
            let values = user.values(e.exp);
            agg.add_user_to_segment(e.exp, e.variant, (dim, was), &values, -1.0);
            agg.add_user_to_segment(e.exp, e.variant, (dim, value), &values, 1.0);
        }
        user.segments[i].1 = value;
    } else {
        for e in user.exposures.clone() {
            let values = user.values(e.exp);
            agg.add_user_to_segment(e.exp, e.variant, (dim, value), &values, 1.0);
        }
        user.segments.push((dim, value));
    }
}

impl Engine {
    /// Says whether the next records applied were appended by this process
    /// and are being answered now (true) or are read back: at startup, or
    /// appended by another replica of a replicated log (false). Side
    /// effects that must happen once per record (webhook notices) happen
    /// only for local records.
    pub fn set_local(&mut self, local: bool) {
        self.local = local;
    }

    /// Applies one record of the outcome log: what the log's applier (and
    /// its replay after a restart) calls for every record, in log order.
    /// `kind` is the record's [`RecordKind`] byte; a record that cannot be
    /// read (an unknown kind, a payload that no longer parses) is counted,
    /// logged and skipped, so one bad record does not stop the sidecar.
    pub fn apply_record(
        &mut self,
        kind: u8,
        lsn: u64,
        received_ms: i64,
        payload: &[u8],
    ) -> Applied {
        let out = match RecordKind::try_from(kind) {
            Err(e) => Applied::Unreadable {
                error: e.to_string(),
            },
            Ok(RecordKind::Outcomes) => match parse_outcomes(payload) {
                Ok(events) => self.apply_outcomes(&events),
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Ok(RecordKind::Exposures) => match parse_exposures(payload) {
                Ok(batch) => self.apply_batch(&batch, received_ms, lsn),
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Ok(RecordKind::Merge) => match self.merge_state(payload) {
                Ok(a) => a,
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Ok(RecordKind::Config) => match self.apply_config(payload) {
                Ok(a) => a,
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Ok(RecordKind::Admin) => match self.apply_admin(payload, received_ms, lsn) {
                Ok(a) => a,
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Ok(RecordKind::Bandit) => match self.apply_bandit(payload, lsn) {
                Ok(a) => a,
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
        };
        let mut agg = self.shared.lock();
        agg.applied_lsn = lsn;
        if let Applied::Unreadable { error } = &out {
            agg.counters.unreadable_records += 1;
            tracing::error!(lsn, %error, "skipping an unreadable log record");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &[u8] = br#"{"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}],
        "guardrails":{"min_responses":50,"error_rate":{"max_increase":0.01}}}]}"#;

    fn batch(seq: u64, health_b: (u64, u64)) -> String {
        let lat = |n: u64| {
            let mut v = vec![0u64; 25];
            v[2] = n;
            serde_json::to_string(&v).unwrap()
        };
        format!(
            r#"{{"instance":"i","seq":{seq},"experiments":[{{"name":"r","variants":["a","b"]}}],
            "exposures":[[1000,0,0,"u{seq}"],[1000,0,1,"w{seq}"]],
            "health":[[0,0,100,[0,100,0,0,0],{}],[0,1,100,[0,{},0,0,{}],{}]]}}"#,
            lat(100),
            health_b.0 - health_b.1,
            health_b.1,
            lat(health_b.0)
        )
    }

    fn apply(e: &mut Engine, body: &str, lsn: u64) -> Applied {
        let b = parse_exposures(body.as_bytes()).unwrap();
        e.apply_batch(&b, 1_777_000_000_000 + lsn as i64, lsn)
    }

    fn state(e: &Engine) -> (Vec<(String, i64, Health)>, Vec<HaltedRef>, Counters) {
        let agg = e.shared.lock();
        let x = &agg.experiments[0];
        (
            x.variants
                .iter()
                .zip(&x.cells)
                .map(|(v, c)| (v.clone(), c.total.users, c.health.clone()))
                .collect(),
            agg.halted(),
            agg.counters.clone(),
        )
    }

    #[test]
    fn a_breach_halts_and_snapshots_keep_health_and_halts() {
        let defs = Arc::new(Definitions::from_json(CONFIG).unwrap());
        let mut e = Engine::new(Some(defs.clone()), EngineOptions::default());
        let out = apply(&mut e, &batch(1, (100, 0)), 1);
        assert!(
            matches!(&out, Applied::Exposures { halted, .. } if halted.is_empty()),
            "{out:?}"
        );
        let out = apply(&mut e, &batch(2, (100, 40)), 2);
        let Applied::Exposures { halted, .. } = out else {
            panic!()
        };
        assert_eq!(
            halted,
            [HaltedRef {
                experiment: "r".into(),
                variant: "b".into()
            }]
        );
        let halt = e.shared.lock().guard.halts[0].clone();
        assert_eq!((halt.lsn, halt.time_ms), (2, 1_777_000_000_002));
        let mut bytes = Vec::new();
        e.encode_state(&mut bytes).unwrap();
        let r =
            Engine::restore(Some(&bytes), Some(defs.clone()), EngineOptions::default()).unwrap();
        assert_eq!(state(&r), state(&e));
        assert_eq!(state(&e).0[1].2.requests, 200);
        assert_eq!(r.shared.lock().guard, e.shared.lock().guard);
        // A merge adds the health and keeps the halt.
        let mut m = Engine::new(Some(defs), EngineOptions::default());
        m.merge_state(&bytes).unwrap();
        m.merge_state(&bytes).unwrap();
        assert_eq!(state(&m).0[1].2.requests, 400);
        assert_eq!(state(&m).1, state(&e).1);
        assert_eq!(m.shared.lock().guard.halts.len(), 1);
    }

    #[test]
    fn version_1_snapshots_are_still_read() {
        let mut e = Engine::new(None, EngineOptions::default());
        apply(&mut e, &batch(1, (100, 0)), 1);
        let v1 = {
            let agg = e.shared.lock();
            let ids = e.ids.read();
            postcard::to_stdvec(&(1u32, e.base(&agg, &ids))).unwrap()
        };
        let r = Engine::restore(Some(&v1), None, EngineOptions::default()).unwrap();
        let (users, halted, counters) = state(&r);
        assert_eq!(counters, state(&e).2);
        assert_eq!(
            users
                .iter()
                .map(|u| (u.0.as_str(), u.1))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 1)]
        );
        assert!(
            users.iter().all(|u| u.2 == Health::default()),
            "v1 has no health"
        );
        assert!(halted.is_empty());
        let v5 = postcard::to_stdvec(&(5u32, 0u8)).unwrap();
        let err = Engine::restore(Some(&v5), None, EngineOptions::default()).unwrap_err();
        assert!(err.to_string().contains("state version 5"), "{err}");
    }

    #[test]
    fn seq_window_dedups_retries_and_forgets_old_gaps() {
        let mut w = SeqWindow::default();
        assert!(w.insert(0, 4));
        assert!(w.insert(1, 4));
        assert!(!w.insert(1, 4));
        assert_eq!((w.floor, w.seen.len()), (2, 0));
        assert!(w.insert(5, 4));
        assert!(w.insert(3, 4));
        assert!(!w.insert(5, 4));
        for s in 6..10 {
            assert!(w.insert(s, 4));
        }
        // The gap at 2 and 4 was given up: they now count as seen.
        assert!(w.seen.len() <= 4);
        assert!(!w.insert(2, 4));
    }

    #[test]
    fn id_set_remembers_at_least_half_its_capacity() {
        let mut s = IdSet::new(8);
        for i in 0..4u128 {
            assert!(s.insert(i));
        }
        for i in 0..4u128 {
            assert!(!s.insert(i));
        }
        for i in 4..8u128 {
            assert!(s.insert(i));
        }
        assert!(!s.insert(7));
        assert!(s.insert(0), "forgotten after two generations");
    }

    fn exported(e: &Engine, id: u128, lsn: u64) -> Vec<u8> {
        let mut out = Vec::new();
        e.export_state(SidecarId(id), lsn, &mut out).unwrap();
        out
    }

    #[test]
    fn every_bit_flip_of_an_export_is_caught_before_decoding() {
        let mut e = Engine::new(None, EngineOptions::default());
        apply(&mut e, &batch(1, (100, 0)), 1);
        let state = exported(&e, 7, 1);
        let info = Engine::inspect_state(&state).unwrap();
        assert_eq!(
            info.key,
            StateKey {
                sidecar: SidecarId(7),
                lsn: 1
            }
        );
        assert_eq!(info.users, 2);
        for bit in 0..state.len() * 8 {
            let mut bad = state.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = Engine::inspect_state(&bad).unwrap_err();
            // Only the envelope's own checks answer: nothing damaged is
            // decoded.
            assert!(!matches!(err, StateError::Payload(_)), "bit {bit}: {err}");
            let mut m = Engine::new(None, EngineOptions::default());
            assert!(m.merge_state(&bad).is_err(), "bit {bit}");
            assert_eq!(m.users(), 0);
        }
        // A bare snapshot (what older versions exported) is no export.
        let mut bare = Vec::new();
        e.encode_state(&mut bare).unwrap();
        assert_eq!(Engine::inspect_state(&bare), Err(StateError::Unkeyed));
        assert_eq!(Engine::inspect_state(b"hello"), Err(StateError::NotAState));
    }

    #[test]
    fn merged_keys_are_state_and_a_repeat_is_a_no_op_when_applied() {
        let mut a = Engine::new(None, EngineOptions::default());
        apply(&mut a, &batch(1, (100, 0)), 1);
        let sa = exported(&a, 1, 1);
        let mut b = Engine::new(None, EngineOptions::default());
        let first = b.merge_state(&sa).unwrap();
        assert!(
            matches!(
                first,
                Applied::Merge {
                    merged: true,
                    users: 2,
                    ..
                }
            ),
            "{first:?}"
        );
        let once = state(&b);
        // Two racing merges were both appended: the second is a no-op.
        let again = b.merge_state(&sa).unwrap();
        assert!(
            matches!(
                again,
                Applied::Merge {
                    merged: false,
                    duplicate: true,
                    users: 0,
                    ..
                }
            ),
            "{again:?}"
        );
        assert_eq!(state(&b), once);
        // The keys survive a snapshot, and travel with an export.
        let mut snap = Vec::new();
        b.encode_state(&mut snap).unwrap();
        let mut r = Engine::restore(Some(&snap), None, EngineOptions::default()).unwrap();
        assert!(matches!(
            r.merge_state(&sa).unwrap(),
            Applied::Merge {
                duplicate: true,
                ..
            }
        ));
        let sb = exported(&b, 2, 5);
        let info = Engine::inspect_state(&sb).unwrap();
        assert_eq!(
            info.holds,
            [
                StateKey {
                    sidecar: SidecarId(2),
                    lsn: 5
                },
                StateKey {
                    sidecar: SidecarId(1),
                    lsn: 1
                }
            ]
        );
        assert_eq!(
            info.holds_own(SidecarId(1)),
            Some(MergeRefusal::Own {
                key: StateKey {
                    sidecar: SidecarId(1),
                    lsn: 1
                }
            })
        );
        // A later export of sidecar 1, into an engine that holds an
        // earlier one.
        let later = exported(&a, 1, 9);
        let refused = r.merge_state(&later).unwrap();
        assert!(
            matches!(refused, Applied::MergeRefused { .. }),
            "{refused:?}"
        );
        assert_eq!(state(&r), once);
    }

    #[test]
    fn version_2_snapshots_are_still_read() {
        let mut e = Engine::new(None, EngineOptions::default());
        apply(&mut e, &batch(1, (100, 0)), 1);
        let v2 = {
            let agg = e.shared.lock();
            let ids = e.ids.read();
            let extra = Extra {
                guard: agg.guard.clone(),
                ..Extra::default()
            };
            postcard::to_stdvec(&(2u32, e.base(&agg, &ids), extra)).unwrap()
        };
        let r = Engine::restore(Some(&v2), None, EngineOptions::default()).unwrap();
        assert_eq!(state(&r).0.iter().map(|u| u.1).collect::<Vec<_>>(), [1, 1]);
        assert!(r.merged.is_empty());
    }
}

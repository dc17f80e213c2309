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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};
use smallvec::SmallVec;

use super::{Aggregates, Counters, Definitions, MetricInfo, UserValue, BUCKET_MS};
use crate::events::{parse_exposures, parse_outcomes, ExposureBatch, Outcome};
use crate::store::{Kind, RecordRef, StateMachine};

/// Scope of an event without an experiment.
const ANY: u32 = u32::MAX;
/// Snapshot format version.
const SNAPSHOT_VERSION: u32 = 1;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Applied {
    Events {
        accepted: u64,
        duplicates: u64,
    },
    Exposures {
        accepted: u64,
        duplicate_batch: bool,
    },
    Merge {
        users: u64,
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

fn id_hash(id: &str) -> u128 {
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

/// Per-user state, de-duplication memory, and the shared aggregates.
pub struct Engine {
    users: HashMap<Box<str>, UserState>,
    ids: IdSet,
    batches: HashMap<Box<str>, SeqWindow>,
    shared: Arc<Mutex<Aggregates>>,
    definitions: Option<Arc<Definitions>>,
    decisions: Option<abmesh_filter::Decisions>,
    options: EngineOptions,
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

/// ... and as read.
#[derive(Deserialize)]
struct SnapshotIn {
    version: u32,
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
            ids: IdSet::new(options.dedup_capacity),
            batches: HashMap::new(),
            shared: Arc::new(Mutex::new(Aggregates::new(definitions.clone()))),
            decisions: definitions.as_ref().map(|d| d.decisions()),
            definitions,
            options,
        }
    }

    /// Rebuilds an engine from a snapshot (`None`: empty), for
    /// [`crate::store::Store::open`].
    pub fn restore(
        snapshot: Option<&[u8]>,
        definitions: Option<Arc<Definitions>>,
        options: EngineOptions,
    ) -> Result<Engine, String> {
        let mut engine = Engine::new(definitions, options);
        if let Some(bytes) = snapshot {
            let s = decode_snapshot(bytes)?;
            engine.ids.previous = s.ids_previous;
            engine.ids.current = s.ids_current;
            engine.batches = s.batches;
            let users = s.users;
            let mut agg = engine.shared.lock().expect("aggregates lock");
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
            drop(agg);
            if exp_map.iter().enumerate().all(|(i, &(e, ref vs))| {
                e == i as u32 && vs.iter().enumerate().all(|(j, &v)| v == j as u16)
            }) && metric_map.iter().enumerate().all(|(i, &m)| m == i as u32)
            {
                // The usual case: ids are unchanged; rebuild the sums.
                engine.users = users;
                let mut agg = engine.shared.lock().expect("aggregates lock");
                for user in engine.users.values() {
                    for e in &user.exposures {
                        agg.add_user(e.exp, e.variant, e.t_ms, &user.values(e.exp), 1.0);
                        if e.conflicted {
                            agg.experiments[e.exp as usize].conflicts += 1;
                        }
                    }
                }
            } else {
                // The definitions registered names in another order than
                // the snapshot's: fold users in through the id maps.
                for (name, user) in users {
                    engine.fold_user(&name, &user, &exp_map, &metric_map);
                }
            }
        }
        Ok(engine)
    }

    /// The aggregates reports read.
    pub fn aggregates(&self) -> Arc<Mutex<Aggregates>> {
        self.shared.clone()
    }

    /// Number of users with any state (exposed or not).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Applies a validated `POST /v1/events` body.
    pub fn apply_outcomes(&mut self, events: &[Outcome<'_>]) -> Applied {
        let shared = self.shared.clone();
        let mut agg = shared.lock().expect("aggregates lock");
        let (mut accepted, mut duplicates) = (0u64, 0u64);
        for ev in events {
            if let Some(id) = &ev.id {
                if !self.ids.insert(id_hash(id.as_str())) {
                    duplicates += 1;
                    continue;
                }
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
            add_metric(user, &mut agg, delta);
        }
        agg.counters.events += accepted;
        agg.counters.duplicate_events += duplicates;
        Applied::Events {
            accepted,
            duplicates,
        }
    }

    /// Applies a validated `POST /v1/exposures` batch.
    pub fn apply_exposures(&mut self, batch: &ExposureBatch<'_>) -> Applied {
        let shared = self.shared.clone();
        let mut agg = shared.lock().expect("aggregates lock");
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
            let e = &mut agg.experiments[exp as usize];
            e.exposure_rows += 1;
            if let (Some(d), Some(i), Some(buf)) = (&self.definitions, def, self.decisions.as_mut())
            {
                let expected = d.assign(row.user(), i, buf);
                if expected != Some(e.variants[variant as usize].as_str()) {
                    e.mismatches += 1;
                }
            }
            let user = user_mut(&mut self.users, row.user());
            add_exposure(user, &mut agg, exp, variant, row.t_ms(), false);
        }
        Applied::Exposures {
            accepted: batch.exposures.len() as u64,
            duplicate_batch: false,
        }
    }

    /// Writes the whole state (the snapshot format; also what
    /// `GET /admin/state` exports and [`Engine::merge_state`] reads).
    pub fn encode_state(&self, out: &mut Vec<u8>) -> Result<(), String> {
        let agg = self.shared.lock().expect("aggregates lock");
        let experiments = agg
            .experiments
            .iter()
            .map(|e| ExperimentRecord {
                name: e.name.clone(),
                variants: e.variants.clone(),
                exposure_rows: e.exposure_rows,
                mismatches: e.mismatches,
                conflicts: e.conflicts,
            })
            .collect();
        let s = SnapshotOut {
            version: SNAPSHOT_VERSION,
            bucket_ms: BUCKET_MS,
            experiments,
            metrics: &agg.metrics,
            counters: &agg.counters,
            applied_lsn: agg.applied_lsn,
            users: &self.users,
            ids_previous: &self.ids.previous,
            ids_current: &self.ids.current,
            batches: &self.batches,
        };
        let bytes = postcard::to_stdvec(&s).map_err(|e| format!("encoding the state: {e}"))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Checks that `bytes` is an exported state this version can merge.
    pub fn validate_state(bytes: &[u8]) -> Result<(), String> {
        decode_snapshot(bytes).map(|_| ())
    }

    /// Merges another sidecar's exported state: users' totals add, the
    /// earliest exposure wins, event ids and batch numbers are united, and
    /// counters add. Exact for any split of the events between the two,
    /// users seen by both included (see the module docs of
    /// [`crate::aggregate`]).
    pub fn merge_state(&mut self, bytes: &[u8]) -> Result<Applied, String> {
        let s = decode_snapshot(bytes)?;
        let mut agg = self.shared.lock().expect("aggregates lock");
        let exp_map = register_experiments(&mut agg, &s.experiments);
        let metric_map = register_metrics(&mut agg, &s.metrics, false);
        agg.counters.merge(&s.counters);
        for (i, rec) in s.experiments.iter().enumerate() {
            let e = &mut agg.experiments[exp_map[i].0 as usize];
            e.exposure_rows += rec.exposure_rows;
            e.mismatches += rec.mismatches;
            // Conflicts are users: recounted as the users are folded in.
        }
        drop(agg);
        for h in s.ids_previous.into_iter().chain(s.ids_current) {
            self.ids.insert(h);
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
        for (name, user) in &s.users {
            self.fold_user(name, user, &exp_map, &metric_map);
        }
        Ok(Applied::Merge { users })
    }

    /// Adds a user's state from another id space.
    fn fold_user(
        &mut self,
        name: &str,
        other: &UserState,
        exp_map: &[(u32, Vec<u16>)],
        metric_map: &[u32],
    ) {
        let shared = self.shared.clone();
        let mut agg = shared.lock().expect("aggregates lock");
        let user = user_mut(&mut self.users, name);
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
        for e in &other.exposures {
            let (exp, ref variants) = exp_map[e.exp as usize];
            add_exposure(
                user,
                &mut agg,
                exp,
                variants[e.variant as usize],
                e.t_ms,
                e.conflicted,
            );
        }
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotIn, String> {
    let s: SnapshotIn =
        postcard::from_bytes(bytes).map_err(|e| format!("not an abmesh state: {e}"))?;
    if s.version != SNAPSHOT_VERSION {
        return Err(format!(
            "state version {} (this abmesh reads {SNAPSHOT_VERSION})",
            s.version
        ));
    }
    if s.bucket_ms != BUCKET_MS {
        return Err(format!(
            "time buckets of {} ms (this abmesh uses {BUCKET_MS})",
            s.bucket_ms
        ));
    }
    let n_exp = s.experiments.len();
    let n_metric = s.metrics.len();
    for u in s.users.values() {
        for e in &u.exposures {
            if e.exp as usize >= n_exp
                || e.variant as usize >= s.experiments[e.exp as usize].variants.len()
            {
                return Err(
                    "an exposure names an experiment or variant the state does not list".into(),
                );
            }
        }
        for m in &u.metrics {
            if (m.scope != ANY && m.scope as usize >= n_exp) || m.metric as usize >= n_metric {
                return Err(
                    "a user's metric names an experiment or metric the state does not list".into(),
                );
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
        agg.change_user(e.exp, e.variant, e.t_ms, delta.metric, &old, &new);
    }
}

/// Records an exposure: the earliest (time, variant) wins. `conflicted`:
/// the exposure comes from a state where the user was already seen in two
/// variants.
fn add_exposure(
    user: &mut UserState,
    agg: &mut Aggregates,
    exp: u32,
    variant: u16,
    t_ms: i64,
    conflicted: bool,
) {
    match user.exposures.iter().position(|e| e.exp == exp) {
        None => {
            user.exposures.push(Exposure {
                exp,
                variant,
                t_ms,
                conflicted,
            });
            if conflicted {
                agg.experiments[exp as usize].conflicts += 1;
            }
            agg.add_user(exp, variant, t_ms, &user.values(exp), 1.0);
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
                agg.add_user(exp, old.variant, old.t_ms, &values, -1.0);
                agg.add_user(exp, variant, t_ms, &values, 1.0);
                new.variant = variant;
                new.t_ms = t_ms;
            }
            user.exposures[i] = new;
        }
    }
}

impl StateMachine for Engine {
    type Output = Applied;

    fn apply(&mut self, record: &RecordRef<'_>) -> Applied {
        let out = match record.kind {
            Kind::Outcomes => match parse_outcomes(record.payload) {
                Ok(events) => self.apply_outcomes(&events),
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Kind::Exposures => match parse_exposures(record.payload) {
                Ok(batch) => self.apply_exposures(&batch),
                Err(e) => Applied::Unreadable {
                    error: e.to_string(),
                },
            },
            Kind::Merge => match self.merge_state(record.payload) {
                Ok(a) => a,
                Err(error) => Applied::Unreadable { error },
            },
        };
        let mut agg = self.shared.lock().expect("aggregates lock");
        agg.applied_lsn = record.lsn;
        if let Applied::Unreadable { error } = &out {
            agg.counters.unreadable_records += 1;
            tracing::error!(lsn = record.lsn, %error, "skipping an unreadable log record");
        }
        out
    }

    fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), String> {
        self.encode_state(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

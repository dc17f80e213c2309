//! The engine's side of the derived metrics ([`crate::aggregate::derived`]):
//! the per-user event buckets of quantile inputs, the ratio updates an
//! event causes, the rebuild after new definitions, and the snapshot
//! section that keeps the per-user buckets.
//!
//! # Snapshot section
//!
//! The per-user buckets are appended after every other part of the
//! snapshot (after the merged keys of version 3) as one postcard value,
//! [`Section`]; a snapshot that ends before it (any older one) has none.
//! Ratio sums are not stored: they are rebuilt from the users' totals.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::super::derived::{Buckets, UserEvents};
use super::super::sums::Aggregates;
use super::{SnapshotError, UserMetric, UserState, ANY};

const _: () = assert!(ANY == super::super::derived::ANY);

/// The user's (m, d) of the ratios `delta` touches, before it is applied.
pub(super) fn ratio_before(
    user: &UserState,
    agg: &Aggregates,
    delta: &UserMetric,
) -> super::super::derived::RatioTouch {
    let exposures = user
        .exposures
        .iter()
        .filter(|e| delta.scope == ANY || delta.scope == e.exp)
        .map(|e| (e.exp, e.variant));
    agg.derived
        .touch(&agg.metric_index, delta.metric, exposures, |exp, m| {
            user.value(exp, m).y
        })
}

/// After `delta` was applied to the user.
pub(super) fn ratio_after(
    user: &UserState,
    agg: &mut Aggregates,
    touch: super::super::derived::RatioTouch,
) {
    agg.derived.touched(touch, |exp, m| user.value(exp, m).y);
}

/// Records one event value of `metric` in `scope` when the metric is a
/// declared quantile's input: in the user's buckets, and in the histogram
/// of every variant the user is exposed in where it counts.
pub(super) fn record_event(
    user: &mut UserState,
    agg: &mut Aggregates,
    scope: u32,
    metric: u32,
    value: Option<f64>,
) {
    let Some(v) = value else { return };
    if !agg.derived.is_source(&agg.metrics[metric as usize].name) {
        return;
    }
    let mut one = Buckets::default();
    one.push(v);
    add_buckets(user, agg, scope, metric, &one);
}

/// Adds buckets of (scope, metric) to the user and to the histograms of
/// the variants it counts in.
fn add_buckets(user: &mut UserState, agg: &mut Aggregates, scope: u32, metric: u32, b: &Buckets) {
    user.events.entry(scope, metric).add(b, 1.0);
    for e in &user.exposures {
        if scope == ANY || scope == e.exp {
            agg.derived.add_buckets(e.exp, e.variant, metric, b, 1.0);
        }
    }
}

/// Adds (`sign` 1) or removes (−1) the user's events from a variant (the
/// exposure's counterpart of `Aggregates::add_user`).
pub(super) fn add_user_events(
    user: &UserState,
    agg: &mut Aggregates,
    exp: u32,
    variant: u16,
    sign: f64,
) {
    if !user.events.is_empty() {
        agg.derived
            .add_user_events(exp, variant, &user.events, sign);
    }
}

/// Folds another state's user's buckets in, through its id maps (before
/// its exposures are added).
pub(super) fn fold_events(
    user: &mut UserState,
    agg: &mut Aggregates,
    other: &UserState,
    exp_map: &[(u32, Vec<u16>)],
    metric_map: &[u32],
) {
    for s in &other.events.0 {
        let scope = if s.scope == ANY {
            ANY
        } else {
            exp_map[s.scope as usize].0
        };
        add_buckets(user, agg, scope, metric_map[s.metric as usize], &s.buckets);
    }
}

/// After new definitions: when their ratio pairs differ from the ones the
/// sums were built for, rebuilds the ratio sums from every exposed user.
pub(super) fn rebuild(users: &HashMap<Box<str>, UserState>, agg: &mut Aggregates) {
    if !agg.derived.stale {
        return;
    }
    agg.derived.clear_ratios();
    let Aggregates {
        derived,
        metric_index,
        ..
    } = agg;
    for user in users.values() {
        for e in &user.exposures {
            derived.add_user(metric_index, e.exp, e.variant, &user.values(e.exp), 1.0);
        }
    }
}

/// The snapshot section of the derived metrics (see the module docs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Section {
    /// Users with event buckets, and their buckets.
    users: Vec<(Box<str>, UserEvents)>,
}

/// The section to write for `users`.
pub(super) fn section(users: &HashMap<Box<str>, UserState>) -> Section {
    let mut users: Vec<(Box<str>, UserEvents)> = users
        .iter()
        .filter(|(_, u)| !u.events.is_empty())
        .map(|(n, u)| (n.clone(), u.events.clone()))
        .collect();
    // Deterministic bytes for the same state.
    users.sort_by(|a, b| a.0.cmp(&b.0));
    Section { users }
}

/// Reads the section if `rest` holds one; returns what follows it.
pub(super) fn take_section(rest: &[u8]) -> Result<(Section, &[u8]), SnapshotError> {
    if rest.is_empty() {
        return Ok((Section::default(), rest));
    }
    postcard::take_from_bytes::<Section>(rest).map_err(|e| SnapshotError::Decode(e.to_string()))
}

/// Checks the section's ids against the snapshot's registries and gives
/// every user their buckets.
pub(super) fn distribute(
    section: Section,
    users: &mut HashMap<Box<str>, UserState>,
    n_exp: usize,
    n_metric: usize,
) -> Result<(), SnapshotError> {
    for (name, events) in section.users {
        for s in &events.0 {
            if (s.scope != ANY && s.scope as usize >= n_exp) || s.metric as usize >= n_metric {
                return Err(SnapshotError::Dangling(
                    "a user's event buckets name an experiment or metric",
                ));
            }
        }
        users.entry(name).or_default().events = events;
    }
    Ok(())
}

//! Mergeable aggregates: per experiment × variant × metric sufficient
//! statistics, kept up to date event by event, so that a report never reads
//! events.
//!
//! # The unit is the user
//!
//! Every metric is analysed per exposed user: a user's outcome Y for a
//! metric is the sum of their event values (a conversion event counts 1),
//! their covariate X the sum of their pre-period values, and they
//! "converted" if they have at least one outcome event (so conversions are
//! de-duplicated per user). Users exposed but without events count with
//! Y = 0: only exposed users are in the denominators, and all of them are.
//!
//! Per experiment × variant × metric the aggregates hold the number of
//! users n, the converted users, and Σy, Σy², Σx, Σx², Σxy over users
//! ([`MetricSums`]). Users without events add zeros, so they cost nothing
//! but the count; a new event for a user moves their Y from a to a + v and
//! changes Σy² by (2a + v)·v, an O(1) update that needs the user's current
//! totals, which the [`Engine`] keeps per user. The sums are compensated
//! (Neumaier), so n·ε drift does not build up over millions of updates; the
//! conversion to mean and variance at report time is
//! [`Moments::from_sums`](abmesh_stats::Moments::from_sums), whose
//! cancellation risk (|mean| ≫ sd) is small for per-user totals, which
//! include the zeros of users without events.
//!
//! # Time buckets: cumulative by exposure
//!
//! Each user's contribution is also kept in the bucket (one minute, one
//! hour and one day: [`LEVEL_MS`]) of their first exposure. The prefix sum of buckets up to time T is the
//! comparison among the users exposed by T, with everything they have done
//! so far; its last point is the current result. Unlike "what the report
//! said at T", this is a function of the set of events alone, so it does
//! not depend on arrival order and merges exactly.
//!
//! # Merging
//!
//! Sums over disjoint sets of users add ([`Cell::add`]). Two sidecars may
//! see the same user, though (Envoy replicas are not sticky by user), and
//! then (a + b)² ≠ a² + b²: the exact merge goes through the per-user
//! tables ([`Engine::merge_state`]), after which the statistics follow. See
//! `sidecar/EVALUATION.md`.

//!
//! # Modules
//!
//! - [`sums`]: the aggregates themselves ([`Aggregates`], per experiment,
//!   variant, metric and time bucket);
//! - [`engine`]: the [`Engine`] that keeps them, with per-user state;
//! - [`definitions`]: the experiments as the filter's configuration
//!   defines them;
//! - [`derived`]: ratio and quantile metrics (declared in the
//!   configuration's `metrics`);
//! - [`guard`]: halts and the guardrail state; [`checks`]: the guardrail
//!   checks computed from the aggregates.
//!
//! This module only re-exports; its children import each other, never it.

pub mod bandit;
pub mod checks;
pub mod declared;
pub mod definitions;
pub mod derived;
pub mod engine;
pub mod guard;
pub mod ksum;
pub mod segments;
pub mod sums;

pub use definitions::{config_id, Defined, Definitions};
pub use engine::{Applied, Engine, EngineOptions, NoticeSink};
pub use guard::{GuardState, Halt, HaltSource, HaltedRef};
pub use sums::{
    Aggregates, Cell, Counters, ExperimentAgg, KSum, MetricInfo, MetricSums, UserValue, VariantAgg,
    BUCKET_MS, LEVEL_MS,
};

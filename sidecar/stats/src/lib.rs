//! abmesh-stats: the statistics of experiment evaluation, and the
//! guardrail rules built on them.
//!
//! It is a crate of its own so that the maths can be used, checked and
//! reasoned about alone: it depends on `statrs`, `serde` and the filter's
//! configuration types (the guardrail rules and health rows are the
//! filter's formats), and on nothing that does I/O: no runtime, no HTTP,
//! no ONNX Runtime, no plotting (`abmesh`'s `tests/layering.rs` checks its
//! dependency tree). Its users are the engine and reports (`abmesh-eval`)
//! and `abmesh stats`.
//!
//! Everything is computed from per-group sufficient statistics that merge
//! exactly ([`Moments`], [`CoMoments`], [`Proportion`]), so several sidecars
//! or time buckets combine without re-reading events (DESIGN.md, "Scaling
//! out"). The two-sample functions take any [`GroupStats`]: the sidecar's
//! [`Moments`], or summaries `{n, mean, sd}` ([`Summary`]) as in the
//! reference cases, whose format [`cases`] evaluates for `abmesh stats`
//! (documented in `sidecar/stats/README.md`).
//!
//! | question | function |
//! |---|---|
//! | difference of means | [`welch_t`] |
//! | relative lift | [`relative_lift`] (delta method) |
//! | conversion rates | [`two_proportion`], [`chance_to_beat`] |
//! | peeking-safe monitoring | [`sequential()`] / [`confidence_sequence`] |
//! | variance reduction | [`cuped()`], [`cuped_lift()`] (from sums, relative too) |
//! | ratio metrics (clicks per impression) | [`ratio()`] (delta method) |
//! | quantiles (p50/p95/p99 latency) | [`quantile_test`] on [`Histogram`]s |
//! | broken assignment | [`srm()`] |
//! | planning, MDE, power | [`sample_size_proportions`], [`sample_size_means`], [`mde_at`], [`mde_means`], [`mde_proportions`], [`power_at`] |
//! | many metrics | [`holm`], [`benjamini_hochberg`], [`adjust`] |
//! | is a treatment hurting? | [`guardrail`] (always-valid checks; a breach halts) |
//!
//! Distribution functions come from `statrs`, with the pieces that need
//! more accuracy at experiment sizes redone in [`special`]. Errors are
//! [`StatsError`], whose messages are meant to be shown as they are.

pub mod bandit;
pub mod bayes;
pub mod cases;
pub mod cuped;
pub mod cuped_lift;
pub mod effect;
pub mod error;
pub mod guardrail;
pub mod lift;
pub mod moments;
pub mod multiple;
pub mod power;
pub mod proportions;
pub mod quantile;
pub mod ratio;
pub mod sequential;
pub mod special;
pub mod srm;
pub mod welch;

pub use bandit::{
    bandit_weights, prob_best, srm_by_period, stratified, PeriodArm, PeriodCounts, PeriodPair,
    PeriodSrm, Posterior, Stratified,
};
pub use bayes::{chance_to_beat, prob_greater, BetaPrior};
pub use cuped::{cuped, CupedResult};
pub use cuped_lift::{comoments_from_sums, cuped_lift, CupedLiftResult};
pub use effect::EffectResult;
pub use error::{Result, StatsError};
pub use lift::{relative_lift, LiftResult};
pub use moments::{CoMoments, GroupStats, Moments, Summary};
pub use multiple::{adjust, benjamini_hochberg, holm, Adjustment};
pub use power::{
    mde_at, mde_means, mde_proportions, power_at, sample_size_means, sample_size_proportions,
};
pub use proportions::{bernoulli_variance, two_proportion, Proportion, TwoProportionResult};
pub use quantile::{
    quantile_se, quantile_test, Histogram, LogHistogram, QuantileEstimate, QuantileResult,
};
pub use ratio::{ratio, RatioMoments};
pub use sequential::{
    confidence_sequence, sequential, SequentialParams, SequentialResult, DEFAULT_N_STAR,
};
pub use srm::{srm, SrmResult, SRM_ALERT_P};
pub use welch::{welch_t, WelchResult};

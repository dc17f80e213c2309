//! The plugin configuration as users write it (JSON in the Envoy Wasm
//! filter's `configuration`, or Istio `WasmPlugin.pluginConfig`).
//!
//! These types mirror the documented schema one to one and reject unknown
//! fields. They are only ever read at configure time: [`crate::Plan::compile`]
//! validates them and turns them into the precomputed tables the per-request
//! path uses. The README documents every field with an example.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Top-level plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the user id comes from, tried in order. Default: the
    /// `x-user-id` header.
    #[serde(default = "default_identity")]
    pub identity: Vec<IdentitySource>,
    /// What to do with a request that has no identity. Default: `pass`.
    #[serde(default)]
    pub missing_identity: MissingIdentity,
    /// The request header Envoy's `cluster_header` route action reads.
    /// Default: `x-abmesh-cluster`. The filter always removes a copy sent by
    /// the client, so clients cannot pick clusters themselves.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    /// A request header that forces variants for QA, as
    /// `experiment=variant[, experiment=variant…]`. Absent or `null`: off.
    #[serde(default)]
    pub force_header: Option<String>,
    /// If set, the response carries the request's assignments in this header
    /// as `experiment=variant[, …]`, so clients can log them.
    #[serde(default)]
    pub echo_header: Option<String>,
    /// Also call Envoy's `clear_route_cache` foreign function after the
    /// filter changed request headers. Envoy 1.40, which abmesh is tested
    /// with, re-selects the route by itself after a Wasm filter changes
    /// request headers (tests/filter_envoy.rs checks it), so the extra
    /// hostcall is off by default; turn it on for a proxy built or
    /// configured without that automatic refresh. Default: `false`.
    #[serde(default)]
    pub clear_route_cache: bool,
    /// Where to ship exposures (off when absent). See [`SidecarConfig`].
    #[serde(default)]
    pub sidecar: Option<SidecarConfig>,
    /// The experiments, evaluated in this order.
    pub experiments: Vec<ExperimentConfig>,
    /// Metrics defined from outcome-event metrics, which the sidecar reports
    /// for every experiment and guardrails can name (`ratio`, `quantile`).
    /// The filter only validates and forwards them. Default: none.
    #[serde(default)]
    pub metrics: Vec<MetricDefinition>,
}

/// Shipping exposures to the abmesh sidecar: batched on a timer with
/// `dispatch_http_call`, never per request; requests never wait for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// The Envoy cluster of the sidecar.
    pub cluster: String,
    /// `:authority` of the batch requests. Default: the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// Default: `/v1/exposures`.
    #[serde(default = "default_exposures_path")]
    pub path: String,
    /// How often to flush, in ms (also the resolution of exposure times).
    /// Default: 1000.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u32,
    /// Timeout of one batch request, in ms. Default: 1000.
    #[serde(default = "default_flush_ms")]
    pub timeout_ms: u32,
    /// Exposures kept while the sidecar is slow or down; beyond this the
    /// oldest are dropped (and counted). Default: 10 000.
    #[serde(default = "default_max_pending")]
    pub max_pending_exposures: usize,
    /// Most exposures in one batch. Default: 5 000.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Per-variant health (status class and latency) is recorded for one
    /// request in this many; 1 records every request. Request counts are
    /// always exact. Default: see `default_health_sample_every`.
    #[serde(default = "default_health_sample_every")]
    pub health_sample_every: u32,
    /// Slots of the table of recently shipped exposures: a request whose
    /// (user, experiment, variant, bandit period) was shipped recently is not shipped
    /// again, since the sidecar keeps only a user's first exposure. A power
    /// of two (8 bytes each per worker), or 0 to ship every request's
    /// exposures. Default: 8192.
    #[serde(default = "default_recent_exposures")]
    pub recent_exposures: usize,
    /// The sidecar's ingest token (`abmesh serve --ingest-token-file`),
    /// sent as `authorization: Bearer TOKEN` on every batch. Needed when the
    /// sidecar's data-plane listener is not on loopback. Visible ASCII, 16
    /// to 4096 bytes. It never appears in the filter's logs, and the
    /// configuration the filter ships to the sidecar leaves it out
    /// ([`shipped_config`]). Default: none.
    #[serde(default)]
    pub token: Option<SidecarToken>,
}

/// A credential: compared and sent, never printed (`Debug` shows
/// `SidecarToken(<redacted>)`, so a config dumped with `{:?}` does not leak
/// it).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SidecarToken(String);

impl SidecarToken {
    /// The shortest token accepted, in bytes: 16 visible ASCII characters
    /// leave ~100 bits even when drawn from a small alphabet.
    pub const MIN_LEN: usize = 16;
    /// The longest token accepted, in bytes (it is sent on every batch).
    pub const MAX_LEN: usize = 4096;

    /// The token itself, for the `authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SidecarToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SidecarToken(<redacted>)")
    }
}

/// Whether a configuration document sets `sidecar.token` (to anything but
/// `null`). A document that cannot be read as a configuration counts as
/// carrying one: the sidecar, which asks this before it stores a learned
/// configuration, refuses what it cannot tell apart from a credential.
pub fn carries_token(raw: &[u8]) -> bool {
    // A `Value`, which the filter parses anyway (the sidecar's replies), so
    // this adds no parser of its own to the module.
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(v) if !v.is_object() => true,
        Ok(v) => match v.get("sidecar") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Object(s)) => s.get("token").is_some_and(|t| !t.is_null()),
            Some(_) => true,
        },
        Err(_) => true,
    }
}

/// The configuration as the filter ships it to the sidecar, which stores
/// it in its log and snapshots, exports it with its state, and shows its
/// id in reports: the bytes the proxy gave, unchanged, unless they set
/// `sidecar.token`. Then it is the same document without that member: the
/// other members (and every value, byte for byte) stay in their order, but
/// the whitespace between members goes, so its [`crate::config_id`]
/// differs from that of the raw bytes. The token is a credential of the
/// filter alone; the sidecar never needs it in a configuration and must
/// never keep it.
///
/// `raw` must be a valid configuration ([`crate::Plan::from_json`]
/// accepted it); anything else is an error.
pub fn shipped_config(raw: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, serde_json::Error> {
    use serde_json::value::RawValue;
    if !carries_token(raw) {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let top: Members<'_> = serde_json::from_slice(raw)?;
    let mut out = Vec::with_capacity(raw.len());
    out.push(b'{');
    for (i, (key, value)) in top.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key)?;
        out.push(b':');
        if key == "sidecar" {
            let inner: Members<'_> = serde_json::from_str(value.get())?;
            out.push(b'{');
            let kept = inner.0.iter().filter(|(k, _)| k != "token");
            for (j, (k, v)) in kept.enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, k)?;
                out.push(b':');
                out.extend_from_slice(v.get().as_bytes());
            }
            out.push(b'}');
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.push(b'}');
    // What it removed is the token and nothing else.
    debug_assert!(!carries_token(&out));
    let _: &RawValue = serde_json::from_slice(&out)?;
    Ok(std::borrow::Cow::Owned(out))
}

/// A JSON object's members in document order, values unparsed.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) =
                    m.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One place a user id may be found.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentitySource {
    /// `{"header": "x-user-id"}`: the whole value of a request header.
    Header(String),
    /// `{"cookie": "uid"}`: the value of one cookie in the `cookie` header.
    Cookie(String),
}

/// Handling of requests without an identity.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MissingIdentity {
    /// Not enrolled; the request passes untouched.
    #[default]
    Pass,
    /// Not enrolled, but routed like each matching experiment's control
    /// variant (and not counted as an exposure).
    Control,
    /// Answered locally with `400 Bad Request`.
    Reject,
}

/// One experiment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Unique name: `[a-z0-9_.-]`, 1 to 64 characters.
    pub name: String,
    /// Hash salt; default: the name. Changing it reshuffles every user.
    #[serde(default)]
    pub salt: Option<String>,
    /// Share of identified (and layer-eligible) users enrolled, 0 to 100,
    /// in steps of 0.01. Default: 100.
    #[serde(default = "default_traffic")]
    pub traffic_percent: f64,
    /// Mutual exclusion: experiments in the same layer never share a user.
    #[serde(default)]
    pub layer: Option<LayerConfig>,
    /// Which requests the experiment applies to. Default: all.
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// Name of the control variant. Default: the first variant.
    #[serde(default)]
    pub control: Option<String>,
    /// Request header that receives the variant name. Default:
    /// `x-abmesh-<name>`.
    #[serde(default)]
    pub variant_header: Option<String>,
    /// User ids pinned to a variant (`{"user-id": "variant"}`), for QA and
    /// dogfooding. Pinned users are not counted as exposures.
    #[serde(default)]
    pub allowlist: BTreeMap<String, String>,
    /// Two or more variants.
    pub variants: Vec<VariantConfig>,
    /// Checks the sidecar runs on every batch; a breach halts the variant
    /// (its users are routed like control). Absent: no guardrails.
    #[serde(default)]
    pub guardrails: Option<GuardrailsConfig>,
    /// Adaptive allocation (Thompson sampling on an outcome metric): the
    /// sidecar periodically re-weights the non-control variants and the
    /// filter assigns new users by the weights of the latest period. Absent:
    /// the configured weights hold for the experiment's whole life.
    #[serde(default)]
    pub bandit: Option<BanditConfig>,
}

/// A Thompson-sampling bandit over an experiment's variants.
///
/// The control keeps its configured share of the experiment's (enrolled)
/// users for the whole experiment, so the comparison against it stays a
/// randomized one; the bandit only redistributes the non-control share
/// among the non-control variants, in proportion to each one's posterior
/// probability of being best on `metric`. Every non-control variant keeps
/// at least `explore_floor_percent` of all the experiment's users, so a
/// variant that looks bad early can still recover, and its estimate keeps
/// improving. That is why the configuration needs at least two non-control
/// variants, and a floor the non-control share can afford for all of them.
///
/// The sidecar computes the weights (one *period* per update) and sends
/// them in its answers to batches; the filter only validates this and
/// assigns by the weights it was sent ([`crate::Allocation`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BanditConfig {
    /// The outcome-event metric (as in `POST /v1/events`) the bandit
    /// maximizes: 1 to 64 of `[A-Za-z0-9_.:-]`, as events name metrics.
    pub metric: String,
    /// Seconds between weight updates (periods), 1 to 2 592 000 (30 days).
    /// Default: 3600. Users keep their variant within a period; a new
    /// period moves only the users of the share that changed hands.
    #[serde(default = "default_update_every_s")]
    pub update_every_s: u64,
    /// Users each variant needs before the sidecar moves weights away from
    /// the configured ones: until then the posterior says little. Default:
    /// 100.
    #[serde(default = "default_min_users_per_variant")]
    pub min_users_per_variant: u64,
    /// The smallest share of all the experiment's users any non-control
    /// variant keeps, in percent (finite, ≥ 0). Default: 5.
    #[serde(default = "default_explore_floor_percent")]
    pub explore_floor_percent: f64,
}

/// Guardrails of one experiment, evaluated by the sidecar for every
/// non-control variant against the control with always-valid (sequential)
/// tests, so checking on every batch raises no more false alarms than
/// checking once. The filter only validates and forwards them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Error rate of the whole family of checks of this experiment (all
    /// rules × all treatment variants share it, Bonferroni). In (0, 0.5].
    /// Default: 0.01.
    #[serde(default = "default_guardrail_alpha")]
    pub alpha: f64,
    /// Responses each arm needs (control and the treatment) before the
    /// health rules are checked. Default: 100.
    #[serde(default = "default_min_responses")]
    pub min_responses: u64,
    /// 5xx share of the treatment vs control.
    #[serde(default)]
    pub error_rate: Option<ErrorRateRule>,
    /// p95 of request→response-headers latency, treatment vs control.
    #[serde(default)]
    pub p95_latency: Option<LatencyRule>,
    /// Business metrics from outcome events (`POST /v1/events`).
    #[serde(default)]
    pub metrics: Vec<MetricRule>,
}

/// Halt when the treatment's 5xx share exceeds the control's by more than
/// `max_increase` (absolute, e.g. `0.01` = one percentage point).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateRule {
    /// In [0, 1).
    pub max_increase: f64,
}

/// Halt when the treatment's p95 latency exceeds the control's p95 by more
/// than `max_increase_percent`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyRule {
    /// ≥ 0, e.g. `20` = 20 % slower at the 95th percentile.
    pub max_increase_percent: f64,
}

/// Halt when a business metric moves the wrong way by more than a relative
/// tolerance. Exactly one of the two limits is given.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricRule {
    /// Metric name as in outcome events.
    pub metric: String,
    /// Higher is better: halt when the treatment is worse than control by
    /// more than this many percent (relative lift below −this).
    #[serde(default)]
    pub max_decrease_percent: Option<f64>,
    /// Lower is better: halt when the treatment exceeds control by more
    /// than this many percent.
    #[serde(default)]
    pub max_increase_percent: Option<f64>,
}

/// An experiment's place in a layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Layer name; it is also the layer's hash salt.
    pub name: String,
    /// The slice of the layer this experiment owns, `[start, end)` in percent
    /// (steps of 0.01). Slices of one layer must not overlap.
    #[serde(default = "default_range")]
    pub range_percent: [f64; 2],
}

/// Request conditions; all given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The `:path` must start with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The `:method` must be one of these (exact, case-sensitive).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatchConfig>,
}

/// A header condition: present, or equal to `value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    pub name: String,
    /// If set, the header's value must equal it exactly; if not, the header
    /// must be present.
    #[serde(default)]
    pub value: Option<String>,
}

/// One variant and what happens to its requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// Unique within the experiment: `[A-Za-z0-9_.-]`, 1 to 64 characters.
    pub name: String,
    /// Relative weight, positive. Resolved to whole buckets of 0.01 %.
    pub weight: f64,
    /// Upstream cluster, written to the `cluster_header`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Replaces the experiment's `match.path_prefix` at the start of `:path`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// New `:authority` (host).
    #[serde(default)]
    pub authority: Option<String>,
}

fn default_update_every_s() -> u64 {
    3600
}
fn default_min_users_per_variant() -> u64 {
    100
}
fn default_explore_floor_percent() -> f64 {
    5.0
}
fn default_guardrail_alpha() -> f64 {
    0.01
}
fn default_min_responses() -> u64 {
    100
}
fn default_identity() -> Vec<IdentitySource> {
    vec![IdentitySource::Header("x-user-id".into())]
}
fn default_cluster_header() -> String {
    "x-abmesh-cluster".into()
}
fn default_traffic() -> f64 {
    100.0
}
fn default_range() -> [f64; 2] {
    [0.0, 100.0]
}
fn default_exposures_path() -> String {
    "/v1/exposures".into()
}
fn default_flush_ms() -> u32 {
    1000
}
fn default_max_pending() -> usize {
    10_000
}
fn default_max_batch() -> usize {
    5_000
}
/// A sampled request costs three more hostcalls (two clock readings and the
/// response's `:status`): +13.6k instructions on Envoy 1.40/V8, where a
/// request without the filter costs ~77k and with it ~114k. One in 8 keeps
/// health at ~1.7k per request on average; see benches/envoy/README.md.
fn default_recent_exposures() -> usize {
    8192
}
fn default_health_sample_every() -> u32 {
    8
}

/// A metric the sidecar derives from outcome-event metrics, as a GrowthBook
/// metric library defines them: a `ratio` of two per-user totals (clicks
/// per impression, revenue per session; analysed by the delta method over
/// users) or a `quantile` of a per-event value (p95 latency).
///
/// ```json
/// {"name": "ctr", "type": "ratio", "numerator": "click", "denominator": "impression"}
/// {"name": "latency_p95", "type": "quantile", "metric": "latency_ms", "quantile": 0.95}
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    /// Name in reports and guardrail rules: 1 to 64 of `[A-Za-z0-9_.:-]`,
    /// unique among the definitions.
    pub name: String,
    /// `ratio` or `quantile`.
    #[serde(rename = "type")]
    pub kind: MetricKind,
    /// Ratio: the outcome metric summed per user above the line.
    #[serde(default)]
    pub numerator: Option<String>,
    /// Ratio: the outcome metric summed per user below the line.
    #[serde(default)]
    pub denominator: Option<String>,
    /// Quantile: the outcome metric whose event `value`s are measured.
    #[serde(default)]
    pub metric: Option<String>,
    /// Quantile: the level, in (0, 1) (0.95 for p95).
    #[serde(default)]
    pub quantile: Option<f64>,
}

/// The kinds of [`MetricDefinition`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Σ numerator / Σ denominator over users.
    Ratio,
    /// The ν-quantile of the event values.
    Quantile,
}

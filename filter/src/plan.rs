//! The compiled, validated form of a [`Config`]: everything the per-request
//! path needs, precomputed.
//!
//! Compiling does all the work that would otherwise happen per request:
//! keys are derived, shares turned into bucket ranges, names checked and
//! lower-cased, header names given slots. What remains per request is a few
//! SipHash calls and comparisons over borrowed bytes.

use crate::config::{BanditConfig, Config, GuardrailsConfig, IdentitySource, MissingIdentity};
use crate::hash::{BucketKey, Purpose, BUCKETS};
use std::collections::{BTreeMap, BTreeSet};

/// Why a configuration was refused. `field` is the JSON path of the
/// offending value (`experiments[1].variants[0].weight`), so the log line
/// Envoy prints points at the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not a JSON document of the right shape.
    #[error("invalid configuration at `{field}`: {reason}")]
    Parse { field: String, reason: String },
    /// The document parsed but a value is not acceptable.
    #[error("invalid configuration: `{field}` {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    /// The JSON path of the offending value.
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => field,
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Index of a request header the plan reads; the glue caches reads by slot.
pub type Slot = u8;

/// Where the user id comes from.
#[derive(Debug, Clone)]
pub(crate) enum IdentityRule {
    Header(Slot),
    Cookie { slot: Slot, name: Box<[u8]> },
}

/// A header condition, compiled.
#[derive(Debug, Clone)]
pub(crate) struct HeaderCondition {
    pub slot: Slot,
    pub value: Option<Box<[u8]>>,
}

/// Request conditions, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Conditions {
    pub path_prefix: Option<Box<[u8]>>,
    pub methods: Box<[Box<[u8]>]>,
    pub headers: Box<[HeaderCondition]>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.path_prefix.is_none() && self.methods.is_empty() && self.headers.is_empty()
    }
}

/// A variant, compiled.
#[derive(Debug, Clone)]
pub struct Variant {
    pub(crate) name: Box<str>,
    /// Exclusive upper bound of this variant's buckets in the variant hash.
    pub(crate) upper: u32,
    pub(crate) cluster: Option<Box<str>>,
    pub(crate) path_prefix: Option<Box<[u8]>>,
    pub(crate) authority: Option<Box<str>>,
}

impl Variant {
    /// The variant's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An experiment's slice of a layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSlice {
    pub layer: u16,
    pub start: u32,
    pub end: u32,
}

/// An experiment, compiled.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub(crate) name: Box<str>,
    pub(crate) enroll_key: BucketKey,
    pub(crate) variant_key: BucketKey,
    /// Enrolled iff the enrollment bucket is below this.
    pub(crate) traffic: u32,
    pub(crate) layer: Option<LayerSlice>,
    pub(crate) conditions: Conditions,
    pub(crate) variants: Box<[Variant]>,
    pub(crate) control: u16,
    pub(crate) variant_header: Box<str>,
    /// Sorted by user id for binary search.
    pub(crate) allowlist: Box<[(Box<[u8]>, u16)]>,
    /// Validated; the filter only forwards them (the sidecar evaluates).
    pub(crate) guardrails: Option<GuardrailsConfig>,
    /// Validated; the sidecar computes the weights, the filter assigns by
    /// them ([`crate::Allocation`]).
    pub(crate) bandit: Option<BanditConfig>,
}

impl Experiment {
    /// The experiment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its variants, in configuration order.
    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }
    /// Index of the control variant.
    pub fn control(&self) -> usize {
        usize::from(self.control)
    }
    /// The experiment's guardrails (validated), if it has any. The sidecar
    /// evaluates them; the filter only carries them in the configuration.
    pub fn guardrails(&self) -> Option<&GuardrailsConfig> {
        self.guardrails.as_ref()
    }
    /// The experiment's bandit (validated), if its allocation is adaptive.
    /// The sidecar computes the weights of each period; the filter assigns
    /// by the latest it was sent ([`crate::Allocation`]).
    pub fn bandit(&self) -> Option<&BanditConfig> {
        self.bandit.as_ref()
    }
    /// The variant a bucket of the variant hash falls in under the
    /// configured weights.
    pub(crate) fn configured_variant(&self, bucket: u32) -> usize {
        self.variants
            .iter()
            .position(|v| bucket < v.upper)
            .unwrap_or(self.variants.len() - 1)
    }
    /// Index of the variant called `name`.
    pub fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| &*v.name == name)
    }
}

/// A validated configuration with all per-request tables precomputed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) header_names: Box<[Box<str>]>,
    pub(crate) identity: Box<[IdentityRule]>,
    pub(crate) missing_identity: MissingIdentity,
    pub(crate) cluster_header: Box<str>,
    pub(crate) force: Option<Slot>,
    pub(crate) echo_header: Option<Box<str>>,
    pub(crate) clear_route_cache: bool,
    pub(crate) layer_keys: Box<[BucketKey]>,
    pub(crate) experiments: Box<[Experiment]>,
    pub(crate) path_slot: Slot,
    pub(crate) method_slot: Slot,
    pub(crate) sidecar: Option<crate::config::SidecarConfig>,
}

/// Pseudo-header names Envoy exposes to filters.
pub const PATH: &str = ":path";
pub const METHOD: &str = ":method";
pub const AUTHORITY: &str = ":authority";

impl Plan {
    /// Parses and validates a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let config: Config = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Parse {
                field: if field.is_empty() { ".".into() } else { field },
                reason: e.into_inner().to_string(),
            }
        })?;
        // Nothing but whitespace may follow the object: the filter embeds
        // these bytes verbatim in its batches to the sidecar.
        de.end().map_err(|e| ConfigError::Parse {
            field: ".".into(),
            reason: e.to_string(),
        })?;
        Plan::compile(&config)
    }

    /// Validates a parsed configuration and precomputes its tables.
    pub fn compile(config: &Config) -> Result<Plan, ConfigError> {
        Compiler::default().compile(config)
    }

    /// The experiments, in configuration order.
    pub fn experiments(&self) -> &[Experiment] {
        &self.experiments
    }

    /// Request header names the plan may read, indexed by [`Slot`].
    pub fn header_names(&self) -> &[Box<str>] {
        &self.header_names
    }

    /// Name of the header the `cluster_header` route action reads.
    pub fn cluster_header(&self) -> &str {
        &self.cluster_header
    }

    /// Response header that echoes assignments, if configured.
    pub fn echo_header(&self) -> Option<&str> {
        self.echo_header.as_deref()
    }

    /// Whether to ask Envoy to re-select the route after a change.
    pub fn clear_route_cache(&self) -> bool {
        self.clear_route_cache
    }

    /// Where exposures are shipped, if anywhere (validated).
    pub fn sidecar(&self) -> Option<&crate::config::SidecarConfig> {
        self.sidecar.as_ref()
    }

    /// How requests without an identity are handled.
    pub fn missing_identity(&self) -> MissingIdentity {
        self.missing_identity
    }
}

/// Builds a [`Plan`], collecting header slots as it goes.
#[derive(Default)]
struct Compiler {
    header_names: Vec<Box<str>>,
}

/// What the experiments of one configuration must not share, gathered as
/// they are compiled in order (so an error names the later of two).
#[derive(Default)]
struct Seen<'c> {
    names: BTreeSet<&'c str>,
    layer_names: Vec<String>,
    /// layer index -> (start, end, experiment index) of slices seen so far
    slices: BTreeMap<usize, Vec<(u32, u32, usize)>>,
    /// variant header -> experiment index
    variant_headers: BTreeMap<String, usize>,
}

/// The request headers the plan writes besides variant headers.
struct Routing {
    cluster_header: String,
    force: Option<Slot>,
    echo_header: Option<Box<str>>,
}

impl Compiler {
    fn slot(&mut self, name: &str) -> Slot {
        if let Some(i) = self.header_names.iter().position(|n| &**n == name) {
            return i as Slot;
        }
        self.header_names.push(name.into());
        (self.header_names.len() - 1) as Slot
    }

    /// Validates the whole configuration, in the order its errors are
    /// reported: identity, routing headers, each experiment in order, the
    /// header count, then the sidecar.
    fn compile(mut self, config: &Config) -> Result<Plan, ConfigError> {
        let path_slot = self.slot(PATH);
        let method_slot = self.slot(METHOD);
        let identity = self.identity(config)?;
        let routing = self.routing(config)?;
        let experiments = self.experiments(config, &routing.cluster_header)?;
        let (experiments, layer_names) = experiments;
        if self.header_names.len() > usize::from(Slot::MAX) {
            return Err(ConfigError::invalid(
                "experiments",
                "reference too many distinct headers",
            ));
        }
        let sidecar = match &config.sidecar {
            None => None,
            Some(s) => Some(check_sidecar(s)?),
        };
        check_metric_definitions(&config.metrics)?;
        Ok(Plan {
            header_names: self.header_names.into_boxed_slice(),
            identity,
            missing_identity: config.missing_identity,
            cluster_header: routing.cluster_header.into_boxed_str(),
            force: routing.force,
            echo_header: routing.echo_header,
            clear_route_cache: config.clear_route_cache,
            layer_keys: layer_names
                .iter()
                .map(|n| BucketKey::derive(Purpose::Layer, n))
                .collect(),
            experiments,
            path_slot,
            method_slot,
            sidecar,
        })
    }

    /// `identity`: at least one source, each a valid header or cookie name.
    fn identity(&mut self, config: &Config) -> Result<Box<[IdentityRule]>, ConfigError> {
        if config.identity.is_empty() {
            return Err(ConfigError::invalid(
                "identity",
                "must name at least one header or cookie",
            ));
        }
        let mut identity = Vec::with_capacity(config.identity.len());
        for (i, source) in config.identity.iter().enumerate() {
            identity.push(match source {
                IdentitySource::Header(h) => {
                    let h = header_name(&format!("identity[{i}].header"), h)?;
                    IdentityRule::Header(self.slot(&h))
                }
                IdentitySource::Cookie(c) => {
                    cookie_name(&format!("identity[{i}].cookie"), c)?;
                    IdentityRule::Cookie {
                        slot: self.slot("cookie"),
                        name: c.as_bytes().into(),
                    }
                }
            });
        }
        Ok(identity.into_boxed_slice())
    }

    /// `cluster_header`, `force_header`, `echo_header`.
    fn routing(&mut self, config: &Config) -> Result<Routing, ConfigError> {
        let cluster_header = header_name("cluster_header", &config.cluster_header)?;
        let force = match &config.force_header {
            Some(h) => Some(self.slot(&header_name("force_header", h)?)),
            None => None,
        };
        let echo_header = match &config.echo_header {
            Some(h) => Some(header_name("echo_header", h)?.into_boxed_str()),
            None => None,
        };
        Ok(Routing {
            cluster_header,
            force,
            echo_header,
        })
    }

    /// Every experiment, in order; returns them and the layer names in
    /// index order.
    fn experiments(
        &mut self,
        config: &Config,
        cluster_header: &str,
    ) -> Result<(Box<[Experiment]>, Vec<String>), ConfigError> {
        if config.experiments.is_empty() {
            return Err(ConfigError::invalid(
                "experiments",
                "must list at least one experiment",
            ));
        }
        let mut seen = Seen::default();
        let mut experiments = Vec::with_capacity(config.experiments.len());
        for (ei, exp) in config.experiments.iter().enumerate() {
            experiments.push(self.experiment(config, ei, exp, cluster_header, &mut seen)?);
        }
        Ok((experiments.into_boxed_slice(), seen.layer_names))
    }

    /// One experiment, `experiments[ei]`.
    fn experiment<'c>(
        &mut self,
        config: &'c Config,
        ei: usize,
        exp: &'c crate::config::ExperimentConfig,
        cluster_header: &str,
        seen: &mut Seen<'c>,
    ) -> Result<Experiment, ConfigError> {
        let at = |f: &str| format!("experiments[{ei}].{f}");
        check_name(&at("name"), &exp.name, false)?;
        if !seen.names.insert(exp.name.as_str()) {
            return Err(ConfigError::invalid(
                at("name"),
                format!("duplicates experiment name {:?}", exp.name),
            ));
        }
        let salt = exp.salt.as_deref().unwrap_or(&exp.name);
        if salt.is_empty() {
            return Err(ConfigError::invalid(at("salt"), "must not be empty"));
        }
        let traffic = percent_to_buckets(&at("traffic_percent"), exp.traffic_percent)?;
        let layer = match &exp.layer {
            None => None,
            Some(l) => Some(layer_slice(config, ei, l, seen)?),
        };
        let conditions = self.conditions(&at("match"), &exp.matches)?;
        let variants = variants(ei, exp, &conditions)?;
        let find_variant = |field: String, name: &str| -> Result<u16, ConfigError> {
            variants
                .iter()
                .position(|v| &*v.name == name)
                .map(|i| i as u16)
                .ok_or_else(|| {
                    ConfigError::invalid(field, format!("names unknown variant {name:?}"))
                })
        };
        let control = match &exp.control {
            None => 0,
            Some(c) => find_variant(at("control"), c)?,
        };
        let mut allowlist = Vec::with_capacity(exp.allowlist.len());
        for (user, variant) in &exp.allowlist {
            if user.is_empty() {
                return Err(ConfigError::invalid(
                    at("allowlist"),
                    "has an empty user id",
                ));
            }
            let vi = find_variant(at(&format!("allowlist.{user}")), variant)?;
            allowlist.push((user.as_bytes().into(), vi));
        }
        // BTreeMap iteration is already sorted by key bytes.
        let variant_header = variant_header(config, ei, exp, cluster_header, seen)?;
        let guardrails = match &exp.guardrails {
            None => None,
            Some(g) => {
                check_guardrails(&at("guardrails"), g)?;
                Some(g.clone())
            }
        };
        let bandit = match &exp.bandit {
            None => None,
            Some(b) => {
                check_bandit(&at("bandit"), b, &variants, usize::from(control))?;
                Some(b.clone())
            }
        };
        Ok(Experiment {
            name: exp.name.as_str().into(),
            enroll_key: BucketKey::derive(Purpose::Enroll, salt),
            variant_key: BucketKey::derive(Purpose::Variant, salt),
            traffic,
            layer,
            conditions,
            variants,
            control,
            variant_header: variant_header.into_boxed_str(),
            allowlist: allowlist.into_boxed_slice(),
            guardrails,
            bandit,
        })
    }

    fn conditions(
        &mut self,
        at: &str,
        m: &crate::config::MatchConfig,
    ) -> Result<Conditions, ConfigError> {
        let path_prefix = match &m.path_prefix {
            None => None,
            Some(p) => {
                check_path(&format!("{at}.path_prefix"), p)?;
                Some(p.as_bytes().into())
            }
        };
        let mut methods = Vec::with_capacity(m.methods.len());
        for (i, method) in m.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                return Err(ConfigError::invalid(
                    format!("{at}.methods[{i}]"),
                    format!("is not an HTTP method: {method:?}"),
                ));
            }
            methods.push(method.as_bytes().into());
        }
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let name = header_name(&format!("{at}.headers[{i}].name"), &h.name)?;
            headers.push(HeaderCondition {
                slot: self.slot(&name),
                value: h.value.as_deref().map(|v| v.as_bytes().into()),
            });
        }
        Ok(Conditions {
            path_prefix,
            methods: methods.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
        })
    }
}

/// `experiments[ei].layer`: its slice, which must not overlap another
/// experiment's slice of the same layer.
fn layer_slice(
    config: &Config,
    ei: usize,
    l: &crate::config::LayerConfig,
    seen: &mut Seen<'_>,
) -> Result<LayerSlice, ConfigError> {
    let at = |f: &str| format!("experiments[{ei}].{f}");
    check_name(&at("layer.name"), &l.name, false)?;
    let [s, e] = l.range_percent;
    let start = percent_to_buckets(&at("layer.range_percent[0]"), s)?;
    let end = percent_to_buckets(&at("layer.range_percent[1]"), e)?;
    if start >= end {
        return Err(ConfigError::invalid(
            at("layer.range_percent"),
            format!("must be an interval [start, end) with start < end, got [{s}, {e}]"),
        ));
    }
    let li = match seen.layer_names.iter().position(|n| n == &l.name) {
        Some(i) => i,
        None => {
            seen.layer_names.push(l.name.clone());
            seen.layer_names.len() - 1
        }
    };
    let slices = seen.slices.entry(li).or_default();
    if let Some(&(_, _, other)) = slices.iter().find(|&&(s2, e2, _)| start < e2 && s2 < end) {
        return Err(ConfigError::invalid(
            at("layer.range_percent"),
            format!(
                "overlaps experiment {:?} in layer {:?}; experiments in one layer must own disjoint ranges",
                config.experiments[other].name, l.name
            ),
        ));
    }
    slices.push((start, end, ei));
    Ok(LayerSlice {
        layer: li as u16,
        start,
        end,
    })
}

/// `experiments[ei].variants`: two or more, names unique, weights turned
/// into cumulative bucket bounds.
fn variants(
    ei: usize,
    exp: &crate::config::ExperimentConfig,
    conditions: &Conditions,
) -> Result<Box<[Variant]>, ConfigError> {
    let at = |f: &str| format!("experiments[{ei}].{f}");
    if exp.variants.len() < 2 {
        return Err(ConfigError::invalid(
            at("variants"),
            format!("needs at least 2 variants, got {}", exp.variants.len()),
        ));
    }
    if exp.variants.len() > usize::from(u16::MAX) {
        return Err(ConfigError::invalid(
            at("variants"),
            "has too many variants",
        ));
    }
    let total: f64 = exp.variants.iter().map(|v| v.weight).sum();
    let mut variants: Vec<Variant> = Vec::with_capacity(exp.variants.len());
    let mut cumulative = 0.0;
    for (vi, v) in exp.variants.iter().enumerate() {
        let vat = |f: &str| at(&format!("variants[{vi}].{f}"));
        check_name(&vat("name"), &v.name, true)?;
        if variants.iter().any(|o| *o.name == *v.name) {
            return Err(ConfigError::invalid(
                vat("name"),
                format!("duplicates variant name {:?}", v.name),
            ));
        }
        if !(v.weight.is_finite() && v.weight > 0.0) {
            return Err(ConfigError::invalid(
                vat("weight"),
                format!("must be a positive number, got {}", v.weight),
            ));
        }
        cumulative += v.weight;
        let upper = if vi + 1 == exp.variants.len() {
            BUCKETS
        } else {
            ((cumulative / total) * f64::from(BUCKETS)).round() as u32
        };
        let lower = variants.last().map_or(0, |p| p.upper);
        if upper <= lower {
            return Err(ConfigError::invalid(
                vat("weight"),
                format!(
                    "is too small: {} of a total {} rounds to no bucket (resolution is 0.01%)",
                    v.weight, total
                ),
            ));
        }
        variants.push(variant_actions(v, upper, conditions, &vat, &at)?);
    }
    Ok(variants.into_boxed_slice())
}

/// A variant's routing actions: cluster, path prefix, authority.
fn variant_actions(
    v: &crate::config::VariantConfig,
    upper: u32,
    conditions: &Conditions,
    vat: &dyn Fn(&str) -> String,
    at: &dyn Fn(&str) -> String,
) -> Result<Variant, ConfigError> {
    let cluster = match &v.cluster {
        Some(c) if c.is_empty() || !c.bytes().all(is_header_value_byte) => {
            return Err(ConfigError::invalid(
                vat("cluster"),
                "must be a non-empty cluster name of printable ASCII",
            ))
        }
        c => c.as_deref().map(Into::into),
    };
    let path_prefix = match &v.path_prefix {
        None => None,
        Some(p) => {
            if conditions.path_prefix.is_none() {
                return Err(ConfigError::invalid(
                    vat("path_prefix"),
                    format!(
                        "rewrites the matched path prefix, so {} must be set",
                        at("match.path_prefix")
                    ),
                ));
            }
            check_path(&vat("path_prefix"), p)?;
            Some(p.as_bytes().into())
        }
    };
    let authority = match &v.authority {
        Some(a) if a.is_empty() || !a.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(ConfigError::invalid(
                vat("authority"),
                "must be a non-empty host[:port] without spaces",
            ))
        }
        a => a.as_deref().map(Into::into),
    };
    Ok(Variant {
        name: v.name.as_str().into(),
        upper,
        cluster,
        path_prefix,
        authority,
    })
}

/// `experiments[ei].variant_header`: valid, unique among experiments, and
/// not the cluster header.
fn variant_header(
    config: &Config,
    ei: usize,
    exp: &crate::config::ExperimentConfig,
    cluster_header: &str,
    seen: &mut Seen<'_>,
) -> Result<String, ConfigError> {
    let at = |f: &str| format!("experiments[{ei}].{f}");
    let variant_header = match &exp.variant_header {
        Some(h) => header_name(&at("variant_header"), h)?,
        None => format!("x-abmesh-{}", exp.name),
    };
    if let Some(other) = seen.variant_headers.insert(variant_header.clone(), ei) {
        return Err(ConfigError::invalid(
            at("variant_header"),
            format!(
                "{variant_header:?} is also experiment {:?}'s variant header",
                config.experiments[other].name
            ),
        ));
    }
    if variant_header == cluster_header {
        return Err(ConfigError::invalid(
            at("variant_header"),
            "must differ from cluster_header",
        ));
    }
    Ok(variant_header)
}

fn check_sidecar(
    s: &crate::config::SidecarConfig,
) -> Result<crate::config::SidecarConfig, ConfigError> {
    if s.cluster.is_empty() || !s.cluster.bytes().all(is_header_value_byte) {
        return Err(ConfigError::invalid(
            "sidecar.cluster",
            "must be a non-empty cluster name of printable ASCII",
        ));
    }
    if let Some(a) = &s.authority {
        if a.is_empty() || !a.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "sidecar.authority",
                "must be a non-empty host[:port] without spaces",
            ));
        }
    }
    check_path("sidecar.path", &s.path)?;
    for (field, v) in [
        ("sidecar.flush_interval_ms", s.flush_interval_ms),
        ("sidecar.timeout_ms", s.timeout_ms),
    ] {
        if !(10..=3_600_000).contains(&v) {
            return Err(ConfigError::invalid(
                field,
                format!("must be between 10 and 3600000 ms, got {v}"),
            ));
        }
    }
    if !(1..=1_000_000).contains(&s.max_pending_exposures) {
        return Err(ConfigError::invalid(
            "sidecar.max_pending_exposures",
            format!(
                "must be between 1 and 1000000, got {}",
                s.max_pending_exposures
            ),
        ));
    }
    if !(1..=100_000).contains(&s.max_batch) {
        return Err(ConfigError::invalid(
            "sidecar.max_batch",
            format!("must be between 1 and 100000, got {}", s.max_batch),
        ));
    }
    if s.recent_exposures != 0
        && !(s.recent_exposures.is_power_of_two() && s.recent_exposures <= 1 << 20)
    {
        return Err(ConfigError::invalid(
            "sidecar.recent_exposures",
            format!(
                "must be 0 (off) or a power of two up to 1048576, got {}",
                s.recent_exposures
            ),
        ));
    }
    if s.health_sample_every == 0 {
        return Err(ConfigError::invalid(
            "sidecar.health_sample_every",
            "must be at least 1 (1 records every request)",
        ));
    }
    if let Some(t) = &s.token {
        // The message never quotes the token: configuration errors are
        // logged by Envoy.
        use crate::config::SidecarToken;
        let t = t.expose();
        if !(SidecarToken::MIN_LEN..=SidecarToken::MAX_LEN).contains(&t.len()) {
            return Err(ConfigError::invalid(
                "sidecar.token",
                format!(
                    "must be {} to {} bytes long, got {} (the token of `abmesh serve --ingest-token-file`)",
                    SidecarToken::MIN_LEN,
                    SidecarToken::MAX_LEN,
                    t.len()
                ),
            ));
        }
        if let Some(i) = t.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "sidecar.token",
                format!("must be visible ASCII (no spaces or control characters); byte {i} is not"),
            ));
        }
    }
    Ok(s.clone())
}

/// Validates an experiment's guardrails; `at` is their path
/// (`experiments[0].guardrails`).
fn check_guardrails(at: &str, g: &GuardrailsConfig) -> Result<(), ConfigError> {
    if !(g.alpha > 0.0 && g.alpha <= 0.5) {
        return Err(ConfigError::invalid(
            format!("{at}.alpha"),
            format!("must be in (0, 0.5], got {}", g.alpha),
        ));
    }
    if let Some(r) = &g.error_rate {
        if !(0.0..1.0).contains(&r.max_increase) {
            return Err(ConfigError::invalid(
                format!("{at}.error_rate.max_increase"),
                format!(
                    "must be an absolute share in [0, 1) (0.01 = one percentage point), got {}",
                    r.max_increase
                ),
            ));
        }
    }
    if let Some(r) = &g.p95_latency {
        check_percent_limit(
            &format!("{at}.p95_latency.max_increase_percent"),
            r.max_increase_percent,
        )?;
    }
    for (i, m) in g.metrics.iter().enumerate() {
        let mat = format!("{at}.metrics[{i}]");
        let name_ok = (1..=64).contains(&m.metric.len())
            && m.metric
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !name_ok {
            return Err(ConfigError::invalid(
                format!("{mat}.metric"),
                format!(
                    "must be 1 to 64 characters of [A-Za-z0-9_.:-], got {:?}",
                    m.metric
                ),
            ));
        }
        if let Some(j) = g.metrics[..i].iter().position(|o| o.metric == m.metric) {
            return Err(ConfigError::invalid(
                format!("{mat}.metric"),
                format!(
                    "duplicates the rule for metric {:?} at {at}.metrics[{j}]",
                    m.metric
                ),
            ));
        }
        match (m.max_decrease_percent, m.max_increase_percent) {
            (Some(p), None) => check_percent_limit(&format!("{mat}.max_decrease_percent"), p)?,
            (None, Some(p)) => check_percent_limit(&format!("{mat}.max_increase_percent"), p)?,
            (both, _) => {
                return Err(ConfigError::invalid(
                    mat,
                    format!(
                        "needs exactly one of max_decrease_percent (higher is better) and \
                         max_increase_percent (lower is better), got {}",
                        if both.is_some() { "both" } else { "neither" }
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Longest bandit period: 30 days.
const MAX_BANDIT_UPDATE_EVERY_S: u64 = 30 * 24 * 3600;

/// Validates an experiment's bandit; `at` is its path
/// (`experiments[0].bandit`). The control keeps its configured share and
/// every non-control variant at least the floor, so there must be at least
/// two non-control variants (with one there is nothing to choose between)
/// and room for every floor in the non-control share.
fn check_bandit(
    at: &str,
    b: &BanditConfig,
    variants: &[Variant],
    control: usize,
) -> Result<(), ConfigError> {
    // The name rule of `POST /v1/events`: a name no event can carry would
    // leave the bandit on its configured weights forever.
    if !metric_name_ok(&b.metric) {
        return Err(ConfigError::invalid(
            format!("{at}.metric"),
            format!(
                "must name an outcome-event metric: 1 to 64 characters of [A-Za-z0-9_.:-], got {:?}",
                b.metric
            ),
        ));
    }
    if !(1..=MAX_BANDIT_UPDATE_EVERY_S).contains(&b.update_every_s) {
        return Err(ConfigError::invalid(
            format!("{at}.update_every_s"),
            format!(
                "must be between 1 and {MAX_BANDIT_UPDATE_EVERY_S} seconds (30 days), got {}",
                b.update_every_s
            ),
        ));
    }
    let floor = b.explore_floor_percent;
    if !(floor.is_finite() && floor >= 0.0) {
        return Err(ConfigError::invalid(
            format!("{at}.explore_floor_percent"),
            format!("must be a percentage >= 0, got {floor}"),
        ));
    }
    let treatments = variants.len() - 1;
    if treatments < 2 {
        return Err(ConfigError::invalid(
            at,
            "a bandit needs at least two non-control variants: the control keeps its configured share",
        ));
    }
    let lower = control.checked_sub(1).map_or(0, |p| variants[p].upper);
    let control_buckets = variants[control].upper - lower;
    let share = f64::from(BUCKETS - control_buckets) * 100.0 / f64::from(BUCKETS);
    // Shares are whole buckets (0.01 %): the tolerance only absorbs the
    // rounding of `floor × treatments` in binary.
    if floor * treatments as f64 > share + 1e-9 {
        return Err(ConfigError::invalid(
            format!("{at}.explore_floor_percent"),
            format!(
                "is too large: {treatments} non-control variants × {floor}% exceeds their share of {share}% (the control keeps its configured share)"
            ),
        ));
    }
    Ok(())
}

fn check_percent_limit(field: &str, p: f64) -> Result<(), ConfigError> {
    if !(p.is_finite() && p >= 0.0) {
        return Err(ConfigError::invalid(
            field,
            format!("must be a percentage >= 0, got {p}"),
        ));
    }
    Ok(())
}

/// Validates a header name and lower-cases it (HTTP/2 and Envoy use
/// lower-case names; `X-User-Id` in a config means `x-user-id`).
fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "must not be an empty header name",
        ));
    }
    if name.starts_with(':') {
        return Err(ConfigError::invalid(
            field,
            format!("must be a regular header, not the pseudo-header {name:?}"),
        ));
    }
    if !name.bytes().all(is_token_byte) {
        return Err(ConfigError::invalid(
            field,
            format!("is not a valid header name: {name:?}"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn cookie_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ConfigError::invalid(
            field,
            format!("is not a valid cookie name: {name:?}"),
        ));
    }
    Ok(())
}

/// Experiment names end up in header values and metric labels, so they are
/// restricted to a safe alphabet; variant names may also use upper case.
fn check_name(field: &str, name: &str, allow_upper: bool) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'.')
                || (allow_upper && b.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        let alphabet = if allow_upper {
            "A-Za-z0-9_.-"
        } else {
            "a-z0-9_.-"
        };
        Err(ConfigError::invalid(
            field,
            format!("must be 1 to 64 characters of [{alphabet}], got {name:?}"),
        ))
    }
}

fn check_path(field: &str, p: &str) -> Result<(), ConfigError> {
    if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            field,
            format!("must start with '/' and contain no spaces or control characters, got {p:?}"),
        ));
    }
    Ok(())
}

fn percent_to_buckets(field: &str, p: f64) -> Result<u32, ConfigError> {
    if !(p.is_finite() && (0.0..=100.0).contains(&p)) {
        return Err(ConfigError::invalid(
            field,
            format!("must be a percentage between 0 and 100, got {p}"),
        ));
    }
    let buckets = p * f64::from(BUCKETS) / 100.0;
    let rounded = buckets.round();
    if (buckets - rounded).abs() > 1e-6 {
        return Err(ConfigError::invalid(
            field,
            format!("must be a multiple of 0.01, got {p}"),
        ));
    }
    Ok(rounded as u32)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_header_value_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// Whether `name` is a valid outcome-event metric name (what `POST
/// /v1/events` accepts): 1 to 64 of `[A-Za-z0-9_.:-]`.
fn metric_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Validates `metrics` (the ratio and quantile definitions): names valid
/// and unique, each kind with exactly its own fields, inputs that are
/// outcome metrics (not other definitions).
fn check_metric_definitions(defs: &[crate::config::MetricDefinition]) -> Result<(), ConfigError> {
    use crate::config::MetricKind;
    let name_err = |field: String, got: &str| {
        ConfigError::invalid(
            field,
            format!("must be 1 to 64 characters of [A-Za-z0-9_.:-], got {got:?}"),
        )
    };
    // A field's name and whether it is given.
    type Field<'a> = (&'a str, bool);
    for (i, d) in defs.iter().enumerate() {
        let at = |f: &str| format!("metrics[{i}].{f}");
        if !metric_name_ok(&d.name) {
            return Err(name_err(at("name"), &d.name));
        }
        if let Some(j) = defs[..i].iter().position(|o| o.name == d.name) {
            return Err(ConfigError::invalid(
                at("name"),
                format!("duplicates the name {:?} of metrics[{j}]", d.name),
            ));
        }
        let (needed, foreign): (&[Field], &[Field]) = match d.kind {
            MetricKind::Ratio => (
                &[
                    ("numerator", d.numerator.is_some()),
                    ("denominator", d.denominator.is_some()),
                ],
                &[
                    ("metric", d.metric.is_some()),
                    ("quantile", d.quantile.is_some()),
                ],
            ),
            MetricKind::Quantile => (
                &[
                    ("metric", d.metric.is_some()),
                    ("quantile", d.quantile.is_some()),
                ],
                &[
                    ("numerator", d.numerator.is_some()),
                    ("denominator", d.denominator.is_some()),
                ],
            ),
        };
        let kind = match d.kind {
            MetricKind::Ratio => "ratio",
            MetricKind::Quantile => "quantile",
        };
        if let Some((f, _)) = needed.iter().find(|(_, present)| !present) {
            return Err(ConfigError::invalid(
                at(f),
                format!("is required for a {kind} metric"),
            ));
        }
        if let Some((f, _)) = foreign.iter().find(|(_, present)| *present) {
            return Err(ConfigError::invalid(
                at(f),
                format!("is not a field of a {kind} metric"),
            ));
        }
        let inputs: Vec<(&str, &str)> = match d.kind {
            MetricKind::Ratio => vec![
                ("numerator", d.numerator.as_deref().unwrap_or_default()),
                ("denominator", d.denominator.as_deref().unwrap_or_default()),
            ],
            MetricKind::Quantile => vec![("metric", d.metric.as_deref().unwrap_or_default())],
        };
        for (f, input) in &inputs {
            if !metric_name_ok(input) {
                return Err(name_err(at(f), input));
            }
            if defs.iter().any(|o| o.name == *input) {
                return Err(ConfigError::invalid(
                    at(f),
                    format!(
                        "names the defined metric {input:?}; the inputs of a definition are \
                         outcome-event metrics"
                    ),
                ));
            }
        }
        if d.kind == MetricKind::Ratio && d.numerator == d.denominator {
            return Err(ConfigError::invalid(
                at("denominator"),
                "must differ from the numerator (the ratio would be 1 for every user)",
            ));
        }
        if let Some(q) = d.quantile {
            if !(q > 0.0 && q < 1.0) {
                return Err(ConfigError::invalid(
                    at("quantile"),
                    format!("must be in (0, 1) (0.95 for p95), got {q}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod metric_definition_tests {
    use super::*;

    fn err(metrics: &str) -> ConfigError {
        let json = format!(
            r#"{{"experiments":[{{"name":"r","variants":[{{"name":"a","weight":1}},{{"name":"b","weight":1}}]}}],"metrics":{metrics}}}"#
        );
        Plan::from_json(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn valid_definitions_are_accepted() {
        let json = br#"{"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}],
            "guardrails":{"metrics":[{"metric":"ctr","max_decrease_percent":5}]}}],
            "metrics":[{"name":"ctr","type":"ratio","numerator":"click","denominator":"impression"},
                       {"name":"latency_p95","type":"quantile","metric":"latency_ms","quantile":0.95}]}"#;
        Plan::from_json(json).unwrap();
        let c: Config = serde_json::from_slice(json).unwrap();
        assert_eq!(c.metrics.len(), 2);
        assert_eq!(c.metrics[1].quantile, Some(0.95));
    }

    #[test]
    fn invalid_definitions_name_the_field() {
        let cases = [
            (
                r#"[{"name":"ctr","type":"ratio","numerator":"click"}]"#,
                "metrics[0].denominator",
            ),
            (
                r#"[{"name":"ctr","type":"ratio","numerator":"c","denominator":"c"}]"#,
                "metrics[0].denominator",
            ),
            (
                r#"[{"name":"ctr","type":"ratio","numerator":"c","denominator":"i","quantile":0.5}]"#,
                "metrics[0].quantile",
            ),
            (
                r#"[{"name":"p","type":"quantile","metric":"lat"}]"#,
                "metrics[0].quantile",
            ),
            (
                r#"[{"name":"p","type":"quantile","metric":"lat","quantile":1.0}]"#,
                "metrics[0].quantile",
            ),
            (
                r#"[{"name":"p","type":"quantile","quantile":0.5}]"#,
                "metrics[0].metric",
            ),
            (
                r#"[{"name":"p","type":"quantile","metric":"bad name","quantile":0.5}]"#,
                "metrics[0].metric",
            ),
            (
                r#"[{"name":"","type":"quantile","metric":"l","quantile":0.5}]"#,
                "metrics[0].name",
            ),
            (
                r#"[{"name":"a","type":"quantile","metric":"l","quantile":0.5},{"name":"a","type":"quantile","metric":"l","quantile":0.9}]"#,
                "metrics[1].name",
            ),
            (
                r#"[{"name":"a","type":"quantile","metric":"l","quantile":0.5},{"name":"r","type":"ratio","numerator":"a","denominator":"x"}]"#,
                "metrics[1].numerator",
            ),
            (
                r#"[{"name":"a","type":"mean","metric":"l"}]"#,
                "metrics[0].type",
            ),
            (
                r#"[{"name":"a","type":"ratio","numerator":"x","denominator":"y","extra":1}]"#,
                "metrics[0]",
            ),
        ];
        for (metrics, field) in cases {
            let e = err(metrics);
            assert!(e.field().starts_with(field), "{metrics}: {e}");
        }
    }
}

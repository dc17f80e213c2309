//! Exposure batches: what the filter posts to `POST /v1/exposures` on its
//! tick. The filter writes them with `abmesh_filter::protocol` (the batch,
//! the health rows' shape and histogram, the id limit, the configuration
//! id); this parser takes those from there, so the two sides cannot drift
//! apart, and `a_batch_the_filter_writes_parses_as_written` below reads
//! what the filter's own writer produced.
//!
//! ```json
//! {"instance": "envoy-7f9c/0/1777636800123", "seq": 42, "dropped": 0,
//!  "experiments": [{"name": "ranker", "variants": ["control", "treatment"]}],
//!  "exposures": [[1777636800250, 0, 1, "u-17"], [1777636800251, 0, 0, "u-18"]]}
//! ```
//!
//! * `instance`: the sending filter instance, unique per VM lifetime (node
//!   id, worker and start time), because `seq` starts again at 0 when a VM
//!   restarts.
//! * `seq`: increases by one per batch; `(instance, seq)` identifies a batch,
//!   so a batch retried after a lost response is acknowledged and ignored.
//! * `dropped`: exposures the filter's ring dropped since its last
//!   successful flush (the sidecar was slow or down); reported, not guessed.
//! * `experiments`: the names the rows' indexes refer to, so a batch needs
//!   no shared configuration to be read and stays correct across config
//!   changes. Variant names must be the filter's.
//! * `exposures`: rows `[t_ms, experiment_index, variant_index, user]`: a
//!   user was assigned by hash (allowlisted, forced and default routing are
//!   not exposures and are not sent). Sending the same user again is
//!   harmless: the first exposure counts. A bandit experiment's rows carry
//!   a fifth element, the allocation period that assigned the user
//!   (`[t_ms, e, v, user, period]`, only when the period is not 0), which
//!   the adaptive analysis stratifies by.
//! * `config_id` (optional): 16 lowercase hex digits, the SipHash-1-3 of
//!   the filter's raw plugin configuration; `config` (optional): that
//!   configuration, verbatim, sent until the sidecar says it has it
//!   (`config_needed: false` in the response).
//! * `health` (optional): `[[e, v, requests, [s1xx..s5xx], [h0..h24]], ...]`,
//!   per (experiment index, variant index) deltas since the filter's last
//!   successful flush: requests assigned by hash (exact), and the sampled
//!   responses by status class and latency bucket
//!   ([`abmesh_filter::protocol::health::LATENCY_BUCKETS`]); both arrays
//!   count the same responses.
//! * Other top-level fields are ignored, so an older sidecar accepts a newer
//!   filter's batches.
//!
//! The format is plain enough to be written with string formatting in the
//! filter: numbers, and user ids as JSON strings (escape `"`, `\` and
//! control characters).

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ValidationError;
use super::fields::{self, parse_json, Text, MAX_TIMESTAMP_MS};
use abmesh_common::quote::{bound, clip};
use abmesh_filter::protocol::health::{LATENCY_BUCKETS, STATUS_CLASSES};
pub use abmesh_filter::protocol::{format_config_id, parse_config_id};
use abmesh_stats::guardrail::Health;

// The filter ships user ids of up to `MAX_USER_BYTES` (and counts longer
// ones as dropped); the sidecar must take every id the filter sends.
const _: () = assert!(abmesh_filter::protocol::MAX_USER_BYTES <= fields::MAX_ID_BYTES);

/// Most rows in one batch.
pub const MAX_EXPOSURES_PER_BATCH: usize = 1_000_000;
/// Most experiments (and variants per experiment) in one batch.
pub const MAX_EXPERIMENTS_PER_BATCH: usize = 1024;
/// Most health rows in one batch.
pub const MAX_HEALTH_ROWS_PER_BATCH: usize = 65_536;

/// One batch from one filter instance.
#[derive(Debug, Clone, Deserialize)]
pub struct ExposureBatch<'a> {
    #[serde(borrow)]
    pub instance: Text<'a>,
    pub seq: u64,
    #[serde(default)]
    pub dropped: u64,
    #[serde(borrow)]
    pub experiments: Vec<BatchExperiment<'a>>,
    #[serde(borrow)]
    pub exposures: Vec<ExposureRow<'a>>,
    /// The filter's configuration id (16 lowercase hex digits).
    #[serde(default, borrow)]
    pub config_id: Option<Text<'a>>,
    /// The filter's plugin configuration, verbatim.
    #[serde(default, borrow)]
    pub config: Option<&'a RawValue>,
    /// Per-variant health deltas.
    #[serde(default)]
    pub health: Vec<HealthRow>,
}

impl ExposureBatch<'_> {
    /// `config_id` as a number (None: absent; the batch was validated).
    pub fn config_id(&self) -> Option<u64> {
        self.config_id
            .as_ref()
            .and_then(|t| parse_config_id(t.as_str()))
    }

    /// The raw bytes of `config`, as the filter embedded them.
    pub fn config_bytes(&self) -> Option<&[u8]> {
        self.config.map(|r| r.get().as_bytes())
    }
}

/// `[experiment_index, variant_index, requests, [5 status classes],
/// [25 latency buckets]]`.
#[derive(Debug, Clone, Deserialize)]
pub struct HealthRow(pub u32, pub u32, pub u64, pub Vec<u64>, pub Vec<u64>);

impl HealthRow {
    pub fn experiment(&self) -> usize {
        self.0 as usize
    }
    pub fn variant(&self) -> usize {
        self.1 as usize
    }
    /// The row as counters (the batch was validated: the arrays have their
    /// lengths).
    pub fn health(&self) -> Health {
        let mut h = Health {
            requests: self.2,
            ..Health::default()
        };
        for (d, s) in h.status.iter_mut().zip(&self.3) {
            *d = *s;
        }
        for (d, s) in h.latency.iter_mut().zip(&self.4) {
            *d = *s;
        }
        h
    }
}

/// An experiment as the batch's rows refer to it.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchExperiment<'a> {
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow)]
    pub variants: Vec<Text<'a>>,
}

/// `[t_ms, experiment_index, variant_index, user]`, or with a fifth
/// element, `[..., period]`: the bandit allocation period whose weights
/// assigned the user (absent: 0, the configured weights).
#[derive(Debug, Clone)]
pub struct ExposureRow<'a>(pub i64, pub u32, pub u32, pub Text<'a>, pub u32);

impl<'de: 'a, 'a> Deserialize<'de> for ExposureRow<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ExposureRow<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[t_ms, experiment_index, variant_index, user] or [..., period]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let missing = |i: usize| A::Error::invalid_length(i, &self);
                let t = s.next_element()?.ok_or_else(|| missing(0))?;
                let e = s.next_element()?.ok_or_else(|| missing(1))?;
                let v = s.next_element()?.ok_or_else(|| missing(2))?;
                let user: Text<'a> = s.next_element()?.ok_or_else(|| missing(3))?;
                let period = s.next_element()?.unwrap_or(0);
                if s.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(6, &self));
                }
                Ok(ExposureRow(t, e, v, user, period))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

impl ExposureRow<'_> {
    /// The allocation period (0: the configured weights).
    pub fn period(&self) -> u32 {
        self.4
    }
    pub fn t_ms(&self) -> i64 {
        self.0
    }
    pub fn experiment(&self) -> usize {
        self.1 as usize
    }
    pub fn variant(&self) -> usize {
        self.2 as usize
    }
    pub fn user(&self) -> &str {
        self.3.as_str()
    }
}

/// Parses and validates a batch; all or nothing, errors name the row and
/// element (`exposures[3][2]: ...`).
pub fn parse_exposures(body: &[u8]) -> Result<ExposureBatch<'_>, ValidationError> {
    let batch = parse_json::<ExposureBatch>(body)
        .map_err(|f| f.into_error(|path| path.unwrap_or_else(|| "batch".to_owned()), None))?;
    validate(&batch)?;
    Ok(batch)
}

fn validate(b: &ExposureBatch) -> Result<(), ValidationError> {
    fields::check_id(b.instance.as_str()).map_err(|m| ValidationError::new("instance", m))?;
    if b.experiments.len() > MAX_EXPERIMENTS_PER_BATCH {
        return Err(ValidationError::new(
            "experiments",
            format!(
                "{} experiments; at most {MAX_EXPERIMENTS_PER_BATCH}",
                b.experiments.len()
            ),
        ));
    }
    if b.exposures.len() > MAX_EXPOSURES_PER_BATCH {
        return Err(ValidationError::new(
            "exposures",
            format!(
                "{} rows; at most {MAX_EXPOSURES_PER_BATCH}",
                b.exposures.len()
            ),
        ));
    }
    let mut experiment_names = Repeats::new(b.experiments.len());
    for (i, e) in b.experiments.iter().enumerate() {
        fields::check_experiment_name(e.name.as_str())
            .map_err(|m| ValidationError::new(format!("experiments[{i}].name"), m))?;
        if experiment_names.seen_before(e.name.as_str()) {
            return Err(ValidationError::new(
                format!("experiments[{i}].name"),
                format!("{:?} is listed twice", e.name.as_str()),
            ));
        }
        if e.variants.is_empty() || e.variants.len() > MAX_EXPERIMENTS_PER_BATCH {
            return Err(ValidationError::new(
                format!("experiments[{i}].variants"),
                format!("must list 1 to {MAX_EXPERIMENTS_PER_BATCH} variants"),
            ));
        }
        let mut variant_names = Repeats::new(e.variants.len());
        for (j, v) in e.variants.iter().enumerate() {
            fields::check_variant_name(v.as_str())
                .map_err(|m| ValidationError::new(format!("experiments[{i}].variants[{j}]"), m))?;
            if variant_names.seen_before(v.as_str()) {
                return Err(ValidationError::new(
                    format!("experiments[{i}].variants[{j}]"),
                    format!("{:?} is listed twice", v.as_str()),
                ));
            }
        }
    }
    for (i, row) in b.exposures.iter().enumerate() {
        if !(0..=MAX_TIMESTAMP_MS).contains(&row.t_ms()) {
            return Err(ValidationError::new(
                format!("exposures[{i}][0]"),
                format!(
                    "time {} is not Unix milliseconds in [0, {MAX_TIMESTAMP_MS}]",
                    row.t_ms()
                ),
            ));
        }
        check_indexes(
            b,
            row.experiment(),
            row.variant(),
            &format!("exposures[{i}]"),
            1,
        )?;
        fields::check_id(row.user())
            .map_err(|m| ValidationError::new(format!("exposures[{i}][3]"), m))?;
    }
    if let Some(id) = &b.config_id {
        if parse_config_id(id.as_str()).is_none() {
            return Err(ValidationError::new(
                "config_id",
                format!(
                    "must be 16 lowercase hex digits (got {:?})",
                    clip(id.as_str())
                ),
            ));
        }
    }
    if let Some(raw) = b.config {
        abmesh_filter::Plan::from_json(raw.get().as_bytes()).map_err(|e| {
            // The filter's messages may quote the configuration's values.
            let m = bound(e.to_string());
            let m = if m.starts_with("invalid configuration") {
                m
            } else {
                format!("invalid configuration: {m}")
            };
            ValidationError::new("config", m)
        })?;
    }
    validate_health(b)
}

/// Checks that a row's experiment and variant indexes point into the
/// batch's `experiments` table; `at` is the row's path and `first` the
/// position of the experiment index in it.
fn check_indexes(
    b: &ExposureBatch,
    experiment: usize,
    variant: usize,
    at: &str,
    first: usize,
) -> Result<(), ValidationError> {
    let Some(exp) = b.experiments.get(experiment) else {
        return Err(ValidationError::new(
            format!("{at}[{first}]"),
            format!(
                "experiment index {experiment} is out of range (the batch lists {})",
                b.experiments.len()
            ),
        ));
    };
    if variant >= exp.variants.len() {
        return Err(ValidationError::new(
            format!("{at}[{}]", first + 1),
            format!(
                "variant index {variant} is out of range (experiment {:?} lists {})",
                exp.name.as_str(),
                exp.variants.len()
            ),
        ));
    }
    Ok(())
}

fn validate_health(b: &ExposureBatch) -> Result<(), ValidationError> {
    if b.health.len() > MAX_HEALTH_ROWS_PER_BATCH {
        return Err(ValidationError::new(
            "health",
            format!(
                "{} rows; at most {MAX_HEALTH_ROWS_PER_BATCH}",
                b.health.len()
            ),
        ));
    }
    for (i, row) in b.health.iter().enumerate() {
        check_indexes(
            b,
            row.experiment(),
            row.variant(),
            &format!("health[{i}]"),
            0,
        )?;
        if row.3.len() != STATUS_CLASSES {
            return Err(ValidationError::new(
                format!("health[{i}][3]"),
                format!(
                    "expected {STATUS_CLASSES} status classes, got {}",
                    row.3.len()
                ),
            ));
        }
        if row.4.len() != LATENCY_BUCKETS {
            return Err(ValidationError::new(
                format!("health[{i}][4]"),
                format!(
                    "expected {LATENCY_BUCKETS} latency buckets, got {}",
                    row.4.len()
                ),
            ));
        }
        let sum = |v: &[u64]| v.iter().try_fold(0u64, |a, &x| a.checked_add(x));
        let (Some(classes), Some(buckets)) = (sum(&row.3), sum(&row.4)) else {
            return Err(ValidationError::new(
                format!("health[{i}]"),
                "counts overflow 64 bits",
            ));
        };
        if classes != buckets {
            return Err(ValidationError::new(
                format!("health[{i}]"),
                format!(
                    "the status classes count {classes} responses but the latency buckets {buckets}; they must count the same sampled responses"
                ),
            ));
        }
    }
    Ok(())
}

/// Names already listed, to refuse one listed twice: a linear scan for the
/// few names batches usually have, a hash set for long lists (a batch may
/// list 1024 experiments of 1024 variants, where pairwise comparison would
/// cost half a billion string comparisons).
struct Repeats<'a> {
    names: Vec<&'a str>,
    set: Option<HashSet<&'a str>>,
}

impl<'a> Repeats<'a> {
    /// Lists of up to this many names are scanned.
    const SCAN: usize = 16;

    fn new(expected: usize) -> Repeats<'a> {
        if expected <= Self::SCAN {
            Repeats {
                names: Vec::with_capacity(expected),
                set: None,
            }
        } else {
            Repeats {
                names: Vec::new(),
                set: Some(HashSet::with_capacity(expected)),
            }
        }
    }

    /// Records `name`; whether it was recorded before.
    fn seen_before(&mut self, name: &'a str) -> bool {
        match &mut self.set {
            Some(set) => !set.insert(name),
            None if self.names.contains(&name) => true,
            None => {
                self.names.push(name);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = br#"{"instance":"envoy-1/0/1","seq":7,"dropped":3,
        "experiments":[{"name":"ranker","variants":["control","treatment"]}],
        "exposures":[[1000,0,1,"u1"],[1001,0,0,"u\"2"]],"future":[{"x":true}],"config_v9":"v3"}"#;

    /// Both sides of the contract: a batch written by the filter's own
    /// writer (`abmesh_filter::protocol::write_batch`) with config, health
    /// rows, ids that need escaping and ids at the length limit, read back
    /// by this parser with every value as the filter recorded it.
    #[test]
    fn a_batch_the_filter_writes_parses_as_written() {
        use abmesh_filter::exposures::ExposureRing;
        use abmesh_filter::health::HealthTable;
        use abmesh_filter::protocol::{self, BatchMeta, MAX_USER_BYTES};

        let config = br#"{"experiments": [{"name": "ranker", "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]},
            {"name": "banner", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 1}]}]}"#;
        let plan = abmesh_filter::Plan::from_json(config).unwrap();
        let table = protocol::experiments_json(&plan);
        let id = protocol::config_id(config);
        let long = "x".repeat(MAX_USER_BYTES);
        let users: [&[u8]; 4] = [b"u-1", b"q\"uote\\\n\t", long.as_bytes(), b"caf\xc3\xa9"];
        let mut ring = ExposureRing::new(16);
        for (i, u) in users.iter().enumerate() {
            ring.push(1_777_636_800_000 + i as u64, i % 2, i % 2, u);
        }
        let mut health = HealthTable::new(&plan);
        for _ in 0..3 {
            health.record_request(1, 2);
        }
        health.record_response(1, 2, 503, 12_000);
        health.record_response(1, 2, 200, 20_000_000);
        let meta = BatchMeta {
            instance: "native/1/1777636800000",
            seq: 9,
            experiments: &table,
            config_id: &id,
            config: Some(config),
        };
        // Not UTF-8, and 3 * 100 bytes once sent with U+FFFD: the filter
        // counts it as dropped rather than have the batch refused.
        ring.push(1_777_636_800_009, 0, 0, &[0xff; 100]);
        let mut body = Vec::new();
        assert_eq!(
            protocol::write_batch(&meta, &mut ring, Some(&mut health), 100, &mut body),
            users.len()
        );

        let b = parse_exposures(&body).unwrap();
        assert_eq!(
            (b.instance.as_str(), b.seq, b.dropped),
            (meta.instance, 9, 1)
        );
        assert_eq!(b.config_id(), Some(protocol::config_id_u64(config)));
        assert_eq!(b.config_bytes(), Some(&config[..]));
        let names: Vec<(&str, Vec<&str>)> = b
            .experiments
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.variants.iter().map(|v| v.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("ranker", vec!["control", "treatment"]),
                ("banner", vec!["a", "b", "c"])
            ]
        );
        assert_eq!(b.exposures.len(), users.len());
        for (i, (row, u)) in b.exposures.iter().zip(users).enumerate() {
            assert_eq!(row.t_ms(), 1_777_636_800_000 + i as i64);
            assert_eq!((row.experiment(), row.variant()), (i % 2, i % 2));
            assert_eq!(row.user().as_bytes(), u);
        }
        assert_eq!(b.health.len(), 1);
        let (row, h) = (&b.health[0], b.health[0].health());
        assert_eq!((row.experiment(), row.variant(), h.requests), (1, 2, 3));
        assert_eq!(h.status, [0, 1, 0, 0, 1]);
        let mut latency = [0; LATENCY_BUCKETS];
        latency[abmesh_filter::protocol::health::latency_bucket(12_000)] = 1;
        latency[LATENCY_BUCKETS - 1] = 1;
        assert_eq!(h.latency, latency);
    }

    #[test]
    fn parses_a_batch_and_ignores_unknown_top_level_fields() {
        let b = parse_exposures(OK).unwrap();
        assert_eq!((b.seq, b.dropped, b.exposures.len()), (7, 3, 2));
        assert_eq!(b.exposures[1].user(), "u\"2");
        assert_eq!(b.exposures[0].variant(), 1);
    }

    #[test]
    fn reads_config_and_health() {
        let body = br#"{"instance":"i","seq":1,"config_id":"00000000000000ff","config": {"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}]} ,
            "experiments":[{"name":"r","variants":["a","b"]}],"exposures":[],
            "health":[[0,1,7,[0,2,0,0,1],[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2]]]}"#;
        let b = parse_exposures(body).unwrap();
        assert_eq!(b.config_id(), Some(255));
        assert_eq!(
            b.config_bytes(),
            Some(&br#"{"experiments":[{"name":"r","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}]}"#[..])
        );
        let h = b.health[0].health();
        assert_eq!(
            (h.requests, h.status, h.latency[24]),
            (7, [0, 2, 0, 0, 1], 2)
        );
        assert_eq!(b.health[0].variant(), 1);
        assert_eq!(format_config_id(255), "00000000000000ff");
        assert_eq!(parse_config_id("00000000000000FF"), None);
    }

    /// A complete batch followed by other characters is refused (it used
    /// to reach an `unreachable!`).
    #[test]
    fn trailing_characters_are_refused_with_their_position() {
        let mut body = OK.to_vec();
        body.extend_from_slice(b" x");
        let e = parse_exposures(&body).unwrap_err();
        assert_eq!(e.path, "batch");
        assert_eq!(e.message, "trailing characters (line 3, column 97)");
        let mut body = OK.to_vec();
        body.extend_from_slice(b"\n\t ");
        assert!(parse_exposures(&body).is_ok());
    }

    #[test]
    fn long_lists_of_names_are_checked_for_repeats() {
        let variants: Vec<String> = (0..1024).map(|i| format!("\"v{i}\"")).collect();
        let mut listed = variants.clone();
        let body = |v: &[String]| {
            format!(
                r#"{{"instance":"i","seq":1,"experiments":[{{"name":"r","variants":[{}]}}],"exposures":[]}}"#,
                v.join(",")
            )
        };
        assert!(parse_exposures(body(&listed).as_bytes()).is_ok());
        listed[700] = "\"v3\"".into();
        let e = parse_exposures(body(&listed).as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "experiments[0].variants[700]: \"v3\" is listed twice"
        );
        let few = &variants[..5];
        let mut few = few.to_vec();
        few[4] = "\"v0\"".into();
        let e = parse_exposures(body(&few).as_bytes()).unwrap_err();
        assert_eq!(e.path, "experiments[0].variants[4]");
    }

    #[test]
    fn errors_name_the_row_and_element() {
        let body = br#"{"instance":"i","seq":1,"experiments":[{"name":"r","variants":["a","b"]}],"exposures":[[1,0,0,"u"],[1,0,2,"u"]]}"#;
        let e = parse_exposures(body).unwrap_err();
        assert_eq!(
            e.to_string(),
            "exposures[1][2]: variant index 2 is out of range (experiment \"r\" lists 2)"
        );
        let body = br#"{"instance":"i","seq":1,"experiments":[],"exposures":[[1,0,0]]}"#;
        let e = parse_exposures(body).unwrap_err();
        assert_eq!(e.path, "exposures[0]");
        let body = br#"{"instance":"i","seq":1,"experiments":[{"name":"r","variants":["a","b"]}],"exposures":[[1,0,0,"u",3],[1,0,1,"v"]]}"#;
        let b = parse_exposures(body).unwrap();
        assert_eq!((b.exposures[0].period(), b.exposures[1].period()), (3, 0));
        for (bad, path) in [
            (r#"[1,0,0,"u",-1]"#, "exposures[0][4]"),
            (r#"[1,0,0,"u","p"]"#, "exposures[0][4]"),
            (r#"[1,0,0,"u",1,2]"#, "exposures[0]"),
        ] {
            let body = format!(
                r#"{{"instance":"i","seq":1,"experiments":[{{"name":"r","variants":["a","b"]}}],"exposures":[{bad}]}}"#
            );
            assert_eq!(
                parse_exposures(body.as_bytes()).unwrap_err().path,
                path,
                "{bad}"
            );
        }
        let body = br#"{"instance":"i","seq":-1,"experiments":[],"exposures":[]}"#;
        assert_eq!(parse_exposures(body).unwrap_err().path, "seq");
        let body = br#"{"instance":"i","seq":1,"experiments":[{"name":"r","variants":["a","a"]}],"exposures":[]}"#;
        assert_eq!(
            parse_exposures(body).unwrap_err().path,
            "experiments[0].variants[1]"
        );
    }
}

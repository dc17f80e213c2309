//! Exposure batches: what the filter posts to `POST /v1/exposures` on its
//! tick.
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
//!   harmless: the first exposure counts.
//! * Other top-level fields are ignored, so an older sidecar accepts a newer
//!   filter's batches; `health` is reserved for per-variant health counters.
//!
//! The format is plain enough to be written with string formatting in the
//! filter: numbers, and user ids as JSON strings (escape `"`, `\` and
//! control characters).

use serde::Deserialize;

use super::fields::{self, bare_message, Text, MAX_TIMESTAMP_MS};
use super::ValidationError;

/// Most rows in one batch.
pub const MAX_EXPOSURES_PER_BATCH: usize = 1_000_000;
/// Most experiments (and variants per experiment) in one batch.
pub const MAX_EXPERIMENTS_PER_BATCH: usize = 1024;

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
}

/// An experiment as the batch's rows refer to it.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchExperiment<'a> {
    #[serde(borrow)]
    pub name: Text<'a>,
    #[serde(borrow)]
    pub variants: Vec<Text<'a>>,
}

/// `[t_ms, experiment_index, variant_index, user]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExposureRow<'a>(pub i64, pub u32, pub u32, #[serde(borrow)] pub Text<'a>);

impl ExposureRow<'_> {
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
    let batch = match serde_json::from_slice::<ExposureBatch>(body) {
        Ok(b) => b,
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let e = match serde_path_to_error::deserialize::<_, ExposureBatch>(&mut de) {
                Ok(_) => unreachable!("a body that failed to parse parsed"),
                Err(e) => e,
            };
            let path = e.path().to_string();
            let inner = e.into_inner();
            let path = if path == "." {
                "batch".to_owned()
            } else {
                path
            };
            return Err(ValidationError::new(
                path,
                format!(
                    "{} (line {}, column {})",
                    bare_message(&inner),
                    inner.line(),
                    inner.column()
                ),
            ));
        }
    };
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
    for (i, e) in b.experiments.iter().enumerate() {
        fields::check_experiment_name(e.name.as_str())
            .map_err(|m| ValidationError::new(format!("experiments[{i}].name"), m))?;
        if b.experiments[..i].iter().any(|o| o.name == e.name) {
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
        for (j, v) in e.variants.iter().enumerate() {
            fields::check_variant_name(v.as_str())
                .map_err(|m| ValidationError::new(format!("experiments[{i}].variants[{j}]"), m))?;
            if e.variants[..j].contains(v) {
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
        let Some(exp) = b.experiments.get(row.experiment()) else {
            return Err(ValidationError::new(
                format!("exposures[{i}][1]"),
                format!(
                    "experiment index {} is out of range (the batch lists {})",
                    row.experiment(),
                    b.experiments.len()
                ),
            ));
        };
        if row.variant() >= exp.variants.len() {
            return Err(ValidationError::new(
                format!("exposures[{i}][2]"),
                format!(
                    "variant index {} is out of range (experiment {:?} lists {})",
                    row.variant(),
                    exp.name.as_str(),
                    exp.variants.len()
                ),
            ));
        }
        fields::check_id(row.user())
            .map_err(|m| ValidationError::new(format!("exposures[{i}][3]"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = br#"{"instance":"envoy-1/0/1","seq":7,"dropped":3,
        "experiments":[{"name":"ranker","variants":["control","treatment"]}],
        "exposures":[[1000,0,1,"u1"],[1001,0,0,"u\"2"]],"health":[{"future":true}],"config":"v3"}"#;

    #[test]
    fn parses_a_batch_and_ignores_unknown_top_level_fields() {
        let b = parse_exposures(OK).unwrap();
        assert_eq!((b.seq, b.dropped, b.exposures.len()), (7, 3, 2));
        assert_eq!(b.exposures[1].user(), "u\"2");
        assert_eq!(b.exposures[0].variant(), 1);
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
        let body = br#"{"instance":"i","seq":-1,"experiments":[],"exposures":[]}"#;
        assert_eq!(parse_exposures(body).unwrap_err().path, "seq");
        let body = br#"{"instance":"i","seq":1,"experiments":[{"name":"r","variants":["a","a"]}],"exposures":[]}"#;
        assert_eq!(
            parse_exposures(body).unwrap_err().path,
            "experiments[0].variants[1]"
        );
    }
}

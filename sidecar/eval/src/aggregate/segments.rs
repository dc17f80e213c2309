//! Segments: user attributes (country, platform, ...) that reports break
//! experiments down by.
//!
//! Outcome events may carry `segments` (`{"country": "de"}`); a user has
//! one value per dimension. If events disagree, the value first in byte
//! order counts, so the state does not depend on the order records arrive
//! in (the engine's invariant); the disagreements are counted. Per
//! experiment, per (dimension, value), the engine keeps a cell per variant
//! with the same sums as the totals, updated as users are exposed, as
//! their totals change and as their values become known.
//!
//! Cardinality is bounded: at most [`MAX_DIMENSIONS`] dimensions, each with
//! at most [`MAX_VALUES`] values; later values of a full dimension are
//! counted as [`OTHER`], later dimensions are ignored (and counted), so a
//! client sending user ids as segment values cannot grow the state
//! without bound.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Most dimensions kept.
pub const MAX_DIMENSIONS: usize = 16;
/// Most values kept per dimension (the rest are [`OTHER`]).
pub const MAX_VALUES: usize = 64;
/// What values past [`MAX_VALUES`] are reported as.
pub const OTHER: &str = "(other)";

/// One dimension's values, interned.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub name: String,
    pub values: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

/// The dimensions and values seen, interned to ids that cells and users
/// refer to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentRegistry {
    pub dimensions: Vec<Dimension>,
    /// Dimensions ignored because [`MAX_DIMENSIONS`] were kept already.
    pub ignored_dimensions: u64,
    /// Values counted as [`OTHER`].
    pub other_values: u64,
    /// Users sent two different values for one dimension.
    pub conflicts: u64,
}

impl SegmentRegistry {
    /// Rebuilds the name indexes (after deserialising).
    pub fn reindex(&mut self) {
        for d in &mut self.dimensions {
            d.index = d
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), i as u32))
                .collect();
        }
    }

    /// The id of a dimension, registering it if there is room.
    pub fn dimension_id(&mut self, name: &str) -> Option<u32> {
        if let Some(i) = self.dimensions.iter().position(|d| d.name == name) {
            return Some(i as u32);
        }
        if self.dimensions.len() >= MAX_DIMENSIONS {
            self.ignored_dimensions += 1;
            return None;
        }
        self.dimensions.push(Dimension {
            name: name.to_owned(),
            ..Dimension::default()
        });
        Some(self.dimensions.len() as u32 - 1)
    }

    /// The id of a value of dimension `dim` (its [`OTHER`] id when the
    /// dimension is full).
    pub fn value_id(&mut self, dim: u32, value: &str) -> u32 {
        let d = &mut self.dimensions[dim as usize];
        if let Some(&i) = d.index.get(value) {
            return i;
        }
        let (name, counted) = if d.values.len() + 1 >= MAX_VALUES {
            (OTHER, true)
        } else {
            (value, false)
        };
        if counted {
            self.other_values += 1;
        }
        if let Some(&i) = d.index.get(name) {
            return i;
        }
        d.values.push(name.to_owned());
        let i = d.values.len() as u32 - 1;
        d.index.insert(name.to_owned(), i);
        i
    }

    /// A value's name.
    pub fn value(&self, dim: u32, value: u32) -> &str {
        &self.dimensions[dim as usize].values[value as usize]
    }
}

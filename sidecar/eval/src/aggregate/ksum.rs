//! The compensated sum and a user's per-metric totals: the numbers every
//! aggregate is made of (a leaf module, so the aggregates and the derived
//! metrics can both use them).

use serde::{Deserialize, Serialize};

/// A compensated (Neumaier) sum: the rounding error of each addition is
/// kept in `c`, so the total is accurate to ~ε whatever the count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KSum {
    s: f64,
    c: f64,
}

impl KSum {
    pub fn add(&mut self, v: f64) {
        let t = self.s + v;
        if self.s.abs() >= v.abs() {
            self.c += (self.s - t) + v;
        } else {
            self.c += (v - t) + self.s;
        }
        self.s = t;
    }

    /// Removes a sum merged in before (the inverse of [`KSum::merge`]).
    pub fn subtract(&mut self, other: &KSum) {
        self.add(-other.s);
        self.add(-other.c);
    }

    pub fn merge(&mut self, other: &KSum) {
        self.add(other.s);
        self.c += other.c;
    }

    pub fn value(&self) -> f64 {
        self.s + self.c
    }
}

/// One user's totals for one metric in one experiment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UserValue {
    /// Outcome events (0: not converted).
    pub count: u64,
    /// Σ values (Y).
    pub y: f64,
    /// Σ covariates (X).
    pub x: f64,
}

//! Helpers shared by the filter's integration tests.
#![allow(dead_code)]

use abmesh_filter::{HeaderSink, RequestHeaders, Slot};

/// A request as a list of (name, value) pairs.
pub struct Req<'a>(pub &'a [(&'a str, &'a [u8])]);

impl RequestHeaders for Req<'_> {
    fn get(&self, _slot: Slot, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Like the Wasm glue: every `cookie` header counts.
    fn cookie(&self, _slot: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .filter(|(n, _)| *n == name)
            .find_map(|(_, v)| abmesh_filter::identity::cookie_value(v, cookie))
    }
}

/// Records header operations as owned strings (for assertions, not for the
/// allocation test).
#[derive(Default, Debug)]
pub struct Recorder {
    pub set: Vec<(String, Vec<u8>)>,
    pub removed: Vec<String>,
}

impl HeaderSink for Recorder {
    fn set(&mut self, name: &str, value: &[u8]) {
        self.set.push((name.to_string(), value.to_vec()));
    }
    fn remove(&mut self, name: &str) {
        self.removed.push(name.to_string());
    }
}

impl Recorder {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.set
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }
}

pub fn two_variants(weights: (f64, f64)) -> String {
    format!(
        r#"[{{"name": "control", "weight": {}}}, {{"name": "treatment", "weight": {}}}]"#,
        weights.0, weights.1
    )
}

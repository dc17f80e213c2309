//! In-flight streams of one worker, by Envoy's filter pointer.
//!
//! The ABI gives a stream no storage of the module's own unless the module
//! allocates it per stream, which abmesh does not: the module pointer of
//! every stream is its worker's slot. A stream that needs state between
//! its request and its response (the echo header, a health sample) gets a
//! number, increasing per worker, kept here under Envoy's pointer (unique
//! among live streams) until its response or its end, whichever is first.
//! The numbered state itself lives in [`abmesh_filter::streams`] tables.
//!
//! Open addressing with linear probing and backward-shift deletion, so
//! removal leaves no tombstones. Allocated up front; it grows (doubling)
//! only when more streams are in flight on the worker than ever before.

pub struct StreamIds {
    keys: Vec<usize>,
    ids: Vec<u64>,
    len: usize,
}

const EMPTY: usize = 0;

impl StreamIds {
    pub fn with_capacity(capacity: usize) -> StreamIds {
        let cap = capacity.next_power_of_two().max(16);
        StreamIds {
            keys: vec![EMPTY; cap],
            ids: vec![0; cap],
            len: 0,
        }
    }

    fn home(&self, key: usize) -> usize {
        // Pointers are aligned: mix before masking.
        let h = (key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.keys.len() - 1)
    }

    /// Keeps `id` for `key` (a non-null pointer), replacing any entry.
    pub fn insert(&mut self, key: usize, id: u64) {
        if key == EMPTY {
            return;
        }
        if (self.len + 1) * 2 > self.keys.len() {
            self.grow();
        }
        let mask = self.keys.len() - 1;
        let mut i = self.home(key);
        loop {
            if self.keys[i] == key {
                self.ids[i] = id;
                return;
            }
            if self.keys[i] == EMPTY {
                self.keys[i] = key;
                self.ids[i] = id;
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// The id kept for `key`, removed.
    pub fn remove(&mut self, key: usize) -> Option<u64> {
        if key == EMPTY || self.len == 0 {
            return None;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.home(key);
        loop {
            if self.keys[i] == EMPTY {
                return None;
            }
            if self.keys[i] == key {
                break;
            }
            i = (i + 1) & mask;
        }
        let id = self.ids[i];
        self.len -= 1;
        // Backward shift: move later entries of the probe run into the gap.
        let mut gap = i;
        let mut j = (i + 1) & mask;
        while self.keys[j] != EMPTY {
            let home = self.home(self.keys[j]);
            // Entry j may fill the gap if its home is not in (gap, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(gap) & mask) {
                self.keys[gap] = self.keys[j];
                self.ids[gap] = self.ids[j];
                gap = j;
            }
            j = (j + 1) & mask;
        }
        self.keys[gap] = EMPTY;
        Some(id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    fn grow(&mut self) {
        let cap = self.keys.len() * 2;
        let old_keys = std::mem::replace(&mut self.keys, vec![EMPTY; cap]);
        let old_ids = std::mem::replace(&mut self.ids, vec![0; cap]);
        self.len = 0;
        for (k, id) in old_keys.into_iter().zip(old_ids) {
            if k != EMPTY {
                self.insert(k, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StreamIds;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m = StreamIds::with_capacity(16);
        let mut model = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Aligned "pointers" from a small range, so keys repeat.
            let key = ((x % 300) as usize + 1) * 64;
            if x.is_multiple_of(3) {
                assert_eq!(m.remove(key), model.remove(&key), "step {step}");
            } else {
                m.insert(key, step);
                model.insert(key, step);
            }
            assert_eq!(m.len(), model.len());
        }
        for (k, v) in model {
            assert_eq!(m.remove(k), Some(v));
        }
        assert_eq!(m.len(), 0);
        assert_eq!(m.remove(0), None);
    }
}

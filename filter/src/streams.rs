//! Small per-stream state, kept without a per-request allocation and
//! without a per-stream cleanup callback.
//!
//! A fixed ring of slots indexed by `stream_id % capacity`, tagged with the
//! id. Stream ids must increase (the proxy-wasm glue uses Envoy's context
//! ids, the dynamic-module glue a per-worker counter), so a slot is only
//! reused once `capacity` newer streams have started; an entry overwritten
//! that way is simply not found (its stream gets no echo header, or its
//! health sample is lost). Id 0 is never found.

use crate::Decisions;

pub struct StreamTable {
    ids: Box<[u64]>,
    width: usize,
    data: Box<[u16]>,
    /// One u64 per slot (e.g. a start time), only in tables made by
    /// [`StreamTable::with_stamps`].
    stamps: Box<[u64]>,
}

impl StreamTable {
    pub fn new(capacity: usize, width: usize) -> Self {
        StreamTable {
            ids: vec![0; capacity].into_boxed_slice(),
            width,
            data: vec![0; capacity * width].into_boxed_slice(),
            stamps: Box::new([]),
        }
    }

    /// A table that also keeps a u64 per stream.
    pub fn with_stamps(capacity: usize, width: usize) -> Self {
        StreamTable {
            stamps: vec![0; capacity].into_boxed_slice(),
            ..StreamTable::new(capacity, width)
        }
    }

    fn slot(&self, stream_id: u64) -> usize {
        (stream_id % self.ids.len() as u64) as usize
    }

    pub fn insert(&mut self, stream_id: u64, values: &[u16]) {
        let i = self.slot(stream_id);
        self.ids[i] = stream_id;
        self.data[i * self.width..(i + 1) * self.width].copy_from_slice(values);
    }

    /// Copies the stream's values into `out`; false if not found.
    pub fn get(&self, stream_id: u64, out: &mut [u16]) -> bool {
        let i = self.slot(stream_id);
        if self.ids[i] != stream_id || stream_id == 0 {
            return false;
        }
        out.copy_from_slice(&self.data[i * self.width..(i + 1) * self.width]);
        true
    }

    /// Whether the table holds `stream_id`.
    pub fn contains(&self, stream_id: u64) -> bool {
        stream_id != 0 && self.ids[self.slot(stream_id)] == stream_id
    }

    pub fn insert_assignments(&mut self, stream_id: u64, a: &[crate::Assignment]) {
        let i = self.slot(stream_id);
        self.ids[i] = stream_id;
        let row = &mut self.data[i * self.width..(i + 1) * self.width];
        Decisions::pack_variants(a, row);
    }

    /// Keeps the stream's exposures ([`Decisions::pack_exposures`]) and
    /// `stamp`. Only for tables made by [`StreamTable::with_stamps`].
    pub fn insert_exposures(&mut self, stream_id: u64, a: &[crate::Assignment], stamp: u64) {
        let i = self.slot(stream_id);
        self.ids[i] = stream_id;
        self.stamps[i] = stamp;
        Decisions::pack_exposures(a, &mut self.data[i * self.width..(i + 1) * self.width]);
    }

    /// Copies the stream's packed values into `out` and forgets the stream;
    /// returns its stamp, or `None` if the stream is not in the table.
    pub fn take_stamped(&mut self, stream_id: u64, out: &mut [u16]) -> Option<u64> {
        let i = self.slot(stream_id);
        if self.ids[i] != stream_id || stream_id == 0 {
            return None;
        }
        self.ids[i] = 0;
        out.copy_from_slice(&self.data[i * self.width..(i + 1) * self.width]);
        Some(self.stamps[i])
    }

    /// Restores the variants of a stream into `d` and forgets the stream.
    pub fn take_assignments(&mut self, stream_id: u64, d: &mut Decisions) -> bool {
        let i = self.slot(stream_id);
        if self.ids[i] != stream_id || stream_id == 0 {
            return false;
        }
        self.ids[i] = 0;
        d.unpack_variants(&self.data[i * self.width..(i + 1) * self.width]);
        true
    }
}

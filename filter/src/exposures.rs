//! Exposures waiting to be shipped to the sidecar.
//!
//! The per-request side is [`ExposureRing::push`]: a copy of the user id
//! into a preallocated slot, no allocation, no hostcall. When the ring is
//! full the oldest exposure is overwritten and counted as dropped, so a slow
//! or absent sidecar costs memory that was reserved up front and never
//! slows requests. The batch format they are shipped in is
//! [`crate::protocol::batch`].

use crate::health::HealthTable;
pub use crate::protocol::{experiments_json, parse_reply, BatchMeta, Reply, MAX_USER_BYTES};

#[derive(Clone, Copy)]
struct Slot {
    t_ms: u64,
    experiment: u16,
    variant: u16,
    /// The allocation period that assigned the variant (0: configured
    /// weights).
    period: u32,
    len: u16,
    user: [u8; MAX_USER_BYTES],
}

const EMPTY: Slot = Slot {
    t_ms: 0,
    experiment: 0,
    variant: 0,
    period: 0,
    len: 0,
    user: [0; MAX_USER_BYTES],
};

/// Exposures shipped recently, so that a user's repeated requests are not
/// shipped again: the sidecar keeps only a user's first exposure, and
/// most traffic is users coming back. A direct-mapped table of 64-bit
/// fingerprints of (experiment, variant, period, user), allocated once: a
/// user assigned again in a new bandit period (even to the same variant) is
/// a new exposure, which the sidecar must see. A lookup is
/// one cheap hash of the id and one compare, no allocation. Two keys that
/// share a slot evict each other, which only costs a re-send (harmless);
/// a wrongly skipped exposure needs two keys with the same 64-bit
/// fingerprint.
pub struct RecentExposures {
    slots: Box<[u64]>,
    shift: u32,
}

impl RecentExposures {
    /// `slots` is a power of two (validated with the config); 0 keeps
    /// nothing, so every exposure is new.
    pub fn new(slots: usize) -> Self {
        let slots = if slots == 0 {
            0
        } else {
            slots.next_power_of_two()
        };
        RecentExposures {
            slots: vec![0; slots].into_boxed_slice(),
            shift: 64 - slots.max(1).trailing_zeros(),
        }
    }

    /// True the first time (lately) this user was seen in this variant in
    /// this allocation period; remembers it.
    pub fn first_time(
        &mut self,
        experiment: usize,
        variant: usize,
        period: u32,
        user: &[u8],
    ) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let key = fingerprint(experiment, variant, period, user) | 1; // 0 = empty slot
        let i = (key >> self.shift) as usize;
        if self.slots[i] == key {
            return false;
        }
        self.slots[i] = key;
        true
    }
}

/// The table's key: SipHash-1-3 (fixed key; it only dedups, it never
/// decides who is in which variant) of (experiment, variant, period) and
/// the id. A false "seen" loses an exposure, so this must behave like a
/// random 64-bit function even on ids that differ in a byte or two:
/// the multiply-rotate (FxHash-style) fingerprint used before gave
/// "later-216" and "later-299" the same key in the same variant, and the
/// Envoy bandit test lost 1 to 3 users in 1 380 to it. SipHash-1-3 costs
/// ~40 more instructions for a 10-byte id, once per exposure (the filter
/// computes two per experiment anyway for the buckets).
fn fingerprint(experiment: usize, variant: usize, period: u32, user: &[u8]) -> u64 {
    use std::hash::Hasher;
    const KEY: (u64, u64) = (0x6162_6d65_7368_2d72, 0x6563_656e_742d_6578);
    // Indexes fit 16 bits (the ring stores them so): one word for all three.
    let head = (experiment as u64) << 48 | (variant as u64 & 0xffff) << 32 | u64::from(period);
    let mut h = siphasher::sip::SipHasher13::new_with_keys(KEY.0, KEY.1);
    h.write_u64(head);
    h.write(user);
    h.finish()
}

/// A fixed-capacity ring of exposures.
pub struct ExposureRing {
    slots: Box<[Slot]>,
    /// Index of the oldest entry.
    head: usize,
    len: usize,
    dropped: u64,
}

impl ExposureRing {
    /// A ring holding `capacity` exposures (at least 1), allocated now.
    pub fn new(capacity: usize) -> Self {
        ExposureRing {
            slots: vec![EMPTY; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
            dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exposures lost since the last batch (ring full, or id too long).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records that `user` was exposed to `variant` of experiment index
    /// `experiment` at `t_ms`, by the configured weights (period 0).
    pub fn push(&mut self, t_ms: u64, experiment: usize, variant: usize, user: &[u8]) {
        self.push_in_period(t_ms, experiment, variant, 0, user)
    }

    /// [`ExposureRing::push`] for an assignment by allocation period
    /// `period`'s weights ([`crate::Allocation`]; 0: configured weights).
    pub fn push_in_period(
        &mut self,
        t_ms: u64,
        experiment: usize,
        variant: usize,
        period: u32,
        user: &[u8],
    ) {
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            self.dropped += 1;
            return;
        }
        let cap = self.slots.len();
        let at = if self.len == cap {
            // Full: overwrite the oldest.
            let at = self.head;
            self.head = (self.head + 1) % cap;
            self.dropped += 1;
            at
        } else {
            self.len += 1;
            (self.head + self.len - 1) % cap
        };
        let s = &mut self.slots[at];
        s.t_ms = t_ms;
        s.experiment = experiment as u16;
        s.variant = variant as u16;
        s.period = period;
        s.len = user.len() as u16;
        s.user[..user.len()].copy_from_slice(user);
    }

    /// Moves up to `max` of the oldest exposures, and the dropped count, into
    /// a batch body written to `out` (replacing its contents), together with
    /// the `health` counters (which are then reset): see
    /// [`crate::protocol::write_batch`].
    pub fn write_batch(
        &mut self,
        meta: &BatchMeta<'_>,
        health: Option<&mut HealthTable>,
        max: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        crate::protocol::write_batch(meta, self, health, max, out)
    }

    /// Hands up to `max` of the oldest exposures to `row` (time, experiment
    /// index, variant index, allocation period, user id), oldest first,
    /// removes them, and resets the dropped count (it went out with them).
    /// Returns how many.
    pub fn take_oldest(
        &mut self,
        max: usize,
        mut row: impl FnMut(u64, u16, u16, u32, &[u8]),
    ) -> usize {
        let n = self.len.min(max);
        let cap = self.slots.len();
        let mut at = self.head;
        for _ in 0..n {
            let s = &self.slots[at];
            row(
                s.t_ms,
                s.experiment,
                s.variant,
                s.period,
                &s.user[..usize::from(s.len)],
            );
            at = if at + 1 == cap { 0 } else { at + 1 };
        }
        self.head = (self.head + n) % cap;
        self.len -= n;
        self.dropped = 0;
        n
    }

    /// Moves every exposure into `to` (which drops its oldest when full, and
    /// counts them), adds this ring's dropped count to `to`'s, and leaves
    /// this ring empty. No allocation.
    pub fn move_into(&mut self, to: &mut ExposureRing) {
        let dropped = self.dropped;
        let len = self.len;
        self.take_oldest(len, |t, e, v, period, user| {
            to.push_in_period(t, usize::from(e), usize::from(v), period, user)
        });
        to.dropped += dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_exposures_skip_repeats_and_forget_on_collision() {
        let mut r = RecentExposures::new(1024);
        assert!(r.first_time(0, 1, 0, b"alice"));
        assert!(!r.first_time(0, 1, 0, b"alice"));
        // Another variant or experiment is another exposure.
        assert!(r.first_time(0, 0, 0, b"alice"));
        assert!(r.first_time(1, 1, 0, b"alice"));
        // So is the same variant in another allocation period, once.
        assert!(r.first_time(0, 1, 3, b"alice"));
        assert!(!r.first_time(0, 1, 3, b"alice"));
        // Ids that differ only past the first word, or in length.
        assert!(r.first_time(0, 1, 0, b"user-0000000001"));
        assert!(r.first_time(0, 1, 0, b"user-0000000002"));
        assert!(r.first_time(0, 1, 0, b"alice\0"));
        // 5 000 distinct users in 1 024 slots: every one is new the first
        // time, and most are evicted by later ones (re-sent, harmless).
        let mut r = RecentExposures::new(1024);
        let users: Vec<String> = (0..5000).map(|i| format!("u-{i}")).collect();
        assert!(users.iter().all(|u| r.first_time(0, 0, 0, u.as_bytes())));
        let kept = users
            .iter()
            .filter(|u| !r.first_time(0, 0, 0, u.as_bytes()))
            .count();
        assert!(kept < 1024, "{kept}");
        // Ids a byte or two apart (the old fingerprint's weakness): 400
        // 9-byte ids, and 200 000 ids in a table big enough to keep them
        // all, are each new exactly once.
        for n in [400usize, 200_000] {
            let mut r = RecentExposures::new(1 << 20);
            let users: Vec<String> = (0..n).map(|i| format!("later-{i}")).collect();
            let fresh = users
                .iter()
                .filter(|u| r.first_time(0, 2, 1, u.as_bytes()))
                .count();
            assert_eq!(fresh, n, "distinct ids seen as repeats");
        }
        // Off: everything is new.
        let mut off = RecentExposures::new(0);
        assert!(off.first_time(0, 0, 0, b"a") && off.first_time(0, 0, 0, b"a"));
    }

    fn rows(r: &mut ExposureRing) -> Vec<(u64, u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        r.take_oldest(usize::MAX, |t, e, v, _, u| out.push((t, e, v, u.to_vec())));
        out
    }

    #[test]
    fn periods_are_kept_and_moved() {
        let mut worker = ExposureRing::new(4);
        let mut main = ExposureRing::new(4);
        worker.push(1, 0, 1, b"a");
        worker.push_in_period(2, 0, 1, 7, b"b");
        worker.move_into(&mut main);
        let mut out = Vec::new();
        main.take_oldest(usize::MAX, |t, _, _, p, u| out.push((t, p, u.to_vec())));
        assert_eq!(out, [(1, 0, b"a".to_vec()), (2, 7, b"b".to_vec())]);
    }

    #[test]
    fn moving_keeps_order_and_counts_drops() {
        let mut worker = ExposureRing::new(4);
        let mut main = ExposureRing::new(3);
        main.push(1, 0, 0, b"old");
        for (i, u) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            worker.push(10 + i as u64, 1, i % 2, u.as_bytes());
        }
        assert_eq!(worker.dropped(), 1);
        worker.move_into(&mut main);
        assert!(worker.is_empty() && worker.dropped() == 0);
        // "a" was dropped by the worker ring, "old" and "b" by the main one.
        assert_eq!(main.dropped(), 3);
        assert_eq!(
            rows(&mut main),
            [
                (12, 1, 0, b"c".to_vec()),
                (13, 1, 1, b"d".to_vec()),
                (14, 1, 0, b"e".to_vec())
            ]
        );
        assert_eq!(main.dropped(), 0);
    }
}

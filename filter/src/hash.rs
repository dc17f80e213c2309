//! Keyed hashing of user ids into buckets.
//!
//! Everything that decides who sees what goes through this module, so that
//! the filter in Envoy, the `abmesh assign` CLI and the sidecar's evaluation
//! agree bit for bit. The scheme is deliberately simple to reimplement:
//!
//! * a 128-bit SipHash key is derived once per (purpose, salt) as
//!   `SipHash-1-3-128(key = 0, bytes = purpose ‖ 0xFF ‖ salt)`;
//! * a user id is hashed with `SipHash-1-3-64(key, id bytes)`;
//! * the 64-bit hash `h` maps to a bucket with `(h × 10 000) >> 64`, which is
//!   uniform to within 10⁻¹⁵ and uses only fixed-width integers, so wasm32 and
//!   x86_64 compute the same value.

use siphasher::sip::SipHasher13;
use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13_128};
use std::hash::Hasher;

/// Number of buckets a hash maps to. Traffic shares and weights are
/// resolved to whole buckets, i.e. to a precision of 0.01 %.
pub const BUCKETS: u32 = 10_000;

/// What a derived key is used for. Each purpose gets an independent key from
/// the same salt, so enrollment, variant choice and layer slots are
/// statistically independent functions of the user id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Whether a user is enrolled (the experiment's traffic share).
    Enroll,
    /// Which variant an enrolled user gets.
    Variant,
    /// Which slot of a layer a user falls in (mutual exclusion).
    Layer,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Purpose::Enroll => b"enroll",
            Purpose::Variant => b"variant",
            Purpose::Layer => b"layer",
        }
    }
}

/// A precomputed SipHash-1-3 key. Building one hashes the salt; using one
/// does not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketKey {
    k0: u64,
    k1: u64,
}

impl BucketKey {
    /// Derives the key for `purpose` from `salt`.
    pub fn derive(purpose: Purpose, salt: &str) -> Self {
        let mut h = SipHasher13_128::new_with_keys(0, 0);
        h.write(purpose.tag());
        h.write(&[0xFF]);
        h.write(salt.as_bytes());
        let (k0, k1) = h.finish128().as_u64();
        BucketKey { k0, k1 }
    }

    /// The raw 64-bit SipHash-1-3 of `id` under this key.
    #[inline]
    pub fn hash(&self, id: &[u8]) -> u64 {
        SipHasher13::new_with_keys(self.k0, self.k1).hash(id)
    }

    /// The bucket in `[0, BUCKETS)` that `id` falls in.
    #[inline]
    pub fn bucket(&self, id: &[u8]) -> u32 {
        to_bucket(self.hash(id))
    }
}

/// Maps a 64-bit hash to `[0, BUCKETS)` by multiply-shift (no modulo bias
/// beyond 10⁻¹⁵, no `usize`).
#[inline]
pub fn to_bucket(h: u64) -> u32 {
    ((u128::from(h) * u128::from(BUCKETS)) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_give_independent_keys() {
        let e = BucketKey::derive(Purpose::Enroll, "exp");
        let v = BucketKey::derive(Purpose::Variant, "exp");
        let l = BucketKey::derive(Purpose::Layer, "exp");
        assert_ne!(e, v);
        assert_ne!(e, l);
        assert_ne!(v, l);
    }

    #[test]
    fn bucket_edges() {
        assert_eq!(to_bucket(0), 0);
        assert_eq!(to_bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(to_bucket(1 << 63), BUCKETS / 2);
    }

    /// Pins the hash function: SipHash-1-3-64 with key 00..0f, values from an
    /// independent implementation of the reference algorithm.
    #[test]
    fn siphash13_reference_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let h = SipHasher13::new_with_key(&key);
        assert_eq!(h.hash(&[]), 0xabac_0158_050f_c4dc);
        assert_eq!(h.hash(&[0]), 0xc9f4_9bf3_7d57_ca93);
    }
}

//! The per-request path: who is this user, which experiments apply, which
//! variant do they get, and what changes on the request.
//!
//! Nothing here allocates. Inputs are borrowed header bytes; outputs go into
//! a [`Decisions`] buffer made once per worker by [`Plan::decisions`], and
//! header writes go to a caller's [`HeaderSink`] as borrowed slices of the
//! plan's precomputed strings.

use crate::allocation::Allocation;
use crate::config::MissingIdentity;
use crate::hash::BUCKETS;
use crate::identity::cookie_value;
use crate::plan::{Experiment, IdentityRule, Plan, Slot, AUTHORITY, PATH};

/// Read access to the request headers a plan needs.
///
/// `slot` indexes [`Plan::header_names`] and `name` is that name (lower
/// case, or a pseudo-header such as `:path`); implementations may cache by
/// slot. Values are raw bytes: user ids need not be UTF-8.
pub trait RequestHeaders {
    fn get(&self, slot: Slot, name: &str) -> Option<&[u8]>;

    /// Whether the request has header `name`, if that is known without
    /// asking the proxy (e.g. because the whole header map was read).
    /// `None` means unknown: [`Plan::apply`] then removes the headers the
    /// client must not set without checking, at one hostcall each.
    fn contains(&self, name: &str) -> Option<bool> {
        let _ = name;
        None
    }

    /// The value of cookie `cookie` in the request's `cookie` header(s)
    /// (`name` is `"cookie"`, at `slot`), the first occurrence winning.
    ///
    /// A request can carry several `cookie` headers: HTTP/1.1 clients may
    /// send one per cookie, and Envoy keeps them apart there, while over
    /// HTTP/2 it joins them with `; `. The identity must be found either
    /// way, so an implementation that can see repeated headers must look in
    /// every one of them; this default looks only in [`RequestHeaders::get`]'s
    /// (first) value.
    fn cookie(&self, slot: Slot, name: &str, cookie: &[u8]) -> Option<&[u8]> {
        self.get(slot, name)
            .and_then(|header| cookie_value(header, cookie))
    }
}

/// Receives the header changes a decision implies.
pub trait HeaderSink {
    /// Sets (replaces) a request header or pseudo-header.
    fn set(&mut self, name: &str, value: &[u8]);
    /// Removes a request header.
    fn remove(&mut self, name: &str);
}

/// How a variant was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// By the user's hash: a real exposure, counted in the analysis.
    Hash,
    /// By the experiment's allowlist.
    Allowlist,
    /// By the force header (QA).
    Forced,
    /// No identity, and `missing_identity` is `control`.
    Default,
    /// The hash chose a variant the sidecar halted; the request is routed
    /// like the experiment's control (the assignment's index is the
    /// control's). Not an exposure, not counted in health.
    Halted,
}

impl Source {
    /// Whether this assignment is a randomized exposure that analysis
    /// should count. Pinned, forced, default and halted routing are not.
    pub fn is_exposure(self) -> bool {
        matches!(self, Source::Hash)
    }
}

/// The outcome for one experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Assignment {
    /// The request does not meet the experiment's `match` conditions.
    NotMatched,
    /// No identity was found on the request.
    NoIdentity,
    /// Identified, but outside the experiment's layer slice or traffic share.
    NotEnrolled,
    /// In a variant (an index into [`Experiment::variants`]).
    Variant { index: u16, source: Source },
}

impl Assignment {
    /// The variant index, if in a variant.
    pub fn variant(self) -> Option<usize> {
        match self {
            Assignment::Variant { index, .. } => Some(usize::from(index)),
            _ => None,
        }
    }

    /// The variant index, if this is an exposure ([`Source::is_exposure`]).
    pub fn exposure(self) -> Option<usize> {
        match self {
            Assignment::Variant { index, source } if source.is_exposure() => {
                Some(usize::from(index))
            }
            _ => None,
        }
    }
}

/// What the filter should do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply the changes and let the request through.
    Continue,
    /// Answer locally with 400 (`missing_identity: reject`).
    RejectMissingIdentity,
}

/// Per-request results, one slot per experiment; reused across requests.
#[derive(Clone, Debug)]
pub struct Decisions {
    pub(crate) slots: Box<[Assignment]>,
    /// Allocation period of each slot's hash assignment (0: configured
    /// weights, and for anything that is not an exposure).
    periods: Box<[u32]>,
    /// Cached layer buckets for this user (`u32::MAX`: not computed yet).
    layer_buckets: Box<[u32]>,
}

impl Decisions {
    /// Assignments in experiment order.
    pub fn assignments(&self) -> &[Assignment] {
        &self.slots
    }

    /// Packs the variant of each assignment into `out` (index + 1, or 0
    /// when not in a variant), for keeping per-stream state compactly.
    pub fn pack_variants(assignments: &[Assignment], out: &mut [u16]) {
        for (o, a) in out.iter_mut().zip(assignments) {
            *o = a.variant().map_or(0, |v| v as u16 + 1);
        }
    }

    /// Like [`Decisions::pack_variants`], but only exposures
    /// ([`Assignment::exposure`]) are kept; everything else packs as 0.
    pub fn pack_exposures(assignments: &[Assignment], out: &mut [u16]) {
        for (o, a) in out.iter_mut().zip(assignments) {
            *o = a.exposure().map_or(0, |v| v as u16 + 1);
        }
    }

    /// The allocation period whose weights assigned experiment
    /// `experiment`'s variant ([`crate::Allocation`]; 0: the configured
    /// weights). Meaningful for an exposure; 0 otherwise.
    pub fn period(&self, experiment: usize) -> u32 {
        match self.slots.get(experiment) {
            Some(a) if a.exposure().is_some() => self.periods[experiment],
            _ => 0,
        }
    }

    /// The request's exposures as (experiment index, variant index).
    pub fn exposures(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(e, a)| Some((e, a.exposure()?)))
    }

    /// Whether any assignment is an exposure.
    pub fn has_exposure(&self) -> bool {
        self.exposures().next().is_some()
    }

    /// Restores variants packed by [`Decisions::pack_variants`]. The source
    /// of a restored variant reads as [`Source::Hash`]; other states read as
    /// [`Assignment::NotEnrolled`].
    pub fn unpack_variants(&mut self, packed: &[u16]) {
        for (s, &p) in self.slots.iter_mut().zip(packed) {
            *s = match p {
                0 => Assignment::NotEnrolled,
                p => Assignment::Variant {
                    index: p - 1,
                    source: Source::Hash,
                },
            };
        }
    }

    fn reset(&mut self) {
        self.slots.fill(Assignment::NotMatched);
        self.periods.fill(0);
        self.layer_buckets.fill(u32::MAX);
    }
}

impl Plan {
    /// A reusable result buffer sized for this plan.
    pub fn decisions(&self) -> Decisions {
        Decisions {
            slots: vec![Assignment::NotMatched; self.experiments.len()].into_boxed_slice(),
            periods: vec![0; self.experiments.len()].into_boxed_slice(),
            layer_buckets: vec![u32::MAX; self.layer_keys.len()].into_boxed_slice(),
        }
    }

    /// Assigns `user` in every experiment from its id alone: no `match`
    /// conditions, no force header. This is what `abmesh assign` prints and
    /// what the filter does for a request that matches every experiment,
    /// by the configured weights ([`Plan::assign_user_with`] for a bandit's
    /// later periods).
    pub fn assign_user(&self, user: &[u8], out: &mut Decisions) {
        self.assign_user_in(user, None, out);
    }

    /// [`Plan::assign_user`] by `allocation`'s weights, or the configured
    /// ones.
    pub(crate) fn assign_user_in(
        &self,
        user: &[u8],
        allocation: Option<&Allocation>,
        out: &mut Decisions,
    ) {
        out.reset();
        for i in 0..self.experiments.len() {
            out.slots[i] = self.assign_one(i, user, allocation, out);
        }
    }

    /// Decides a request by the configured weights ([`Plan::decide_with`]
    /// for the sidecar's halts and bandit weights).
    pub fn decide(&self, req: &impl RequestHeaders, out: &mut Decisions) -> Verdict {
        self.decide_in(req, None, out)
    }

    /// [`Plan::decide`] by `allocation`'s weights, or the configured ones.
    pub(crate) fn decide_in(
        &self,
        req: &impl RequestHeaders,
        allocation: Option<&Allocation>,
        out: &mut Decisions,
    ) -> Verdict {
        out.reset();
        let user = self.identity(req);
        let mut any_unidentified = false;
        for (i, e) in self.experiments.iter().enumerate() {
            if !self.matches(e, req) {
                continue;
            }
            out.slots[i] = match user {
                Some(user) => self.assign_one(i, user, allocation, out),
                None => match self.missing_identity {
                    MissingIdentity::Control => Assignment::Variant {
                        index: e.control,
                        source: Source::Default,
                    },
                    MissingIdentity::Pass | MissingIdentity::Reject => {
                        any_unidentified = true;
                        Assignment::NoIdentity
                    }
                },
            };
        }
        if let Some(slot) = self.force {
            if let Some(value) = req.get(slot, &self.header_names[usize::from(slot)]) {
                self.apply_force(value, out);
            }
        }
        if any_unidentified
            && self.missing_identity == MissingIdentity::Reject
            && out.slots.contains(&Assignment::NoIdentity)
        {
            return Verdict::RejectMissingIdentity;
        }
        Verdict::Continue
    }

    /// Writes the header changes for `decisions` to `sink`. `path_buf` holds
    /// the rewritten `:path`; give it capacity up front and it never grows
    /// for paths that fit.
    ///
    /// The cluster header is always either set or removed, so a request
    /// leaves here with routing headers only the plan chose; the caller
    /// should then have the proxy re-select the route.
    pub fn apply(
        &self,
        decisions: &Decisions,
        req: &impl RequestHeaders,
        path_buf: &mut Vec<u8>,
        sink: &mut impl HeaderSink,
    ) {
        let mut cluster = None;
        let mut path = None;
        let mut authority = None;
        for (e, a) in self.experiments.iter().zip(decisions.slots.iter()) {
            match *a {
                Assignment::Variant { index, .. } => {
                    let v = &e.variants[usize::from(index)];
                    sink.set(&e.variant_header, v.name.as_bytes());
                    if let Some(c) = &v.cluster {
                        cluster = Some(&**c);
                    }
                    if let (Some(to), Some(from)) = (&v.path_prefix, &e.conditions.path_prefix) {
                        path = Some((&**from, &**to));
                    }
                    if let Some(h) = &v.authority {
                        authority = Some(&**h);
                    }
                }
                // A client must not be able to claim a variant.
                _ => remove_if_present(req, sink, &e.variant_header),
            }
        }
        // Nor pick an upstream cluster.
        match cluster {
            Some(c) => sink.set(&self.cluster_header, c.as_bytes()),
            None => remove_if_present(req, sink, &self.cluster_header),
        }
        if let Some((from, to)) = path {
            if let Some(old) = req.get(self.path_slot, PATH) {
                if let Some(rest) = old.strip_prefix(from) {
                    path_buf.clear();
                    path_buf.extend_from_slice(to);
                    path_buf.extend_from_slice(rest);
                    sink.set(PATH, path_buf);
                }
            }
        }
        if let Some(h) = authority {
            sink.set(AUTHORITY, h.as_bytes());
        }
    }

    /// Writes `experiment=variant` pairs, comma separated, for the echo
    /// header; empty when the request is in no variant. A request routed
    /// like control because its variant is halted echoes the control (what
    /// it was served).
    pub fn write_echo(&self, decisions: &Decisions, buf: &mut Vec<u8>) {
        buf.clear();
        for (e, a) in self.experiments.iter().zip(decisions.slots.iter()) {
            if let Some(v) = a.variant() {
                if !buf.is_empty() {
                    buf.push(b',');
                }
                buf.extend_from_slice(e.name.as_bytes());
                buf.push(b'=');
                buf.extend_from_slice(e.variants[v].name.as_bytes());
            }
        }
    }

    /// The first non-empty identity in the configured order.
    pub fn identity<'r>(&self, req: &'r impl RequestHeaders) -> Option<&'r [u8]> {
        self.identity.iter().find_map(|rule| {
            let v = match rule {
                IdentityRule::Header(slot) => req.get(*slot, self.name(*slot)),
                IdentityRule::Cookie { slot, name } => req.cookie(*slot, self.name(*slot), name),
            }?;
            (!v.is_empty()).then_some(v)
        })
    }

    fn name(&self, slot: Slot) -> &str {
        &self.header_names[usize::from(slot)]
    }

    fn matches(&self, e: &Experiment, req: &impl RequestHeaders) -> bool {
        let c = &e.conditions;
        if c.is_empty() {
            return true;
        }
        if let Some(prefix) = &c.path_prefix {
            match req.get(self.path_slot, PATH) {
                Some(p) if p.starts_with(prefix) => {}
                _ => return false,
            }
        }
        if !c.methods.is_empty() {
            let Some(m) = req.get(self.method_slot, self.name(self.method_slot)) else {
                return false;
            };
            if !c.methods.iter().any(|x| **x == *m) {
                return false;
            }
        }
        c.headers
            .iter()
            .all(|h| match req.get(h.slot, self.name(h.slot)) {
                None => false,
                Some(v) => h.value.as_deref().is_none_or(|want| want == v),
            })
    }

    /// Assigns `user` in experiment `i`; a hash assignment's period goes to
    /// `out.periods[i]` (the slot itself is the caller's to write).
    fn assign_one(
        &self,
        i: usize,
        user: &[u8],
        allocation: Option<&Allocation>,
        out: &mut Decisions,
    ) -> Assignment {
        let layer_buckets = &mut out.layer_buckets;
        let e = &self.experiments[i];
        if !e.allowlist.is_empty() {
            if let Ok(k) = e.allowlist.binary_search_by(|(u, _)| (**u).cmp(user)) {
                return Assignment::Variant {
                    index: e.allowlist[k].1,
                    source: Source::Allowlist,
                };
            }
        }
        if let Some(slice) = e.layer {
            let li = usize::from(slice.layer);
            if layer_buckets[li] == u32::MAX {
                layer_buckets[li] = self.layer_keys[li].bucket(user);
            }
            let b = layer_buckets[li];
            if b < slice.start || b >= slice.end {
                return Assignment::NotEnrolled;
            }
        }
        // At 100 % everyone is in; skip the hash.
        if e.traffic < BUCKETS && e.enroll_key.bucket(user) >= e.traffic {
            return Assignment::NotEnrolled;
        }
        let b = e.variant_key.bucket(user);
        let index = match allocation {
            Some(a) => {
                out.periods[i] = a.period(i);
                a.variant_at(i, b)
            }
            None => e.configured_variant(b),
        };
        Assignment::Variant {
            index: index as u16,
            source: Source::Hash,
        }
    }

    /// Parses `exp=variant[, exp=variant…]` and forces the named variants of
    /// experiments the request matched. Unknown names are ignored.
    fn apply_force(&self, value: &[u8], out: &mut Decisions) {
        for pair in value.split(|&b| b == b',') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (exp, var) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let Some(i) = self
                .experiments
                .iter()
                .position(|e| e.name.as_bytes() == exp)
            else {
                continue;
            };
            if out.slots[i] == Assignment::NotMatched {
                continue;
            }
            let e = &self.experiments[i];
            if let Some(v) = e.variants.iter().position(|v| v.name.as_bytes() == var) {
                out.slots[i] = Assignment::Variant {
                    index: v as u16,
                    source: Source::Forced,
                };
            }
        }
    }
}

/// Removes `name` unless the request is known not to have it: removing an
/// absent header is harmless but costs a hostcall.
fn remove_if_present(req: &impl RequestHeaders, sink: &mut impl HeaderSink, name: &str) {
    if req.contains(name) != Some(false) {
        sink.remove(name);
    }
}

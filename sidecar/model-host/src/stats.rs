//! Inference statistics per loaded version, as Triton's statistics
//! extension reports them (`GET /v2/models[/{name}[/versions/{v}]]/stats`,
//! and what `perf_analyzer` reads for its server-side breakdown).
//!
//! Why a second set of counters next to the Prometheus histograms
//! ([`crate::metrics`]): Triton's clients want cumulative counts and
//! nanoseconds per phase (queue, compute input, compute infer, compute
//! output) and per batch size, which a histogram's seconds-buckets cannot
//! give back exactly. The request path only does relaxed `fetch_add`s on
//! atomics here; a batch size beyond the preallocated table (rare: a request
//! of more rows than `--max-batch-size`, run alone) takes one short lock per
//! run.
//!
//! The counters belong to one loaded version: a reload (or an unload and a
//! load) starts them from zero, as Triton does.
//!
//! Triton's meaning of each counter, followed here:
//! - `success`/`fail`: requests, with the time from their arrival to their
//!   response;
//! - `queue`: each request's wait for a session and batch;
//! - `compute_input`/`compute_infer`/`compute_output`: each request gets the
//!   whole duration of the run it took part in (copying the inputs into the
//!   run's tensors, ONNX Runtime's `run`, splitting the outputs back);
//! - `inference_count`: rows inferred (a request of 4 rows counts 4);
//!   `execution_count`: runs;
//! - `batch_stats`: per rows-per-run, the runs of that size and their times.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A count and the nanoseconds it took, cumulative.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

/// A [`Tally`] read at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TallySnapshot {
    pub count: u64,
    pub ns: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tally {
    fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn record(&self, d: Duration) {
        self.add(1, nanos(d));
    }

    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// The three phases of one run.
#[derive(Debug, Default)]
struct Phases {
    input: Tally,
    infer: Tally,
    output: Tally,
}

/// How long each phase of one run took.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunTimes {
    pub(crate) input: Duration,
    pub(crate) infer: Duration,
    pub(crate) output: Duration,
}

/// The counters of one loaded version.
#[derive(Debug)]
pub struct InferStats {
    /// Milliseconds since the Unix epoch of the last successful run; 0
    /// before the first.
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Tally,
    fail: Tally,
    queue: Tally,
    compute: Phases,
    /// Runs of `i + 1` rows, for `i` below the table's length.
    by_batch: Box<[Phases]>,
    /// Runs of more rows than the table holds.
    larger: Mutex<BTreeMap<u64, [TallySnapshot; 3]>>,
}

/// The statistics of one version at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: TallySnapshot,
    pub fail: TallySnapshot,
    pub queue: TallySnapshot,
    pub compute_input: TallySnapshot,
    pub compute_infer: TallySnapshot,
    pub compute_output: TallySnapshot,
    /// `(rows per run, [input, infer, output])`, ascending, sizes that ran.
    pub batches: Vec<(u64, [TallySnapshot; 3])>,
}

impl InferStats {
    /// Counters with a lock-free table for runs of up to `max_rows` rows
    /// (at least 64).
    pub fn new(max_rows: usize) -> InferStats {
        let slots = max_rows.clamp(64, 4096);
        InferStats {
            last_inference_ms: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            success: Tally::default(),
            fail: Tally::default(),
            queue: Tally::default(),
            compute: Phases::default(),
            by_batch: (0..slots).map(|_| Phases::default()).collect(),
            larger: Mutex::new(BTreeMap::new()),
        }
    }

    /// A request answered (`ok`) or failed, `elapsed` after it arrived.
    pub fn request(&self, ok: bool, elapsed: Duration) {
        if ok { &self.success } else { &self.fail }.record(elapsed);
    }

    /// A request's wait before its run started.
    pub(crate) fn queued(&self, waited: Duration) {
        self.queue.record(waited);
    }

    /// A run of `requests` requests and `rows` rows that succeeded.
    pub(crate) fn run(&self, requests: usize, rows: usize, times: RunTimes) {
        let n = requests as u64;
        let (input, infer, output) = (nanos(times.input), nanos(times.infer), nanos(times.output));
        self.compute.input.add(n, input.saturating_mul(n));
        self.compute.infer.add(n, infer.saturating_mul(n));
        self.compute.output.add(n, output.saturating_mul(n));
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        match rows.checked_sub(1).and_then(|i| self.by_batch.get(i)) {
            Some(p) => {
                p.input.add(1, input);
                p.infer.add(1, infer);
                p.output.add(1, output);
            }
            None => {
                let mut larger = self.larger.lock();
                let e = larger.entry(rows as u64).or_default();
                for (t, ns) in e.iter_mut().zip([input, infer, output]) {
                    t.count += 1;
                    t.ns = t.ns.saturating_add(ns);
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// The counters now. Each counter is read on its own, so a snapshot
    /// taken under load may be a request apart between counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut batches: Vec<(u64, [TallySnapshot; 3])> = self
            .by_batch
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let t = [p.input.snapshot(), p.infer.snapshot(), p.output.snapshot()];
                (t[1].count > 0).then_some((i as u64 + 1, t))
            })
            .collect();
        batches.extend(self.larger.lock().iter().map(|(&k, &v)| (k, v)));
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.compute.input.snapshot(),
            compute_infer: self.compute.infer.snapshot(),
            compute_output: self.compute.output.snapshot(),
            batches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn runs_count_rows_requests_and_batch_sizes() {
        let s = InferStats::new(4);
        s.queued(ms(1));
        s.queued(ms(2));
        s.run(
            2,
            3,
            RunTimes {
                input: ms(1),
                infer: ms(10),
                output: ms(2),
            },
        );
        s.request(true, ms(20));
        s.request(false, ms(5));
        // Beyond the table (64 slots at least): the locked map.
        s.run(
            1,
            100,
            RunTimes {
                input: ms(0),
                infer: ms(7),
                output: ms(0),
            },
        );
        let snap = s.snapshot();
        assert_eq!(snap.inference_count, 103);
        assert_eq!(snap.execution_count, 2);
        assert_eq!(
            snap.queue,
            TallySnapshot {
                count: 2,
                ns: 3_000_000
            }
        );
        assert_eq!(
            snap.success,
            TallySnapshot {
                count: 1,
                ns: 20_000_000
            }
        );
        assert_eq!(
            snap.fail,
            TallySnapshot {
                count: 1,
                ns: 5_000_000
            }
        );
        // Each request of a run gets the run's whole time.
        assert_eq!(
            snap.compute_infer,
            TallySnapshot {
                count: 3,
                ns: 27_000_000
            }
        );
        assert_eq!(
            snap.batches
                .iter()
                .map(|b| (b.0, b.1[1]))
                .collect::<Vec<_>>(),
            vec![
                (
                    3,
                    TallySnapshot {
                        count: 1,
                        ns: 10_000_000
                    }
                ),
                (
                    100,
                    TallySnapshot {
                        count: 1,
                        ns: 7_000_000
                    }
                ),
            ]
        );
        assert!(snap.last_inference_ms > 1_600_000_000_000);
    }
}

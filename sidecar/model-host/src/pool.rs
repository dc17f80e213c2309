//! A pool of ONNX Runtime sessions for one model version.
//!
//! `Session::run` takes `&mut self` (ONNX Runtime's EP allocators are not
//! thread safe), so each session sits behind its own mutex and runs one
//! batch at a time. Requests reach a session in one of two ways:
//!
//! - **Queued** (the general path): the request goes into the version's
//!   queue, and one worker thread per session forms batches from it (see
//!   [`super::batching`]) and runs them. Dedicated threads keep long runs off
//!   the async runtime that serves HTTP.
//! - **Inline** (`--inline-max-us`, 100 µs by default in `abmesh serve`,
//!   off in [`super::HostConfig::default`]): when the version's runs have
//!   been taking less than the inline budget per request, the request goes
//!   into a second queue, and the calling thread (an HTTP thread) runs it
//!   right there if a session is idle, together with every request of that
//!   queue that stacks with it (dynamic batching, as the workers do). If
//!   every session is busy, whoever holds one (another HTTP thread, or a
//!   worker) takes the queue's requests when it finishes its run. For a
//!   model that runs in microseconds, the two thread hand-offs of the queued
//!   path (wake a worker, wake the request back) cost more than the run
//!   itself. It is off when a queue delay is configured: that asks for
//!   batches that wait for company, which only the workers form.
//!
//! A pool stops when its last queue sender is dropped: the workers finish
//! every request already queued, then exit and free their sessions. That is
//! what lets an unload or a reload take a version out of service without
//! failing the requests it already accepted.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use ort::memory::Allocator;
use ort::session::{
    HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue, SessionInputs,
};
use ort::value::{DynTensor, DynTensorValueType, DynValue, ValueType};
use tokio::sync::oneshot;

use super::batching::{BatchConfig, Intake, Job};
use super::datatype::DataType;
use super::error::InferError;
use super::metrics::VersionMetrics;
use super::signature::{Prepared, Signature};
use super::stats::RunTimes;
use super::tensor::{OutputTensor, Tensor};

/// The outputs of one request.
pub(crate) type Outputs = Result<Vec<OutputTensor>, InferError>;

/// A version's sessions and the sending side of its queue.
pub(crate) struct Pool {
    tx: SyncSender<Job>,
    core: Arc<Core>,
    capacity: usize,
    model: Arc<str>,
    version: u64,
    /// Runs estimated to take at most this long may run inline; `None`
    /// turns the fast path off.
    inline_budget: Option<Duration>,
}

/// What a pool is started with.
pub(crate) struct PoolSpec {
    pub(crate) model: Arc<str>,
    pub(crate) version: u64,
    pub(crate) signature: Arc<Signature>,
    pub(crate) batching: BatchConfig,
    pub(crate) queue_capacity: usize,
    /// See [`Pool`]; `Duration::ZERO` disables the fast path.
    pub(crate) inline_budget: Duration,
    pub(crate) metrics: VersionMetrics,
}

/// A session with the allocator its inputs are made with.
struct Slot {
    session: Session,
    allocator: Allocator,
    reuse: Reuse,
}

/// Tensors a session keeps from run to run instead of having ONNX Runtime
/// make (and free) them for every run: its input tensors, by shape, and its
/// outputs, preallocated through the run options, by batch rows. Together
/// at most [`REUSE_BYTES`] per session; runs of other shapes make their own
/// as before. (Per run this saves making and releasing an `OrtValue` and
/// its buffer per input and per output, and the `ort` wrapper's type and
/// shape queries on each output.)
///
/// Measured (callgrind, `scorer`, HTTP, 4 clients, ~2 rows per run,
/// benches/model_host/README.md): a run, ONNX Runtime's `Run` included,
/// went from 41.9k to 27.3k instructions (`Run` itself 26.3k → 22.9k: it
/// no longer allocates the outputs); per HTTP infer request 48.6k → 41.7k
/// (−14 %), per gRPC infer request 79.2k → 71.8k (−9 %).
#[derive(Default)]
struct Reuse {
    /// Per input of the signature: (shape, tensor).
    inputs: Vec<Vec<(Vec<usize>, DynTensor)>>,
    /// Run options with every output of the signature preallocated, for a
    /// batch of that many rows. Made only after a run of that many rows gave
    /// exactly these output shapes.
    outputs: Vec<(usize, RunOptions<HasSelectedOutputs>)>,
    /// A run with preallocated outputs failed: from then on this session's
    /// runs let ONNX Runtime allocate them (the run is retried that way).
    outputs_off: bool,
    bytes: usize,
}

/// See [`Reuse`].
const REUSE_BYTES: usize = 4 << 20;

/// Batches an HTTP thread runs for the inline queue before it hands the
/// rest of that queue to a task of its own (so that its own response, and
/// the connections it serves, are not held up behind other requests' runs).
const INLINE_BATCHES: usize = 1;

/// What both paths share.
struct Core {
    slots: Vec<Mutex<Slot>>,
    signature: Arc<Signature>,
    metrics: VersionMetrics,
    batching: BatchConfig,
    /// Cleared if a merged run's outputs turn out not to follow the batch
    /// dimension after all; from then on every request runs alone.
    stack_ok: AtomicBool,
    /// The inline queue: requests run by whoever holds a session (see the
    /// module docs). Its length is mirrored in `inline_len`, read without
    /// the lock.
    inline: Mutex<VecDeque<Job>>,
    inline_len: AtomicUsize,
    /// Sessions running a batch right now.
    running: AtomicUsize,
    /// Moving average of ONNX Runtime time per row, in nanoseconds;
    /// `u64::MAX` until the first run has been timed.
    ns_per_row: AtomicU64,
    /// Each output's dimensions after the first, when the signature is
    /// batchable and they are all fixed: the outputs can then be
    /// preallocated for a given number of rows (see [`Reuse`]).
    output_rows: Option<Vec<Vec<usize>>>,
    label: String,
}

impl Pool {
    /// Starts one worker thread per session.
    pub(crate) fn start(spec: PoolSpec, sessions: Vec<Session>) -> std::io::Result<Pool> {
        let (tx, rx) = sync_channel(spec.queue_capacity);
        let intake = Arc::new(Mutex::new(Intake::new(rx)));
        let core = Arc::new(Core {
            slots: sessions
                .into_iter()
                .map(|session| {
                    Mutex::new(Slot {
                        session,
                        allocator: Allocator::default(),
                        reuse: Reuse::default(),
                    })
                })
                .collect(),
            signature: spec.signature.clone(),
            metrics: spec.metrics.clone(),
            batching: spec.batching,
            stack_ok: AtomicBool::new(spec.signature.batchable),
            inline: Mutex::new(VecDeque::new()),
            inline_len: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            ns_per_row: AtomicU64::new(u64::MAX),
            output_rows: spec
                .signature
                .batchable
                .then(|| {
                    spec.signature
                        .outputs
                        .iter()
                        .map(|o| {
                            o.shape[1..]
                                .iter()
                                .map(|&d| usize::try_from(d).ok())
                                .collect::<Option<Vec<usize>>>()
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .flatten(),
            label: format!("{}/{}", spec.model, spec.version),
        });
        for i in 0..core.slots.len() {
            let (core, intake) = (core.clone(), intake.clone());
            let batching = spec.batching;
            std::thread::Builder::new()
                .name(format!("ort-{}-{}-{i}", spec.model, spec.version))
                .spawn(move || core.serve(i, &intake, &batching))?;
        }
        let inline_budget = (!spec.inline_budget.is_zero()
            && spec.batching.max_queue_delay.is_zero())
        .then_some(spec.inline_budget);
        Ok(Pool {
            tx,
            core,
            capacity: spec.queue_capacity,
            model: spec.model,
            version: spec.version,
            inline_budget,
        })
    }

    /// Whether a request goes through the inline queue (see the module
    /// docs): the fast path is on and the version's runs have been timed at
    /// most the budget for this many rows.
    fn runs_inline(&self, request: &Prepared) -> bool {
        let Some(budget) = self.inline_budget else {
            return false;
        };
        let per_row = self.core.ns_per_row.load(Ordering::Relaxed);
        let rows = request.rows.unwrap_or(1) as u64;
        per_row != u64::MAX && per_row.saturating_mul(rows) <= budget.as_nanos() as u64
    }

    /// Queues a request; the receiver yields its outputs. `true` with it:
    /// the request went to the inline queue, and the caller must call
    /// [`Pool::run_inline`] next (after letting the other requests that are
    /// ready on its thread queue theirs, so that they share the run).
    pub(crate) fn submit(
        &self,
        request: Prepared,
    ) -> Result<(oneshot::Receiver<Outputs>, bool), InferError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            enqueued: Instant::now(),
            reply,
        };
        if self.runs_inline(&job.request) {
            {
                let mut queue = self.core.inline.lock();
                if queue.len() >= self.capacity {
                    return Err(self.queue_full());
                }
                queue.push_back(job);
                self.core.inline_len.fetch_add(1, Ordering::SeqCst);
            }
            return Ok((rx, true));
        }
        match self.tx.try_send(job) {
            Ok(()) => Ok((rx, false)),
            Err(TrySendError::Full(_)) => Err(self.queue_full()),
            Err(TrySendError::Disconnected(_)) => Err(InferError::Stopped {
                model: self.model.to_string(),
                version: self.version,
            }),
        }
    }

    /// Runs the inline queue on this thread if a session is idle (see the
    /// module docs). Every request put in the inline queue is followed by a
    /// call to this, which is what guarantees that the queue is run.
    pub(crate) fn run_inline(&self) {
        if self.core.drain_inline(INLINE_BATCHES) {
            self.core.clone().keep_draining();
        }
    }

    fn queue_full(&self) -> InferError {
        InferError::QueueFull {
            model: self.model.to_string(),
            version: self.version,
            capacity: self.capacity,
        }
    }
}

/// Why a run produced no outputs.
enum RunError {
    /// A merged run's outputs do not have the batch's rows along the first
    /// dimension, so they cannot be split back into requests.
    Unstackable,
    /// A run with preallocated outputs failed; they are now off for the
    /// session, and the run is to be retried.
    Preallocated,
    Failed(InferError),
}

impl From<ort::Error> for RunError {
    fn from(e: ort::Error) -> Self {
        RunError::Failed(InferError::Runtime(e.to_string()))
    }
}

impl Core {
    /// The loop of worker `index`: take a batch from the queue, run it on
    /// session `index`.
    fn serve(&self, index: usize, intake: &Mutex<Intake>, batching: &BatchConfig) {
        loop {
            let jobs = {
                let mut intake = intake.lock();
                match intake.next_batch(batching, self.stacking()) {
                    Some(jobs) => jobs,
                    None => break,
                }
            };
            let mut slot = self.slots[index].lock();
            self.run_jobs(&mut slot, jobs);
            drop(slot);
            // An inline request that found every session busy, this one
            // included, is waiting for a session holder to run it.
            self.drain_inline(usize::MAX);
        }
        tracing::debug!(version = %self.label, "session worker stopped");
    }

    fn stacking(&self) -> bool {
        self.batching.max_batch_size > 1 && self.stack_ok.load(Ordering::Relaxed)
    }

    /// Runs the inline queue on an idle session, up to `max_batches`
    /// batches. Returns whether it stopped at that limit with requests still
    /// queued; otherwise the queue is empty, or every session was busy and
    /// their holders run the queue when they finish (each calls this after
    /// releasing its session, and the fences make sure that either it sees
    /// a request queued before, or the request's own thread sees the
    /// session free).
    fn drain_inline(&self, max_batches: usize) -> bool {
        let mut ran = 0;
        loop {
            fence(Ordering::SeqCst);
            if self.inline_len.load(Ordering::SeqCst) == 0 {
                return false;
            }
            if ran >= max_batches {
                return true;
            }
            let Some(mut slot) = self.idle_slot() else {
                return false;
            };
            // While another session runs a batch, requests wait for it to
            // finish and take them all in its next batch, rather than start
            // a small batch of their own: bigger batches cost less per row,
            // and on a small machine the cores are better spent on HTTP.
            // Only a queue of a whole batch starts a second run.
            if self.running.load(Ordering::SeqCst) > 0
                && self.inline_len.load(Ordering::SeqCst) < self.batching.max_batch_size
            {
                return false;
            }
            while ran < max_batches {
                let jobs = self.take_inline_batch();
                if jobs.is_empty() {
                    break;
                }
                self.run_jobs(&mut slot, jobs);
                ran += 1;
            }
        }
    }

    /// Keeps running the inline queue after an HTTP thread stopped at its
    /// limit: on a task of the async runtime when there is one, else right
    /// here. The task yields before each batch, so that the requests the
    /// last batch answered (woken on this thread) send their responses
    /// first.
    fn keep_draining(self: Arc<Self>) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    loop {
                        tokio::task::yield_now().await;
                        if !self.drain_inline(INLINE_BATCHES) {
                            break;
                        }
                    }
                });
            }
            Err(_) => while self.drain_inline(usize::MAX) {},
        }
    }

    fn idle_slot(&self) -> Option<MutexGuard<'_, Slot>> {
        self.slots.iter().find_map(|s| s.try_lock())
    }

    /// The next batch of the inline queue: the first request and those
    /// after it that stack with it, in order, up to the batch size.
    fn take_inline_batch(&self) -> Vec<Job> {
        let stack = self.stacking();
        let mut queue = self.inline.lock();
        let mut jobs: Vec<Job> = Vec::new();
        let mut rows = 0;
        while let Some(next) = queue.front() {
            if !next.reply.is_closed() {
                if let Some(first) = jobs.first() {
                    if !stack
                        || first.request.rows.is_none()
                        || !first.request.stacks_with(&next.request)
                        || rows + next.rows() > self.batching.max_batch_size
                    {
                        break;
                    }
                }
            }
            // An invariant: the loop only gets here after `front()` was
            // `Some`, with the queue's lock held since.
            let job = queue.pop_front().expect("the queue has a front");
            self.inline_len.fetch_sub(1, Ordering::SeqCst);
            // A client that hung up no longer needs its run.
            if job.reply.is_closed() {
                continue;
            }
            rows += job.rows();
            jobs.push(job);
        }
        jobs
    }

    fn run_jobs(&self, slot: &mut Slot, jobs: Vec<Job>) {
        let started = Instant::now();
        for job in &jobs {
            let waited = started.saturating_duration_since(job.enqueued);
            self.metrics.queue_time.observe(waited.as_secs_f64());
            self.metrics.stats.queued(waited);
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        self.run_batch(slot, jobs, started);
        // Before the session is released: whoever saw this run and left
        // its request queued is then seen by the release's re-check.
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// `started`: when the batch was taken (its input assembly starts there).
    fn run_batch(&self, slot: &mut Slot, jobs: Vec<Job>, started: Instant) {
        let result = self.execute(slot, &jobs, started);
        match result {
            Ok(outputs) => {
                for (job, out) in jobs.into_iter().zip(outputs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(RunError::Preallocated) => self.run_batch(slot, jobs, Instant::now()),
            Err(RunError::Failed(e)) if jobs.len() == 1 => {
                let _ = jobs.into_iter().next().map(|j| j.reply.send(Err(e)));
            }
            Err(e) => {
                // Run each request alone: a failure is then reported only to
                // the request that causes it.
                if let RunError::Unstackable = e {
                    tracing::warn!(
                        version = %self.label,
                        "outputs of a merged run do not have the batch's rows; \
                         dynamic batching is now off for this version"
                    );
                    self.stack_ok.store(false, Ordering::Relaxed);
                }
                for job in jobs {
                    self.run_batch(slot, vec![job], Instant::now());
                }
            }
        }
    }

    /// Folds a run's time into the per-row average the fast path uses.
    fn record_run(&self, elapsed: Duration, rows: usize) {
        let sample = (elapsed.as_nanos() as u64 / rows.max(1) as u64).max(1);
        let old = self.ns_per_row.load(Ordering::Relaxed);
        let new = if old == u64::MAX {
            sample
        } else {
            (old.saturating_mul(7) + sample) / 8
        };
        self.ns_per_row.store(new, Ordering::Relaxed);
    }

    /// Runs the requests as one batch; one output list per request, in the
    /// order each asked for its outputs.
    ///
    /// Takes the jobs themselves and the time the batch was taken (rather
    /// than a list of the requests and a clock read of its own): one
    /// allocation and one clock read fewer per run (alone, no measurable
    /// effect: within callgrind's run-to-run spread, ~1 %).
    fn execute(
        &self,
        slot: &mut Slot,
        jobs: &[Job],
        assembling: Instant,
    ) -> Result<Vec<Vec<OutputTensor>>, RunError> {
        let requests = || jobs.iter().map(|j| &j.request);
        let merged = jobs.len() > 1;
        let rows: usize = requests().map(|r| r.rows.unwrap_or(1)).sum();

        let Slot {
            session,
            allocator,
            reuse,
        } = slot;
        let n_inputs = self.signature.inputs.len();
        if reuse.inputs.len() != n_inputs {
            reuse.inputs = (0..n_inputs).map(|_| Vec::new()).collect();
        }
        // Where each input's tensor is: `(true, i)` in `reuse.inputs`,
        // `(false, i)` in `fresh`.
        let mut fresh: Vec<DynTensor> = Vec::new();
        let mut chosen: Vec<(bool, usize)> = Vec::with_capacity(n_inputs);
        for (i, spec) in self.signature.inputs.iter().enumerate() {
            let mut shape = jobs[0].request.inputs[i].shape.clone();
            if merged {
                shape[0] = rows;
            }
            let len: usize = requests().map(|r| r.inputs[i].data.len()).sum();
            let cached = &mut reuse.inputs[i];
            let tensor = match cached.iter().position(|(s, _)| *s == shape) {
                Some(at) => {
                    chosen.push((true, at));
                    &mut cached[at].1
                }
                None => {
                    let tensor = DynTensor::new(allocator, spec.datatype.to_ort(), shape.clone())?;
                    if reuse.bytes + len <= REUSE_BYTES {
                        reuse.bytes += len;
                        cached.push((shape, tensor));
                        chosen.push((true, cached.len() - 1));
                        &mut cached.last_mut().expect("just pushed").1
                    } else {
                        fresh.push(tensor);
                        chosen.push((false, fresh.len() - 1));
                        fresh.last_mut().expect("just pushed")
                    }
                }
            };
            if len > 0 {
                let dst = tensor.data_ptr_mut().cast::<u8>();
                let mut at = 0;
                for r in requests() {
                    let src = &r.inputs[i].data;
                    // SAFETY: the tensor was allocated in CPU memory for
                    // `shape`, whose byte size is the sum of the parts: each
                    // part was checked against its own shape on arrival, and
                    // merged parts agree beyond the first dimension.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(at), src.len()) };
                    at += src.len();
                }
            }
        }
        let values: Vec<SessionInputValue<'_>> = chosen
            .iter()
            .enumerate()
            .map(|(i, &(kept, at))| {
                if kept {
                    (&reuse.inputs[i][at].1).into()
                } else {
                    (&fresh[at]).into()
                }
            })
            .collect();

        // Preallocated outputs: for runs of batchable requests only (their
        // outputs have the batch's rows along the first dimension).
        let batched = requests().all(|r| r.rows.is_some());
        let preallocated = if batched && !reuse.outputs_off && self.output_rows.is_some() {
            reuse
                .outputs
                .iter()
                .find(|(r, _)| *r == rows)
                .map(|(_, o)| o)
        } else {
            None
        };
        let started = Instant::now();
        // (The run's result is a temporary of the match: it must not outlive
        // it, so that `reuse.outputs` can be added to below.)
        let outputs = match match preallocated {
            Some(options) => {
                session.run_with_options(SessionInputs::from(values.as_slice()), options)
            }
            None => session.run(SessionInputs::from(values.as_slice())),
        } {
            Ok(outputs) => outputs,
            Err(e) if preallocated.is_some() => {
                tracing::debug!(version = %self.label, error = %e, "a run with preallocated outputs failed; retrying without, and not preallocating them again");
                reuse.outputs_off = true;
                return Err(RunError::Preallocated);
            }
            Err(e) => return Err(e.into()),
        };
        // One clock read ends the run and starts the output split.
        let splitting = Instant::now();
        let elapsed = splitting.saturating_duration_since(started);
        self.record_run(elapsed, rows);
        self.metrics.compute_time.observe(elapsed.as_secs_f64());
        self.metrics
            .batch_size
            .observe(if merged { rows } else { 1 } as f64);

        let mut raw = Vec::with_capacity(self.signature.outputs.len());
        for (o, spec) in self.signature.outputs.iter().enumerate() {
            if !requests().any(|r| r.outputs.contains(&o)) {
                raw.push(None);
                continue;
            }
            let failed = |m: String| {
                RunError::Failed(InferError::Runtime(format!("output '{}': {m}", spec.name)))
            };
            let value = outputs
                .get(&*spec.name)
                .ok_or_else(|| failed("missing from ONNX Runtime's results".into()))?;
            let out = raw_output(value).map_err(|e| failed(e.to_string()))?;
            if merged && out.1.first() != Some(&rows) {
                return Err(RunError::Unstackable);
            }
            raw.push(Some(out));
        }

        let mut per_request = Vec::with_capacity(jobs.len());
        let mut row = 0;
        for r in requests() {
            let r_rows = r.rows.unwrap_or(1);
            let mut out = Vec::with_capacity(r.outputs.len());
            for &o in &r.outputs {
                let Some((datatype, shape, bytes)) = &raw[o] else {
                    continue;
                };
                let (shape, data) = if merged {
                    let row_bytes = bytes.len() / rows;
                    let mut shape = shape.clone();
                    shape[0] = r_rows;
                    (
                        shape,
                        bytes[row * row_bytes..(row + r_rows) * row_bytes].to_vec(),
                    )
                } else {
                    (shape.clone(), bytes.to_vec())
                };
                out.push(OutputTensor {
                    name: self.signature.outputs[o].name.clone(),
                    tensor: Tensor {
                        datatype: *datatype,
                        shape,
                        data,
                    },
                });
            }
            row += r_rows;
            per_request.push(out);
        }
        self.metrics.stats.run(
            jobs.len(),
            rows,
            RunTimes {
                input: started.saturating_duration_since(assembling),
                infer: elapsed,
                output: splitting.elapsed(),
            },
        );
        // A plain run of batchable requests whose outputs all came out as
        // `[rows, <declared dimensions>]`: its outputs are preallocated for
        // the next runs of as many rows.
        let learn = preallocated.is_none()
            && batched
            && !reuse.outputs_off
            && !reuse.outputs.iter().any(|(r, _)| *r == rows);
        let learned = match (&self.output_rows, learn) {
            (Some(dims), true) => {
                let fits = self.signature.outputs.iter().zip(dims).all(|(spec, rest)| {
                    outputs
                        .get(&*spec.name)
                        .and_then(|v| raw_output(v).ok())
                        .is_some_and(|(datatype, shape, _)| {
                            datatype == spec.datatype
                                && shape.first() == Some(&rows)
                                && shape[1..] == rest[..]
                        })
                });
                let bytes: usize = self
                    .signature
                    .outputs
                    .iter()
                    .zip(dims)
                    .map(|(spec, rest)| {
                        rows * rest.iter().product::<usize>() * spec.datatype.size()
                    })
                    .sum();
                fits && reuse.bytes + bytes <= REUSE_BYTES
            }
            _ => false,
        };
        drop(outputs);
        if learned {
            if let Some(dims) = &self.output_rows {
                let mut selector = OutputSelector::default();
                let mut bytes = 0;
                for (spec, rest) in self.signature.outputs.iter().zip(dims) {
                    let mut shape = Vec::with_capacity(rest.len() + 1);
                    shape.push(rows);
                    shape.extend_from_slice(rest);
                    bytes += Tensor::element_count(&shape).unwrap_or(0) * spec.datatype.size();
                    let tensor = DynTensor::new(allocator, spec.datatype.to_ort(), shape)?;
                    selector = selector.preallocate(spec.name.to_string(), tensor);
                }
                reuse.bytes += bytes;
                reuse
                    .outputs
                    .push((rows, RunOptions::new()?.with_outputs(selector)));
            }
        }
        Ok(per_request)
    }
}

/// Why an output of a run cannot be returned (said after the output's
/// name: "output 'y' is not in CPU memory").
#[derive(Debug, thiserror::Error)]
enum OutputError {
    #[error("is a {0}, not a tensor")]
    NotATensor(String),
    #[error("has unsupported type {0}")]
    Type(String),
    #[error("has an impossible shape")]
    Shape,
    #[error("{0}")]
    View(String),
    #[error("is not in CPU memory")]
    NotOnCpu,
}

/// The datatype, shape and bytes of a CPU tensor output.
fn raw_output(value: &DynValue) -> Result<(DataType, Vec<usize>, &[u8]), OutputError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(OutputError::NotATensor(value.dtype().to_string()));
    };
    let datatype = DataType::from_ort(*ty).ok_or_else(|| OutputError::Type(ty.to_string()))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let len = Tensor::element_count(&shape).ok_or(OutputError::Shape)? * datatype.size();
    let view = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(|e| OutputError::View(e.to_string()))?;
    if !view.memory_info().is_cpu_accessible() {
        return Err(OutputError::NotOnCpu);
    }
    if len == 0 {
        return Ok((datatype, shape, &[]));
    }
    let ptr = view.data_ptr().cast::<u8>();
    // SAFETY: ONNX Runtime owns `len` initialised bytes of CPU memory for
    // this tensor, alive as long as `value`, which the returned slice borrows.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    Ok((datatype, shape, bytes))
}

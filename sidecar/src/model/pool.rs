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
//! - **Inline** (opt-in, `--inline-max-us`): when the version's runs have
//!   been taking less than the inline budget, nothing is queued, and a
//!   session is idle, the request runs right there on the calling thread.
//!   For a model that runs in microseconds, the two thread hand-offs of the
//!   queued path (wake a worker, wake the request back) cost more than the
//!   run itself: at one client this roughly halves the latency. Under load
//!   it loses, because every request then pays for its own run where the
//!   queue would have merged them, so it is off by default. It is also off
//!   when a queue delay is configured: that asks for batches.
//!
//! A pool stops when its last queue sender is dropped: the workers finish
//! every request already queued, then exit and free their sessions. That is
//! what lets an unload or a reload take a version out of service without
//! failing the requests it already accepted.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::memory::Allocator;
use ort::session::{Session, SessionInputValue, SessionInputs};
use ort::value::{DynTensor, DynTensorValueType, DynValue, ValueType};
use tokio::sync::oneshot;

use super::batching::{BatchConfig, Intake, Job};
use super::error::InferError;
use super::metrics::VersionMetrics;
use super::signature::{Prepared, Signature};
use super::tensor::{OutputTensor, Tensor};
use super::DataType;

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
}

/// What both paths share.
struct Core {
    slots: Vec<Mutex<Slot>>,
    signature: Arc<Signature>,
    metrics: VersionMetrics,
    /// Cleared if a merged run's outputs turn out not to follow the batch
    /// dimension after all; from then on every request runs alone.
    stack_ok: AtomicBool,
    /// Requests in the queue, not yet taken by a worker.
    queued: AtomicUsize,
    /// Moving average of ONNX Runtime time per row, in nanoseconds;
    /// `u64::MAX` until the first run has been timed.
    ns_per_row: AtomicU64,
    /// Where the fast path starts looking for an idle session, so callers
    /// spread over the sessions.
    next_slot: AtomicUsize,
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
                    })
                })
                .collect(),
            signature: spec.signature.clone(),
            metrics: spec.metrics.clone(),
            stack_ok: AtomicBool::new(spec.signature.batchable),
            queued: AtomicUsize::new(0),
            ns_per_row: AtomicU64::new(u64::MAX),
            next_slot: AtomicUsize::new(0),
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

    /// Runs a request on the calling thread if it qualifies for the fast
    /// path (see the module docs); otherwise hands it back.
    pub(crate) fn try_inline(&self, request: Prepared) -> Result<Outputs, Prepared> {
        let Some(budget) = self.inline_budget else {
            return Err(request);
        };
        let per_row = self.core.ns_per_row.load(Ordering::Relaxed);
        let rows = request.rows.unwrap_or(1) as u64;
        if per_row == u64::MAX
            || per_row.saturating_mul(rows) > budget.as_nanos() as u64
            || self.core.queued.load(Ordering::Relaxed) > 0
        {
            return Err(request);
        }
        let n = self.core.slots.len();
        let start = self.core.next_slot.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(mut slot) = self.core.slots[(start + i) % n].try_lock() {
                self.core.metrics.queue_time.observe(0.0);
                return Ok(match self.core.execute(&mut slot, &[&request]) {
                    Ok(mut out) => Ok(out.pop().unwrap_or_default()),
                    Err(RunError::Failed(e)) => Err(e),
                    Err(RunError::Unstackable) => {
                        unreachable!("a single request is never merged")
                    }
                });
            }
        }
        Err(request)
    }

    /// Queues a request; the receiver yields its outputs.
    pub(crate) fn submit(
        &self,
        request: Prepared,
    ) -> Result<oneshot::Receiver<Outputs>, InferError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            enqueued: Instant::now(),
            reply,
        };
        self.core.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.core.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => InferError::QueueFull {
                        model: self.model.to_string(),
                        version: self.version,
                        capacity: self.capacity,
                    },
                    TrySendError::Disconnected(_) => InferError::Stopped {
                        model: self.model.to_string(),
                        version: self.version,
                    },
                })
            }
        }
    }
}

/// Why a run produced no outputs.
enum RunError {
    /// A merged run's outputs do not have the batch's rows along the first
    /// dimension, so they cannot be split back into requests.
    Unstackable,
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
            let stack = batching.max_batch_size > 1 && self.stack_ok.load(Ordering::Relaxed);
            let jobs = {
                let mut intake = intake.lock().unwrap_or_else(|p| p.into_inner());
                match intake.next_batch(batching, stack) {
                    Some(jobs) => jobs,
                    None => break,
                }
            };
            self.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
            let started = Instant::now();
            for job in &jobs {
                self.metrics.queue_time.observe(
                    started
                        .saturating_duration_since(job.enqueued)
                        .as_secs_f64(),
                );
            }
            let mut slot = self.slots[index].lock().unwrap_or_else(|p| p.into_inner());
            self.run_batch(&mut slot, jobs);
        }
        tracing::debug!(version = %self.label, "session worker stopped");
    }

    fn run_batch(&self, slot: &mut Slot, jobs: Vec<Job>) {
        let requests: Vec<&Prepared> = jobs.iter().map(|j| &j.request).collect();
        let result = self.execute(slot, &requests);
        drop(requests);
        match result {
            Ok(outputs) => {
                for (job, out) in jobs.into_iter().zip(outputs) {
                    let _ = job.reply.send(Ok(out));
                }
            }
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
                    self.run_batch(slot, vec![job]);
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
    fn execute(
        &self,
        slot: &mut Slot,
        requests: &[&Prepared],
    ) -> Result<Vec<Vec<OutputTensor>>, RunError> {
        let merged = requests.len() > 1;
        let rows: usize = requests.iter().map(|r| r.rows.unwrap_or(1)).sum();

        let mut values: Vec<SessionInputValue<'static>> =
            Vec::with_capacity(self.signature.inputs.len());
        for (i, spec) in self.signature.inputs.iter().enumerate() {
            let mut shape = requests[0].inputs[i].shape.clone();
            if merged {
                shape[0] = rows;
            }
            let mut tensor = DynTensor::new(&slot.allocator, spec.datatype.to_ort(), shape)?;
            let len: usize = requests.iter().map(|r| r.inputs[i].data.len()).sum();
            if len > 0 {
                let dst = tensor.data_ptr_mut().cast::<u8>();
                let mut at = 0;
                for r in requests {
                    let src = &r.inputs[i].data;
                    // SAFETY: the tensor was allocated in CPU memory for
                    // `shape`, whose byte size is the sum of the parts: each
                    // part was checked against its own shape on arrival, and
                    // merged parts agree beyond the first dimension.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.add(at), src.len()) };
                    at += src.len();
                }
            }
            values.push(tensor.into());
        }

        let started = Instant::now();
        let outputs = slot.session.run(SessionInputs::from(values.as_slice()))?;
        let elapsed = started.elapsed();
        self.record_run(elapsed, rows);
        self.metrics.compute_time.observe(elapsed.as_secs_f64());
        self.metrics
            .batch_size
            .observe(if merged { rows } else { 1 } as f64);

        let mut raw = Vec::with_capacity(self.signature.outputs.len());
        for (o, spec) in self.signature.outputs.iter().enumerate() {
            if !requests.iter().any(|r| r.outputs.contains(&o)) {
                raw.push(None);
                continue;
            }
            let failed = |m: String| {
                RunError::Failed(InferError::Runtime(format!("output '{}': {m}", spec.name)))
            };
            let value = outputs
                .get(&*spec.name)
                .ok_or_else(|| failed("missing from ONNX Runtime's results".into()))?;
            let out = raw_output(value).map_err(failed)?;
            if merged && out.1.first() != Some(&rows) {
                return Err(RunError::Unstackable);
            }
            raw.push(Some(out));
        }

        let mut per_request = Vec::with_capacity(requests.len());
        let mut row = 0;
        for r in requests {
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
        Ok(per_request)
    }
}

/// The datatype, shape and bytes of a CPU tensor output.
fn raw_output(value: &DynValue) -> Result<(DataType, Vec<usize>, &[u8]), String> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(format!("is a {}, not a tensor", value.dtype()));
    };
    let datatype = DataType::from_ort(*ty).ok_or_else(|| format!("has unsupported type {ty}"))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let len = Tensor::element_count(&shape).ok_or("has an impossible shape")? * datatype.size();
    let view = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(|e| e.to_string())?;
    if !view.memory_info().is_cpu_accessible() {
        return Err("is not in CPU memory".into());
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

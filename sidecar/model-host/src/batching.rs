//! Dynamic batching: forming one ONNX Runtime run out of queued requests.
//!
//! The queue of a version is shared by its pool of sessions. A session that
//! is free takes the intake (a mutex), waits for a first request, then keeps
//! taking requests that can be stacked with it until the batch is full, the
//! queue is empty and the first request has waited `max_queue_delay`, or the
//! next request does not fit (it is held back and opens the next batch, so
//! the queue stays in order). Only then does it let go of the intake and run.
//! So while one session runs a batch, the next free session is already
//! gathering the following one, and under load the batches grow by
//! themselves: with `max_queue_delay` = 0 nothing waits that would not have
//! waited anyway.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::InferError;
use super::signature::Prepared;
use super::tensor::OutputTensor;

/// How requests are merged, per model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows (along the batch dimension) in one run; 1 turns batching off.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for others to join it
    /// when the queue runs dry. Zero merges only what is already queued.
    pub max_queue_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::ZERO,
        }
    }
}

pub(crate) type Reply = oneshot::Sender<Result<Vec<OutputTensor>, InferError>>;

/// A queued request.
pub(crate) struct Job {
    pub(crate) request: Prepared,
    pub(crate) enqueued: Instant,
    pub(crate) reply: Reply,
}

impl Job {
    pub(crate) fn rows(&self) -> usize {
        self.request.rows.unwrap_or(1)
    }
}

/// The receiving end of a version's queue, shared by its sessions.
pub(crate) struct Intake {
    rx: Receiver<Job>,
    /// A request taken from the queue that did not fit the last batch.
    held: Option<Job>,
}

impl Intake {
    pub(crate) fn new(rx: Receiver<Job>) -> Intake {
        Intake { rx, held: None }
    }

    /// Blocks until a batch is ready; `None` once the queue is closed and
    /// drained (the version was unloaded and every request has been served).
    ///
    /// `batching` is off for models without a batch dimension.
    pub(crate) fn next_batch(&mut self, config: &BatchConfig, batching: bool) -> Option<Vec<Job>> {
        let first = loop {
            let job = match self.held.take() {
                Some(job) => job,
                None => self.rx.recv().ok()?,
            };
            // A client that hung up no longer needs its run.
            if !job.reply.is_closed() {
                break job;
            }
        };
        let mut rows = first.rows();
        let mut jobs = vec![first];
        if !batching || jobs[0].request.rows.is_none() {
            return Some(jobs);
        }
        let deadline = jobs[0].enqueued + config.max_queue_delay;
        while rows < config.max_batch_size {
            let next = match self.rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match self.rx.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if next.reply.is_closed() {
                continue;
            }
            if !jobs[0].request.stacks_with(&next.request)
                || rows + next.rows() > config.max_batch_size
            {
                self.held = Some(next);
                break;
            }
            rows += next.rows();
            jobs.push(next);
        }
        Some(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use crate::DataType;
    use std::sync::mpsc::sync_channel;

    fn job(
        rows: usize,
        width: usize,
    ) -> (
        Job,
        oneshot::Receiver<Result<Vec<OutputTensor>, InferError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let tensor = Tensor {
            datatype: DataType::Fp32,
            shape: vec![rows, width],
            data: vec![0; rows * width * 4],
        };
        let job = Job {
            request: Prepared {
                inputs: vec![tensor],
                outputs: vec![0],
                rows: Some(rows),
            },
            enqueued: Instant::now(),
            reply: tx,
        };
        (job, rx)
    }

    #[test]
    fn merges_what_is_queued_up_to_the_limit_and_keeps_order() {
        let (tx, rx) = sync_channel(16);
        let mut intake = Intake::new(rx);
        let mut keep = Vec::new();
        for rows in [1, 2, 1, 3] {
            let (j, r) = job(rows, 4);
            keep.push(r);
            tx.send(j).unwrap();
        }
        let config = BatchConfig {
            max_batch_size: 4,
            max_queue_delay: Duration::ZERO,
        };
        let b = intake.next_batch(&config, true).unwrap();
        assert_eq!(b.iter().map(Job::rows).collect::<Vec<_>>(), vec![1, 2, 1]);
        let b = intake.next_batch(&config, true).unwrap();
        assert_eq!(b.iter().map(Job::rows).collect::<Vec<_>>(), vec![3]);
        drop(tx);
        assert!(intake.next_batch(&config, true).is_none());
    }

    #[test]
    fn a_request_that_does_not_stack_opens_the_next_batch() {
        let (tx, rx) = sync_channel(16);
        let mut intake = Intake::new(rx);
        let (a, _ra) = job(1, 4);
        let (b, _rb) = job(1, 5);
        let (c, _rc) = job(1, 5);
        for j in [a, b, c] {
            tx.send(j).unwrap();
        }
        let config = BatchConfig::default();
        assert_eq!(intake.next_batch(&config, true).unwrap().len(), 1);
        assert_eq!(intake.next_batch(&config, true).unwrap().len(), 2);
    }

    #[test]
    fn waits_up_to_the_queue_delay_for_company() {
        let (tx, rx) = sync_channel(16);
        let mut intake = Intake::new(rx);
        let (a, _ra) = job(1, 4);
        tx.send(a).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let (b, rb) = job(1, 4);
            tx.send(b).unwrap();
            rb
        });
        let config = BatchConfig {
            max_batch_size: 2,
            max_queue_delay: Duration::from_secs(5),
        };
        let started = Instant::now();
        let b = intake.next_batch(&config, true).unwrap();
        assert_eq!(b.len(), 2);
        // Full at two rows: it does not sit out the rest of the delay.
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(late.join().unwrap());
    }

    #[test]
    fn skips_requests_whose_client_is_gone() {
        let (tx, rx) = sync_channel(16);
        let mut intake = Intake::new(rx);
        let (a, ra) = job(1, 4);
        let (b, _rb) = job(2, 4);
        tx.send(a).unwrap();
        tx.send(b).unwrap();
        drop(ra);
        let batch = intake.next_batch(&BatchConfig::default(), true).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].rows(), 2);
    }
}

//! The ceiling for the model host: ONNX Runtime called in-process, in a
//! loop, with nothing around it.
//!
//! Each of `--clients` threads owns a session (created exactly as `abmesh
//! serve` creates its sessions, through `abmesh_model_host::Runtime`)
//! and an input tensor built once, and calls `run` back to back for
//! `--seconds`, copying the first output out as a caller would. Prints one
//! JSON line per client count:
//!
//! ```text
//! {"system":"raw_ort","clients":64,"batch":1,"requests":...,"seconds":...,
//!  "throughput":...,"p50_us":...,"p99_us":...}
//! ```
//!
//! Usage (from the repository root, after
//! `cargo build --release -p abmesh-model-host --example raw_ort`):
//!
//! ```text
//! target/release/examples/raw_ort --model examples/models/repo/scorer/1/model.onnx \
//!     --clients 1,16,64 --seconds 8 [--batch 1] [--intra-op-threads 1]
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use abmesh_model_host::dylib;
use abmesh_model_host::signature::Signature;
use abmesh_model_host::{DataType, DeviceRequest, Runtime, SessionOptions};
use ort::memory::Allocator;
use ort::session::SessionInputValue;
use ort::value::DynTensor;

struct Options {
    model: PathBuf,
    clients: Vec<usize>,
    seconds: f64,
    batch: usize,
    intra_op_threads: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::from("examples/models/repo/scorer/1/model.onnx"),
        clients: vec![1, 16, 64],
        seconds: 8.0,
        batch: 1,
        intra_op_threads: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => o.model = PathBuf::from(value()?),
            "--clients" => {
                o.clients = value()?
                    .split(',')
                    .map(|c| c.parse().map_err(|_| format!("bad client count {c:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => o.seconds = value()?.parse().map_err(|_| "bad --seconds")?,
            "--batch" => o.batch = value()?.parse().map_err(|_| "bad --batch")?,
            "--intra-op-threads" => {
                o.intra_op_threads = value()?.parse().map_err(|_| "bad --intra-op-threads")?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("raw_ort: {e}");
            std::process::exit(2);
        }
    };
    let explicit = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let library = dylib::locate(explicit.as_deref()).unwrap_or_else(|e| {
        eprintln!("raw_ort: {e}");
        std::process::exit(1)
    });
    let runtime =
        Arc::new(Runtime::init(library, DeviceRequest::Cpu).expect("starting ONNX Runtime"));
    let options = SessionOptions {
        intra_op_threads: o.intra_op_threads,
    };
    let probe = runtime
        .session(&o.model, &options)
        .expect("loading the model");
    let signature = Signature::from_session(&probe).expect("a servable model");
    drop(probe);

    for &clients in &o.clients {
        let barrier = Arc::new(Barrier::new(clients + 1));
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let runtime = runtime.clone();
                let signature = signature.clone();
                let model = o.model.clone();
                let barrier = barrier.clone();
                let (batch, seconds) = (o.batch, o.seconds);
                std::thread::spawn(move || {
                    let mut session = runtime.session(&model, &options).expect("session");
                    let allocator = Allocator::default();
                    // Inputs built once: batch rows, other dimensions as the
                    // graph fixes them (1 where dynamic), values 0.5.
                    let mut inputs: Vec<SessionInputValue<'static>> = Vec::new();
                    for spec in &signature.inputs {
                        let shape: Vec<usize> = spec
                            .shape
                            .iter()
                            .enumerate()
                            .map(|(i, &d)| {
                                if i == 0 && d < 0 {
                                    batch
                                } else {
                                    d.max(1) as usize
                                }
                            })
                            .collect();
                        let mut t =
                            DynTensor::new(&allocator, spec.datatype.to_ort(), shape.clone())
                                .expect("input tensor");
                        if spec.datatype == DataType::Fp32 {
                            let n: usize = shape.iter().product();
                            let p = t.data_ptr_mut().cast::<f32>();
                            // SAFETY: a CPU FP32 tensor of n elements.
                            unsafe { std::slice::from_raw_parts_mut(p, n) }.fill(0.5);
                        }
                        inputs.push(t.into());
                    }
                    let first_output = signature.outputs[0].name.to_string();
                    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
                    let mut sink = 0u64;
                    barrier.wait();
                    let end = Instant::now() + Duration::from_secs_f64(seconds);
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let outputs = session.run(inputs.as_slice()).expect("run");
                        let (_, data) = outputs[first_output.as_str()]
                            .try_extract_tensor::<f32>()
                            .expect("FP32 output");
                        let copy = data.to_vec();
                        sink = sink.wrapping_add(copy.len() as u64);
                        drop(outputs);
                        latencies.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                    }
                    std::hint::black_box(sink);
                    latencies
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut all: Vec<u32> = Vec::new();
        for h in handles {
            all.extend(h.join().expect("client thread"));
        }
        let elapsed = started.elapsed().as_secs_f64().max(o.seconds);
        all.sort_unstable();
        let requests = all.len();
        println!(
            "{{\"system\":\"raw_ort\",\"clients\":{clients},\"batch\":{},\"requests\":{requests},\"errors\":0,\
             \"seconds\":{elapsed:.3},\"throughput\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
            o.batch,
            requests as f64 / elapsed,
            percentile(&all, 50.0),
            percentile(&all, 99.0)
        );
    }
}

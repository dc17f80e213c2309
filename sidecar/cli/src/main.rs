//! `abmesh`: the sidecar service and its command-line tools.
//!
//! The binary crate: flags (clap), the allocator, and the one builder that
//! wires the service ([`service`]); everything it runs lives in the
//! library crates below it (abmesh-server, -eval, -store, -model-host,
//! -stats).
//!
//! - [`assign`], [`stats`], [`report`]: the offline tools.
//! - [`serve`]: `abmesh serve`'s flags, validated into a `ServeConfig`;
//!   [`limits`] and [`evaluation`]: the flags of its slow-client limits and
//!   of its outcome log; [`size`], [`error`]: what those share.
//! - [`service`]: `ServeConfig::build()` → a `Service` that owns the
//!   listeners, the model host and the log, and runs until shutdown.
//! - [`http`]: the GET of `abmesh report --url`.

mod assign;
mod error;
mod evaluation;
mod http;
mod limits;
mod log;
mod report;
mod serve;
mod service;
mod size;
mod stats;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// See sidecar/cli/Cargo.toml: faster than glibc's malloc on the serving
// path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// abmesh: A/B tests of model versions inside a service mesh.
#[derive(Parser)]
#[command(name = "abmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the variant of each user id read from stdin (one per line), for
    /// every experiment of a plugin configuration, exactly as the Envoy
    /// filter assigns it.
    Assign(assign::Args),
    /// Run the sidecar service: host the ONNX model versions of a model
    /// repository behind the KServe v2 REST protocol and keep the outcome
    /// log, with Prometheus /metrics on the data plane and the admin
    /// endpoints on their own listener.
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<serve::Args>),
    /// Evaluate statistical cases (the format of sidecar/stats/README.md in
    /// the abmesh repository) and print their results as JSON.
    Stats(stats::Args),
    /// Print an experiment's report (decision, tests, intervals), from a
    /// running sidecar or, offline, from data directories or exported
    /// states (merged).
    Report(report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Assign(args) => assign::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Stats(args) => stats::run(args),
        Command::Report(args) => report::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

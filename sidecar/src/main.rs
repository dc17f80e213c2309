//! `abmesh`: the sidecar service and its command-line tools.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use abmesh_sidecar::cli;

// See sidecar/Cargo.toml: faster than glibc's malloc on the serving path.
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
    Assign(cli::assign::Args),
    /// Run the sidecar service: host the ONNX model versions of a model
    /// repository behind the KServe v2 REST protocol and keep the outcome
    /// log, with Prometheus /metrics on the data plane and the admin
    /// endpoints on their own listener.
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<cli::serve::Args>),
    /// Evaluate statistical cases (format of shared/stats/README.md) and
    /// print their results as JSON.
    Stats(cli::stats::Args),
    /// Print an experiment's report (decision, tests, intervals), from a
    /// running sidecar or, offline, from data directories or exported
    /// states (merged).
    Report(cli::report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Assign(args) => cli::assign::run(args),
        Command::Serve(args) => cli::serve::run(*args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Report(args) => cli::report::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

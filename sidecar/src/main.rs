//! `abmesh`: the sidecar service and its command-line tools.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use abmesh_sidecar::cli;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Assign(args) => cli::assign::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("abmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

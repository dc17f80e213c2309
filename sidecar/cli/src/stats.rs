//! `abmesh stats FILE`: evaluates statistical cases (DESIGN.md, contract 3).
//!
//! FILE has the shape documented in `sidecar/stats/README.md`
//! (`{"cases": [{"id", "kind", "input", "expected"?}]}`, `-` for stdin).
//! Prints one JSON document `{"results": [{"id", "output"} | {"id",
//! "error"}]}` in case order; `expected` is ignored. A case that cannot be
//! evaluated gets an error entry and the others still run; the command then
//! warns on stderr with the count but exits 0. It fails only when FILE
//! cannot be read or is not a case file.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::PathBuf;

use abmesh_stats::cases::evaluate_file;

#[derive(clap::Args)]
pub struct Args {
    /// Case file (JSON; the format is in sidecar/stats/README.md of the
    /// abmesh repository); `-` reads stdin.
    file: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let name = args.file.display().to_string();
    let bytes = if name == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else {
        std::fs::read(&args.file).with_context(|| format!("reading {name}"))?
    };
    let report = evaluate_file(&bytes).with_context(|| format!("in {name}"))?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    out.write_all(b"\n")?;
    out.flush()?;
    let errors = report.error_count();
    if errors > 0 {
        eprintln!(
            "abmesh stats: warning: {errors} of {} cases could not be evaluated (see their \"error\")",
            report.results.len()
        );
    }
    Ok(())
}

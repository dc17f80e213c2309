//! `abmesh assign --config FILE`: assignments outside Envoy (DESIGN.md,
//! contract 2).
//!
//! Reads user ids from stdin, one per line (the line ending, `\n` or `\r\n`,
//! is not part of the id; other bytes are taken as they are, UTF-8 or not),
//! and writes one JSON object per line per (user, experiment):
//! `{"user": "...", "experiment": "...", "variant": "..." | null}`.
//!
//! The config file is the same JSON the filter takes. Match conditions and
//! the force header do not apply: they depend on the request, not on the
//! user.

use abmesh_filter::Plan;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plugin configuration (JSON).
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Serialize)]
struct Line<'a> {
    user: &'a str,
    experiment: &'a str,
    variant: Option<&'a str>,
}

pub fn run(args: Args) -> Result<()> {
    let bytes = std::fs::read(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let plan = Plan::from_json(&bytes).with_context(|| format!("in {}", args.config.display()))?;
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    assign_stream(&plan, stdin, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Assigns every line of `input`, writing NDJSON to `out`.
pub fn assign_stream(plan: &Plan, mut input: impl BufRead, out: &mut impl Write) -> Result<()> {
    let mut decisions = plan.decisions();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let mut id = &line[..];
        if let Some(rest) = id.strip_suffix(b"\n") {
            id = rest;
        }
        if let Some(rest) = id.strip_suffix(b"\r") {
            id = rest;
        }
        plan.assign_user(id, &mut decisions);
        // JSON strings are Unicode: bytes that are not UTF-8 print as U+FFFD.
        let user = String::from_utf8_lossy(id);
        for (e, a) in plan.experiments().iter().zip(decisions.assignments()) {
            let line = Line {
                user: &user,
                experiment: e.name(),
                variant: a.variant().map(|v| e.variants()[v].name()),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

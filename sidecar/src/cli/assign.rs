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
//!
//! JSON strings are Unicode, so an id that is not UTF-8 cannot be printed
//! as it is: `user` then shows it with U+FFFD in place of the bad bytes
//! (for people), and an extra field `user_b64` carries the exact bytes in
//! standard base64 (for programs; two different ids always differ there).
//! UTF-8 ids have no `user_b64`.

use abmesh_filter::Plan;
use base64::Engine as _;
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
    /// The id's bytes in base64, when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_b64: Option<&'a str>,
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
        // JSON strings are Unicode: bytes that are not UTF-8 print as
        // U+FFFD, and exactly in `user_b64`.
        let user = String::from_utf8_lossy(id);
        let b64 = std::str::from_utf8(id)
            .is_err()
            .then(|| base64::engine::general_purpose::STANDARD.encode(id));
        for (e, a) in plan.experiments().iter().zip(decisions.assignments()) {
            let line = Line {
                user: &user,
                user_b64: b64.as_deref(),
                experiment: e.name(),
                variant: a.variant().map(|v| e.variants()[v].name()),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(input: &[u8]) -> Vec<serde_json::Value> {
        let plan = Plan::from_json(
            br#"{"experiments": [{"name": "e", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        assign_stream(&plan, input, &mut out).unwrap();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn ids_that_are_not_utf8_print_losslessly_in_user_b64() {
        // Two ids that differ only in bytes that are not UTF-8 print the
        // same `user`, and differ in `user_b64`, which decodes to the id.
        let lines = run_on(b"u-\xff\n u-\xfe\nplain\n");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["user"], lines[1]["user"].as_str().unwrap().trim_start());
        let decode = |v: &serde_json::Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v["user_b64"].as_str().expect("user_b64"))
                .unwrap()
        };
        assert_eq!(decode(&lines[0]), b"u-\xff");
        assert_eq!(decode(&lines[1]), b" u-\xfe");
        assert_eq!(lines[2]["user"], "plain");
        assert!(lines[2].get("user_b64").is_none(), "UTF-8 ids have no user_b64");
    }
}

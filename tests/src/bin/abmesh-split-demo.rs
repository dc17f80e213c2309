//! The end-to-end demo: Envoy with the abmesh filter (envoy/demo.yaml) in
//! front of two local upstreams; a crowd of users goes through it and the
//! demo prints the split it observed.
//!
//! `cargo run -p abmesh-e2e --bin abmesh-demo -- [--users N] [--keep-running]`
//! (scripts/demo.sh builds the filter first).

use abmesh_e2e::envoy::{read_repo_file, render, Envoy};
use abmesh_e2e::{upstream, wasm_path};
use abmesh_testkit::http::AsyncClient as Client;
use std::collections::BTreeMap;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let users: usize = args
        .iter()
        .position(|a| a == "--users")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--users takes a number"))
        .unwrap_or(5000);
    let keep_running = args.iter().any(|a| a == "--keep-running");

    // The demo config as it is, with the module path made absolute.
    let yaml = render(&read_repo_file("envoy/demo.yaml"), &[], &wasm_path());
    upstream::start_on("v1", 18081).await;
    upstream::start_on("v2", 18082).await;
    let envoy = Envoy::start(&yaml, 9901).await;
    println!("Envoy 1.40 with the abmesh filter is listening on 127.0.0.1:10000");
    println!("  upstreams: ranker_v1 on :18081, ranker_v2 on :18082");

    // 4 clients, each with its own keep-alive connection.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(10000);
            let mut seen: Vec<(String, String, bool)> = Vec::new();
            for u in (worker..users).step_by(4) {
                let id = format!("user-{u}");
                let a = client
                    .get("/predict", &[("x-user-id", id.as_bytes())])
                    .await
                    .json();
                // Each user comes back: are they served the same way?
                let b = client
                    .get("/predict", &[("x-user-id", id.as_bytes())])
                    .await
                    .json();
                let variant = a["headers"]["x-abmesh-ranker"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string();
                let upstream = a["upstream"].as_str().unwrap_or("?").to_string();
                seen.push((variant, upstream, a["upstream"] == b["upstream"]));
            }
            seen
        }));
    }
    let mut table: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut sticky = 0;
    for t in tasks {
        for (variant, upstream, same) in t.await.expect("client task") {
            *table.entry((variant, upstream)).or_default() += 1;
            sticky += usize::from(same);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "\n{users} users, 2 requests each, in {:.2} s\n",
        elapsed.as_secs_f64()
    );
    println!(
        "  {:<10} {:<9} {:>7} {:>7}",
        "variant", "upstream", "users", "share"
    );
    for ((variant, upstream), n) in &table {
        println!(
            "  {variant:<10} {upstream:<9} {n:>7} {:>6.2}%",
            100.0 * *n as f64 / users as f64
        );
    }
    println!("\n  sticky (second request on the same upstream): {sticky}/{users}");
    let misrouted: usize = table
        .iter()
        .filter(|((v, u), _)| {
            !matches!(
                (v.as_str(), u.as_str()),
                ("control", "v1") | ("treatment", "v2")
            )
        })
        .map(|(_, n)| n)
        .sum();
    println!("  misrouted (variant not on its upstream):      {misrouted}");

    if keep_running {
        println!("\nTry: curl -si localhost:10000/predict -H 'x-user-id: alice'  (Ctrl-C to stop)");
        tokio::signal::ctrl_c().await.ok();
    }
    drop(envoy);
    if misrouted > 0 || sticky != users {
        std::process::exit(1);
    }
}

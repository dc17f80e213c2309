//! The closed loop as `envoy/closed-loop.yaml` wires it: a real Envoy whose
//! abmesh filter is delivered through ECDS from a file, in front of a real
//! `abmesh serve` that hosts the example models and keeps the outcome log.
//! Shared by the closed-loop tests and the demo.
//!
//! With [`Options::replicas`] above 1 the loop runs several sidecars that
//! share one log on a real three-node NATS JetStream cluster
//! (`abmesh serve --log nats://...`), and Envoy balances both the model
//! traffic and the filter's batches over them round-robin.

use crate::envoy::{plugin_json, read_repo_file, render, scratch_dir, with_plugin_json, Envoy};
use crate::nats::NatsCluster;
use crate::sidecar::Sidecar;
use abmesh_testkit::http::{AsyncClient as Client, Response as Reply};
use std::path::{Path, PathBuf};

/// The ports the loop listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub proxy: u16,
    /// Envoy's admin interface.
    pub admin: u16,
    /// The sidecar's data plane (models, /v1/*), the port Envoy calls.
    pub sidecar: u16,
    /// The sidecar's admin listener (/admin/*), which Envoy never calls.
    pub sidecar_admin: u16,
}

impl Ports {
    /// The ports `envoy/closed-loop.yaml` names (10000, 9901, 8000), and
    /// the sidecar's default admin port (8001).
    pub const DEMO: Ports = Ports {
        proxy: 10000,
        admin: 9901,
        sidecar: 8000,
        sidecar_admin: 8001,
    };

    /// Free ports, for tests running side by side.
    pub fn free() -> Ports {
        Ports {
            proxy: abmesh_testkit::free_port(),
            admin: abmesh_testkit::free_port(),
            sidecar: abmesh_testkit::free_port(),
            sidecar_admin: abmesh_testkit::free_port(),
        }
    }
}

/// What to start.
pub struct Options {
    pub ports: Ports,
    /// The sidecar's outcome log; a scratch directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Rewrites the plugin JSON of envoy/closed-loop-filter.yaml before the
    /// start (e.g. a shorter flush interval for tests).
    pub plugin: Option<serde_json::Value>,
    /// More `abmesh serve` arguments (e.g. `--webhook URL`).
    pub sidecar_args: Vec<String>,
    /// Sidecar replicas: 1 is one sidecar with its file log; more share a
    /// JetStream stream (R3) on a three-node NATS cluster. Replica 0 uses
    /// [`Ports::sidecar`] and [`Ports::sidecar_admin`], the others free
    /// ports.
    pub replicas: usize,
}

impl Options {
    /// One sidecar on `ports`, the committed plugin, no extra arguments.
    pub fn new(ports: Ports) -> Options {
        Options {
            ports,
            data_dir: None,
            plugin: None,
            sidecar_args: Vec::new(),
            replicas: 1,
        }
    }
}

/// One sidecar replica of the loop.
pub struct Replica {
    pub sidecar: Option<Sidecar>,
    /// Data plane, admin.
    pub ports: (u16, u16),
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A running loop; every process is killed on drop.
pub struct ClosedLoop {
    pub envoy: Envoy,
    /// The sidecars; [`ClosedLoop::sidecar`] is replica 0.
    pub replicas: Vec<Replica>,
    pub ports: Ports,
    pub data_dir: PathBuf,
    ecds: Ecds,
    sidecar_args: Vec<String>,
    pub sidecar_log: PathBuf,
    /// The NATS cluster of a replicated loop.
    pub nats: Option<NatsCluster>,
}

/// The filter's ECDS resource file, which Envoy watches.
struct Ecds {
    dir: PathBuf,
    template: String,
    version: u32,
}

impl Ecds {
    /// Writes a new version the way an operator (or a control plane)
    /// would: a new file renamed over the old one, which Envoy's watch
    /// picks up.
    fn write(&mut self, plugin: &serde_json::Value) {
        self.version += 1;
        let json = serde_json::to_string_pretty(plugin).expect("plugin JSON");
        let yaml = with_plugin_json(&self.template, &json).replace(
            "version_info: \"1\"",
            &format!("version_info: \"{}\"", self.version),
        );
        let tmp = self.dir.join(format!(".{ECDS_FILE}.{}", self.version));
        std::fs::write(&tmp, yaml).expect("write ECDS file");
        std::fs::rename(&tmp, self.path()).expect("rename ECDS file");
    }

    fn path(&self) -> PathBuf {
        self.dir.join(ECDS_FILE)
    }
}

/// The plugin JSON of `envoy/closed-loop-filter.yaml` as committed.
pub fn demo_plugin() -> serde_json::Value {
    let yaml = read_repo_file("envoy/closed-loop-filter.yaml");
    serde_json::from_str(&plugin_json(&yaml)).expect("the demo plugin config is JSON")
}

const ECDS_FILE: &str = "abmesh-filter.yaml";

impl ClosedLoop {
    pub async fn start(opts: Options) -> ClosedLoop {
        let scratch = scratch_dir();
        let data_dir = opts.data_dir.unwrap_or_else(|| scratch.join("data"));
        let mut ecds = Ecds {
            dir: scratch.join("ecds"),
            template: render(
                &read_repo_file("envoy/closed-loop-filter.yaml"),
                &[],
                &crate::wasm_path(),
            ),
            version: 0,
        };
        std::fs::create_dir_all(&ecds.dir).expect("create ECDS dir");
        ecds.write(&opts.plugin.unwrap_or_else(demo_plugin));
        let sidecar_log = scratch.join("sidecar.log");
        let mut sidecar_args = opts.sidecar_args;
        let nats = if opts.replicas > 1 {
            let nats = NatsCluster::start(&scratch.join("nats"), 3).await;
            sidecar_args.extend(["--log".to_owned(), nats.log_url("ABMESH", 3)]);
            Some(nats)
        } else {
            None
        };
        let mut replicas = Vec::new();
        for i in 0..opts.replicas.max(1) {
            let (ports, dir, log) = if i == 0 {
                (
                    (opts.ports.sidecar, opts.ports.sidecar_admin),
                    data_dir.clone(),
                    sidecar_log.clone(),
                )
            } else {
                (
                    (abmesh_testkit::free_port(), abmesh_testkit::free_port()),
                    scratch.join(format!("data-{i}")),
                    scratch.join(format!("sidecar-{i}.log")),
                )
            };
            let sidecar = start_sidecar(ports, &dir, &sidecar_args, &log).await;
            replicas.push(Replica {
                sidecar: Some(sidecar),
                ports,
                data_dir: dir,
                log,
            });
        }

        let mut bootstrap = render(
            &read_repo_file("envoy/closed-loop.yaml"),
            &[
                (10000, opts.ports.proxy),
                (9901, opts.ports.admin),
                (8000, opts.ports.sidecar),
            ],
            &crate::wasm_path(),
        )
        .replace(
            "path: envoy/closed-loop-filter.yaml",
            &format!("path: {}", ecds.path().display()),
        )
        .replace(
            "watched_directory: { path: envoy }",
            &format!("watched_directory: {{ path: {} }}", ecds.dir.display()),
        );
        assert!(bootstrap.contains(&ecds.path().display().to_string()));
        // Every replica an endpoint of the sidecar cluster (round-robin).
        let endpoint = |port: u16| {
            format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}")
        };
        let first = endpoint(opts.ports.sidecar);
        assert!(
            bootstrap.contains(&first),
            "the sidecar endpoint line of closed-loop.yaml changed"
        );
        let all = replicas
            .iter()
            .map(|r| endpoint(r.ports.0))
            .collect::<Vec<_>>()
            .join("\n");
        bootstrap = bootstrap.replace(&first, &all);
        let envoy = Envoy::start(&bootstrap, opts.ports.admin).await;
        ClosedLoop {
            envoy,
            replicas,
            ports: opts.ports,
            data_dir,
            ecds,
            sidecar_args,
            sidecar_log,
            nats,
        }
    }

    /// Replica 0 (the only sidecar of an unreplicated loop).
    pub fn sidecar(&mut self) -> &mut Option<Sidecar> {
        &mut self.replicas[0].sidecar
    }

    /// Starts the sidecar again (after [`Sidecar::kill`]) on the same port
    /// and data directory.
    pub async fn restart_sidecar(&mut self) {
        self.restart_replica(0).await;
    }

    /// Starts replica `i` again on its ports and data directory.
    pub async fn restart_replica(&mut self, i: usize) {
        let r = &self.replicas[i];
        let s = start_sidecar(r.ports, &r.data_dir, &self.sidecar_args, &r.log).await;
        self.replicas[i].sidecar = Some(s);
    }

    /// SIGKILLs replica `i`.
    pub async fn kill_replica(&mut self, i: usize) {
        if let Some(s) = self.replicas[i].sidecar.take() {
            s.kill().await;
        }
    }

    /// The admin listener of replica `i`.
    pub fn replica_admin(&self, i: usize) -> Client {
        Client::new(self.replicas[i].ports.1)
    }

    /// The data plane of replica `i`.
    pub fn replica_client(&self, i: usize) -> Client {
        Client::new(self.replicas[i].ports.0)
    }

    /// Changes the filter's configuration live (ECDS file update).
    pub fn write_plugin(&mut self, plugin: &serde_json::Value) {
        self.ecds.write(plugin);
    }

    pub fn proxy(&self) -> Client {
        Client::new(self.ports.proxy)
    }

    /// The sidecar's data plane (inference, /v1/*).
    pub fn sidecar_client(&self) -> Client {
        Client::new(self.ports.sidecar)
    }

    /// The sidecar's admin listener (/admin/*).
    pub fn sidecar_admin(&self) -> Client {
        Client::new(self.ports.sidecar_admin)
    }

    pub fn sidecar_log(&self) -> String {
        std::fs::read_to_string(&self.sidecar_log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

async fn start_sidecar(
    ports: (u16, u16),
    data_dir: &Path,
    extra: &[String],
    log: &Path,
) -> Sidecar {
    let models = abmesh_testkit::repo_root().join("examples/models/repo");
    let admin = format!("127.0.0.1:{}", ports.1);
    let mut args = vec![
        "--models",
        models.to_str().expect("UTF-8 repo path"),
        "--admin-listen",
        &admin,
    ];
    args.extend(extra.iter().map(String::as_str));
    Sidecar::start_with(ports.0, data_dir, &args, Some(log)).await
}

/// A KServe v2 request for the example scorer: one row of 16 features.
pub fn scorer_request(features: &[f32; 16]) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": features}]
    })
}

/// One inference through the proxy as `user`.
pub struct Served {
    pub status: u16,
    /// The variant the filter put the user in (echo header), if any.
    pub variant: Option<String>,
    /// The model version that answered (from the KServe response).
    pub model_version: Option<String>,
    /// The served label, when the call succeeded.
    pub label: Option<bool>,
}

impl Served {
    pub fn from_reply(r: &Reply, experiment: &str) -> Served {
        let variant = r
            .headers
            .get("x-abmesh-assignment")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',').find_map(|p| {
                    let (e, var) = p.trim().split_once('=')?;
                    (e == experiment).then(|| var.to_string())
                })
            });
        let json: Option<serde_json::Value> = serde_json::from_slice(&r.body).ok();
        let model_version = json
            .as_ref()
            .and_then(|j| j["model_version"].as_str().map(str::to_string));
        let label = json.as_ref().and_then(|j| {
            j["outputs"]
                .as_array()?
                .iter()
                .find(|o| o["name"] == "label")?["data"][0]
                .as_bool()
        });
        Served {
            status: r.status,
            variant,
            model_version,
            label,
        }
    }
}

/// POSTs the scorer request through the proxy as `user`.
pub async fn infer(client: &mut Client, user: &str, features: &[f32; 16]) -> Served {
    let r = client
        .post_json(
            "/v2/models/scorer/infer",
            &[("x-user-id", user.as_bytes())],
            &scorer_request(features),
        )
        .await;
    Served::from_reply(&r, "scorer")
}

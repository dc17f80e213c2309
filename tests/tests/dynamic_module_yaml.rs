//! envoy/dynamic-module.yaml, the documented Envoy config for the native
//! module, runs as written (ports moved, module from the build): users land
//! on their variant's upstream as `abmesh assign` says, with the echo
//! header.

use abmesh_e2e::envoy::{plugin_json, read_repo_file, render, Envoy};
use abmesh_e2e::{kind, upstream};
use abmesh_filter::Plan;
use abmesh_testkit::free_port;
use abmesh_testkit::http::AsyncClient as Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_dynamic_module_config_routes_users() {
    let module = kind::module_path();
    std::env::set_var(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        module.parent().expect("module directory"),
    );
    let (v1, v2) = (upstream::start("v1").await, upstream::start("v2").await);
    let (proxy, admin) = (free_port(), free_port());
    let template = read_repo_file("envoy/dynamic-module.yaml");
    assert!(template.contains(kind::DYNAMIC_TYPE) && template.contains("filter_name: abmesh"));
    // render() leaves a dynamic-module config as it is (whatever ABMESH_FILTER says).
    let yaml = render(
        &template,
        &[(10000, proxy), (9901, admin), (18081, v1), (18082, v2)],
        std::path::Path::new("unused.wasm"),
    );
    assert!(yaml.contains("name: abmesh_filter_dynamic"));
    let envoy = Envoy::start(&yaml, admin).await;
    let plan =
        Plan::from_json(plugin_json(&yaml).as_bytes()).expect("the documented JSON is valid");
    let mut d = plan.decisions();
    let mut client = Client::new(proxy);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200 {
        let user = format!("doc-user-{i}");
        plan.assign_user(user.as_bytes(), &mut d);
        let want = plan.experiments()[0].variants()[d.assignments()[0].variant().unwrap()].name();
        let r = client.get("/", &[("x-user-id", user.as_bytes())]).await;
        assert_eq!(r.status, 200);
        let body = r.json();
        assert_eq!(body["headers"]["x-abmesh-ranker"], want, "{user}");
        assert_eq!(
            body["upstream"],
            if want == "control" { "v1" } else { "v2" },
            "{user}"
        );
        assert_eq!(
            r.headers
                .get("x-abmesh-assignment")
                .and_then(|v| v.to_str().ok()),
            Some(format!("ranker={want}").as_str())
        );
        seen.insert(want.to_string());
    }
    assert_eq!(seen.len(), 2);
    let log = envoy.log();
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched"),
        "{log}"
    );
    assert!(log.contains("native dynamic module"), "{log}");
}

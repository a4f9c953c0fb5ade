//! ARM agents, cross-built by `scripts/cross` and run under qemu-user emulation (Debian's
//! `qemu-aarch64` and `qemu-arm`, with the cross toolchains' sysroots; no binfmt set-up):
//! each joins an x86-64 `skiff server` on loopback with a join token, reports its real
//! architecture and the engine that runs its guests, runs a WASI command pod to
//! Succeeded with its logs readable through the API (and a trapping one to Failed, and
//! stops a spinning one when it is deleted), serves an HTTP App through the
//! gateway, keeps serving it on its own listener when the server is stopped, and serves
//! it again from its local cache when it is restarted with the server still down.
//!
//! The binaries are the plain release build (`scripts/cross --profile release`, which
//! `scripts/test` runs before `cargo test`), found under the target directory's
//! `cross/TRIPLE/release/`. A missing one fails the test: it never skips.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Process, ServerProcess, eventually, workload};
use serde_json::{Value, json};

/// Emulation makes everything 10 to 50 times slower than native: compiling a component
/// takes seconds, not milliseconds.
const WAIT: Duration = Duration::from_secs(180);
const NS: &str = "/api/v1/namespaces/default";

struct Target {
    triple: &'static str,
    qemu: &'static str,
    /// The cross toolchain's sysroot, for the emulated binary's dynamic loader and libc.
    sysroot: &'static str,
    /// `kubernetes.io/arch`, as Kubernetes names it.
    arch: &'static str,
    /// The code generator its guests run on.
    engine: &'static str,
}

const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-gnu",
    qemu: "qemu-aarch64",
    sysroot: "/usr/aarch64-linux-gnu",
    arch: "arm64",
    engine: "cranelift",
};

const ARMV7: Target = Target {
    triple: "armv7-unknown-linux-gnueabihf",
    qemu: "qemu-arm",
    sysroot: "/usr/arm-linux-gnueabihf",
    arch: "arm",
    engine: "pulley",
};

/// The cross-built agent: `<target dir>/cross/TRIPLE/release/skiff`.
fn cross_binary(target: &Target) -> PathBuf {
    // This test runs from <target dir>/debug/deps/.
    let exe = std::env::current_exe().expect("the test's own path");
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from <target dir>/debug/deps");
    let profile = std::env::var("SKIFF_CROSS_PROFILE").unwrap_or_else(|_| "release".into());
    let bin = target_dir
        .join("cross")
        .join(target.triple)
        .join(&profile)
        .join("skiff");
    assert!(
        bin.exists(),
        "{} is missing: build it with `scripts/cross --profile {profile}` (scripts/test does)",
        bin.display()
    );
    let qemu = Command::new(target.qemu).arg("--version").output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "{} is missing: install Debian's qemu-user (scripts/cross does)",
        target.qemu
    );
    bin
}

/// Starts the emulated agent; returns it with its listener's port.
fn start_agent(
    target: &Target,
    bin: &std::path::Path,
    server: &str,
    name: &str,
    data: &std::path::Path,
    token: Option<&str>,
) -> (Process, u16) {
    let mut command = Command::new(target.qemu);
    command
        .args(["-L", target.sysroot])
        .arg(bin)
        .args(["agent", "--server", server, "--name", name])
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--lease-interval", "1s"])
        // Its log says which engine and allocator it chose: kept in the test's output.
        .env("RUST_LOG", "warn,skiff_runtime::agent=info")
        .stderr(std::process::Stdio::inherit());
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let (agent, rest) = Process::start_command(command, "agent:", WAIT);
    let port = rest.rsplit(':').next().unwrap().parse().unwrap();
    (agent, port)
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// GET `url` with extra headers: (status, body); (0, error) when nothing answered.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

async fn emulated_agent_runs_pods_and_apps_and_rides_out_the_server(target: Target) {
    let bin = cross_binary(&target);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &dir.path().join("server"),
        &["--gateway", "127.0.0.1:0", "--node-monitor-grace", "60s"],
    );
    let gateway = server
        .printed("gateway:")
        .expect("the server prints its gateway");
    let api = server.api();
    let name = format!("{}-0", target.arch);
    let data = dir.path().join("agent");
    let (agent, port) = start_agent(
        &target,
        &bin,
        &server.url,
        &name,
        &data,
        Some(&server.node_token()),
    );

    // The Node says what it runs on: its real architecture, and the engine and memory
    // allocation chosen for the host.
    let node = eventually("the emulated node is Ready", WAIT, || {
        let (api, name) = (&api, &name);
        async move {
            let (_, node) = api.get(&format!("/api/v1/nodes/{name}")).await;
            ready(&node).then_some(node)
        }
    })
    .await;
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/arch"],
        target.arch
    );
    assert_eq!(node["status"]["nodeInfo"]["architecture"], target.arch);
    assert_eq!(
        node["metadata"]["labels"]["skiff.dev/wasm-engine"],
        target.engine
    );
    let annotations = &node["metadata"]["annotations"];
    let allocation = annotations["skiff.dev/http-instance-allocation"]
        .as_str()
        .unwrap_or_default();
    let reason = annotations["skiff.dev/http-instance-allocation-reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["pooling", "on-demand"].contains(&allocation) && reason.starts_with(allocation),
        "{annotations}"
    );
    if target.arch == "arm" {
        // A 32-bit process cannot hold a pool of 4 GiB memory slots.
        assert_eq!(allocation, "on-demand", "{annotations}");
        assert!(reason.contains("32-bit process"), "{reason}");
        assert_eq!(annotations["skiff.dev/wasm-target"], "pulley32");
    } else {
        assert_eq!(annotations["skiff.dev/wasm-target"], target.triple);
    }

    // A WASI command pod, scheduled by architecture, runs to Succeeded; its logs come
    // back from the emulated node through the API.
    let hello = api.upload(workload("hello.wasm")).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"},
        "spec": {"restartPolicy": "Never", "nodeSelector": {"kubernetes.io/arch": target.arch},
                 "containers": [{"name": "main", "image": hello, "args": ["on-arm"]}]}});
    assert_eq!(api.post(&format!("{NS}/pods"), &pod).await.0, 201);
    // One that asks for another architecture is not scheduled here.
    let elsewhere = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "amd64-only"},
        "spec": {"nodeSelector": {"kubernetes.io/arch": "amd64"},
                 "containers": [{"name": "main", "image": hello}]}});
    assert_eq!(api.post(&format!("{NS}/pods"), &elsewhere).await.0, 201);
    let done = eventually("the command pod Succeeded", WAIT, || {
        let api = &api;
        async move {
            let (_, p) = api.get(&format!("{NS}/pods/hello")).await;
            assert_ne!(p["status"]["phase"], "Failed", "{p}");
            (p["status"]["phase"] == "Succeeded").then_some(p)
        }
    })
    .await;
    assert_eq!(done["spec"]["nodeName"], name.as_str());
    let exit = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(exit["exitCode"], 0, "{done}");
    let (code, log) = api.text(&format!("{NS}/pods/hello/log")).await;
    assert_eq!(code, 200, "{log}");
    assert!(
        log.contains("arg[1]=on-arm") && log.contains("hello done"),
        "{log}"
    );
    // A trap is reported with its reason, and a guest that spins forever is stopped when
    // its pod is deleted: both work on Pulley as on native code (it checks bounds and
    // epochs in the interpreter instead of with signals).
    let trap = api.upload(workload("trap.wasm")).await;
    let spin = api.upload(workload("loop.wasm")).await;
    for (pod, image) in [("trap", &trap), ("spin", &spin)] {
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image}]}});
        assert_eq!(api.post(&format!("{NS}/pods"), &body).await.0, 201);
    }
    let trapped = eventually("the trapping pod Failed", WAIT, || {
        let api = &api;
        async move {
            let (_, p) = api.get(&format!("{NS}/pods/trap")).await;
            (p["status"]["phase"] == "Failed").then_some(p)
        }
    })
    .await;
    let terminated = &trapped["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "Trap", "{trapped}");
    eventually("the spinning pod Running", WAIT, || {
        let api = &api;
        async move {
            let (_, p) = api.get(&format!("{NS}/pods/spin")).await;
            (p["status"]["phase"] == "Running").then_some(())
        }
    })
    .await;
    assert_eq!(api.delete(&format!("{NS}/pods/spin"), None).await.0, 200);
    eventually("the spinning pod stopped and gone", WAIT, || {
        let api = &api;
        async move { (api.get(&format!("{NS}/pods/spin")).await.0 == 404).then_some(()) }
    })
    .await;

    eventually("the amd64-only pod is Unschedulable", WAIT, || {
        let api = &api;
        async move {
            let (_, p) = api.get(&format!("{NS}/pods/amd64-only")).await;
            assert!(p["spec"]["nodeName"].is_null(), "{p}");
            let conditions = p["status"]["conditions"].as_array()?;
            conditions
                .iter()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                .then_some(())
        }
    })
    .await;

    // An HTTP App, served through the x86-64 server's gateway.
    let module = api.upload(workload("http-hello.wasm")).await;
    let app = json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "web"},
        "spec": {"module": module, "replicas": 1}});
    assert_eq!(
        api.post("/apis/skiff.dev/v1/namespaces/default/apps", &app)
            .await
            .0,
        201
    );
    let url = format!("{gateway}/default/web/");
    let body = eventually("the App answers through the gateway", WAIT, || {
        let url = &url;
        async move {
            let (code, body) = get(url, &[]).await;
            (code == 200).then_some(body)
        }
    })
    .await;
    assert!(
        body.starts_with("hello from skiff") && body.contains(&format!("node={name}")),
        "{body}"
    );
    let (_, pods) = api
        .get(&format!("{NS}/pods?labelSelector=app.skiff.dev/name=web"))
        .await;
    let web = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("the App's pod")
        .to_owned();
    let header = format!("default/{web}");

    // The server stops: the agent keeps serving the App on its own listener.
    let server_url = server.url.clone();
    server.terminate(Duration::from_secs(30));
    let local = format!("http://127.0.0.1:{port}/");
    let (code, body) = get(&local, &[("x-skiff-pod", &header)]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("node={name}")), "{body}");

    // The agent is killed and started again with the server still down: the App comes
    // back from its local cache (the pod's spec, the module and its compiled code).
    agent.kill9();
    let (agent, port) = start_agent(&target, &bin, &server_url, &name, &data, None);
    let local = format!("http://127.0.0.1:{port}/");
    eventually("the App serves again from the local cache", WAIT, || {
        let (local, header) = (&local, &header);
        async move {
            let (code, body) = get(local, &[("x-skiff-pod", header)]).await;
            (code == 200 && body.contains("node=")).then_some(())
        }
    })
    .await;
    drop(agent);
}

#[tokio::test]
async fn an_aarch64_agent_under_qemu() {
    emulated_agent_runs_pods_and_apps_and_rides_out_the_server(AARCH64).await;
}

#[tokio::test]
async fn an_armv7_agent_under_qemu_runs_guests_on_pulley() {
    emulated_agent_runs_pods_and_apps_and_rides_out_the_server(ARMV7).await;
}

//! The friendly client verbs: `skiff deploy`, `skiff apps` and `skiff logs`. They read
//! the kubeconfig like kubectl (`--kubeconfig`, then `$KUBECONFIG`, then
//! `~/.kube/config`) and speak the same API.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

/// indicatif draws the upload and rollout bars: the de facto Rust progress-bar crate.
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Target {
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    namespace: String,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The app: a .wasm file (a wasi:http component), uploaded to the cluster; or an
    /// OCI reference the nodes pull, `oci://REGISTRY/REPOSITORY:TAG` (the `oci://` may
    /// be left out when REGISTRY has a `.` or a port, or is localhost).
    #[arg(value_name = "FILE|oci://REF")]
    source: String,
    /// A Secret with the credentials to pull an OCI reference with (a
    /// kubernetes.io/dockerconfigjson Secret, as `kubectl create secret
    /// docker-registry` makes); repeatable.
    #[arg(long = "pull-secret", value_name = "NAME")]
    pull_secrets: Vec<String>,
    /// The app's name (default: the file name without .wasm, or the last component of
    /// the reference's repository).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    replicas: Option<i32>,
    /// Scale with the requests, up to this many replicas (sets spec.autoscale; with
    /// it, --replicas is only the count to start with).
    #[arg(long, value_name = "N")]
    max_replicas: Option<i32>,
    /// The fewest replicas when autoscaling (default 1); 0 lets the app scale to zero
    /// when idle, and its next request waits for a replica to start.
    #[arg(long, value_name = "N", requires = "max_replicas")]
    min_replicas: Option<i32>,
    /// Autoscale for this many requests per second per replica.
    #[arg(
        long,
        value_name = "RPS",
        requires = "max_replicas",
        conflicts_with = "target_concurrency"
    )]
    target_rps: Option<i32>,
    /// Autoscale for this many requests in flight per replica (the default target:
    /// 10).
    #[arg(long, value_name = "N", requires = "max_replicas")]
    target_concurrency: Option<i32>,
    /// How long demand must stay lower before replicas are removed: `30s`, `5m`
    /// (default 60s).
    #[arg(long, value_name = "DURATION", requires = "max_replicas")]
    scale_down_delay: Option<String>,
    /// Where the gateway also serves it: HOST, /PATH or HOST/PATH.
    #[arg(long)]
    route: Option<String>,
    /// An environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = crate::parse_label)]
    env: Vec<(String, String)>,
    /// How long to wait for the rollout.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct AppsArgs {
    /// List apps in every namespace.
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// `app/NAME`, `pod/NAME` or a pod's name.
    what: String,
    /// Keep streaming new lines.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the last N lines of each pod.
    #[arg(long)]
    tail: Option<i64>,
    #[command(flatten)]
    target: Target,
}

async fn connect(target: &Target) -> anyhow::Result<kube::Client> {
    skiff_api::client::connect(target.kubeconfig.as_deref())
        .await
        .context("connecting to the cluster")
}

/// The message of an API error, as kubectl prints it.
fn api_error(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{} ({})", s.message, s.reason),
        other => anyhow::Error::new(other),
    }
}

async fn request(client: &kube::Client, req: http::Request<Vec<u8>>) -> anyhow::Result<Value> {
    client.request::<Value>(req).await.map_err(api_error)
}

fn json_request(
    method: &str,
    path: &str,
    content_type: &str,
    body: &Value,
) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(serde_json::to_vec(body).expect("JSON"))
        .expect("a valid request")
}

fn get_request(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .expect("a valid request")
}

/// Uploads the module with a progress bar; returns its digest.
async fn upload(target: &Target, bytes: Vec<u8>) -> anyhow::Result<String> {
    let (base, http) = skiff_api::client::http_client(target.kubeconfig.as_deref()).await?;
    let url = format!("{base}/apis/skiff.dev/v1/modules");
    let bar = ProgressBar::new(bytes.len() as u64).with_style(
        ProgressStyle::with_template("upload  [{bar:30}] {bytes}/{total_bytes} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let progress = bar.clone();
    let stream = futures::stream::iter(chunks).map(move |chunk| {
        progress.inc(chunk.len() as u64);
        Ok::<_, std::io::Error>(chunk)
    });
    let response = http
        .post(url)
        .header("content-type", "application/wasm")
        .header("content-length", bytes.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .context("uploading the module")?;
    let code = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    if !code.is_success() {
        bar.abandon_with_message("refused");
        bail!(
            "the module was refused: {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    let digest = body["digest"].as_str().unwrap_or_default().to_string();
    bar.finish_with_message(format!(
        "{} ({})",
        &digest[..digest.len().min(19)],
        body["type"].as_str().unwrap_or("module")
    ));
    Ok(digest)
}

/// What `skiff deploy` serves: a file to upload, or an artifact the nodes pull.
#[derive(Debug, PartialEq)]
enum Source {
    File(PathBuf),
    Oci(skiff_api::image::OciRef),
}

/// Whether the part of `arg` before the first `/` names a registry (Docker's rule: it
/// has a `.` or a `:`, or is `localhost`), so `arg` is a reference and not a path.
fn names_a_registry(arg: &str) -> bool {
    arg.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// `oci://...` is a reference; an existing path is a file; a string that names a
/// registry is a reference; anything else is a file (that does not exist, which the
/// upload then reports).
fn source_of(arg: &str) -> anyhow::Result<Source> {
    let oci = || {
        skiff_api::image::OciRef::parse(arg)
            .map(Source::Oci)
            .map_err(anyhow::Error::new)
    };
    let path = std::path::Path::new(arg);
    if arg.starts_with("oci://") {
        oci()
    } else if path.exists()
        || arg.ends_with(".wasm")
        || arg.starts_with("./")
        || arg.starts_with("../")
        || arg.starts_with('/')
        || !names_a_registry(arg)
    {
        Ok(Source::File(path.to_path_buf()))
    } else {
        oci()
    }
}

/// The default App name: the file name without .wasm, or the reference's last path
/// component, lowercased with `_` as `-`.
fn default_name(source: &Source) -> Option<String> {
    let stem = match source {
        Source::File(file) => file.file_stem()?.to_str()?.to_string(),
        Source::Oci(reference) => reference.repository().rsplit('/').next()?.to_string(),
    };
    Some(stem.to_ascii_lowercase().replace('_', "-"))
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let source = source_of(&args.source)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&source).context("pass --name")?,
    };
    let client = connect(&args.target).await?;
    // The module the App names: an uploaded file's digest, or the normalised reference
    // (the nodes pull it; nothing is uploaded).
    let digest = match &source {
        Source::File(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            upload(&args.target, bytes).await?
        }
        Source::Oci(reference) => reference.to_string(),
    };
    let ns = &args.target.namespace;
    let path = format!("/apis/skiff.dev/v1/namespaces/{ns}/apps/{name}");
    let mut spec = json!({"module": digest});
    if !args.pull_secrets.is_empty() {
        spec["imagePullSecrets"] = json!(
            args.pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
        );
    }
    if let Some(r) = args.replicas {
        spec["replicas"] = json!(r);
    }
    if let Some(max) = args.max_replicas {
        // The whole of spec.autoscale: a redeploy's merge patch sends null for what
        // these flags leave out, so nothing of an earlier deploy's settings remains
        // (an earlier --target-rps beside this --target-concurrency, say).
        let (rps, concurrency) = match (args.target_rps, args.target_concurrency) {
            (Some(rps), _) => (json!(rps), Value::Null),
            (None, c) => (Value::Null, json!(c.unwrap_or(10))),
        };
        spec["autoscale"] = json!({
            "maxReplicas": max,
            "minReplicas": args.min_replicas,
            "targetRequestsPerSecond": rps,
            "targetConcurrency": concurrency,
            "scaleDownDelay": args.scale_down_delay,
        });
    }
    if let Some(route) = &args.route {
        spec["route"] = match route.find('/') {
            Some(0) => json!({"path": route}),
            Some(i) => json!({"host": &route[..i], "path": &route[i..]}),
            None => json!({"host": route}),
        };
    }
    if !args.env.is_empty() {
        spec["env"] = json!(
            args.env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect::<Vec<_>>()
        );
    }
    let exists = client.request::<Value>(get_request(&path)).await;
    let app = match exists {
        Ok(_) => {
            request(
                &client,
                json_request(
                    "PATCH",
                    &path,
                    "application/merge-patch+json",
                    &json!({"spec": spec}),
                ),
            )
            .await?
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let app = json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": name}, "spec": spec});
            request(
                &client,
                json_request(
                    "POST",
                    &format!("/apis/skiff.dev/v1/namespaces/{ns}/apps"),
                    "application/json",
                    &app,
                ),
            )
            .await?
        }
        Err(e) => return Err(api_error(e)),
    };
    let generation = app.pointer("/metadata/generation").cloned();
    let wanted = app
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let bar = ProgressBar::new(wanted).with_style(
        ProgressStyle::with_template("rollout [{bar:30}] {pos}/{len} ready {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let deadline = Instant::now() + args.timeout;
    let app = loop {
        let app = request(&client, get_request(&path)).await?;
        let status = app.get("status").cloned().unwrap_or_default();
        bar.set_position(status["readyReplicas"].as_u64().unwrap_or(0).min(wanted));
        bar.set_message(format!(
            "{} updated",
            status["updatedReplicas"].as_u64().unwrap_or(0)
        ));
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        let current = status.get("observedGeneration") == generation.as_ref()
            && status["moduleDigest"] == digest.as_str();
        if current && ready["status"] == "True" {
            break app;
        }
        if current && ready["reason"] == "ProgressDeadlineExceeded" {
            bar.abandon_with_message("failed");
            bail!(
                "{name} did not roll out: {}",
                ready["message"].as_str().unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bar.abandon_with_message("timed out");
            bail!(
                "{name} did not roll out within {}: {}",
                humantime::format_duration(args.timeout),
                ready["message"].as_str().unwrap_or("no status yet")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_with_message("done");
    match app.pointer("/status/url").and_then(Value::as_str) {
        Some(url) => println!("{name} is serving at {url}"),
        None => println!("{name} is serving (this server runs no gateway, so it has no URL)"),
    }
    if let Some(image) = app.pointer("/status/imageID").and_then(Value::as_str) {
        println!("image: {image}");
    }
    Ok(())
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    #[test]
    fn a_source_is_a_file_or_an_oci_reference() {
        let oci = |s: &str| match source_of(s) {
            Ok(Source::Oci(r)) => r.to_string(),
            other => panic!("{s}: {other:?}"),
        };
        let file = |s: &str| match source_of(s) {
            Ok(Source::File(p)) => p,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            oci("oci://127.0.0.1:5000/t/hello:v1"),
            "127.0.0.1:5000/t/hello:v1"
        );
        assert_eq!(oci("oci://nginx"), "docker.io/library/nginx:latest");
        assert_eq!(oci("ghcr.io/acme/app:1"), "ghcr.io/acme/app:1");
        assert_eq!(oci("localhost/app"), "localhost/app:latest");
        assert_eq!(file("app.wasm"), PathBuf::from("app.wasm"));
        assert_eq!(file("./dir.v2/app"), PathBuf::from("./dir.v2/app"));
        assert_eq!(file("build/app"), PathBuf::from("build/app"));
        assert!(names_a_registry("reg.example/app"));
        assert!(names_a_registry("localhost:5000/app"));
        assert!(!names_a_registry("acme/app"));
        assert!(source_of("oci://Bad/Ref").is_err());
        assert_eq!(
            default_name(&source_of("oci://127.0.0.1:5000/t/hello_world:v1").expect("ok")),
            Some("hello-world".into())
        );
        assert_eq!(
            default_name(&Source::File("dir/Http_Hello.wasm".into())),
            Some("http-hello".into())
        );
    }
}

fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "-".into();
    };
    short_duration(jiff::Timestamp::now().duration_since(t).as_secs().max(0))
}

/// A span of seconds as kubectl shows ages: `90s`, `45m`, `30h`, `12d`.
fn short_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn apps(args: AppsArgs) -> anyhow::Result<()> {
    let client = connect(&args.target).await?;
    let path = if args.all_namespaces {
        "/apis/skiff.dev/v1/apps".to_string()
    } else {
        format!(
            "/apis/skiff.dev/v1/namespaces/{}/apps",
            args.target.namespace
        )
    };
    let list = request(&client, get_request(&path)).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("No apps found.");
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAMESPACE".to_string(),
        "NAME".into(),
        "READY".into(),
        "URL".into(),
        "MODULE".into(),
        "AGE".into(),
    ]];
    for app in &items {
        let s = &app["status"];
        let module = app["spec"]["module"].as_str().unwrap_or_default();
        rows.push(vec![
            app["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            app["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            format!(
                "{}/{}",
                s["readyReplicas"].as_i64().unwrap_or(0),
                app["spec"]["replicas"].as_i64().unwrap_or(1)
            ),
            s["url"].as_str().unwrap_or("<none>").to_string(),
            module.get(..19).unwrap_or(module).to_string(),
            age(app["metadata"]["creationTimestamp"].as_str()),
        ]);
    }
    let skip = usize::from(!args.all_namespaces);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = connect(&args.target).await?;
    let ns = &args.target.namespace;
    let pods: Vec<String> = match args.what.split_once('/') {
        Some(("app" | "apps", name)) => {
            let list = request(
                &client,
                get_request(&format!(
                    "/api/v1/namespaces/{ns}/pods?labelSelector=app.skiff.dev%2Fname%3D{name}"
                )),
            )
            .await?;
            let mut names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            names.sort();
            if names.is_empty() {
                bail!("app {name} has no pods in namespace {ns}");
            }
            names
        }
        Some(("pod" | "pods" | "po", name)) => vec![name.to_string()],
        Some((kind, _)) => bail!("skiff logs takes app/NAME or pod/NAME, not {kind}/..."),
        None => vec![args.what.clone()],
    };
    let prefix = pods.len() > 1;
    let streams = pods.iter().map(|pod| {
        let mut query = vec![];
        if args.follow {
            query.push("follow=true".to_string());
        }
        if let Some(n) = args.tail {
            query.push(format!("tailLines={n}"));
        }
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/log?{}", query.join("&"));
        let client = client.clone();
        let pod = pod.clone();
        async move {
            let req = http::Request::get(path)
                .body(Vec::new())
                .expect("a valid request");
            let reader = client.request_stream(req).await.map_err(api_error)?;
            let mut lines = futures::io::AsyncBufReadExt::lines(reader);
            while let Some(line) = lines.try_next().await? {
                if prefix {
                    println!("[{pod}] {line}");
                } else {
                    println!("{line}");
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for result in futures::future::join_all(streams).await {
        result?;
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown only this once).
    Create(TokenCreateArgs),
    /// List tokens and node credentials (never their secrets).
    List(TokenListArgs),
    /// Revoke a token or a node's credential by its id; it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TokenRole {
    /// Agents join with it (printed as K10<CA hash>::<id>.<secret>).
    Join,
    /// Read-only access to everything but Secrets.
    Viewer,
    /// Full access.
    Admin,
    /// A named user in groups, allowed what RBAC grants them (see --user).
    User,
}

#[derive(clap::Args)]
pub struct TokenCreateArgs {
    /// What the token may do (join when neither --role nor --user is given).
    #[arg(long, value_enum)]
    role: Option<TokenRole>,
    /// A token for this user name, allowed what Roles and ClusterRoles bound to the user
    /// or its groups grant (`kubectl create rolebinding ... --user NAME`).
    #[arg(long)]
    user: Option<String>,
    /// A group the user belongs to; repeat for several.
    #[arg(long = "group", requires = "user")]
    groups: Vec<String>,
    /// What the token is for, shown by `skiff token list`.
    #[arg(long, default_value = "")]
    description: String,
    /// Make a short-lived token that stops working after this long (e.g. `1h`, `30m`);
    /// by default a token lasts until revoked. Join tokens take none.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
pub struct TokenRevokeArgs {
    /// The token's id (the part before the dot), as `skiff token list` shows it.
    id: String,
    #[command(flatten)]
    target: Target,
}

/// How long until a short-lived token expires, as `skiff token list` shows it.
fn expires_in(expires: Option<&str>) -> String {
    let Some(at) = expires.and_then(skiff_api::time::parse_time) else {
        return "never".into();
    };
    let left = at.as_second() - jiff::Timestamp::now().as_second();
    if left <= 0 {
        return "expired".into();
    }
    short_duration(left)
}

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// What the sign-in link may do: `admin`, or `viewer` for a read-only dashboard.
    #[arg(long, value_enum, default_value = "admin")]
    role: DashboardRole,
    /// How long the link's token works; the dashboard asks to sign in again after.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Only print the link, even where a browser could be opened.
    #[arg(long)]
    no_open: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DashboardRole {
    Admin,
    Viewer,
}

/// `skiff dashboard`: prints (and opens, where a browser is at hand) a link to the
/// dashboard that signs in with a new short-lived token. The token rides in the URL's
/// fragment, which browsers never send to a server, and the dashboard keeps it in the
/// tab's session storage only. Someone who may not make tokens gets the plain URL, to
/// sign in with a token of their own.
pub async fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let (url, client) = skiff_api::client::http_client(args.target.kubeconfig.as_deref())
        .await
        .context("connecting to the cluster")?;
    let base = format!("{}/ui/", url.trim_end_matches('/'));
    let role = match args.role {
        DashboardRole::Admin => "admin",
        DashboardRole::Viewer => "viewer",
    };
    let body = json!({
        "role": role,
        "description": "dashboard sign-in link (skiff dashboard)",
        "expirationSeconds": args.ttl.as_secs().max(1),
    });
    let answer = client
        .post(format!("{}/skiff/v1/tokens", url.trim_end_matches('/')))
        .json(&body)
        .send()
        .await
        .context("asking the cluster for a sign-in token")?;
    let status = answer.status();
    let answer: Value = answer.json().await.unwrap_or_default();
    let link = match answer["token"].as_str() {
        Some(token) if status.is_success() => {
            println!(
                "dashboard: {base} (signed in as {role} for {})",
                humantime::format_duration(args.ttl)
            );
            format!("{base}#token={token}")
        }
        _ if status == reqwest::StatusCode::FORBIDDEN
            || status == reqwest::StatusCode::UNAUTHORIZED =>
        {
            println!("dashboard: {base}");
            println!("(this kubeconfig may not make tokens: sign in with your own token)");
            base.clone()
        }
        _ => anyhow::bail!(
            "the cluster would not make a sign-in token: {} ({status})",
            answer["message"].as_str().unwrap_or("no message")
        ),
    };
    println!("{link}");
    if !args.no_open {
        open_browser(&link);
    }
    Ok(())
}

/// Opens `url` in the desktop's browser, if this looks like a desktop: `$BROWSER`, else
/// `open` on macOS, else `xdg-open` under X11 or Wayland. Silent when there is none.
fn open_browser(url: &str) {
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| {
            if cfg!(target_os = "macos") {
                Some("open".into())
            } else if std::env::var_os("DISPLAY").is_some()
                || std::env::var_os("WAYLAND_DISPLAY").is_some()
            {
                Some("xdg-open".into())
            } else {
                None
            }
        });
    if let Some(opener) = opener {
        let _ = std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    // Tokens are system records, not objects: the server's /skiff/v1/tokens (admins
    // only) is the one way to them.
    const TOKENS: &str = "/skiff/v1/tokens";
    match command {
        TokenCommand::Create(args) => {
            let client = connect(&args.target).await?;
            let role = match (args.role, &args.user) {
                (None | Some(TokenRole::User), Some(_)) => "user",
                (Some(_), Some(_)) => anyhow::bail!("--user makes a token of the role user"),
                (Some(TokenRole::User), None) => anyhow::bail!("a user token needs --user NAME"),
                (None | Some(TokenRole::Join), None) => "join",
                (Some(TokenRole::Viewer), None) => "viewer",
                (Some(TokenRole::Admin), None) => "admin",
            };
            let mut body = json!({"role": role, "description": args.description});
            if let Some(user) = &args.user {
                body["user"] = json!(user);
                body["groups"] = json!(args.groups);
            }
            if let Some(ttl) = args.ttl {
                body["expirationSeconds"] = json!(ttl.as_secs().max(1));
            }
            let body = serde_json::to_vec(&body)?;
            let req = http::Request::post(TOKENS)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)?;
            let created = request(&client, req).await?;
            let token = created["token"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the server's answer has no token: {created}"))?;
            // A join token comes pinned to the CA the server presents (K10<hash>::…).
            println!("{token}");
        }
        TokenCommand::List(args) => {
            let client = connect(&args.target).await?;
            let list = request(&client, http::Request::get(TOKENS).body(Vec::new())?).await?;
            println!(
                "{:<10} {:<7} {:<16} {:<8} {:<9} DESCRIPTION",
                "ID", "ROLE", "NODE/USER", "AGE", "EXPIRES"
            );
            for t in list["items"].as_array().into_iter().flatten() {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                println!(
                    "{:<10} {:<7} {:<16} {:<8} {:<9} {}",
                    text(&t["metadata"]["name"]),
                    text(&t["role"]),
                    t["node"]
                        .as_str()
                        .or_else(|| t["user"].as_str())
                        .unwrap_or("<none>"),
                    age(t["metadata"]["creationTimestamp"].as_str()),
                    expires_in(t["expires"].as_str()),
                    text(&t["description"]),
                );
            }
        }
        TokenCommand::Revoke(args) => {
            let client = connect(&args.target).await?;
            let id = &args.id;
            let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
            anyhow::ensure!(valid, "{id:?} is not a token id (see `skiff token list`)");
            let req = http::Request::delete(format!("{TOKENS}/{id}")).body(Vec::new())?;
            client.request::<Value>(req).await.map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => {
                    anyhow::anyhow!("no token with id {id:?}")
                }
                other => api_error(other),
            })?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

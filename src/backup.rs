//! `skiff backup` and `skiff restore`: a whole cluster to one file and back, for either
//! store (see `skiff_controlplane::backup` for the format).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use skiff_controlplane::backup::{self, Summary};
use skiff_controlplane::blobs::ModuleBlobs;
use skiff_controlplane::server::StoreConfig;
use skiff_controlplane::store::Store;
use skiff_controlplane::store::etcd::{EtcdConfig, EtcdOptions, EtcdStore, blobs::EtcdBlobs};
use skiff_controlplane::store::redb::RedbStore;

use crate::StoreArgs;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The server's data directory (a `skiff dev` directory works too). Its store is
    /// read directly when no server holds it; a running server on redb is asked through
    /// its API instead.
    #[arg(long, required_unless_present = "kubeconfig")]
    data_dir: Option<PathBuf>,
    /// Take the backup through a running server's API (admin only).
    #[arg(long, conflicts_with = "data_dir")]
    kubeconfig: Option<PathBuf>,
    /// Where to write the backup (`.tar.gz`, mode 0600: it holds the cluster's CA key).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The new server's data directory: its secrets (CA, tokens) are written here.
    #[arg(long)]
    data_dir: PathBuf,
    /// The store to restore into; it must be empty (a new data directory for redb, a
    /// new --etcd-prefix for etcd). Restoring a redb backup into etcd moves a
    /// single-server cluster to several servers.
    #[command(flatten)]
    store: StoreArgs,
}

/// A `skiff dev` directory keeps its server's data in `server/`.
fn server_dir(dir: &Path) -> PathBuf {
    let dev = dir.join("server");
    if !dir.join("store.json").exists() && dev.join("store.json").exists() {
        dev
    } else {
        dir.to_path_buf()
    }
}

/// The store a server's data directory names in its `store.json`.
fn store_of(dir: &Path) -> anyhow::Result<StoreConfig> {
    let path = dir.join("store.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreConfig::Redb),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    if v["store"] != "etcd" {
        return Ok(StoreConfig::Redb);
    }
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let path_of = |k: &str| v[k].as_str().map(PathBuf::from);
    Ok(StoreConfig::Etcd(EtcdOptions {
        config: EtcdConfig {
            endpoints: strings("endpoints"),
            ca_file: path_of("caFile"),
            cert_file: path_of("certFile"),
            key_file: path_of("keyFile"),
        },
        prefix: v["prefix"].as_str().unwrap_or("/skiff").to_string(),
    }))
}

/// Opens a store and the module blobs beside it.
async fn open(
    config: &StoreConfig,
    dir: &Path,
) -> anyhow::Result<(Arc<dyn Store>, ModuleBlobs, &'static str)> {
    let modules = dir.join("modules");
    Ok(match config {
        StoreConfig::Redb => {
            let store = RedbStore::open(&dir.join("store.redb"))
                .with_context(|| format!("opening {}", dir.join("store.redb").display()))?;
            (store, ModuleBlobs::new(modules), "redb")
        }
        StoreConfig::Etcd(options) => {
            let store = EtcdStore::open(options)
                .await
                .context("connecting to etcd")?;
            let blobs = ModuleBlobs::shared(
                modules,
                EtcdBlobs::new(store.client().clone(), store.layout().clone()),
            );
            (store, blobs, "etcd")
        }
    })
}

fn private_file(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn report(what: &str, s: &Summary, path: &Path) {
    println!(
        "{what}: {} objects, {} modules, {} secrets, as of revision {} ({})",
        s.objects,
        s.modules,
        s.secrets,
        s.revision,
        path.display()
    );
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let partial = args.out.with_extension("partial");
    match (&args.kubeconfig, &args.data_dir) {
        (Some(kubeconfig), _) => through_api(kubeconfig, &partial).await?,
        (None, Some(dir)) => {
            let dir = server_dir(dir);
            let config = store_of(&dir)?;
            match open(&config, &dir).await {
                Ok((store, blobs, kind)) => {
                    let file = private_file(&partial)?;
                    let summary = backup::write(&*store, &blobs, &dir, kind, file).await;
                    store.close().await;
                    report("backed up", &summary?, &args.out);
                }
                // redb allows one process at a time: a running server holds the file,
                // so the backup goes through it.
                Err(e)
                    if matches!(config, StoreConfig::Redb) && dir.join("kubeconfig").exists() =>
                {
                    tracing::info!(error = %e, "the store is in use; asking the running server");
                    through_api(&dir.join("kubeconfig"), &partial).await?;
                }
                Err(e) => return Err(e),
            }
        }
        (None, None) => anyhow::bail!("pass --data-dir or --kubeconfig"),
    }
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

/// Downloads `GET /skiff/v1/backup` from the server a kubeconfig names.
async fn through_api(kubeconfig: &Path, out: &Path) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let (url, client) = skiff_api::client::http_client(Some(kubeconfig)).await?;
    let response = client
        .get(format!("{url}/skiff/v1/backup"))
        .send()
        .await
        .with_context(|| format!("asking {url} for a backup"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the server refused the backup ({status}): {body}");
    }
    let mut file = private_file(out)?;
    let mut bytes = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the backup")?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).context("writing the backup")?;
    }
    file.sync_all().context("writing the backup")?;
    println!("backed up through {url}: {bytes} bytes");
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let config = args.store.config();
    let (store, blobs, _) = open(&config, &args.data_dir).await?;
    let result = backup::restore(&args.from, &*store, &blobs, &args.data_dir).await;
    store.close().await;
    let summary = result.with_context(|| format!("restoring {}", args.from.display()))?;
    report("restored", &summary, &args.data_dir);
    println!(
        "start the cluster on it: skiff server --data-dir {}{}",
        args.data_dir.display(),
        match &config {
            StoreConfig::Redb => String::new(),
            StoreConfig::Etcd(o) => format!(
                " --store etcd --etcd-endpoints {} --etcd-prefix {}",
                o.config.endpoints.join(","),
                o.prefix
            ),
        }
    );
    Ok(())
}

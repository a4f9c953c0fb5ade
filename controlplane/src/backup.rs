//! Backups of a whole cluster, and restores of them, for both stores.
//!
//! A backup is a gzip'd tar file anyone can inspect with `tar tzf`:
//!
//! - `backup.json`: the format version, the store it came from and the revision the
//!   snapshot was read at;
//! - `secrets/…`: the CA certificate and key and the server's tokens (so a backup is as
//!   secret as the data directory, and is written mode 0600);
//! - `objects/NNNNNN.jsonl`: every object as of that one revision, one per line with its
//!   store key;
//! - `modules/sha256/HEX`: the bytes of every module a Module object names;
//! - `end.json`: the counts, written last, so a truncated file is refused on restore.
//!
//! A restore goes into an empty store (a new data directory, or a new etcd prefix). It
//! first raises the store's revision past the backup's, so every resourceVersion a client
//! has seen stays older than anything the restored cluster hands out, and anything that
//! resumes from an old one gets 410 and re-lists; then it writes the objects as they
//! were (uids, timestamps, status), the modules and the secrets. What described the
//! old servers (the leader Lease, their identity Leases and `default/kubernetes`) is not
//! restored: the new servers publish their own.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::blobs::ModuleBlobs;
use crate::store::{ListRequest, Revision, Store, StoreError, WriteOp};

const FORMAT_VERSION: u64 = 1;
/// Objects per `objects/` entry (and per list page while backing up).
const PAGE: usize = 500;
/// Writes in flight while restoring.
const RESTORE_CONCURRENCY: usize = 64;
/// The secrets a backup carries, by their path in a server's data directory.
const SECRET_FILES: &[&str] = &[
    "tls/ca.crt",
    "tls/ca.key",
    "tls/sa.key",
    "admin-token",
    "node-token",
    "server-token",
];

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading the cluster's objects")]
    Store(#[from] StoreError),
    #[error("reading module {digest}")]
    Module {
        digest: String,
        #[source]
        source: crate::blobs::BlobError,
    },
    #[error("module {digest} is named by a Module object but its bytes are missing")]
    ModuleMissing { digest: String },
    #[error("writing the backup")]
    Write(#[source] std::io::Error),
    #[error("reading the backup {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup is not usable: {0}")]
    Invalid(String),
    #[error("the target is not empty: {0}")]
    NotEmpty(String),
    #[error("writing {path}")]
    SecretWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a backup or restore covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub revision: Revision,
    pub objects: usize,
    pub modules: usize,
    pub secrets: usize,
}

/// One item of a backup, in file order.
enum Entry {
    File(String, Vec<u8>),
}

/// Writes entries into a gzip'd tar on a blocking thread, so the async side never
/// blocks on compression or disk.
struct TarSink {
    sender: Option<std::sync::mpsc::SyncSender<Entry>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl TarSink {
    fn new(out: impl Write + Send + 'static) -> TarSink {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Entry>(4);
        let writer = std::thread::spawn(move || {
            let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            for Entry::File(name, bytes) in receiver {
                let mut header = tar::Header::new_gnu();
                header.set_size(bytes.len() as u64);
                header.set_mode(0o600);
                header.set_mtime(now);
                header.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut header, &name, bytes.as_slice())?;
            }
            let mut out = tar.into_inner()?.finish()?;
            out.flush()
        });
        TarSink {
            sender: Some(sender),
            writer: Some(writer),
        }
    }

    async fn put(&self, name: String, bytes: Vec<u8>) -> Result<(), BackupError> {
        let sender = self.sender.clone().expect("open until finish");
        tokio::task::spawn_blocking(move || sender.send(Entry::File(name, bytes)))
            .await
            .map_err(|e| BackupError::Write(std::io::Error::other(e)))?
            .map_err(|_| BackupError::Write(std::io::Error::other("the backup writer stopped")))
    }

    async fn finish(mut self) -> Result<(), BackupError> {
        drop(self.sender.take());
        let writer = self.writer.take().expect("finished once");
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| BackupError::Write(std::io::Error::other(e)))?
            .map_err(|_| BackupError::Write(std::io::Error::other("the backup writer panicked")))?
            .map_err(BackupError::Write)
    }
}

fn json_bytes(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON serialises");
    bytes.push(b'\n');
    bytes
}

/// Writes a consistent backup of the cluster to `out`: every object as of one revision,
/// the modules they name, and the secrets in `data_dir`.
pub async fn write(
    store: &dyn Store,
    blobs: &ModuleBlobs,
    data_dir: &Path,
    store_kind: &str,
    out: impl Write + Send + 'static,
) -> Result<Summary, BackupError> {
    let sink = TarSink::new(out);
    let result = write_entries(store, blobs, data_dir, store_kind, &sink).await;
    let finished = sink.finish().await;
    let summary = result?;
    finished?;
    Ok(summary)
}

async fn write_entries(
    store: &dyn Store,
    blobs: &ModuleBlobs,
    data_dir: &Path,
    store_kind: &str,
    sink: &TarSink,
) -> Result<Summary, BackupError> {
    let everything = |_: &Value| true;
    // The first page fixes the revision; every later one is read as of it.
    let mut page = store
        .list(ListRequest {
            prefix: "/",
            start_after: None,
            at_rev: None,
            limit: PAGE,
            filter: &everything,
        })
        .await?;
    let revision = page.rev;
    let mut summary = Summary {
        revision,
        ..Default::default()
    };
    sink.put(
        "backup.json".into(),
        json_bytes(&json!({
            "kind": "SkiffBackup",
            "version": FORMAT_VERSION,
            "store": store_kind,
            "revision": revision,
            "createdAt": crate::objects::now_rfc3339(),
        })),
    )
    .await?;
    for name in SECRET_FILES {
        match std::fs::read(data_dir.join(name)) {
            Ok(bytes) => {
                sink.put(format!("secrets/{name}"), bytes).await?;
                summary.secrets += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BackupError::Read {
                    path: data_dir.join(name),
                    source,
                });
            }
        }
    }
    let mut digests = Vec::new();
    let mut chunk = 0usize;
    loop {
        let mut lines = Vec::new();
        for item in &page.items {
            if item.key.starts_with("/skiff.dev/modules/") {
                digests.push(crate::objects::name(&item.object).to_string());
            }
            serde_json::to_writer(
                &mut lines,
                &json!({"key": item.key, "object": &*item.object}),
            )
            .expect("JSON serialises");
            lines.push(b'\n');
        }
        summary.objects += page.items.len();
        chunk += 1;
        sink.put(format!("objects/{chunk:06}.jsonl"), lines).await?;
        let (true, Some(last)) = (page.more, page.items.last()) else {
            break;
        };
        let after = last.key.clone();
        page = store
            .list(ListRequest {
                prefix: "/",
                start_after: Some(&after),
                at_rev: Some(revision),
                limit: PAGE,
                filter: &everything,
            })
            .await?;
    }
    for digest in digests {
        let Some(hex) = skiff_api::module::parse_digest(&digest) else {
            continue;
        };
        let bytes = blobs
            .read(hex)
            .await
            .map_err(|source| BackupError::Module {
                digest: digest.clone(),
                source,
            })?
            .ok_or_else(|| BackupError::ModuleMissing {
                digest: digest.clone(),
            })?;
        sink.put(format!("modules/sha256/{hex}"), bytes).await?;
        summary.modules += 1;
    }
    sink.put(
        "end.json".into(),
        json_bytes(&json!({
            "objects": summary.objects,
            "modules": summary.modules,
            "secrets": summary.secrets,
        })),
    )
    .await?;
    Ok(summary)
}

/// Whether an object described the servers of the old cluster, which restore leaves
/// for the new servers to publish.
fn belongs_to_old_servers(key: &str, object: &Value) -> bool {
    let lease_prefix = "/coordination.k8s.io/leases/kube-system/";
    if let Some(name) = key.strip_prefix(lease_prefix) {
        return name == crate::leader::LEASE_NAME
            || object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(crate::cluster::endpoints::APISERVER_LABEL))
                .is_some();
    }
    key == format!(
        "/core/endpoints/default/{}",
        crate::cluster::endpoints::ENDPOINTS_NAME
    )
}

/// Reads a backup's entries in order on a blocking thread.
fn read_entries(
    path: PathBuf,
) -> tokio::sync::mpsc::Receiver<Result<(String, Vec<u8>), BackupError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let read = |source| BackupError::Read {
            path: path.clone(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(read(e)));
                return;
            }
        };
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.blocking_send(Err(read(e)));
                return;
            }
        };
        for entry in entries {
            let item = entry.and_then(|mut entry| {
                let name = entry.path()?.to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                Ok((name, bytes))
            });
            let failed = item.is_err();
            if tx.blocking_send(item.map_err(read)).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Restores a backup into an empty store, its modules into `blobs` and its secrets into
/// `data_dir`.
pub async fn restore(
    from: &Path,
    store: &dyn Store,
    blobs: &ModuleBlobs,
    data_dir: &Path,
) -> Result<Summary, BackupError> {
    let everything = |_: &Value| true;
    let existing = store
        .list(ListRequest {
            prefix: "/",
            start_after: None,
            at_rev: None,
            limit: 1,
            filter: &everything,
        })
        .await?;
    if let Some(item) = existing.items.first() {
        return Err(BackupError::NotEmpty(format!(
            "the store already holds objects ({} among them); restore into a new data \
             directory or etcd prefix",
            item.key
        )));
    }
    let mut entries = read_entries(from.to_path_buf());
    let mut summary = Summary::default();
    let mut header = false;
    let mut ended = None;
    while let Some(entry) = entries.recv().await {
        let (name, bytes) = entry?;
        if !header {
            if name != "backup.json" {
                return Err(BackupError::Invalid(format!(
                    "it starts with {name}, not backup.json"
                )));
            }
            let meta: Value = serde_json::from_slice(&bytes)
                .map_err(|e| BackupError::Invalid(format!("backup.json: {e}")))?;
            if meta["kind"] != "SkiffBackup" || meta["version"].as_u64() != Some(FORMAT_VERSION) {
                return Err(BackupError::Invalid(format!(
                    "backup.json is not a version {FORMAT_VERSION} Skiff backup"
                )));
            }
            summary.revision = meta["revision"]
                .as_u64()
                .ok_or_else(|| BackupError::Invalid("backup.json has no revision".into()))?;
            store.raise_revision(summary.revision).await?;
            header = true;
            continue;
        }
        if let Some(secret) = name.strip_prefix("secrets/") {
            if !SECRET_FILES.contains(&secret) {
                return Err(BackupError::Invalid(format!("unexpected secret {name}")));
            }
            let path = data_dir.join(secret);
            let mode = if secret.ends_with(".crt") {
                0o644
            } else {
                0o600
            };
            let text = String::from_utf8(bytes)
                .map_err(|_| BackupError::Invalid(format!("{name} is not text")))?;
            skiff_api::client::write_file(&path, &text, mode)
                .map_err(|source| BackupError::SecretWrite { path, source })?;
            summary.secrets += 1;
        } else if name.starts_with("objects/") {
            summary.objects += restore_objects(store, &bytes).await?;
        } else if let Some(hex) = name.strip_prefix("modules/sha256/") {
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if digest != hex {
                return Err(BackupError::Invalid(format!(
                    "module {hex} in the backup does not match its digest"
                )));
            }
            blobs
                .put(hex, Arc::new(bytes))
                .await
                .map_err(|source| BackupError::Module {
                    digest: format!("sha256:{hex}"),
                    source,
                })?;
            summary.modules += 1;
        } else if name == "end.json" {
            ended = Some(
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| BackupError::Invalid(format!("end.json: {e}")))?,
            );
        } else {
            return Err(BackupError::Invalid(format!("unexpected entry {name}")));
        }
    }
    let Some(end) = ended else {
        return Err(BackupError::Invalid(
            "it ends before end.json: the file is truncated".into(),
        ));
    };
    if end["modules"].as_u64() != Some(summary.modules as u64)
        || end["secrets"].as_u64() != Some(summary.secrets as u64)
    {
        return Err(BackupError::Invalid(format!(
            "end.json counts {end} but the file held {} modules and {} secrets",
            summary.modules, summary.secrets
        )));
    }
    Ok(summary)
}

/// Writes one `objects/` entry's objects; returns how many it held.
async fn restore_objects(store: &dyn Store, jsonl: &[u8]) -> Result<usize, BackupError> {
    let mut ops = Vec::new();
    for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let item: Value = serde_json::from_slice(line)
            .map_err(|e| BackupError::Invalid(format!("an object line: {e}")))?;
        let (Some(key), Some(object)) = (item["key"].as_str(), item.get("object")) else {
            return Err(BackupError::Invalid(
                "an object line without key or object".into(),
            ));
        };
        if belongs_to_old_servers(key, object) {
            continue;
        }
        ops.push(WriteOp::Create {
            key: key.to_string(),
            object: object.clone(),
            guard: None,
        });
    }
    let count = ops.len();
    let mut writes = futures::stream::iter(ops.into_iter().map(|op| store.write(op)))
        .buffer_unordered(RESTORE_CONCURRENCY);
    while let Some(result) = writes.next().await {
        result?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    async fn put(store: &dyn Store, key: &str, object: Value) {
        store
            .write(WriteOp::Create {
                key: key.into(),
                object,
                guard: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_backup_restores_every_object_module_and_secret_at_higher_revisions() {
        let source_dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&source_dir.path().join("store.redb")).unwrap();
        let blobs = ModuleBlobs::new(source_dir.path().join("modules"));
        let module = b"\0asm\x01\0\0\0".to_vec();
        let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&module));
        blobs.put(&hex, Arc::new(module.clone())).await.unwrap();
        put(
            &*store,
            &format!("/skiff.dev/modules/sha256:{hex}"),
            json!({"metadata": {"name": format!("sha256:{hex}"), "uid": "m"}}),
        )
        .await;
        for i in 0..(PAGE + 7) {
            put(
                &*store,
                &format!("/core/configmaps/default/c{i:04}"),
                json!({"metadata": {"name": format!("c{i:04}"), "uid": format!("u{i}")}, "data": {"i": i.to_string()}}),
            )
            .await;
        }
        put(
            &*store,
            "/coordination.k8s.io/leases/kube-system/skiff-controlplane",
            json!({"metadata": {"name": "skiff-controlplane"}}),
        )
        .await;
        std::fs::write(source_dir.path().join("admin-token"), "admin\n").unwrap();
        let file = source_dir.path().join("backup.tar.gz");
        let summary = write(
            &*store,
            &blobs,
            source_dir.path(),
            "redb",
            std::fs::File::create(&file).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            (summary.objects, summary.modules, summary.secrets),
            (PAGE + 9, 1, 1)
        );

        let target_dir = tempfile::tempdir().unwrap();
        let target = RedbStore::open(&target_dir.path().join("store.redb")).unwrap();
        let target_blobs = ModuleBlobs::new(target_dir.path().join("modules"));
        let restored = restore(&file, &*target, &target_blobs, target_dir.path())
            .await
            .unwrap();
        assert_eq!(restored.objects, PAGE + 8, "the leader lease is left out");
        assert_eq!(restored.revision, summary.revision);
        assert_eq!(target_blobs.read(&hex).await.unwrap(), Some(module));
        assert_eq!(
            std::fs::read_to_string(target_dir.path().join("admin-token")).unwrap(),
            "admin\n"
        );
        let c = target
            .get_now("/core/configmaps/default/c0003")
            .unwrap()
            .unwrap();
        assert_eq!(c.object["metadata"]["uid"], "u3");
        assert!(
            c.rev > summary.revision,
            "revisions only grow across a restore"
        );
        assert!(
            target.log_watch("", summary.revision - 1).is_err(),
            "a watch from before the restore gets 410 and re-lists"
        );
        // Restoring again into a store that holds objects is refused.
        assert!(matches!(
            restore(&file, &*target, &target_blobs, target_dir.path()).await,
            Err(BackupError::NotEmpty(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_truncated_backup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        let blobs = ModuleBlobs::new(dir.path().join("modules"));
        put(
            &*store,
            "/core/configmaps/default/a",
            json!({"metadata": {"name": "a"}}),
        )
        .await;
        let file = dir.path().join("b.tar.gz");
        write(
            &*store,
            &blobs,
            dir.path(),
            "redb",
            std::fs::File::create(&file).unwrap(),
        )
        .await
        .unwrap();
        // Cut the archive short by writing only its first entries.
        let mut cut = Vec::new();
        {
            let gz = flate2::write::GzEncoder::new(&mut cut, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
                std::fs::File::open(&file).unwrap(),
            ));
            for entry in archive.entries().unwrap().take(2) {
                let mut entry = entry.unwrap();
                let mut header = entry.header().clone();
                let path = entry.path().unwrap().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                tar.append_data(&mut header, path, bytes.as_slice())
                    .unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap();
        }
        let cut_file = dir.path().join("cut.tar.gz");
        std::fs::write(&cut_file, cut).unwrap();
        let target_dir = tempfile::tempdir().unwrap();
        let target = RedbStore::open(&target_dir.path().join("store.redb")).unwrap();
        let result = restore(
            &cut_file,
            &*target,
            &ModuleBlobs::new(target_dir.path().join("m")),
            target_dir.path(),
        )
        .await;
        assert!(
            matches!(&result, Err(BackupError::Invalid(m)) if m.contains("truncated")),
            "{result:?}"
        );
    }
}

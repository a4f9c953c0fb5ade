//! The bytes of uploaded modules, stored content-addressed: files on this server's disk
//! and, when the cluster's store is etcd, chunks in etcd that every server shares. The
//! API server's module store, backups and restores all read and write them here.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::etcd::blobs::EtcdBlobs;

/// Where module bytes live: content-addressed files, `DIR/sha256/<hex>`, and, when the
/// cluster's store is etcd, chunks in etcd that every server shares (the files are then
/// this server's copy of them).
#[derive(Clone)]
pub struct ModuleBlobs {
    dir: PathBuf,
    shared: Option<EtcdBlobs>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("writing module blob {path}")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading module blob {path}")]
    ReadFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Shared(#[from] crate::store::etcd::blobs::BlobError),
}

impl ModuleBlobs {
    /// Blobs in files under `dir` only (the redb store).
    pub fn new(dir: impl Into<PathBuf>) -> ModuleBlobs {
        ModuleBlobs {
            dir: dir.into(),
            shared: None,
        }
    }

    /// Blobs in etcd, with this server's copies under `dir`.
    pub fn shared(dir: impl Into<PathBuf>, etcd: EtcdBlobs) -> ModuleBlobs {
        ModuleBlobs {
            dir: dir.into(),
            shared: Some(etcd),
        }
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }

    /// Stores a blob durably: in etcd first when shared, then as this server's file.
    pub async fn put(&self, hex: &str, bytes: Arc<Vec<u8>>) -> Result<(), BlobError> {
        if let Some(shared) = &self.shared {
            shared.put(hex, &bytes).await?;
        }
        let files = self.clone();
        let hex = hex.to_string();
        tokio::task::spawn_blocking(move || files.write_file(&hex, &bytes))
            .await
            .map_err(|e| BlobError::WriteFailed {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// Writes a blob file durably: to a temporary file, fsynced, renamed into place, and
    /// the directory fsynced, so an acknowledged upload survives a crash whole or not at
    /// all.
    fn write_file(&self, hex: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(hex);
        if path.exists() {
            return Ok(());
        }
        let fail = |source| BlobError::WriteFailed {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(dir).map_err(fail)?;
        let tmp = dir.join(format!(".{hex}.{}.tmp", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(fail)
    }

    /// The blob's bytes: this server's file, or, when shared, etcd's copy (which then
    /// becomes this server's file).
    pub async fn read(&self, hex: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hex);
        match tokio::fs::read(&path).await {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BlobError::ReadFailed { path, source }),
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let Some(bytes) = shared.get(hex).await? else {
            return Ok(None);
        };
        let bytes = Arc::new(bytes);
        let files = self.clone();
        let (hex, copy) = (hex.to_string(), bytes.clone());
        // A failed local copy only costs a later read from etcd again.
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || files.write_file(&hex, &copy)).await
        {
            tracing::warn!(error = %e, "could not keep a local copy of a module");
        }
        Ok(Some(Arc::unwrap_or_clone(bytes)))
    }

    /// Every blob file this server holds (for backups of a redb cluster).
    pub fn local_digests(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    }

    pub async fn remove(&self, hex: &str) {
        let _ = tokio::fs::remove_file(self.path(hex)).await;
        if let Some(shared) = &self.shared
            && let Err(e) = shared.remove(hex).await
        {
            tracing::warn!(error = %e, "module bytes left in etcd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_written_once_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = ModuleBlobs::new(dir.path());
        let hex = "ab".repeat(32);
        blobs.put(&hex, Arc::new(b"xyz".to_vec())).await.unwrap();
        blobs.put(&hex, Arc::new(b"xyz".to_vec())).await.unwrap();
        assert_eq!(blobs.read(&hex).await.unwrap().unwrap(), b"xyz");
        assert_eq!(blobs.local_digests(), std::slice::from_ref(&hex));
        blobs.remove(&hex).await;
        assert!(blobs.read(&hex).await.unwrap().is_none());
    }
}

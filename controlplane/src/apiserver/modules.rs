//! The module store: Wasm binaries uploaded raw, validated, stored content-addressed on
//! disk, and described by a `skiff.dev/v1` Module object named by its digest.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use skiff_api::module::{self, Module, ModuleType};
use skiff_api::resources::{self, ResourceInfo};
use skiff_api::validation::{FieldError, FieldErrorType};

use crate::store::etcd::blobs::EtcdBlobs;

use super::error::{ApiError, ApiResult, Subject};
use super::request::{self, json_response};
use super::{ApiServer, Target};

fn modules_info() -> &'static ResourceInfo {
    resources::lookup(module::GROUP, module::VERSION, "modules").expect("modules are served")
}

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

/// Validates bytes as a Wasm core module or component, with wasmtime's parser.
fn inspect(bytes: &[u8]) -> Result<ModuleType, String> {
    let kind = if wasmparser::Parser::is_component(bytes) {
        ModuleType::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        ModuleType::Module
    } else {
        return Err("not a WebAssembly binary: the magic header \\0asm is missing".into());
    };
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| e.to_string())?;
    Ok(kind)
}

fn invalid_module(message: String) -> ApiError {
    ApiError::Invalid(
        Subject::new(modules_info(), ""),
        vec![FieldError {
            field: "body".into(),
            reason: FieldErrorType::Invalid,
            message: format!("Invalid value: {message}"),
        }],
    )
}

/// `POST /apis/skiff.dev/v1/modules` with the raw bytes.
pub(crate) async fn upload(
    api: &ApiServer,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (module, created) = store(api, headers, body).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, &module))
}

/// Validates and stores uploaded module bytes; returns the Module object and whether it
/// is new. Invalid Wasm is 422 and stores nothing.
pub(crate) async fn store(
    api: &ApiServer,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(serde_json::Value, bool)> {
    match request::content_type(headers).as_deref() {
        Some("application/wasm" | "application/octet-stream") => {}
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "modules are uploaded as raw bytes with Content-Type: application/wasm (got {})",
                other.unwrap_or("none")
            )));
        }
    }
    let bytes = request::read_body(headers, body, api.config.max_module_bytes).await?;
    let size = bytes.len() as u64;
    let (kind, hex) = tokio::task::spawn_blocking({
        let bytes = bytes.clone();
        move || inspect(&bytes).map(|kind| (kind, hex::encode(Sha256::digest(&bytes))))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(invalid_module)?;
    let digest = format!("{}{hex}", module::DIGEST_PREFIX);
    api.modules
        .put(&hex, Arc::new(bytes.to_vec()))
        .await
        .map_err(ApiError::internal)?;
    let info = modules_info();
    let mut object = serde_json::to_value(Module {
        digest: digest.clone(),
        size,
        module_type: kind,
        ..Default::default()
    })
    .map_err(ApiError::internal)?;
    object["metadata"] = serde_json::json!({"name": digest});
    let target = Target {
        info,
        namespace: None,
        name: None,
        sub: None,
    };
    match super::crud::create_object(api, &target, object, false).await {
        Ok(created) => Ok((created, true)),
        // The same bytes again: the upload is idempotent.
        Err(ApiError::AlreadyExists(_)) => {
            let existing =
                super::crud::get_stored(api, info, &info.key(None, &digest), &digest).await?;
            Ok(((*existing.object).clone(), false))
        }
        Err(e) => Err(e),
    }
}

/// `GET /apis/skiff.dev/v1/modules/sha256:<hex>`: the raw bytes.
pub(crate) async fn download(api: &ApiServer, name: &str) -> ApiResult<Response> {
    let info = modules_info();
    let hex = module::parse_digest(name).ok_or_else(|| ApiError::not_found(info, name))?;
    // The object is the source of truth: a blob without one is garbage from a delete.
    super::crud::get_stored(api, info, &info.key(None, name), name).await?;
    let bytes = api
        .modules
        .read(hex)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(info, name))?;
    Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

/// After a Module object is deleted, its blob goes too.
pub(crate) async fn forget_if_deleted(api: &ApiServer, name: &str) {
    let info = modules_info();
    if let (Some(hex), Ok(None)) = (
        module::parse_digest(name),
        api.store.get(&info.key(None, name)).await,
    ) {
        api.modules.remove(hex).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_tells_modules_from_components_and_rejects_garbage() {
        let core = wat::parse_str("(module)").unwrap();
        assert_eq!(inspect(&core), Ok(ModuleType::Module));
        let component = wat::parse_str("(component)").unwrap();
        assert_eq!(inspect(&component), Ok(ModuleType::Component));
        assert!(inspect(b"hello").unwrap_err().contains("magic"));
        let mut broken = core.clone();
        broken.extend_from_slice(&[1, 2, 3]);
        assert!(inspect(&broken).is_err());
    }

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

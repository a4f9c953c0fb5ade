//! The module store: Wasm binaries uploaded raw, validated, stored content-addressed
//! (see `blobs.rs`), and described by a `skiff.dev/v1` Module object named by its digest.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use skiff_api::module::{self, Module, ModuleType};
use skiff_api::resources::ResourceInfo;
use skiff_api::validation::{FieldError, FieldErrorType};

use super::Target;
use super::request::{self, json_response};
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult, Subject};
use crate::state::ApiServer;

fn modules_info() -> &'static ResourceInfo {
    crate::kinds::lookup(module::GROUP, module::VERSION, "modules").expect("modules are served")
}

/// Validates bytes as a Wasm core module or component, with wasmtime's parser.
pub(crate) fn inspect(bytes: &[u8]) -> Result<ModuleType, String> {
    let kind = if wasmparser::Parser::is_component(bytes) {
        ModuleType::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        ModuleType::Module
    } else {
        return Err("not a WebAssembly binary: the magic header \\0asm is missing".into());
    };
    counts_fit(bytes)?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| e.to_string())?;
    Ok(kind)
}

/// Refuses a binary any of whose sections declares more items than it has bytes. Every
/// item takes at least a byte, so no valid binary does; but the validator reserves room
/// for the declared count before it reads a single item (up to its limits: a million
/// exports is about 68 MB), so without this a 100-byte upload made the server allocate
/// tens of megabytes. With it, what the validator reserves is in proportion to the
/// upload. The parser allocates nothing by count, and fails where the validator would.
fn counts_fit(bytes: &[u8]) -> Result<(), String> {
    use wasmparser::Payload::*;
    fn limited<T>(section: &wasmparser::SectionLimited<'_, T>) -> (u32, Range<usize>) {
        (section.count(), section.range())
    }
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let (count, range) = match payload.map_err(|e| e.to_string())? {
            TypeSection(s) => limited(&s),
            ImportSection(s) => limited(&s),
            FunctionSection(s) => limited(&s),
            TableSection(s) => limited(&s),
            MemorySection(s) => limited(&s),
            TagSection(s) => limited(&s),
            GlobalSection(s) => limited(&s),
            ExportSection(s) => limited(&s),
            ElementSection(s) => limited(&s),
            DataSection(s) => limited(&s),
            InstanceSection(s) => limited(&s),
            CoreTypeSection(s) => limited(&s),
            ComponentInstanceSection(s) => limited(&s),
            ComponentAliasSection(s) => limited(&s),
            ComponentTypeSection(s) => limited(&s),
            ComponentCanonicalSection(s) => limited(&s),
            ComponentImportSection(s) => limited(&s),
            ComponentExportSection(s) => limited(&s),
            CodeSectionStart { count, range, .. } => (count, range),
            _ => continue,
        };
        if count as usize > range.len() {
            return Err(format!(
                "the section at offset {} declares {count} items in {} bytes",
                range.start,
                range.len()
            ));
        }
    }
    Ok(())
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

/// `GET /apis/skiff.dev/v1/modules/sha256:<hex>`: the raw bytes. Downloads by nodes
/// are counted per node (`skiff_node_module_downloads_total`): an agent fetches each
/// module once and keeps it, so a node counted twice for one module is refetching.
pub(crate) async fn download(
    api: &ApiServer,
    identity: &Identity,
    name: &str,
) -> ApiResult<Response> {
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
    if let Identity::Node { name: node, .. } = identity {
        api.metrics.module_download(node);
    }
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

    #[test]
    fn a_section_may_not_declare_more_items_than_it_has_bytes() {
        // Found by the module fuzz target: 104 bytes whose export section declares about
        // 950,000 exports, for which the validator reserved 68 MB before reading one.
        let bytes = b"\x00asm\x01\x00\x00\x00\x01\x0c\x02`\x04\x7f\x7f\x7f\x7f\x01\x7f`\x00\x00\x02#\x01\x16wasi_snapshot_previev0\x08fd_write\x00\x00\x03\x02\x01\x01\x05\x03\x01\x00\x01\x07\x13\x8d\xe39\x8e\xe38\x8e\x03\x02\x00\x06_st\x00\x06_s\n\x00\x12\x04name\x01\x0b_write";
        let e = inspect(bytes).unwrap_err();
        assert!(
            e.contains("declares") && e.contains("items in 19 bytes"),
            "{e}"
        );
        // Real modules and components pass, whatever their sections hold.
        let many = wat::parse_str(
            "(module (func (export \"a\")) (func (export \"b\")) (memory 1) (data (i32.const 0) \"x\"))",
        )
        .unwrap();
        assert_eq!(inspect(&many), Ok(ModuleType::Module));
        let component = wat::parse_str(
            "(component (core module $m (func (export \"f\"))) (core instance (instantiate $m)))",
        )
        .unwrap();
        assert_eq!(inspect(&component), Ok(ModuleType::Component));
    }
}

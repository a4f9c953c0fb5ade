//! The module store: Wasm binaries uploaded raw, validated, stored content-addressed
//! (see `blobs.rs`), and described by a `skiff.dev/v1` Module object named by its digest.

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
}

//! The `skiff.dev/v1` Module kind: a content-addressed Wasm binary that pods name as
//! `image: sha256:<hex>`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "skiff.dev";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "skiff.dev/v1";
pub const KIND: &str = "Module";
/// Prefix of a module reference in a container's `image`.
pub const DIGEST_PREFIX: &str = "sha256:";

/// What a Wasm binary is: a core module or a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "dev.skiff.v1.ModuleType")]
pub enum ModuleType {
    #[default]
    Module,
    Component,
}

/// A stored Wasm binary. Its name is its digest, so uploading the same bytes twice names
/// the same object. The bytes themselves are served at `.../modules/{digest}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.Module")]
pub struct Module {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `sha256:<64 hex>` of the bytes.
    #[serde(default)]
    pub digest: String,
    /// Size of the bytes.
    #[serde(default)]
    pub size: u64,
    /// Whether the bytes are a core module or a component.
    #[serde(default, rename = "type")]
    pub module_type: ModuleType,
}

impl Default for Module {
    fn default() -> Self {
        Module {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta::default(),
            digest: String::new(),
            size: 0,
            module_type: ModuleType::default(),
        }
    }
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn kind() -> String {
    KIND.to_string()
}

/// Parses `sha256:<64 lowercase hex>` and returns the hex part.
pub fn parse_digest(reference: &str) -> Option<&str> {
    let hex = reference.strip_prefix(DIGEST_PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_references_are_strict() {
        let hex = "a".repeat(64);
        assert_eq!(parse_digest(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(parse_digest(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(parse_digest("sha256:abc"), None);
        assert_eq!(parse_digest(&hex), None);
    }

    #[test]
    fn module_json_uses_type_for_module_or_component() {
        let m = Module {
            digest: "sha256:x".into(),
            size: 3,
            module_type: ModuleType::Component,
            ..Default::default()
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "component");
        assert_eq!(v["kind"], "Module");
        assert_eq!(v["apiVersion"], "skiff.dev/v1");
    }
}

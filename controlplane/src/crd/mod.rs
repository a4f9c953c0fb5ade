//! CustomResourceDefinitions made served: each served version of a CRD becomes a
//! [`CustomKind`] in the kinds registry (`crate::kinds`), so routing, discovery,
//! OpenAPI, Tables and watches find it as they find built-in kinds. The CRD's own
//! kind (checks, defaults) is `kinds/customresourcedefinition.rs`; the loop that keeps
//! the registry and the CRDs' status in step with the stored CRDs is [`controller`].
//!
//! A custom object is pruned, defaulted and validated against its version's structural
//! schema ([`schema`]) and `x-kubernetes-validations` rules ([`cel`]); its Table columns
//! are the version's `additionalPrinterColumns` ([`columns`]). Versions share one
//! storage key space and form: with conversion strategy `None`, an object is stored with
//! the storage version's `apiVersion` and shown at the version asked for, with only
//! `apiVersion` rewritten.

pub mod cel;
pub mod columns;
pub mod controller;
pub mod schema;

use std::sync::Arc;

use schemars::{Schema, SchemaGenerator};
use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource};
use skiff_api::validation::FieldError;

use crate::kinds::Kind;
use crate::kinds::print::{self, AGE, Column, NAME};

pub use controller::{register_stored, run};

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(v: &Value) -> &'static [&'static str] {
    let items: Vec<&'static str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(leak)
        .collect();
    Box::leak(items.into_boxed_slice())
}

/// One printer column: a Table column and the JSONPath of its cells.
struct PrinterColumn {
    column: Column,
    path: String,
}

/// Where a version's scale subresource reads and writes: replicas as field names
/// (the CRD's checks allow only `.field.field...` paths), the selector as a JSONPath.
struct ScalePaths {
    spec_replicas: Vec<String>,
    status_replicas: Vec<String>,
    label_selector: Option<String>,
}

/// `.spec.replicas` as field names.
fn fields_of(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// One served version of a CRD, as a kind.
pub struct CustomKind {
    info: &'static ResourceInfo,
    /// The `apiVersion` objects are stored with.
    storage_api_version: String,
    schema: Value,
    rules: cel::Rules,
    columns: Vec<PrinterColumn>,
    scale: Option<ScalePaths>,
}

/// Kubernetes' order of versions, most preferred first: GA before beta before alpha,
/// higher numbers first, then names that follow no such form, alphabetically.
fn version_priority(version: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    let parsed = version.strip_prefix('v').and_then(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        let (stage, minor) = if tail.is_empty() {
            (0, "0")
        } else if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (2, n)
        } else {
            return None;
        };
        Some((stage, major, minor.parse::<u64>().ok()?))
    });
    match parsed {
        Some((stage, major, minor)) => (
            stage,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            String::new(),
        ),
        None => (
            3,
            std::cmp::Reverse(0),
            std::cmp::Reverse(0),
            version.to_string(),
        ),
    }
}

impl CustomKind {
    /// The kinds of a CRD's served versions. Leaks the names it makes `'static`: a CRD
    /// is registered again only when its spec changes.
    pub fn of_crd(crd: &Value) -> Vec<CustomKind> {
        let spec = &crd["spec"];
        let names = &spec["names"];
        let group = leak(spec["group"].as_str().unwrap_or_default());
        let kind = leak(names["kind"].as_str().unwrap_or_default());
        let plural = leak(names["plural"].as_str().unwrap_or_default());
        let singular = names["singular"]
            .as_str()
            .map(leak)
            .unwrap_or_else(|| leak(&kind.to_lowercase()));
        let short_names = leak_list(&names["shortNames"]);
        let categories = leak_list(&names["categories"]);
        let namespaced = spec["scope"] != json!("Cluster");
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        let storage = versions
            .iter()
            .find(|v| v["storage"] == json!(true))
            .and_then(|v| v["name"].as_str())
            .unwrap_or_default();
        let storage_api_version = format!("{group}/{storage}");
        let mut served: Vec<&Value> = versions
            .iter()
            .filter(|v| v["served"] == json!(true))
            .collect();
        // Discovery prefers a group's first version: order them as Kubernetes does.
        served.sort_by_key(|v| version_priority(v["name"].as_str().unwrap_or_default()));
        served
            .into_iter()
            .map(|v| {
                let subs = &v["subresources"];
                let mut subresources = Vec::new();
                if subs.get("status").is_some() {
                    subresources.push(Subresource::Status);
                }
                let scale = subs.get("scale").map(|s| ScalePaths {
                    spec_replicas: fields_of(
                        s["specReplicasPath"].as_str().unwrap_or(".spec.replicas"),
                    ),
                    status_replicas: fields_of(
                        s["statusReplicasPath"]
                            .as_str()
                            .unwrap_or(".status.replicas"),
                    ),
                    label_selector: s["labelSelectorPath"].as_str().map(str::to_string),
                });
                if scale.is_some() {
                    subresources.push(Subresource::Scale);
                }
                let status_on_create = if subresources.contains(&Subresource::Status) {
                    StatusOnCreate::Reset
                } else {
                    StatusOnCreate::Keep
                };
                let info: &'static ResourceInfo = Box::leak(Box::new(ResourceInfo {
                    group,
                    version: leak(v["name"].as_str().unwrap_or_default()),
                    kind,
                    plural,
                    singular,
                    namespaced,
                    short_names,
                    categories,
                    subresources: Box::leak(subresources.into_boxed_slice()),
                    has_spec: true,
                    status_on_create,
                    extra_fields: &[],
                    // The kind's own hooks (below) are what the server calls.
                    normalize: Ok,
                    schema: |g| g.subschema_for::<Value>(),
                }));
                let schema = v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or_else(
                        || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                    );
                let columns = v["additionalPrinterColumns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| PrinterColumn {
                        column: (
                            leak(c["name"].as_str().unwrap_or_default()),
                            leak(c["type"].as_str().unwrap_or("string")),
                            u8::try_from(c["priority"].as_i64().unwrap_or(0)).unwrap_or(u8::MAX),
                        ),
                        path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect();
                CustomKind {
                    info,
                    storage_api_version: storage_api_version.clone(),
                    rules: cel::Rules::compile(&schema),
                    schema,
                    columns,
                    scale,
                }
            })
            .collect()
    }

    /// The rules of this version the server cannot evaluate.
    pub fn unsupported_rules(&self) -> Vec<(String, String)> {
        self.rules.unsupported()
    }

    /// The schema's name in the OpenAPI documents: `com.example.v1.Widget`.
    fn schema_name(&self) -> String {
        let mut parts: Vec<&str> = self.info.group.split('.').collect();
        parts.reverse();
        format!(
            "{}.{}.{}",
            parts.join("."),
            self.info.version,
            self.info.kind
        )
    }

    /// A cell as kubectl shows a column of this type.
    fn cell(&self, obj: &Value, column: &PrinterColumn) -> Value {
        let Some(v) = columns::first(obj, &column.path) else {
            return Value::Null;
        };
        match (column.column.1, v) {
            ("date", Value::String(_)) => json!(print::since(&json!({"t": v}), "/t")),
            ("string", Value::String(_))
            | ("integer" | "number", Value::Number(_))
            | ("boolean", Value::Bool(_)) => v.clone(),
            (_, Value::String(s)) => json!(s),
            (_, other) => json!(other.to_string()),
        }
    }
}

impl Kind for CustomKind {
    fn structural_schema(&self) -> Option<&Value> {
        Some(&self.schema)
    }

    fn info(&self) -> &'static ResourceInfo {
        self.info
    }

    /// Prunes what the schema does not name; metadata goes through ObjectMeta as for
    /// every kind.
    fn normalize(&self, mut obj: Value) -> Result<Value, serde_json::Error> {
        if !obj.is_object() {
            return Err(serde::de::Error::custom("expected an object"));
        }
        schema::prune(&self.schema, &mut obj, true);
        if let Some(meta) = obj.get("metadata").cloned() {
            obj["metadata"] = skiff_api::resources::through::<
                k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            >(meta)?;
        }
        Ok(obj)
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        let meta = generator
            .subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>()
            .to_value();
        let mut schema = self.schema.clone();
        if !schema["properties"].is_object() {
            schema["properties"] = json!({});
        }
        schema["properties"]["metadata"] =
            json!({"allOf": [meta], "description": "Standard object's metadata."});
        schema["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
        schema["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
        let name = self.schema_name();
        generator.definitions_mut().insert(name.clone(), schema);
        let path = generator.settings().definitions_path.to_string();
        Schema::new_ref(format!("#{}/{}", path.trim_end_matches('/'), name))
    }

    fn to_stored(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(self.storage_api_version);
        obj
    }

    fn served(&self, stored: &Value) -> Option<Value> {
        let mine = self.info.api_version();
        (stored.get("apiVersion").and_then(Value::as_str) != Some(&mine)).then(|| {
            let mut shown = stored.clone();
            shown["apiVersion"] = json!(mine);
            shown
        })
    }

    fn replicas_fields(&self) -> (Vec<String>, Vec<String>) {
        match &self.scale {
            Some(s) => (s.spec_replicas.clone(), s.status_replicas.clone()),
            None => (fields_of(".spec.replicas"), fields_of(".status.replicas")),
        }
    }

    fn scale_selector(&self, obj: &Value) -> Option<Value> {
        // Scale shows the selector string the CRD points at; as a LabelSelector object
        // when it parses as one, else with matchLabels from `k=v,...`.
        let path = self.scale.as_ref()?.label_selector.as_deref()?;
        let selector = columns::first(obj, path)?;
        match selector {
            Value::String(s) => {
                let labels: serde_json::Map<String, Value> = s
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.trim().to_string(), json!(v.trim())))
                    .collect();
                Some(json!({"matchLabels": labels}))
            }
            other => Some(other.clone()),
        }
    }

    fn default(&self, obj: &mut Value) {
        schema::default(&self.schema, obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        schema::validate(&self.schema, obj, "", errs);
        self.rules.check(&self.schema, obj, None, "", errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        self.rules.check(&self.schema, new, Some(old), "", errs);
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        if self.columns.is_empty() {
            return vec![NAME, AGE];
        }
        std::iter::once(NAME)
            .chain(self.columns.iter().map(|c| c.column))
            .collect()
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        if self.columns.is_empty() {
            return vec![print::name(obj), print::age(obj)];
        }
        std::iter::once(print::name(obj))
            .chain(self.columns.iter().map(|c| self.cell(obj, c)))
            .collect()
    }
}

/// The kinds of a CRD, shared.
pub fn kinds_of(crd: &Value) -> Vec<Arc<CustomKind>> {
    CustomKind::of_crd(crd).into_iter().map(Arc::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_as_kubernetes_prefers_them() {
        let mut versions = vec!["v1alpha1", "foo", "v1beta1", "v2", "v1", "v1beta2", "v10"];
        versions.sort_by_key(|v| version_priority(v));
        assert_eq!(
            versions,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn a_crd_version_is_a_kind_with_its_names_columns_and_schema() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Cluster",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                         "spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 2}}}}}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        });
        let kinds = CustomKind::of_crd(&crd);
        assert_eq!(kinds.len(), 2);
        let (v1, beta) = (&kinds[0], &kinds[1]);
        assert_eq!((v1.info.version, beta.info.version), ("v1", "v1beta1"));
        assert!(!v1.info.namespaced);
        assert_eq!(v1.info.short_names, ["wd"]);
        assert!(v1.info.has_subresource(Subresource::Status));
        assert!(!beta.info.has_subresource(Subresource::Status));

        let mut obj = v1
            .normalize(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w"}, "spec": {"junk": 1}}))
            .unwrap();
        v1.default(&mut obj);
        assert_eq!(obj["spec"], json!({"size": 2}));
        assert_eq!(
            v1.columns().iter().map(|c| c.0).collect::<Vec<_>>(),
            ["Name", "Size"]
        );
        assert_eq!(v1.cells(&obj), vec![json!("w"), json!(2)]);
        // conversion None: stored at v1, shown at v1beta1 with only apiVersion changed.
        let stored = beta.to_stored(obj.clone());
        assert_eq!(stored["apiVersion"], "example.com/v1");
        assert_eq!(
            beta.served(&stored).unwrap()["apiVersion"],
            "example.com/v1beta1"
        );
        assert!(v1.served(&stored).is_none());
        let mut errs = Vec::new();
        v1.validate(&json!({"spec": {"size": "big"}}), &mut errs);
        assert_eq!(errs[0].field, "spec.size");
    }
}

//! StorageClasses (storage.k8s.io/v1, cluster-scoped): a provisioner, a reclaim policy
//! (Delete by default) and a binding mode (Immediate by default); immutable once made,
//! as in Kubernetes; kubectl's PROVISIONER, RECLAIMPOLICY, VOLUMEBINDINGMODE and
//! ALLOWVOLUMEEXPANSION columns, with "(default)" after the default class's name. The
//! server creates `local-path`, the built-in provisioner's class, as the default (as k3s
//! ships one).

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::{default_at, immutable, required};
use crate::kinds::print::{AGE, Column, NAME, age};

/// The built-in provisioner: a directory on the node where the claim's first pod lands.
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.dev/local-path";
/// The class the server creates.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The annotation that makes a class the default for claims that name none.
pub const IS_DEFAULT: &str = "storageclass.kubernetes.io/is-default-class";

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "storage.k8s.io",
    version: "v1",
    kind: "StorageClass",
    plural: "storageclasses",
    singular: "storageclass",
    namespaced: false,
    short_names: &["sc"],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::storage::v1::StorageClass>,
    schema: schema_of::<k8s_openapi::api::storage::v1::StorageClass>,
};

pub(super) struct StorageClass;

/// Whether a class is marked the default.
pub fn is_default(class: &Value) -> bool {
    class
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(IS_DEFAULT))
        .and_then(Value::as_str)
        == Some("true")
}

impl Kind for StorageClass {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["reclaimPolicy"], json!("Delete"));
        default_at(obj, &["volumeBindingMode"], json!("Immediate"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if obj["provisioner"].as_str().is_none_or(str::is_empty) {
            errs.push(required("provisioner"));
        }
        if let Some(p) = obj["reclaimPolicy"].as_str()
            && !["Delete", "Retain"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                "reclaimPolicy",
                p,
                &["Delete", "Retain"],
            ));
        }
        if let Some(m) = obj["volumeBindingMode"].as_str()
            && !["Immediate", "WaitForFirstConsumer"].contains(&m)
        {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                m,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        for field in [
            "provisioner",
            "parameters",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            immutable(old, new, &format!("/{field}"), field, errs);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        vec![
            json!(if is_default(obj) {
                format!("{name} (default)")
            } else {
                name.to_string()
            }),
            json!(obj["provisioner"].as_str().unwrap_or_default()),
            json!(obj["reclaimPolicy"].as_str().unwrap_or("Delete")),
            json!(obj["volumeBindingMode"].as_str().unwrap_or("Immediate")),
            json!(
                obj["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()
            ),
            age(obj),
        ]
    }
}

/// The class the server creates at start, if missing.
pub fn local_path_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": LOCAL_PATH_CLASS, "annotations": {IS_DEFAULT: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

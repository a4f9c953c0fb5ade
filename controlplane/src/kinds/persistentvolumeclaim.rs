//! PersistentVolumeClaims (v1): access modes and a storage request are required; the
//! request, class and volume are immutable once set (capacity is recorded, not
//! enforced); kubectl's STATUS, VOLUME, CAPACITY, ACCESS MODES, STORAGECLASS and AGE
//! columns. The volume controller binds them, provisioning `local-path` volumes.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::{default_at, immutable, required};
use crate::kinds::print::{AGE, Column, NAME, age, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "PersistentVolumeClaim",
    plural: "persistentvolumeclaims",
    singular: "persistentvolumeclaim",
    namespaced: true,
    short_names: &["pvc"],
    categories: &[],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Phase("Pending"),
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    schema: schema_of::<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
};

pub(super) struct PersistentVolumeClaim;

const MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// At least one access mode, each one Kubernetes knows.
pub(super) fn validate_access_modes(spec: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let modes = spec["accessModes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        errs.push(required(field));
    }
    for m in &modes {
        let m = m.as_str().unwrap_or_default();
        if !MODES.contains(&m) {
            errs.push(FieldError::not_supported(field, m, MODES));
        }
    }
}

/// Access modes as kubectl abbreviates them: RWO, ROX, RWX, RWOP.
pub(super) fn access_modes_cell(spec: &Value) -> String {
    spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Kind for PersistentVolumeClaim {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        // A StatefulSet's claims may be owned by it or by their pod (its retention policy).
        true
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "volumeMode"], json!("Filesystem"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        validate_access_modes(spec, "spec.accessModes", errs);
        if spec.pointer("/resources/requests/storage").is_none() {
            errs.push(required("spec.resources[storage]"));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/accessModes", "spec.accessModes", errs);
        immutable(old, new, "/spec/selector", "spec.selector", errs);
        // Set once, by whoever binds it.
        if old
            .pointer("/spec/volumeName")
            .is_some_and(|v| !v.is_null())
        {
            immutable(old, new, "/spec/volumeName", "spec.volumeName", errs);
        }
        if old
            .pointer("/spec/storageClassName")
            .is_some_and(|v| !v.is_null())
        {
            immutable(
                old,
                new,
                "/spec/storageClassName",
                "spec.storageClassName",
                errs,
            );
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/status/phase")),
            json!(s(obj, "/spec/volumeName")),
            json!(s(obj, "/status/capacity/storage")),
            json!(access_modes_cell(&obj["status"])),
            json!(s(obj, "/spec/storageClassName")),
            json!("<unset>"),
            age(obj),
        ]
    }
}

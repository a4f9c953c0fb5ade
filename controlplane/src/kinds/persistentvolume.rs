//! PersistentVolumes (v1, cluster-scoped): capacity, access modes, a reclaim policy
//! (Retain by default for volumes made by hand, as Kubernetes defaults it), exactly one
//! volume source; kubectl's CAPACITY, ACCESS MODES, RECLAIM POLICY, STATUS, CLAIM,
//! STORAGECLASS, VOLUMEATTRIBUTESCLASS, REASON and AGE columns. The volume controller
//! binds them and keeps their phase.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::persistentvolumeclaim::{access_modes_cell, validate_access_modes};
use crate::kinds::fields::{default_at, required};
use crate::kinds::print::{AGE, Column, NAME, age, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "PersistentVolume",
    plural: "persistentvolumes",
    singular: "persistentvolume",
    namespaced: false,
    short_names: &["pv"],
    categories: &[],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Phase("Pending"),
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::PersistentVolume>,
    schema: schema_of::<k8s_openapi::api::core::v1::PersistentVolume>,
};

pub(super) struct PersistentVolume;

/// The volume sources Skiff's agents can mount (a directory on the node).
const SOURCES: &[&str] = &["hostPath", "local"];

impl Kind for PersistentVolume {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn default(&self, obj: &mut Value) {
        default_at(
            obj,
            &["spec", "persistentVolumeReclaimPolicy"],
            json!("Retain"),
        );
        default_at(obj, &["spec", "volumeMode"], json!("Filesystem"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        if spec.pointer("/capacity/storage").is_none() {
            errs.push(required("spec.capacity"));
        }
        validate_access_modes(spec, "spec.accessModes", errs);
        let sources: Vec<&str> = spec
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| !v.is_null() && SOURCES.contains(&k.as_str()))
            .map(|(k, _)| k.as_str())
            .collect();
        match sources.len() {
            0 => errs.push(FieldError::required(
                "spec",
                "must specify a volume type (Skiff mounts hostPath and local volumes)",
            )),
            1 => {}
            _ => errs.push(FieldError::forbidden(
                "spec",
                "may not specify more than 1 volume type",
            )),
        }
        if let Some(p) = spec["persistentVolumeReclaimPolicy"].as_str()
            && !["Delete", "Retain", "Recycle"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                p,
                &["Delete", "Recycle", "Retain"],
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let claim = obj
            .pointer("/spec/claimRef")
            .map(|c| {
                format!(
                    "{}/{}",
                    c["namespace"].as_str().unwrap_or_default(),
                    c["name"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        vec![
            json!(s(obj, "/metadata/name")),
            json!(s(obj, "/spec/capacity/storage")),
            json!(access_modes_cell(&obj["spec"])),
            json!(s(obj, "/spec/persistentVolumeReclaimPolicy")),
            json!(s(obj, "/status/phase")),
            json!(claim),
            json!(s(obj, "/spec/storageClassName")),
            json!("<unset>"),
            json!(s(obj, "/status/reason")),
            age(obj),
        ]
    }
}

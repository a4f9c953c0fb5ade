//! StatefulSets (apps/v1): Kubernetes' defaults (OrderedReady, RollingUpdate with
//! partition 0, claims retained), the template checked with the claim templates' volumes
//! in it, the fields Kubernetes forbids updating, kubectl's READY column. The
//! controller is `controllers::statefulset`.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::workload::{TEMPLATE_COLUMNS, default_template, template_cells, validate_replicated};
use crate::kinds::fields::{default_at, validate_non_negative};
use crate::kinds::print::{self, AGE, Column, NAME, age, n};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "StatefulSet",
    plural: "statefulsets",
    singular: "statefulset",
    namespaced: true,
    short_names: &["sts"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &["status.replicas"],
    normalize: through::<k8s_openapi::api::apps::v1::StatefulSet>,
    schema: schema_of::<k8s_openapi::api::apps::v1::StatefulSet>,
};

pub(super) struct StatefulSet;

/// The spec fields an update may change, as Kubernetes words the rule.
const UPDATABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

impl Kind for StatefulSet {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "replicas"], json!(1));
        default_at(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
        default_at(
            obj,
            &["spec", "updateStrategy", "type"],
            json!("RollingUpdate"),
        );
        if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
            default_at(
                obj,
                &["spec", "updateStrategy", "rollingUpdate", "partition"],
                json!(0),
            );
        }
        default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
        for when in ["whenDeleted", "whenScaled"] {
            default_at(
                obj,
                &["spec", "persistentVolumeClaimRetentionPolicy", when],
                json!("Retain"),
            );
        }
        if let Some(claims) = obj
            .pointer_mut("/spec/volumeClaimTemplates")
            .and_then(Value::as_array_mut)
        {
            for claim in claims {
                default_at(claim, &["spec", "volumeMode"], json!("Filesystem"));
                default_at(claim, &["apiVersion"], json!("v1"));
                default_at(claim, &["kind"], json!("PersistentVolumeClaim"));
            }
        }
        default_template(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        // The template's mounts may name the claim templates: check it with them in.
        let mut with_claims = obj.clone();
        let claims: Vec<Value> = obj
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
            .map(|name| json!({"name": name, "persistentVolumeClaim": {"claimName": name}}))
            .collect();
        if let Some(spec) = with_claims.pointer_mut("/spec/template/spec") {
            let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
            volumes.extend(claims);
            spec["volumes"] = json!(volumes);
        }
        validate_replicated(&with_claims, errs);
        for (i, claim) in obj
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if claim
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(FieldError::required(
                    format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                    "name or generateName is required",
                ));
            }
            if claim
                .pointer("/spec/accessModes")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                errs.push(FieldError::required(
                    format!("spec.volumeClaimTemplates[{i}].spec.accessModes"),
                    "at least 1 access mode is required",
                ));
            }
        }
        let policy = obj
            .pointer("/spec/podManagementPolicy")
            .and_then(Value::as_str);
        if let Some(p) = policy
            && !["OrderedReady", "Parallel"].contains(&p)
        {
            errs.push(FieldError::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
        if let Some(t) = obj
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            && !["RollingUpdate", "OnDelete"].contains(&t)
        {
            errs.push(FieldError::not_supported(
                "spec.updateStrategy.type",
                t,
                &["OnDelete", "RollingUpdate"],
            ));
        }
        validate_non_negative(
            obj,
            "/spec/updateStrategy/rollingUpdate/partition",
            "spec.updateStrategy.rollingUpdate.partition",
            errs,
        );
        for when in ["whenDeleted", "whenScaled"] {
            if let Some(v) = obj
                .pointer(&format!(
                    "/spec/persistentVolumeClaimRetentionPolicy/{when}"
                ))
                .and_then(Value::as_str)
                && !["Retain", "Delete"].contains(&v)
            {
                errs.push(FieldError::not_supported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{when}"),
                    v,
                    &["Delete", "Retain"],
                ));
            }
        }
        let restart = obj
            .pointer("/spec/template/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always");
        if restart != "Always" {
            errs.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                restart,
                &["Always"],
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let strip = |obj: &Value| {
            let mut spec = obj["spec"].clone();
            if let Some(map) = spec.as_object_mut() {
                map.retain(|k, _| !UPDATABLE.contains(&k.as_str()));
            }
            spec
        };
        if strip(old) != strip(new) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![NAME, ("Ready", "string", 0), AGE];
        columns.extend(TEMPLATE_COLUMNS);
        columns
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![
            print::name(obj),
            json!(format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            age(obj),
        ];
        cells.extend(template_cells(obj));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Value {
        json!({"metadata": {"name": "db"}, "spec": {
            "selector": {"matchLabels": {"app": "db"}},
            "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [
                {"name": "main", "image": "sha256:00", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
            ]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        }})
    }

    #[test]
    fn defaults_and_checks_follow_kubernetes() {
        let mut obj = sts();
        StatefulSet.default(&mut obj);
        assert_eq!(obj["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            0
        );
        assert_eq!(
            obj["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Retain"
        );
        let mut errs = Vec::new();
        StatefulSet.validate(&obj, &mut errs);
        assert!(errs.is_empty(), "mounts may name claim templates: {errs:?}");
        let mut changed = obj.clone();
        changed["spec"]["serviceName"] = json!("other");
        StatefulSet.validate_update(&obj, &changed, &mut errs);
        assert_eq!(errs.len(), 1);
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(5);
        let mut errs = Vec::new();
        StatefulSet.validate_update(&obj, &scaled, &mut errs);
        assert!(errs.is_empty());
    }
}

//! ReplicaSets: one replica by default, checked as every replicated workload, an
//! immutable selector, kubectl's DESIRED, CURRENT and READY columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::workload::{TEMPLATE_COLUMNS, default_template, template_cells, validate_replicated};
use crate::kinds::fields::default_at;
use crate::kinds::fields::immutable;
use crate::kinds::print::{self, AGE, Column, NAME, age, n};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &["status.replicas"],
    normalize: through::<k8s_openapi::api::apps::v1::ReplicaSet>,
    schema: schema_of::<k8s_openapi::api::apps::v1::ReplicaSet>,
};

pub(super) struct ReplicaSet;

impl Kind for ReplicaSet {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "replicas"], json!(1));
        default_template(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/selector", "spec.selector", errs);
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
        ];
        columns.extend(TEMPLATE_COLUMNS);
        columns
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![
            print::name(obj),
            json!(n(obj, "/spec/replicas")),
            json!(n(obj, "/status/replicas")),
            json!(n(obj, "/status/readyReplicas")),
            age(obj),
        ];
        cells.extend(template_cells(obj));
        cells
    }
}

//! DaemonSets: history and RollingUpdate defaults, checked as every replicated workload,
//! an immutable selector, kubectl's scheduling columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::workload::{TEMPLATE_COLUMNS, default_template, template_cells, validate_replicated};
use crate::kinds::fields::default_at;
use crate::kinds::fields::immutable;
use crate::kinds::print::{self, AGE, Column, NAME, age, label_list, n};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::apps::v1::DaemonSet>,
    schema: schema_of::<k8s_openapi::api::apps::v1::DaemonSet>,
};

pub(super) struct DaemonSet;

impl Kind for DaemonSet {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
        default_at(
            obj,
            &["spec", "updateStrategy", "type"],
            json!("RollingUpdate"),
        );
        if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
            default_at(
                obj,
                &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"],
                json!(1),
            );
            default_at(
                obj,
                &["spec", "updateStrategy", "rollingUpdate", "maxSurge"],
                json!(0),
            );
        }
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
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            AGE,
        ];
        columns.extend(TEMPLATE_COLUMNS);
        columns
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![
            print::name(obj),
            json!(n(obj, "/status/desiredNumberScheduled")),
            json!(n(obj, "/status/currentNumberScheduled")),
            json!(n(obj, "/status/numberReady")),
            json!(n(obj, "/status/updatedNumberScheduled")),
            json!(n(obj, "/status/numberAvailable")),
            label_list(obj.pointer("/spec/template/spec/nodeSelector")),
            age(obj),
        ];
        cells.extend(template_cells(obj));
        cells
    }
}

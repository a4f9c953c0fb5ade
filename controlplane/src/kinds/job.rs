//! Jobs: their own uid-labelled selector unless `manualSelector`; parallelism,
//! completions, back-off and mode defaults; a restart policy of OnFailure or Never; an
//! immutable selector and completions; kubectl's STATUS, COMPLETIONS and DURATION columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::workload::{
    TEMPLATE_COLUMNS, default_template, template_cells, validate_pod_spec,
    validate_selector_and_template,
};
use super::{CreateContext, Kind};
use crate::kinds::fields::default_at;
use crate::kinds::fields::{immutable, validate_non_negative};
use crate::kinds::print::{self, AGE, Column, NAME, age, human_duration, n};
use crate::objects::set_path;

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
    singular: "job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &["status.successful"],
    normalize: through::<k8s_openapi::api::batch::v1::Job>,
    schema: schema_of::<k8s_openapi::api::batch::v1::Job>,
};

/// A Job selects its own pods by a label carrying its uid, unless the user asked to pick
/// the selector (`manualSelector`), as Kubernetes does.
fn job_selector(obj: &mut Value, uid: &str) {
    if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    set_path(
        obj,
        &["spec", "selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", json!(uid)),
        ("batch.kubernetes.io/job-name", name.clone()),
        ("controller-uid", json!(uid)),
        ("job-name", name),
    ] {
        set_path(obj, &["spec", "template", "metadata", "labels", key], value);
    }
}

pub(super) struct Job;

impl Kind for Job {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn prepare_create(&self, obj: &mut Value, ctx: &CreateContext<'_>) {
        job_selector(obj, ctx.uid);
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "parallelism"], json!(1));
        default_at(obj, &["spec", "completions"], json!(1));
        default_at(obj, &["spec", "backoffLimit"], json!(6));
        default_at(obj, &["spec", "completionMode"], json!("NonIndexed"));
        default_at(obj, &["spec", "suspend"], json!(false));
        default_template(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_selector_and_template(obj, errs);
        for (p, f) in [
            ("/spec/parallelism", "spec.parallelism"),
            ("/spec/completions", "spec.completions"),
            ("/spec/backoffLimit", "spec.backoffLimit"),
        ] {
            validate_non_negative(obj, p, f, errs);
        }
        validate_pod_spec(
            obj.pointer("/spec/template/spec"),
            "spec.template.spec",
            errs,
        );
        let policy = obj
            .pointer("/spec/template/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !["OnFailure", "Never"].contains(&policy) {
            errs.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                policy,
                &["OnFailure", "Never"],
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/selector", "spec.selector", errs);
        immutable(old, new, "/spec/completions", "spec.completions", errs);
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            AGE,
        ];
        columns.extend(TEMPLATE_COLUMNS);
        columns
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
        let has = |t: &str| {
            conditions
                .into_iter()
                .flatten()
                .any(|c| c["type"] == t && c["status"] == "True")
        };
        let status = if has("Complete") {
            "Complete"
        } else if has("Failed") {
            "Failed"
        } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
            "Terminating"
        } else {
            "Running"
        };
        let start = obj
            .pointer("/status/startTime")
            .and_then(Value::as_str)
            .and_then(crate::objects::parse_time);
        let end = obj
            .pointer("/status/completionTime")
            .and_then(Value::as_str)
            .and_then(crate::objects::parse_time)
            .unwrap_or_else(jiff::Timestamp::now);
        let duration = start
            .map(|s| human_duration(end.duration_since(s).as_secs()))
            .unwrap_or_default();
        let mut cells = vec![
            print::name(obj),
            json!(status),
            json!(format!(
                "{}/{}",
                n(obj, "/status/succeeded"),
                obj.pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            json!(duration),
            age(obj),
        ];
        cells.extend(template_cells(obj));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_selector_labels_template() {
        let mut j = json!({"metadata": {"name": "pi"}, "spec": {"template": {}}});
        job_selector(&mut j, "u1");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
    }
}

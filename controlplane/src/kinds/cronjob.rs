//! CronJobs: Kubernetes' defaults (concurrencyPolicy Allow, not suspended, 3 successful
//! and 1 failed Job kept) and those of the Job template's pod template; a schedule that
//! parses as Kubernetes' does (`crate::cron`), a known IANA `timeZone`, the template's
//! restart policy of OnFailure or Never; names short enough for the Jobs' suffix;
//! kubectl's SCHEDULE, TIMEZONE, SUSPEND, ACTIVE and LAST SCHEDULE columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError};

use super::workload::{default_pod_spec, validate_pod_spec};
use super::{Kind, NameRules};
use crate::cron::Schedule;
use crate::kinds::fields::{default_at, invalid, required, validate_non_negative};
use crate::kinds::print::{self, AGE, Column, NAME, age, containers, label_list, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    kind: "CronJob",
    plural: "cronjobs",
    singular: "cronjob",
    namespaced: true,
    short_names: &["cj"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::batch::v1::CronJob>,
    schema: schema_of::<k8s_openapi::api::batch::v1::CronJob>,
};

/// A CronJob's Jobs are named `NAME-<minutes since the epoch>` (up to 11 more
/// characters), and a Job's name must stay a 63-character label.
const MAX_NAME: usize = 52;

const POLICIES: [&str; 3] = ["Allow", "Forbid", "Replace"];

fn name_rules(name: &str) -> Vec<String> {
    let mut msgs = v::is_dns1123_subdomain(name);
    if name.len() > MAX_NAME {
        msgs.push(format!("must be no more than {MAX_NAME} characters"));
    }
    msgs
}

/// `spec.schedule`: Kubernetes refuses a zone in the schedule (the `timeZone` field
/// says it), then parses it.
fn validate_schedule(obj: &Value, errs: &mut Vec<FieldError>) {
    let schedule = s(obj, "/spec/schedule");
    if schedule.is_empty() {
        errs.push(required("spec.schedule"));
    } else if schedule.contains("TZ") {
        errs.push(invalid(
            "spec.schedule",
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
    } else if let Err(e) = Schedule::parse(schedule) {
        errs.push(invalid("spec.schedule", schedule, &e.to_string()));
    }
}

/// `spec.timeZone`: absent, or a zone of the IANA database other than `Local`.
fn validate_time_zone(obj: &Value, errs: &mut Vec<FieldError>) {
    let Some(zone) = obj.pointer("/spec/timeZone").and_then(Value::as_str) else {
        return;
    };
    let why = if zone.is_empty() {
        Some("timeZone must be nil or non-empty string".to_string())
    } else if zone.eq_ignore_ascii_case("local") {
        Some(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .to_string(),
        )
    } else if zone
        .split('/')
        .any(|p| p == "." || p == ".." || p.starts_with('-'))
        || crate::cron::time_zone(Some(zone)).is_err()
    {
        Some(format!("unknown time zone {zone}"))
    } else {
        None
    };
    if let Some(why) = why {
        errs.push(invalid("spec.timeZone", zone, &why));
    }
}

/// `spec.jobTemplate`: the Job's counts, its pod template and its restart policy.
fn validate_job_template(obj: &Value, errs: &mut Vec<FieldError>) {
    for f in ["parallelism", "completions", "backoffLimit"] {
        validate_non_negative(
            obj,
            &format!("/spec/jobTemplate/spec/{f}"),
            &format!("spec.jobTemplate.spec.{f}"),
            errs,
        );
    }
    let path = "spec.jobTemplate.spec.template.spec";
    let spec = obj.pointer("/spec/jobTemplate/spec/template/spec");
    validate_pod_spec(spec, path, errs);
    if spec.is_some() {
        let policy = s(obj, "/spec/jobTemplate/spec/template/spec/restartPolicy");
        if !["OnFailure", "Never"].contains(&policy) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &["OnFailure", "Never"],
            ));
        }
    }
}

pub(super) struct CronJob;

impl Kind for CronJob {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    /// Owns its Jobs: deleting a CronJob deletes them.
    fn garbage_collected(&self) -> bool {
        true
    }

    fn name_rules(&self) -> Option<NameRules> {
        Some(name_rules)
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "concurrencyPolicy"], json!("Allow"));
        default_at(obj, &["spec", "suspend"], json!(false));
        default_at(obj, &["spec", "successfulJobsHistoryLimit"], json!(3));
        default_at(obj, &["spec", "failedJobsHistoryLimit"], json!(1));
        if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
            default_pod_spec(spec);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_schedule(obj, errs);
        validate_time_zone(obj, errs);
        let policy = s(obj, "/spec/concurrencyPolicy");
        if policy.is_empty() {
            errs.push(required("spec.concurrencyPolicy"));
        } else if !POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(
                "spec.concurrencyPolicy",
                policy,
                &POLICIES,
            ));
        }
        for f in [
            "startingDeadlineSeconds",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
        ] {
            validate_non_negative(obj, &format!("/spec/{f}"), &format!("spec.{f}"), errs);
        }
        validate_job_template(obj, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let suspend = match obj.pointer("/spec/suspend").and_then(Value::as_bool) {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        let last = if obj.pointer("/status/lastScheduleTime").is_some() {
            print::since(obj, "/status/lastScheduleTime")
        } else {
            "<none>".into()
        };
        let containers_at = "/spec/jobTemplate/spec/template/spec/containers";
        vec![
            print::name(obj),
            json!(s(obj, "/spec/schedule")),
            print::or_none(s(obj, "/spec/timeZone").to_string()),
            json!(suspend),
            json!(
                obj.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(last),
            age(obj),
            containers(obj, containers_at, "name"),
            containers(obj, containers_at, "image"),
            label_list(obj.pointer("/spec/jobTemplate/spec/selector/matchLabels")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cronjob(spec: Value) -> Value {
        let mut obj = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "default"},
            "spec": {
                "schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "sha256:00"}],
                }}}},
            },
        });
        for (k, v) in spec.as_object().unwrap() {
            obj["spec"][k] = v.clone();
        }
        CronJob.default(&mut obj);
        obj
    }

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        CronJob.validate(&cronjob(spec), &mut errs);
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn defaults_are_kubernetes() {
        let obj = cronjob(json!({}));
        assert_eq!(obj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(obj["spec"]["suspend"], false);
        assert_eq!(obj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(obj["spec"]["failedJobsHistoryLimit"], 1);
        let pod = &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["restartPolicy"], "Never");
        assert!(errors(json!({})).is_empty());
    }

    #[test]
    fn schedules_zones_and_policies_are_checked() {
        assert_eq!(
            errors(json!({"schedule": "TZ=UTC 0 * * * *"})),
            [
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
        assert_eq!(
            errors(json!({"schedule": "@every 5m"})),
            ["spec.schedule: Invalid value: \"@every 5m\": unrecognized descriptor: @every 5m"]
        );
        assert_eq!(
            errors(json!({"schedule": "61 * * * *"})),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ]
        );
        assert!(errors(json!({"schedule": "@daily", "timeZone": "Europe/Paris"})).is_empty());
        assert_eq!(
            errors(json!({"timeZone": "Mars/Olympus"})),
            ["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"]
        );
        assert_eq!(errors(json!({"timeZone": "Local"})).len(), 1);
        let policy = errors(json!({"concurrencyPolicy": "Sometimes"}));
        assert_eq!(policy.len(), 1);
        assert!(
            policy[0].starts_with("spec.concurrencyPolicy: Unsupported value: \"Sometimes\""),
            "{policy:?}"
        );
        assert_eq!(
            errors(json!({"startingDeadlineSeconds": -1, "failedJobsHistoryLimit": -2})),
            [
                "spec.startingDeadlineSeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.failedJobsHistoryLimit: Invalid value: -2: must be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn the_template_must_not_restart_always() {
        let mut obj = cronjob(json!({}));
        obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        let mut errs = Vec::new();
        CronJob.validate(&obj, &mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            errs[0].field,
            "spec.jobTemplate.spec.template.spec.restartPolicy"
        );
    }

    #[test]
    fn names_leave_room_for_the_jobs_suffix() {
        assert!(name_rules(&"a".repeat(52)).is_empty());
        assert_eq!(
            name_rules(&"a".repeat(53)),
            ["must be no more than 52 characters"]
        );
    }
}

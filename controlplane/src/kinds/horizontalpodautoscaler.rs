//! HorizontalPodAutoscalers, stored as `autoscaling/v2` and served at `autoscaling/v1`
//! too (what older clients and `kubectl autoscale` of old send), converted as Kubernetes
//! converts them: v1's `targetCPUUtilizationPercentage` is a v2 `Resource` metric on cpu
//! with an `Utilization` target, and what v1 cannot say (other metrics, their status,
//! the conditions, `behavior`) rides in the `autoscaling.alpha.kubernetes.io/*`
//! annotations of the v1 form, so a v2 object read and written back through v1 loses
//! nothing.
//!
//! Defaults are v2's: `minReplicas` 1, a cpu target of 80% when no metric is given, and a
//! `behavior` that is given but partial filled in with Kubernetes' rules (scale up: no
//! stabilization, the larger of 100% and 4 pods per 15 s; scale down: 300 s
//! stabilization, 100% per 15 s). Validation is kube-apiserver's, and the Table columns
//! are kubectl's (REFERENCE, TARGETS, MINPODS, MAXPODS, REPLICAS).

use serde_json::{Map, Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{FieldError, FieldErrorType};

use super::Kind;
use crate::kinds::fields::{default_at, err, invalid, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// The stored form.
static INFO: ResourceInfo = ResourceInfo {
    group: "autoscaling",
    version: "v2",
    kind: "HorizontalPodAutoscaler",
    plural: "horizontalpodautoscalers",
    singular: "horizontalpodautoscaler",
    namespaced: true,
    short_names: &["hpa"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>,
    schema: schema_of::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>,
};

/// The same objects, served as `autoscaling/v1`.
static INFO_V1: ResourceInfo = ResourceInfo {
    group: "autoscaling",
    version: "v1",
    kind: "HorizontalPodAutoscaler",
    plural: "horizontalpodautoscalers",
    singular: "horizontalpodautoscaler",
    namespaced: true,
    short_names: &["hpa"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>,
    schema: schema_of::<k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler>,
};

/// The stored kind's description, for the controller.
pub fn info() -> &'static ResourceInfo {
    &INFO
}

/// Where the v1 form keeps what it has no fields for (Kubernetes' keys).
pub const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
pub const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
pub const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
pub const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The cpu utilization Kubernetes targets when an autoscaler names no metric.
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;

/// The longest stabilization window and policy period Kubernetes accepts.
const MAX_STABILIZATION_SECONDS: i64 = 3600;
const MAX_PERIOD_SECONDS: i64 = 1800;

/// Kubernetes' scale-up rules: no stabilization, the larger of doubling and +4 pods
/// each 15 s.
pub fn default_scale_up() -> Value {
    json!({
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ],
    })
}

/// Kubernetes' scale-down rules: the highest recommendation of the last 5 minutes, and
/// then down to it at once.
pub fn default_scale_down() -> Value {
    json!({
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    })
}

/// Fills the unset fields of one direction's rules from `defaults`.
pub fn fill_rules(rules: Option<&Value>, defaults: Value) -> Value {
    let mut out = defaults;
    if let Some(given) = rules.and_then(Value::as_object) {
        for key in ["stabilizationWindowSeconds", "selectPolicy", "policies"] {
            if let Some(v) = given.get(key).filter(|v| !v.is_null()) {
                out[key] = v.clone();
            }
        }
    }
    out
}

pub(super) struct HorizontalPodAutoscaler;

/// The `autoscaling/v1` view of the stored kind.
pub(super) struct HorizontalPodAutoscalerV1;

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric.pointer("/resource/name") == Some(&json!("cpu"))
        && metric.pointer("/resource/target/type") == Some(&json!("Utilization"))
}

fn annotations_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let meta = crate::objects::meta_mut(obj);
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    annotations.as_object_mut().expect("made an object")
}

/// Removes an annotation and reads its JSON; None when absent or not JSON (Kubernetes
/// ignores an annotation it cannot read).
fn take_annotation(obj: &mut Value, key: &str) -> Option<Value> {
    let text = annotations_mut(obj).remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

fn drop_empty_annotations(obj: &mut Value) {
    if obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        crate::objects::meta_mut(obj).remove("annotations");
    }
}

/// An `autoscaling/v1` object as the stored `autoscaling/v2` one.
pub fn v1_to_v2(mut obj: Value) -> Value {
    let metrics = take_annotation(&mut obj, METRICS_ANNOTATION);
    let current = take_annotation(&mut obj, CURRENT_METRICS_ANNOTATION);
    let conditions = take_annotation(&mut obj, CONDITIONS_ANNOTATION);
    let behavior = take_annotation(&mut obj, BEHAVIOR_ANNOTATION);
    drop_empty_annotations(&mut obj);
    obj["apiVersion"] = json!(INFO.api_version());
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let mut list = Vec::new();
        if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage")
            && !cpu.is_null()
        {
            list.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": cpu}}}));
        }
        list.extend(
            metrics
                .and_then(|m| m.as_array().cloned())
                .unwrap_or_default(),
        );
        if !list.is_empty() {
            spec.insert("metrics".into(), Value::Array(list));
        }
        if let Some(behavior) = behavior {
            spec.insert("behavior".into(), behavior);
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let mut list = Vec::new();
        if let Some(cpu) = status.remove("currentCPUUtilizationPercentage")
            && !cpu.is_null()
        {
            list.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": cpu}}}));
        }
        list.extend(
            current
                .and_then(|m| m.as_array().cloned())
                .unwrap_or_default(),
        );
        if !list.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(list));
        }
        if let Some(conditions) = conditions {
            status.insert("conditions".into(), conditions);
        }
        // v2 requires desiredReplicas; v1 has it too.
        status.entry("desiredReplicas").or_insert_with(|| json!(0));
    }
    obj
}

/// The stored `autoscaling/v2` object as `autoscaling/v1` shows it.
pub fn v2_to_v1(mut obj: Value) -> Value {
    obj["apiVersion"] = json!(INFO_V1.api_version());
    let mut annotations: Vec<(&str, Value)> = Vec::new();
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = spec
            .remove("metrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let mut others = Vec::new();
        for metric in metrics {
            if is_cpu_utilization(&metric) && !spec.contains_key("targetCPUUtilizationPercentage") {
                spec.insert(
                    "targetCPUUtilizationPercentage".into(),
                    metric
                        .pointer("/resource/target/averageUtilization")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
            } else {
                others.push(metric);
            }
        }
        if !others.is_empty() {
            annotations.push((METRICS_ANNOTATION, Value::Array(others)));
        }
        if let Some(behavior) = spec.remove("behavior").filter(|b| !b.is_null()) {
            annotations.push((BEHAVIOR_ANNOTATION, behavior));
        }
    }
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        let current = status
            .remove("currentMetrics")
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default();
        let mut others = Vec::new();
        for metric in current {
            let cpu = metric["type"] == "Resource"
                && metric.pointer("/resource/name") == Some(&json!("cpu"));
            match metric.pointer("/resource/current/averageUtilization") {
                Some(u) if cpu && !status.contains_key("currentCPUUtilizationPercentage") => {
                    status.insert("currentCPUUtilizationPercentage".into(), u.clone());
                }
                _ => others.push(metric),
            }
        }
        if !others.is_empty() {
            annotations.push((CURRENT_METRICS_ANNOTATION, Value::Array(others)));
        }
        if let Some(conditions) = status
            .remove("conditions")
            .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
        {
            annotations.push((CONDITIONS_ANNOTATION, conditions));
        }
    }
    for (key, value) in annotations {
        annotations_mut(&mut obj).insert(key.into(), json!(value.to_string()));
    }
    obj
}

impl Kind for HorizontalPodAutoscaler {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn default(&self, obj: &mut Value) {
        default_hpa(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_hpa(obj, errs);
    }

    fn columns(&self) -> Vec<Column> {
        hpa_columns()
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        hpa_cells(obj)
    }
}

/// Served at v1, stored and checked as v2: the hooks after decoding see the v2 form.
impl Kind for HorizontalPodAutoscalerV1 {
    fn info(&self) -> &'static ResourceInfo {
        &INFO_V1
    }

    fn to_stored(&self, obj: Value) -> Value {
        v1_to_v2(obj)
    }

    fn served(&self, stored: &Value) -> Option<Value> {
        Some(v2_to_v1(stored.clone()))
    }

    fn default(&self, obj: &mut Value) {
        default_hpa(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_hpa(obj, errs);
    }

    fn columns(&self) -> Vec<Column> {
        hpa_columns()
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        hpa_cells(obj)
    }
}

fn default_hpa(obj: &mut Value) {
    default_at(obj, &["spec", "minReplicas"], json!(1));
    let no_metrics = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_metrics && obj.get("spec").is_some_and(Value::is_object) {
        crate::objects::set_path(
            obj,
            &["spec", "metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]),
        );
    }
    // A behavior that is given is completed; one that is not stays unset (the
    // controller then uses the same defaults), as Kubernetes stores it.
    if let Some(behavior) = obj.pointer_mut("/spec/behavior").filter(|b| b.is_object()) {
        let up = fill_rules(behavior.get("scaleUp"), default_scale_up());
        let down = fill_rules(behavior.get("scaleDown"), default_scale_down());
        behavior["scaleUp"] = up;
        behavior["scaleDown"] = down;
    }
}

const METRIC_TYPES: &[&str] = &[
    "ContainerResource",
    "External",
    "Object",
    "Pods",
    "Resource",
];

/// The field of a MetricSpec that each type populates.
fn source_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ContainerResource" => "containerResource",
        "External" => "external",
        "Object" => "object",
        "Pods" => "pods",
        "Resource" => "resource",
        _ => return None,
    })
}

fn positive_int(value: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        let n = v.as_i64().unwrap_or(0);
        if n <= 0 {
            errs.push(err(
                field,
                FieldErrorType::Invalid,
                format!("Invalid value: {v}: must be greater than 0"),
            ));
        }
    }
}

fn positive_quantity(value: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| !v.is_null()) {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if skiff_api::quantity::milli_value(&text).is_ok_and(|m| m == 0) {
            errs.push(invalid(field, &text, "must be positive"));
        } else if skiff_api::quantity::milli_value(&text).is_err() {
            errs.push(invalid(
                field,
                &text,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            ));
        }
    }
}

/// A MetricTarget: its type, and the value that type reads, positive.
fn validate_target(
    target: Option<&Value>,
    path: &str,
    allowed: &[&str],
    errs: &mut Vec<FieldError>,
) {
    let Some(target) = target.filter(|t| t.is_object()) else {
        errs.push(required(format!("{path}.target")));
        return;
    };
    let kind = target
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        errs.push(required(format!("{path}.target.type")));
    } else if !["Utilization", "Value", "AverageValue"].contains(&kind) {
        errs.push(FieldError::not_supported(
            format!("{path}.target.type"),
            kind,
            &["AverageValue", "Utilization", "Value"],
        ));
    } else if !allowed.contains(&kind) {
        errs.push(invalid(
            format!("{path}.target.type"),
            kind,
            &format!("must be {}", allowed.join(" or ")),
        ));
    }
    positive_int(
        target.get("averageUtilization"),
        &format!("{path}.target.averageUtilization"),
        errs,
    );
    positive_quantity(target.get("value"), &format!("{path}.target.value"), errs);
    positive_quantity(
        target.get("averageValue"),
        &format!("{path}.target.averageValue"),
        errs,
    );
    let field = match kind {
        "Utilization" => "averageUtilization",
        "Value" => "value",
        "AverageValue" => "averageValue",
        _ => return,
    };
    if target.get(field).is_none_or(Value::is_null) {
        errs.push(err(
            format!("{path}.target.{field}"),
            FieldErrorType::Required,
            format!("Required value: must set {field} when target type is {kind}"),
        ));
    }
}

fn validate_metric_name(metric: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let name = metric
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        errs.push(required(format!("{path}.metric.name")));
    } else {
        for msg in skiff_api::validation::is_path_segment_name(name) {
            errs.push(invalid(format!("{path}.metric.name"), name, &msg));
        }
    }
    if let Some(selector) = metric
        .and_then(|m| m.get("selector"))
        .filter(|s| !s.is_null())
    {
        let parsed = serde_json::from_value(selector.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| {
                skiff_api::selector::LabelSelector::from_label_selector(&s)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = parsed {
            errs.push(invalid(
                format!("{path}.metric.selector"),
                &selector.to_string(),
                &e,
            ));
        }
    }
}

fn validate_reference(reference: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    for field in ["kind", "name"] {
        let value = reference
            .and_then(|r| r.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if value.is_empty() {
            errs.push(required(format!("{path}.{field}")));
        } else {
            for msg in skiff_api::validation::is_path_segment_name(value) {
                errs.push(invalid(format!("{path}.{field}"), value, &msg));
            }
        }
    }
}

fn validate_metric(metric: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let kind = metric
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(field) = source_field(kind) else {
        if kind.is_empty() {
            errs.push(required(format!("{path}.type")));
        } else {
            errs.push(FieldError::not_supported(
                format!("{path}.type"),
                kind,
                METRIC_TYPES,
            ));
        }
        return;
    };
    for other in METRIC_TYPES.iter().filter_map(|t| source_field(t)) {
        if other != field && metric.get(other).is_some_and(|v| !v.is_null()) {
            errs.push(err(
                format!("{path}.{other}"),
                FieldErrorType::Forbidden,
                "Forbidden: must populate the given metric source only",
            ));
        }
    }
    let Some(source) = metric.get(field).filter(|s| s.is_object()) else {
        errs.push(err(
            format!("{path}.{field}"),
            FieldErrorType::Required,
            "Required value: must populate information for the given metric source",
        ));
        return;
    };
    let here = format!("{path}.{field}");
    match kind {
        "Resource" | "ContainerResource" => {
            let name = source
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.is_empty() {
                errs.push(required(format!("{here}.name")));
            }
            if kind == "ContainerResource"
                && source
                    .get("container")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                errs.push(required(format!("{here}.container")));
            }
            validate_target(
                source.get("target"),
                &here,
                &["Utilization", "AverageValue"],
                errs,
            );
        }
        "Pods" => {
            validate_metric_name(source.get("metric"), &here, errs);
            validate_target(source.get("target"), &here, &["AverageValue"], errs);
        }
        "Object" => {
            validate_reference(
                source.get("describedObject"),
                &format!("{here}.describedObject"),
                errs,
            );
            validate_metric_name(source.get("metric"), &here, errs);
            validate_target(
                source.get("target"),
                &here,
                &["Value", "AverageValue"],
                errs,
            );
        }
        _ => {
            validate_metric_name(source.get("metric"), &here, errs);
            validate_target(
                source.get("target"),
                &here,
                &["Value", "AverageValue"],
                errs,
            );
        }
    }
}

fn validate_rules(rules: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let Some(rules) = rules.filter(|r| r.is_object()) else {
        return;
    };
    if let Some(window) = rules
        .get("stabilizationWindowSeconds")
        .and_then(Value::as_i64)
        && !(0..=MAX_STABILIZATION_SECONDS).contains(&window)
    {
        errs.push(err(
            format!("{path}.stabilizationWindowSeconds"),
            FieldErrorType::Invalid,
            format!(
                "Invalid value: {window}: must be greater than or equal to zero and less than or equal to {MAX_STABILIZATION_SECONDS}"
            ),
        ));
    }
    if let Some(select) = rules.get("selectPolicy").and_then(Value::as_str)
        && !["Max", "Min", "Disabled"].contains(&select)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.selectPolicy"),
            select,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if policies.is_empty() {
        errs.push(err(
            format!("{path}.policies"),
            FieldErrorType::Required,
            "Required value: must specify at least one Policy",
        ));
    }
    for (i, policy) in policies.iter().enumerate() {
        let here = format!("{path}.policies[{i}]");
        let kind = policy
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !["Pods", "Percent"].contains(&kind) {
            errs.push(FieldError::not_supported(
                format!("{here}.type"),
                kind,
                &["Percent", "Pods"],
            ));
        }
        let value = policy.get("value").and_then(Value::as_i64).unwrap_or(0);
        if value <= 0 {
            errs.push(err(
                format!("{here}.value"),
                FieldErrorType::Invalid,
                format!("Invalid value: {value}: must be greater than zero"),
            ));
        }
        let period = policy
            .get("periodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if !(1..=MAX_PERIOD_SECONDS).contains(&period) {
            errs.push(err(
                format!("{here}.periodSeconds"),
                FieldErrorType::Invalid,
                format!(
                    "Invalid value: {period}: must be greater than zero and less than or equal to {MAX_PERIOD_SECONDS}"
                ),
            ));
        }
    }
}

fn validate_hpa(obj: &Value, errs: &mut Vec<FieldError>) {
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        errs.push(required("spec"));
        return;
    };
    validate_reference(spec.get("scaleTargetRef"), "spec.scaleTargetRef", errs);
    let metrics = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, metric) in metrics.iter().enumerate() {
        validate_metric(metric, &format!("spec.metrics[{i}]"), errs);
    }
    // Zero replicas only when a metric can wake the target (Object or External), as
    // Kubernetes' HPAScaleToZero allows.
    let can_wake = metrics
        .iter()
        .any(|m| m["type"] == "Object" || m["type"] == "External");
    let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    let floor = if can_wake { 0 } else { 1 };
    if min < floor {
        errs.push(err(
            "spec.minReplicas",
            FieldErrorType::Invalid,
            if floor == 0 {
                format!("Invalid value: {min}: must be greater than or equal to 0")
            } else {
                format!(
                    "Invalid value: {min}: must be greater than or equal to 1 (0 only with an Object or External metric)"
                )
            },
        ));
    }
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    if max < 1 {
        errs.push(err(
            "spec.maxReplicas",
            FieldErrorType::Invalid,
            format!("Invalid value: {max}: must be greater than 0"),
        ));
    } else if max < min {
        errs.push(err(
            "spec.maxReplicas",
            FieldErrorType::Invalid,
            format!("Invalid value: {max}: must be greater than or equal to `minReplicas`"),
        ));
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        validate_rules(behavior.get("scaleUp"), "spec.behavior.scaleUp", errs);
        validate_rules(behavior.get("scaleDown"), "spec.behavior.scaleDown", errs);
    }
}

fn hpa_columns() -> Vec<Column> {
    vec![
        NAME,
        ("Reference", "string", 0),
        ("Targets", "string", 0),
        ("MinPods", "string", 0),
        ("MaxPods", "integer", 0),
        ("Replicas", "integer", 0),
        AGE,
    ]
}

fn quantity_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One metric as kubectl's TARGETS column shows it: current/target, `<unknown>` for a
/// current value not yet read.
fn target_cell(metric: &Value, status: Option<&Value>) -> String {
    let unknown = || "<unknown>".to_string();
    let kind = metric["type"].as_str().unwrap_or_default();
    let field = source_field(kind).unwrap_or_default();
    let source = &metric[field];
    let current = status
        .filter(|s| s["type"] == kind)
        .map(|s| &s[field]["current"]);
    let target = &source["target"];
    match kind {
        "Resource" | "ContainerResource" => {
            let name = source["name"].as_str().unwrap_or_default();
            if let Some(value) = quantity_text(target.get("averageValue")) {
                let now = current
                    .and_then(|c| quantity_text(c.get("averageValue")))
                    .unwrap_or_else(unknown);
                format!("{name}: {now}/{value}")
            } else {
                let now = current
                    .and_then(|c| c.get("averageUtilization"))
                    .and_then(Value::as_i64)
                    .map_or_else(unknown, |u| format!("{u}%"));
                let goal = target
                    .get("averageUtilization")
                    .and_then(Value::as_i64)
                    .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                format!("{name}: {now}/{goal}")
            }
        }
        "Pods" => format!(
            "{}/{}",
            current
                .and_then(|c| quantity_text(c.get("averageValue")))
                .unwrap_or_else(unknown),
            quantity_text(target.get("averageValue")).unwrap_or_default()
        ),
        _ => {
            let key = if target.get("averageValue").is_some_and(|v| !v.is_null()) {
                "averageValue"
            } else {
                "value"
            };
            let now = current
                .and_then(|c| quantity_text(c.get(key)))
                .unwrap_or_else(unknown);
            let goal = quantity_text(target.get(key)).unwrap_or_default();
            if key == "averageValue" {
                format!("{now}/{goal} (avg)")
            } else {
                format!("{now}/{goal}")
            }
        }
    }
}

/// kubectl's TARGETS: the first two metrics, then how many more.
pub fn targets(obj: &Value) -> String {
    let metrics = obj
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let statuses = obj
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let list: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| target_cell(m, statuses.get(i)))
        .collect();
    match list.len() {
        0 => "<none>".into(),
        1 | 2 => list.join(", "),
        n => format!("{} + {} more...", list[..2].join(", "), n - 2),
    }
}

fn hpa_cells(obj: &Value) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        print::s(obj, "/spec/scaleTargetRef/kind"),
        print::s(obj, "/spec/scaleTargetRef/name")
    );
    vec![
        print::name(obj),
        json!(reference),
        json!(targets(obj)),
        json!(
            obj.pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .map_or_else(|| "<unset>".to_string(), |n| n.to_string())
        ),
        json!(print::n(obj, "/spec/maxReplicas")),
        json!(print::n(obj, "/status/currentReplicas")),
        age(obj),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn errors(spec: Value) -> Vec<String> {
        let mut obj = hpa(spec);
        default_hpa(&mut obj);
        let mut errs = Vec::new();
        validate_hpa(&obj, &mut errs);
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    fn target() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    }

    #[test]
    fn defaults_are_kubernetes_v2_defaults() {
        let mut obj = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 3}));
        default_hpa(&mut obj);
        assert_eq!(obj["spec"]["minReplicas"], 1);
        assert_eq!(
            obj["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert!(
            obj["spec"].get("behavior").is_none(),
            "an unset behavior stays unset"
        );
        let mut obj = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}));
        default_hpa(&mut obj);
        let behavior = &obj["spec"]["behavior"];
        assert_eq!(behavior["scaleDown"]["stabilizationWindowSeconds"], 60);
        assert_eq!(behavior["scaleDown"]["policies"][0]["type"], "Percent");
        assert_eq!(behavior["scaleUp"], default_scale_up());
        assert_eq!(behavior["scaleUp"]["policies"][0]["value"], 4);
    }

    #[test]
    fn bad_specs_get_field_causes() {
        assert!(errors(json!({"scaleTargetRef": target(), "maxReplicas": 3})).is_empty());
        let e = errors(json!({"maxReplicas": 3}));
        assert!(
            e.iter()
                .any(|e| e.contains("spec.scaleTargetRef.kind: Required")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("spec.scaleTargetRef.name: Required")),
            "{e:?}"
        );
        let e = errors(json!({"scaleTargetRef": target(), "minReplicas": 4, "maxReplicas": 3}));
        assert!(
            e[0].contains("spec.maxReplicas") && e[0].contains("minReplicas"),
            "{e:?}"
        );
        let e = errors(json!({"scaleTargetRef": target(), "minReplicas": 0, "maxReplicas": 3}));
        assert!(e[0].contains("spec.minReplicas"), "{e:?}");
        assert!(
            errors(json!({"scaleTargetRef": target(), "maxReplicas": 0}))[0]
                .contains("must be greater than 0")
        );
        // Zero is allowed with an Object metric, which can wake the target.
        let object = json!({"type": "Object", "object": {
            "describedObject": {"apiVersion": "skiff.dev/v1", "kind": "App", "name": "web"},
            "metric": {"name": "http_requests_per_second"},
            "target": {"type": "Value", "value": "10"}}});
        assert!(
            errors(
                json!({"scaleTargetRef": target(), "minReplicas": 0, "maxReplicas": 3,
            "metrics": [object]})
            )
            .is_empty()
        );
        let e = errors(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Value", "value": "1"}}},
                {"type": "Pods"},
                {"type": "Bogus"},
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "0"}},
                 "resource": {"name": "cpu"}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization"}}},
            ]}),
        );
        let has = |s: &str| e.iter().any(|m| m.contains(s));
        assert!(has("spec.metrics[0].resource.target.type"), "{e:?}");
        assert!(has("spec.metrics[1].pods: Required value"), "{e:?}");
        assert!(has("spec.metrics[2].type: Unsupported value"), "{e:?}");
        assert!(has("spec.metrics[3].resource: Forbidden"), "{e:?}");
        assert!(
            has("spec.metrics[3].pods.target.averageValue: Invalid value: \"0\": must be positive"),
            "{e:?}"
        );
        assert!(
            has("spec.metrics[4].resource.target.averageUtilization: Required"),
            "{e:?}"
        );
        let e = errors(
            json!({"scaleTargetRef": target(), "maxReplicas": 3, "behavior": {
            "scaleUp": {"selectPolicy": "Sometimes", "policies": [{"type": "Pods", "value": 0, "periodSeconds": 1801}]},
            "scaleDown": {"stabilizationWindowSeconds": 3601, "policies": []}}}),
        );
        let has = |s: &str| e.iter().any(|m| m.contains(s));
        assert!(
            has("spec.behavior.scaleUp.selectPolicy: Unsupported"),
            "{e:?}"
        );
        assert!(has("spec.behavior.scaleUp.policies[0].value"), "{e:?}");
        assert!(
            has("spec.behavior.scaleUp.policies[0].periodSeconds"),
            "{e:?}"
        );
        assert!(
            has("spec.behavior.scaleDown.stabilizationWindowSeconds"),
            "{e:?}"
        );
        assert!(has("spec.behavior.scaleDown.policies: Required"), "{e:?}");
    }

    #[test]
    fn v1_and_v2_round_trip() {
        // v1 → v2: the cpu target becomes a Resource metric.
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": target(), "minReplicas": 1, "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50},
            "status": {"currentReplicas": 2, "desiredReplicas": 2, "currentCPUUtilizationPercentage": 70}});
        let v2 = v1_to_v2(v1.clone());
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert_eq!(
            v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"],
            70
        );
        assert!(v2["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(v2_to_v1(v2.clone()), v1);
        // v2 with what v1 cannot say → v1 (annotations) → v2, unchanged.
        let full = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {"team": "a"}},
            "spec": {"scaleTargetRef": target(), "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"},
                        "target": {"type": "AverageValue", "averageValue": "10"}}}],
                "behavior": {"scaleUp": default_scale_up(), "scaleDown": default_scale_down()}},
            "status": {"currentReplicas": 1, "desiredReplicas": 2,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90}}},
                    {"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"}, "current": {"averageValue": "12"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "SucceededRescale"}]}});
        let v1 = v2_to_v1(full.clone());
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        for key in [
            METRICS_ANNOTATION,
            CURRENT_METRICS_ANNOTATION,
            CONDITIONS_ANNOTATION,
            BEHAVIOR_ANNOTATION,
        ] {
            assert!(
                v1["metadata"]["annotations"][key].is_string(),
                "{key}: {v1}"
            );
        }
        // The v1 form is a valid v1 object, and comes back whole.
        let typed = (INFO_V1.normalize)(v1.clone()).unwrap();
        assert_eq!(v1_to_v2(typed), full);
    }

    #[test]
    fn targets_print_like_kubectl() {
        let mut obj = hpa(json!({"scaleTargetRef": target(), "maxReplicas": 3}));
        default_hpa(&mut obj);
        let cells = hpa_cells(&obj);
        assert_eq!(cells[1], "Deployment/web");
        assert_eq!(cells[2], "cpu: <unknown>/80%");
        assert_eq!(cells[3], "1");
        assert_eq!(cells[4], 3);
        obj["status"] = json!({"currentReplicas": 2, "currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 45, "averageValue": "90m"}}}]});
        obj["spec"]["metrics"].as_array_mut().unwrap().extend([
            json!({"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}),
            json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}}),
        ]);
        let cells = hpa_cells(&obj);
        assert_eq!(cells[2], "cpu: 45%/80%, <unknown>/10 + 1 more...");
        assert_eq!(cells[5], 2);
    }
}

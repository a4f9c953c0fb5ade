//! A CRD version's structural schema applied to a custom object, as kube-apiserver does:
//! pruning of fields the schema does not name ([`prune`]), defaulting ([`default`]) and
//! OpenAPI validation with field paths ([`validate`]). The schema is the
//! `openAPIV3Schema` JSON as stored in the CRD; `x-kubernetes-validations` rules are
//! `super::cel`'s.

use serde_json::{Map, Value};

use skiff_api::validation::{FieldError, FieldErrorType};

/// The fields every object keeps at its root (and an embedded resource at its own),
/// whatever its schema says.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn str_of<'a>(schema: &'a Value, key: &str) -> Option<&'a str> {
    schema.get(key).and_then(Value::as_str)
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The schema of a map's values, when `additionalProperties` is a schema.
fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|s| s.is_object())
}

/// `parent.child`, or `child` at the root.
pub fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The schema of a field of an object, if the schema names it.
fn field_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    properties(schema)
        .and_then(|p| p.get(key))
        .or(additional(schema))
}

/// Removes what the schema does not name, and nulls where no null is allowed, as
/// Kubernetes prunes a custom object before defaulting. `root` keeps apiVersion, kind
/// and metadata at the top (metadata is the server's to check).
pub fn prune(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            let keeps_meta = root || flag(schema, "x-kubernetes-embedded-resource");
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            map.retain(|k, v| {
                if keeps_meta && ROOT_FIELDS.contains(&k.as_str()) {
                    return true;
                }
                match field_schema(schema, k) {
                    Some(sub) if v.is_null() => flag(sub, "nullable"),
                    Some(sub) => {
                        prune(sub, v, false);
                        true
                    }
                    None => preserve,
                }
            });
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for v in items {
                    prune(item, v, false);
                }
            }
        }
        _ => {}
    }
}

/// Sets the schema's `default`s of fields that are absent, inside objects that are
/// there (a default never creates its parent, as in Kubernetes).
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = properties(schema) {
                for (k, sub) in props {
                    if let Some(d) = sub.get("default")
                        && !map.contains_key(k)
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            for (k, v) in map.iter_mut() {
                if let Some(sub) = field_schema(schema, k) {
                    default(sub, v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for v in items {
                    default(item, v);
                }
            }
        }
        _ => {}
    }
}

/// The value as Kubernetes quotes it in a cause: strings quoted, the rest as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(path: &str, value: &Value, why: String) -> FieldError {
    FieldError {
        field: path.to_string(),
        reason: FieldErrorType::Invalid,
        message: format!("Invalid value: {}: {why}", shown(value)),
    }
}

fn shown_path(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

/// Whether a value has the schema's `type` (int-or-string fields take either).
fn has_type(schema: &Value, value: &Value) -> bool {
    if flag(schema, "x-kubernetes-int-or-string") {
        return matches!(json_type(value), "integer" | "string");
    }
    match str_of(schema, "type") {
        None | Some("") => true,
        Some("number") => value.is_number(),
        Some(t) => json_type(value) == t,
    }
}

/// Checks a value against its schema: the causes Kubernetes reports, with field paths
/// from `path` (empty at the root).
pub fn validate(schema: &Value, value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if value.is_null() {
        if !flag(schema, "nullable") && str_of(schema, "type").is_some() {
            errs.push(invalid(
                path,
                &Value::String("null".into()),
                format!(
                    "{} in body must be of type {}: \"null\"",
                    shown_path(path),
                    str_of(schema, "type").unwrap_or_default()
                ),
            ));
        }
        return;
    }
    if !has_type(schema, value) {
        let wanted = if flag(schema, "x-kubernetes-int-or-string") {
            "integer or string"
        } else {
            str_of(schema, "type").unwrap_or_default()
        };
        errs.push(invalid(
            path,
            &Value::String(json_type(value).into()),
            format!(
                "{} in body must be of type {wanted}: \"{}\"",
                shown_path(path),
                json_type(value)
            ),
        ));
        return;
    }
    validate_value(schema, value, path, errs);
    for (key, combine) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
        let Some(branches) = schema.get(key).and_then(Value::as_array) else {
            continue;
        };
        let mut passing = 0;
        let mut branch_errs = Vec::new();
        for branch in branches {
            let mut these = Vec::new();
            validate_value(branch, value, path, &mut these);
            if these.is_empty() {
                passing += 1;
            }
            branch_errs.extend(these);
        }
        match combine {
            0 => errs.extend(branch_errs),
            1 if passing == 0 => errs.push(invalid(
                path,
                value,
                format!(
                    "{} in body must match at least one schema (anyOf)",
                    shown_path(path)
                ),
            )),
            2 if passing != 1 => errs.push(invalid(
                path,
                value,
                format!(
                    "{} in body must match exactly one schema (oneOf)",
                    shown_path(path)
                ),
            )),
            _ => {}
        }
    }
    if let Some(not) = schema.get("not") {
        let mut these = Vec::new();
        validate_value(not, value, path, &mut these);
        if these.is_empty() {
            errs.push(invalid(
                path,
                value,
                format!(
                    "{} in body must not match the schema (not)",
                    shown_path(path)
                ),
            ));
        }
    }
}

/// The checks of one schema node on a value of the right type, and its children's.
fn validate_value(schema: &Value, value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let at = shown_path(path);
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(shown).collect();
        errs.push(FieldError {
            field: path.to_string(),
            reason: FieldErrorType::NotSupported,
            message: format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                supported.join(", ")
            ),
        });
    }
    match value {
        Value::Number(n) => check_number(schema, value, n.as_f64().unwrap_or(0.0), path, errs),
        Value::String(s) => check_string(schema, value, s, path, errs),
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                errs.push(invalid(
                    path,
                    value,
                    format!("{at} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                errs.push(FieldError {
                    field: path.to_string(),
                    reason: FieldErrorType::TooLong,
                    message: format!("Too many: {len}: must have at most {max} items"),
                });
            }
            let unique = flag(schema, "uniqueItems")
                || str_of(schema, "x-kubernetes-list-type") == Some("set");
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                if unique && items[..i].contains(item) {
                    let text = item
                        .as_str()
                        .map_or_else(|| item.to_string(), str::to_string);
                    errs.push(FieldError::duplicate(&item_path, &text));
                }
                if let Some(item_schema) = schema.get("items") {
                    validate(item_schema, item, &item_path, errs);
                }
            }
        }
        Value::Object(map) => {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    errs.push(FieldError::required(child_path(path, required), ""));
                }
            }
            let len = map.len() as u64;
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                && len < min
            {
                errs.push(invalid(
                    path,
                    value,
                    format!("{at} in body should have at least {min} properties"),
                ));
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && len > max
            {
                errs.push(invalid(
                    path,
                    value,
                    format!("{at} in body should have at most {max} properties"),
                ));
            }
            if flag(schema, "x-kubernetes-embedded-resource") {
                for field in ["apiVersion", "kind"] {
                    if map
                        .get(field)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errs.push(FieldError::required(
                            child_path(path, field),
                            "must not be empty",
                        ));
                    }
                }
            }
            for (k, v) in map {
                if path.is_empty() && ROOT_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(sub) = properties(schema).and_then(|p| p.get(k)) {
                    validate(sub, v, &child_path(path, k), errs);
                } else if let Some(sub) = additional(schema) {
                    validate(sub, v, &format!("{path}[{k}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn check_number(schema: &Value, value: &Value, n: f64, path: &str, errs: &mut Vec<FieldError>) {
    let at = shown_path(path);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if n < min || (exclusive && n == min) {
            let how = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(invalid(
                path,
                value,
                format!("{at} in body should be {how} {}", schema["minimum"]),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if n > max || (exclusive && n == max) {
            let how = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(invalid(
                path,
                value,
                format!("{at} in body should be {how} {}", schema["maximum"]),
            ));
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m > 0.0
        && (n / m).fract() != 0.0
    {
        errs.push(invalid(
            path,
            value,
            format!(
                "{at} in body should be a multiple of {}",
                schema["multipleOf"]
            ),
        ));
    }
    if str_of(schema, "format") == Some("int32")
        && (n < f64::from(i32::MIN) || n > f64::from(i32::MAX))
    {
        errs.push(invalid(
            path,
            value,
            format!("{at} in body must be of type int32"),
        ));
    }
}

fn check_string(schema: &Value, value: &Value, s: &str, path: &str, errs: &mut Vec<FieldError>) {
    let at = shown_path(path);
    // Lengths count characters, as Kubernetes' validator counts runes.
    let len = s.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        errs.push(invalid(
            path,
            value,
            format!("{at} in body should be at least {min} chars long"),
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        errs.push(FieldError {
            field: path.to_string(),
            reason: FieldErrorType::TooLong,
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(pattern) = str_of(schema, "pattern") {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(s) => {}
            _ => errs.push(invalid(
                path,
                value,
                format!("{at} in body should match '{pattern}'"),
            )),
        }
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        return;
    }
    let format_ok = match str_of(schema, "format") {
        Some("date-time") => s.parse::<jiff::Timestamp>().is_ok(),
        Some("date") => s.parse::<jiff::civil::Date>().is_ok(),
        Some("byte") => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        Some("uuid") => uuid::Uuid::parse_str(s).is_ok(),
        Some("int-or-string") => true,
        _ => true,
    };
    if !format_ok {
        errs.push(invalid(
            path,
            value,
            format!(
                "{at} in body must be of type {}",
                str_of(schema, "format").unwrap_or_default()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn widget_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "minLength": 1, "pattern": "^[a-z:]+$"},
                        "replicas": {"type": "integer", "default": 1, "minimum": 0, "maximum": 10, "format": "int32"},
                        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
                        "note": {"type": "string", "nullable": true},
                        "steps": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string", "default": "step"}}}}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    fn errors(obj: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(&widget_schema(), &obj, "", &mut errs);
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn unknown_fields_are_pruned_unless_preserved() {
        let mut obj = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "bogus": 1,
            "spec": {
                "image": "a", "extra": true,
                "free": {"anything": {"goes": 1}},
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}, "other": 1},
                "labels": {"a": "b"},
                "note": null, "mode": null,
                "steps": [{"name": "x", "junk": 1}]
            }
        });
        prune(&widget_schema(), &mut obj, true);
        assert!(obj.get("bogus").is_none());
        assert_eq!(obj["metadata"]["name"], "w");
        assert!(obj["spec"].get("extra").is_none());
        assert_eq!(obj["spec"]["free"]["anything"]["goes"], 1);
        assert_eq!(obj["spec"]["template"]["kind"], "Pod");
        assert!(obj["spec"]["template"].get("other").is_none());
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert!(obj["spec"]["note"].is_null() && obj["spec"].get("note").is_some());
        assert!(
            obj["spec"].get("mode").is_none(),
            "a null where none is allowed goes"
        );
        assert!(obj["spec"]["steps"][0].get("junk").is_none());
    }

    #[test]
    fn defaults_fill_absent_fields_inside_present_objects() {
        let mut obj = json!({"spec": {"image": "a", "replicas": 3, "steps": [{}]}});
        default(&widget_schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 3, "a set field keeps its value");
        assert_eq!(obj["spec"]["mode"], "fast");
        assert_eq!(obj["spec"]["steps"][0]["name"], "step");
        assert!(
            obj.get("status").is_none(),
            "a default never makes its parent"
        );
    }

    #[test]
    fn validation_names_each_field_like_kubernetes() {
        assert!(errors(json!({"spec": {"image": "abc", "replicas": 2, "port": 80}})).is_empty());
        assert!(errors(json!({"spec": {"image": "abc", "port": "http"}})).is_empty());
        let errs = errors(json!({"spec": {
            "replicas": 20, "mode": "warp", "port": true,
            "labels": {"k": "toolong"}, "tags": ["a", "a", "b"],
            "template": {"metadata": {}}
        }}));
        let want = [
            "spec.image: Required value",
            "spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10",
            "spec.mode: Unsupported value: \"warp\": supported values: \"fast\", \"slow\"",
            "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer or string: \"boolean\"",
            "spec.labels[k]: Too long: may not be more than 3 bytes",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.tags[1]: Duplicate value: \"a\"",
            "spec.template.apiVersion: Required value: must not be empty",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
        }
        let errs = errors(json!({"spec": {"image": "", "replicas": "two"}}));
        assert!(errs.contains(&"spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"".to_string()), "{errs:?}");
        assert!(errs.contains(&"spec.image: Invalid value: \"\": spec.image in body should be at least 1 chars long".to_string()), "{errs:?}");
        let errs = errors(json!({"spec": {"image": "UPPER", "replicas": -1}}));
        assert!(errs.contains(&"spec.image: Invalid value: \"UPPER\": spec.image in body should match '^[a-z:]+$'".to_string()), "{errs:?}");
        assert!(errs.contains(&"spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0".to_string()), "{errs:?}");
        let errs = errors(json!({"spec": "nope"}));
        assert_eq!(
            errs,
            ["spec: Invalid value: \"string\": spec in body must be of type object: \"string\""]
        );
    }

    #[test]
    fn combinators_and_formats() {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "string", "format": "date-time"},
            "b": {"type": "integer", "anyOf": [{"minimum": 10}, {"maximum": 0}]},
            "c": {"type": "integer", "format": "int32"}
        }});
        let check = |v: Value| {
            let mut errs = Vec::new();
            validate(&schema, &v, "", &mut errs);
            errs.len()
        };
        assert_eq!(
            check(json!({"a": "2026-01-01T00:00:00Z", "b": 12, "c": 5})),
            0
        );
        assert_eq!(check(json!({"a": "yesterday"})), 1);
        assert_eq!(check(json!({"b": 5})), 1);
        assert_eq!(check(json!({"c": 5_000_000_000_i64})), 1);
    }
}

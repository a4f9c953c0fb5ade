//! The helpers kinds check and default their fields with: field causes reported the way
//! Kubernetes reports them (`spec.containers[0].image: Required value`), and defaults set
//! only where a field is absent, as the Kubernetes API server defaults before validation.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_api::validation::{FieldError, FieldErrorType};

use crate::objects::set_path;

/// A field cause.
pub fn err(
    field: impl Into<String>,
    reason: FieldErrorType,
    message: impl Into<String>,
) -> FieldError {
    FieldError {
        field: field.into(),
        reason,
        message: message.into(),
    }
}

/// `field: Required value`.
pub fn required(field: impl Into<String>) -> FieldError {
    err(field, FieldErrorType::Required, "Required value")
}

/// `field: Invalid value: "value": why`.
pub fn invalid(field: impl Into<String>, value: &str, why: &str) -> FieldError {
    err(
        field,
        FieldErrorType::Invalid,
        format!("Invalid value: \"{value}\": {why}"),
    )
}

/// A map of strings (labels, annotations), empty if absent.
pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A number at `pointer`, if present, must not be negative.
pub fn validate_non_negative(obj: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj.pointer(pointer).and_then(Value::as_i64)
        && n < 0
    {
        errs.push(err(
            field,
            FieldErrorType::Invalid,
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

/// The value at `pointer` must not change.
pub fn immutable(old: &Value, new: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    if old.pointer(pointer) != new.pointer(pointer) {
        errs.push(err(
            field,
            FieldErrorType::Invalid,
            "Invalid value: field is immutable",
        ));
    }
}

/// Sets `path` to `value` if it is absent or null.
pub fn default_at(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = &*obj;
    for seg in path {
        match cur.get(*seg) {
            Some(next) if !next.is_null() => cur = next,
            _ => {
                set_path(obj, path, value);
                return;
            }
        }
    }
}

/// One IntOrString (a rolling update's surge, a budget's availability): a non-negative count, or a percent (at most
/// 100% where `at_most_100`). Returns whether it is zero.
pub fn validate_int_or_percent(
    value: Option<&Value>,
    field: &str,
    at_most_100: bool,
    errs: &mut Vec<FieldError>,
) -> bool {
    match value {
        None => false,
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                errs.push(err(
                    field,
                    FieldErrorType::Invalid,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
            n == 0
        }
        Some(Value::String(text)) => {
            let percent = text
                .strip_suffix('%')
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok());
            match percent {
                None => {
                    errs.push(invalid(
                        field,
                        text,
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ));
                    false
                }
                Some(p) => {
                    if at_most_100 && p > 100 {
                        errs.push(invalid(field, text, "must not be greater than 100%"));
                    }
                    p == 0
                }
            }
        }
        Some(other) => {
            errs.push(invalid(
                field,
                &other.to_string(),
                "must be an integer or a percent",
            ));
            false
        }
    }
}

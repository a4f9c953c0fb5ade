//! The JSONPath subset of `additionalPrinterColumns` and the scale subresource's paths:
//! `.a.b`, `.a[0]`, `.a[*].b` and `.a[?(@.k=="v")].b`, as kubectl's column printer reads
//! them (the first match is the cell).

use serde_json::Value;

/// One step of a path.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.path=="value")]`: the items whose field equals the value.
    Filter(Vec<String>, Value),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                steps.push(Step::Index(i));
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, value) = filter.split_once("==")?;
                let value = value.trim();
                let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(s) => Value::String(s.to_string()),
                    None => match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                        Some(s) => Value::String(s.to_string()),
                        None => serde_json::from_str(value).ok()?,
                    },
                };
                let fields = field.trim().split('.').map(str::to_string).collect();
                steps.push(Step::Filter(fields, value));
            } else if let Some(quoted) = inner.strip_prefix('\'').and_then(|q| q.strip_suffix('\''))
            {
                steps.push(Step::Field(quoted.to_string()));
            } else {
                return None;
            }
        } else {
            return None;
        }
    }
    Some(steps)
}

/// Whether the path is one this module evaluates.
pub fn is_supported(path: &str) -> bool {
    parse(path).is_some()
}

/// The values the path selects in `obj`, in order.
pub fn select<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f)),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(items) => next.extend(items),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter(fields, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        let got = fields.iter().try_fold(item, |at, f| at.get(f));
                        if got == Some(want) {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

/// The first value the path selects.
pub fn first<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    select(obj, path).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_select_what_kubectl_shows() {
        let obj = json!({
            "spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [
                {"type": "Progressing", "status": "False"},
                {"type": "Ready", "status": "True"}
            ]}
        });
        assert_eq!(first(&obj, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(first(&obj, ".spec.ports[1].port"), Some(&json!(443)));
        assert_eq!(select(&obj, ".spec.ports[*].port").len(), 2);
        assert_eq!(
            first(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(&json!("True"))
        );
        assert_eq!(first(&obj, "{.spec.replicas}"), Some(&json!(3)));
        assert_eq!(first(&obj, ".spec.missing"), None);
        assert!(!is_supported("spec..replicas"));
    }
}

//! A CRD schema's `x-kubernetes-validations` rules, in CEL, evaluated with the `cel`
//! crate (cel-rust: the maintained successor of `cel-interpreter`, with the standard
//! library, macros and the strings, lists and math extensions Kubernetes' library
//! overlaps with).
//!
//! `self` is the value at the rule's schema node; a rule that names `oldSelf` is a
//! transition rule, evaluated only on update where the old object has a value at the
//! same place (through object fields and map keys; list items are not correlated).
//! Rules are compiled once per CRD version ([`Rules::compile`]). A rule the crate
//! cannot compile, or that calls a function outside the library it offers (Kubernetes'
//! `quantity`, `url`, `ip`, `isSorted`, timestamps, ...), is listed by
//! [`Rules::unsupported`]: the CRD's status shows it (condition
//! `ValidationRulesSupported` False, reason `UnsupportedValidationRule`) and the server
//! does not evaluate it; the others are enforced.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, Program, Value as CelValue};
use serde_json::Value;

use skiff_api::validation::{FieldError, FieldErrorType};

use super::schema::child_path;

/// The functions the environment offers beyond operators and macros; a rule calling
/// anything else is unsupported here.
const SUPPORTED_FUNCTIONS: &[&str] = &[
    // Standard library.
    "size",
    "matches",
    "startsWith",
    "endsWith",
    "contains",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "has",
    "max",
    "min",
    // Optional values.
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "orValue",
    "or",
    // Strings extension.
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "format",
    "strings.quote",
    "reverse",
    // Lists extension.
    "distinct",
    "flatten",
    "slice",
    "sort",
    "sortBy",
    // Math extension.
    "math.greatest",
    "math.least",
    "math.abs",
    "math.ceil",
    "math.floor",
    "math.round",
    "math.sign",
    "math.sqrt",
    "math.trunc",
    "math.isFinite",
    "math.isInf",
    "math.isNaN",
    "math.bitAnd",
    "math.bitOr",
    "math.bitXor",
    "math.bitNot",
    "math.bitShiftLeft",
    "math.bitShiftRight",
];

fn env() -> Arc<Env> {
    static ENV: std::sync::LazyLock<Arc<Env>> = std::sync::LazyLock::new(|| {
        let mut env = Env::stdlib();
        for ext in [
            cel::extensions::strings as fn(&mut Env) -> _,
            cel::extensions::lists,
            cel::extensions::math,
        ] {
            env.add_extension(ext)
                .expect("the extensions declare distinct overloads");
        }
        Arc::new(env)
    });
    ENV.clone()
}

/// A rule (or message expression) as compiled, or why it cannot be.
type Compiled = Result<Arc<Program>, String>;

/// The compiled rules of one schema, by source text.
#[derive(Default)]
pub struct Rules {
    programs: HashMap<String, Compiled>,
}

fn compile(source: &str) -> Compiled {
    let program = env().compile(source).map_err(|e| e.to_string())?;
    let refs = program.references();
    let mut unknown: Vec<&str> = refs
        .functions()
        .into_iter()
        .filter(|f| !f.starts_with(['_', '@', '!']) && !SUPPORTED_FUNCTIONS.contains(f))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(format!(
            "calls functions this server does not offer: {}",
            unknown.join(", ")
        ));
    }
    Ok(Arc::new(program))
}

fn rules_of(schema: &Value) -> impl Iterator<Item = &Value> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Every schema below (and including) this one.
fn walk<'a>(schema: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for sub in props.values() {
            walk(sub, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
            walk(sub, out);
        }
    }
}

impl Rules {
    /// Compiles every rule and message expression of a schema.
    pub fn compile(schema: &Value) -> Rules {
        let mut nodes = Vec::new();
        walk(schema, &mut nodes);
        let mut programs = HashMap::new();
        for rule in nodes.into_iter().flat_map(rules_of) {
            for key in ["rule", "messageExpression"] {
                if let Some(src) = rule.get(key).and_then(Value::as_str) {
                    programs
                        .entry(src.to_string())
                        .or_insert_with(|| compile(src));
                }
            }
        }
        Rules { programs }
    }

    /// The rules this server cannot evaluate, each with why: `(rule, reason)`.
    pub fn unsupported(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .programs
            .iter()
            .filter_map(|(src, p)| p.as_ref().err().map(|e| (src.clone(), e.clone())))
            .collect();
        out.sort();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Evaluates the rules of `schema` and below against `value`: with `old` None, the
    /// rules that do not name `oldSelf`; with the old object, only those that do.
    pub fn check(
        &self,
        schema: &Value,
        value: &Value,
        old: Option<&Value>,
        path: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let transitions = old.is_some();
        for rule in rules_of(schema) {
            let Some(src) = rule.get("rule").and_then(Value::as_str) else {
                continue;
            };
            let Some(Ok(program)) = self.programs.get(src) else {
                continue;
            };
            if program.references().has_variable("oldSelf") != transitions {
                continue;
            }
            if let Some(e) = self.evaluate(rule, program, value, old, path) {
                errs.push(e);
            }
        }
        match value {
            Value::Object(map) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties").filter(|s| s.is_object());
                for (k, v) in map {
                    let (sub, sub_path) = match props.and_then(|p| p.get(k)) {
                        Some(sub) => (sub, child_path(path, k)),
                        None => match extra {
                            Some(sub) => (sub, format!("{path}[{k}]")),
                            None => continue,
                        },
                    };
                    if path.is_empty() && k == "metadata" {
                        continue;
                    }
                    let old_v = old.and_then(|o| o.get(k));
                    if transitions && old_v.is_none() {
                        continue;
                    }
                    self.check(sub, v, old_v, &sub_path, errs);
                }
            }
            // List items are not correlated with the old list: no transition rules below.
            Value::Array(items) if !transitions => {
                if let Some(sub) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(sub, item, None, &format!("{path}[{i}]"), errs);
                    }
                }
            }
            _ => {}
        }
    }

    /// One rule against one value: the cause when it fails.
    fn evaluate(
        &self,
        rule: &Value,
        program: &Program,
        value: &Value,
        old: Option<&Value>,
        path: &str,
    ) -> Option<FieldError> {
        let src = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        let mut ctx = Context::with_env(env());
        bind(&mut ctx, "self", value);
        if let Some(old) = old {
            bind(&mut ctx, "oldSelf", old);
        }
        let field = match rule.get("fieldPath").and_then(Value::as_str) {
            Some(fp) => child_path(path, fp.trim_start_matches('.')),
            None => path.to_string(),
        };
        let reason = match rule.get("reason").and_then(Value::as_str) {
            Some("FieldValueForbidden") => FieldErrorType::Forbidden,
            Some("FieldValueRequired") => FieldErrorType::Required,
            Some("FieldValueDuplicate") => FieldErrorType::Duplicate,
            _ => FieldErrorType::Invalid,
        };
        let why = match program.execute(&ctx) {
            Ok(CelValue::Bool(true)) => return None,
            Ok(CelValue::Bool(false)) => self
                .message_of(rule, &ctx)
                .unwrap_or_else(|| format!("failed rule: {src}")),
            Ok(other) => format!("rule {src:?} did not evaluate to a bool: {other:?}"),
            Err(e) => format!("rule {src:?} could not be evaluated: {e}"),
        };
        let summary = match reason {
            FieldErrorType::Forbidden => "Forbidden".to_string(),
            FieldErrorType::Required => "Required value".to_string(),
            FieldErrorType::Duplicate => "Duplicate value".to_string(),
            _ => format!("Invalid value: {}", shown_type(value)),
        };
        Some(FieldError {
            field,
            reason,
            message: format!("{summary}: {why}"),
        })
    }

    /// The failure message: `messageExpression` if it evaluates to a non-empty string,
    /// else `message`.
    fn message_of(&self, rule: &Value, ctx: &Context) -> Option<String> {
        if let Some(src) = rule.get("messageExpression").and_then(Value::as_str)
            && let Some(Ok(program)) = self.programs.get(src)
            && let Ok(CelValue::String(s)) = program.execute(ctx)
            && !s.is_empty()
        {
            return Some(s.to_string());
        }
        rule.get("message")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
    }
}

fn bind(ctx: &mut Context, name: &str, value: &Value) {
    match cel::to_value(value) {
        Ok(v) => ctx.add_variable_from_value(name, v),
        Err(_) => ctx.add_variable_from_value(name, CelValue::Null),
    }
}

/// How Kubernetes shows the value of a failed rule: scalars as they are, containers
/// by type.
fn shown_type(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [
                        {"rule": "self.minReplicas <= self.replicas", "message": "replicas must be at least minReplicas"},
                        {"rule": "self.replicas <= 100", "messageExpression": "'too many: ' + string(self.replicas)"},
                        {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable", "fieldPath": ".mode"}
                    ],
                    "properties": {
                        "replicas": {"type": "integer"},
                        "minReplicas": {"type": "integer"},
                        "mode": {"type": "string"},
                        "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('w')", "reason": "FieldValueForbidden"}]},
                        "items": {"type": "array", "items": {"type": "string", "x-kubernetes-validations": [{"rule": "size(self) < 4"}]}}
                    }
                }
            }
        })
    }

    fn run(obj: Value, old: Option<Value>) -> Vec<String> {
        let s = schema();
        let rules = Rules::compile(&s);
        assert!(rules.unsupported().is_empty(), "{:?}", rules.unsupported());
        let mut errs = Vec::new();
        rules.check(&s, &obj, None, "", &mut errs);
        if let Some(old) = &old {
            rules.check(&s, &obj, Some(old), "", &mut errs);
        }
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn rules_see_self_at_their_level() {
        let ok = json!({"spec": {"replicas": 3, "minReplicas": 1, "mode": "a", "name": "web", "items": ["abc"]}});
        assert!(run(ok.clone(), None).is_empty());
        assert!(run(ok.clone(), Some(ok.clone())).is_empty());
        let errs = run(
            json!({"spec": {"replicas": 300, "minReplicas": 500, "mode": "a", "name": "db", "items": ["abcd"]}}),
            None,
        );
        assert_eq!(
            errs,
            [
                "spec: Invalid value: \"object\": replicas must be at least minReplicas",
                "spec: Invalid value: \"object\": too many: 300",
                "spec.items[0]: Invalid value: \"abcd\": failed rule: size(self) < 4",
                "spec.name: Forbidden: failed rule: self.startsWith('w')",
            ]
        );
    }

    #[test]
    fn transition_rules_compare_with_the_old_object() {
        let old = json!({"spec": {"replicas": 1, "minReplicas": 1, "mode": "a"}});
        let new = json!({"spec": {"replicas": 1, "minReplicas": 1, "mode": "b"}});
        assert_eq!(
            run(new.clone(), Some(old)),
            ["spec.mode: Invalid value: \"object\": mode is immutable"]
        );
        // On create there is no old object: the transition rule is not evaluated.
        assert!(run(new, None).is_empty());
    }

    #[test]
    fn rules_the_server_cannot_evaluate_are_reported() {
        let s = json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "quantity(self.size).isGreaterThan(quantity('1Gi'))"},
            {"rule": "self.a ==="},
            {"rule": "self.a == 1"}
        ]});
        let rules = Rules::compile(&s);
        let bad = rules.unsupported();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad.iter()
                .any(|(r, why)| r.starts_with("quantity") && why.contains("quantity"))
        );
        // The supported rule is still enforced.
        let mut errs = Vec::new();
        rules.check(&s, &json!({"a": 2}), None, "", &mut errs);
        assert_eq!(errs.len(), 1);
    }
}

//! CustomResourceDefinitions (apiextensions.k8s.io/v1, cluster-scoped): checked as
//! Kubernetes checks them (names, group, scope, versions, a schema per version), with
//! `listKind`, `singular` and the conversion strategy defaulted. What makes a CRD
//! served, and its status, is the CRD controller's (`crate::crd`); a create adds the
//! cleanup finalizer that controller removes once the CRD's objects are gone.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError};

use super::{CreateContext, Kind};
use crate::kinds::fields::{default_at, immutable, invalid, required};
use crate::kinds::print::{Column, NAME, age, name};

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The finalizer that holds a deleted CRD until its objects are deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

static INFO: ResourceInfo = ResourceInfo {
    group: "apiextensions.k8s.io",
    version: "v1",
    kind: "CustomResourceDefinition",
    plural: "customresourcedefinitions",
    singular: "customresourcedefinition",
    namespaced: false,
    short_names: &["crd", "crds"],
    categories: &["api-extensions"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<Crd>,
    schema: schema_of::<Crd>,
};

/// The CRD kind's description, for the CRD controller's informer and writes.
pub fn info() -> &'static ResourceInfo {
    &INFO
}

pub(super) struct CustomResourceDefinition;

fn strs<'a>(v: &'a Value, pointer: &str) -> Vec<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The rules of a resource name part (plural, singular, short names, a version).
fn check_label(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    for why in v::is_dns1035_label(value) {
        errs.push(invalid(field, value, &why));
    }
}

impl Kind for CustomResourceDefinition {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn prepare_create(&self, obj: &mut Value, _ctx: &CreateContext<'_>) {
        let meta = &mut obj["metadata"];
        let finalizers = meta["finalizers"].as_array().cloned().unwrap_or_default();
        if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            let mut all = finalizers;
            all.push(json!(CLEANUP_FINALIZER));
            meta["finalizers"] = json!(all);
        }
    }

    fn default(&self, obj: &mut Value) {
        if let Some(kind) = obj.pointer("/spec/names/kind").and_then(Value::as_str) {
            let (list, singular) = (format!("{kind}List"), kind.to_lowercase());
            default_at(obj, &["spec", "names", "listKind"], json!(list));
            default_at(obj, &["spec", "names", "singular"], json!(singular));
        }
        default_at(obj, &["spec", "conversion", "strategy"], json!("None"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        if group.is_empty() {
            errs.push(required("spec.group"));
        } else {
            for why in v::is_dns1123_subdomain(group) {
                errs.push(invalid("spec.group", group, &why));
            }
            if !group.contains('.') {
                errs.push(invalid(
                    "spec.group",
                    group,
                    "should be a domain with at least one dot",
                ));
            }
        }
        let names = &spec["names"];
        let plural = names["plural"].as_str().unwrap_or_default();
        for field in ["plural", "kind"] {
            if names[field].as_str().is_none_or(str::is_empty) {
                errs.push(required(format!("spec.names.{field}")));
            }
        }
        for field in ["plural", "singular"] {
            if let Some(value) = names[field].as_str().filter(|s| !s.is_empty()) {
                check_label(&format!("spec.names.{field}"), value, errs);
            }
        }
        for (i, short) in strs(names, "/shortNames").into_iter().enumerate() {
            check_label(&format!("spec.names.shortNames[{i}]"), short, errs);
        }
        for field in ["kind", "listKind"] {
            if let Some(k) = names[field].as_str().filter(|s| !s.is_empty())
                && !k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            {
                errs.push(invalid(
                    format!("spec.names.{field}"),
                    k,
                    "must start with a letter",
                ));
            }
        }
        if names["kind"].as_str().is_some() && names["kind"] == names["listKind"] {
            errs.push(invalid(
                "spec.names.listKind",
                names["listKind"].as_str().unwrap_or_default(),
                "kind and listKind may not be the same",
            ));
        }
        let want = format!("{plural}.{group}");
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !plural.is_empty() && !group.is_empty() && name != want {
            errs.push(invalid(
                "metadata.name",
                name,
                &format!("must be spec.names.plural+\".\"+spec.group: {want:?}"),
            ));
        }
        match spec["scope"].as_str() {
            Some("Namespaced" | "Cluster") => {}
            Some(other) => errs.push(FieldError::not_supported(
                "spec.scope",
                other,
                &["Cluster", "Namespaced"],
            )),
            None => errs.push(required("spec.scope")),
        }
        match spec["conversion"]["strategy"].as_str() {
            None | Some("None") => {}
            Some("Webhook") => errs.push(FieldError::forbidden(
                "spec.conversion.strategy",
                "conversion webhooks are not supported by this server; use None",
            )),
            Some(other) => errs.push(FieldError::not_supported(
                "spec.conversion.strategy",
                other,
                &["None", "Webhook"],
            )),
        }
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            errs.push(required("spec.versions"));
        }
        let mut seen: Vec<&str> = Vec::new();
        let mut storage = 0;
        for (i, version) in versions.iter().enumerate() {
            let at = format!("spec.versions[{i}]");
            let vname = version["name"].as_str().unwrap_or_default();
            if vname.is_empty() {
                errs.push(required(format!("{at}.name")));
            } else {
                check_label(&format!("{at}.name"), vname, errs);
                if seen.contains(&vname) {
                    errs.push(FieldError::duplicate(format!("{at}.name"), vname));
                }
                seen.push(vname);
            }
            if version["storage"] == json!(true) {
                storage += 1;
            }
            match version.pointer("/schema/openAPIV3Schema") {
                None => errs.push(required(format!("{at}.schema.openAPIV3Schema"))),
                Some(schema) if schema["type"] != json!("object") => {
                    errs.push(FieldError::not_supported(
                        format!("{at}.schema.openAPIV3Schema.type"),
                        schema["type"].as_str().unwrap_or_default(),
                        &["object"],
                    ))
                }
                Some(_) => {}
            }
            if let Some(scale) = version.pointer("/subresources/scale") {
                // Plain field paths under .spec and .status, as Kubernetes requires.
                for (field, under) in [
                    ("specReplicasPath", ".spec."),
                    ("statusReplicasPath", ".status."),
                ] {
                    let simple = |p: &str| {
                        p.strip_prefix(under).is_some_and(|rest| {
                            rest.split('.').all(|f| {
                                !f.is_empty()
                                    && f.chars()
                                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                            })
                        })
                    };
                    match scale[field].as_str() {
                        None | Some("") => {
                            errs.push(required(format!("{at}.subresources.scale.{field}")))
                        }
                        Some(p) if !simple(p) => errs.push(invalid(
                            format!("{at}.subresources.scale.{field}"),
                            p,
                            &format!(
                                "should be a path of fields under {}",
                                under.trim_end_matches('.')
                            ),
                        )),
                        Some(_) => {}
                    }
                }
            }
            for (j, column) in version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let cat = format!("{at}.additionalPrinterColumns[{j}]");
                if column["name"].as_str().is_none_or(str::is_empty) {
                    errs.push(required(format!("{cat}.name")));
                }
                if column["jsonPath"].as_str().is_none_or(str::is_empty) {
                    errs.push(required(format!("{cat}.jsonPath")));
                }
                let t = column["type"].as_str().unwrap_or_default();
                let types = ["integer", "number", "string", "boolean", "date"];
                if !types.contains(&t) {
                    errs.push(FieldError::not_supported(format!("{cat}.type"), t, &types));
                }
            }
        }
        if !versions.is_empty() && storage != 1 {
            errs.push(invalid(
                "spec.versions",
                &format!("{} storage versions", storage),
                "must have exactly one version marked as storage version",
            ));
        }
        if !versions.is_empty() && !versions.iter().any(|v| v["served"] == json!(true)) {
            errs.push(invalid(
                "spec.versions",
                "",
                "must have at least one version marked as served",
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/scope", "spec.scope", errs);
        immutable(old, new, "/spec/group", "spec.group", errs);
        immutable(old, new, "/spec/names/plural", "spec.names.plural", errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            name(obj),
            obj.pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(age(obj)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]
            }
        })
    }

    fn errors(obj: &Value) -> Vec<String> {
        let mut obj = obj.clone();
        CustomResourceDefinition.default(&mut obj);
        let mut errs = Vec::new();
        CustomResourceDefinition.validate(&obj, &mut errs);
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn a_crd_is_checked_as_kubernetes_checks_it() {
        assert!(errors(&crd()).is_empty(), "{:?}", errors(&crd()));
        let mut defaulted = crd();
        CustomResourceDefinition.default(&mut defaulted);
        assert_eq!(defaulted["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(defaulted["spec"]["names"]["singular"], "widget");
        assert_eq!(defaulted["spec"]["conversion"]["strategy"], "None");

        let mut bad = crd();
        bad["spec"]["group"] = json!("example");
        assert_eq!(errors(&bad), ["spec.group", "metadata.name"]);
        let mut bad = crd();
        bad["metadata"]["name"] = json!("gadgets.example.com");
        bad["spec"]["scope"] = json!("Global");
        assert_eq!(errors(&bad), ["metadata.name", "spec.scope"]);
        let mut bad = crd();
        bad["spec"]["versions"] = json!([
            {"name": "v1", "served": true, "storage": true},
            {"name": "v2", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}
        ]);
        assert_eq!(
            errors(&bad),
            ["spec.versions[0].schema.openAPIV3Schema", "spec.versions"]
        );
        let mut bad = crd();
        bad["spec"]["names"]["plural"] = json!("Widgets");
        bad["spec"]["conversion"] = json!({"strategy": "Webhook"});
        assert_eq!(
            errors(&bad),
            [
                "spec.names.plural",
                "metadata.name",
                "spec.conversion.strategy"
            ]
        );
    }

    #[test]
    fn a_created_crd_holds_the_cleanup_finalizer() {
        let mut obj = crd();
        let config = crate::state::ApiConfig::default();
        CustomResourceDefinition.prepare_create(
            &mut obj,
            &CreateContext {
                uid: "u",
                config: &config,
            },
        );
        assert_eq!(obj["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
    }
}

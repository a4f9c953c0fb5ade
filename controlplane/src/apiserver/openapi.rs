//! `/openapi/v3`: an index of the served group-versions, and one OpenAPI 3.0 document per
//! group-version with the paths, operations and schemas of its kinds.
//!
//! kubectl reads these to validate: `create`, `apply` and `replace` send
//! `fieldValidation=Strict` once the PATCH operation of a kind lists that parameter. It
//! also computes `apply`'s strategic merge patches from the schemas' patch extensions,
//! and `kubectl explain` renders the schemas. The schemas come from k8s-openapi's
//! `schemars` support (and App and Module's derived ones), through each kind's `schema`
//! hook (`crate::kinds`); the patch extensions come
//! from the same merge keys the server merges with, so client and server agree.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use k8s_openapi::api::{autoscaling::v1::Scale, core::v1::Binding, policy::v1::Eviction};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ListMeta, Status};
use skiff_api::resources::{ResourceInfo, Subresource};

use crate::error::ApiError;

const SCHEMAS: &str = "#/components/schemas/";
/// The schema of one line of a watch stream.
const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";

/// The documents of one state of the kinds registry.
struct Documents {
    index: Vec<u8>,
    /// `api/v1`, `apis/apps/v1`, ... → (hash, document).
    by_path: BTreeMap<String, (String, Vec<u8>)>,
}

/// The documents, built once per state of the kinds registry: the compiled-in kinds
/// give the same documents for the life of the binary, and a CRD being served,
/// changed or dropped (`kinds::generation`) makes them be built again.
fn documents() -> Arc<Documents> {
    static DOCS: Mutex<Option<(u64, Arc<Documents>)>> = Mutex::new(None);
    let generation = crate::kinds::generation();
    let mut cached = DOCS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((built_at, docs)) = cached.as_ref()
        && *built_at == generation
    {
        return docs.clone();
    }
    let docs = Arc::new(build_documents());
    *cached = Some((generation, docs.clone()));
    docs
}

fn build_documents() -> Documents {
    let mut by_path = BTreeMap::new();
    for (group, version) in crate::kinds::group_versions() {
        let doc = serde_json::to_vec(&group_version_document(group, version))
            .expect("a JSON value serialises");
        let hash = hex::encode_upper(Sha512::digest(&doc));
        by_path.insert(gv_path(group, version), (hash, doc));
    }
    let paths: Map<String, Value> = by_path
        .iter()
        .map(|(path, (hash, _))| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    let index = serde_json::to_vec(&json!({ "paths": paths })).expect("serialises");
    Documents { index, by_path }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`.
pub async fn index() -> Response {
    json_bytes(documents().index.clone(), false)
}

/// `GET /openapi/v3/{api/v1 | apis/GROUP/VERSION}`.
pub async fn document(Path(path): Path<String>, RawQuery(query): RawQuery) -> Response {
    let docs = documents();
    let Some((hash, doc)) = docs.by_path.get(path.trim_matches('/')) else {
        return ApiError::NoRoute.into_response();
    };
    // A request naming the current hash may be cached for good, as Kubernetes allows.
    let immutable = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("hash=")))
        .is_some_and(|h| h == hash);
    let mut response = json_bytes(doc.clone(), immutable);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{hash}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn json_bytes(body: Vec<u8>, immutable: bool) -> Response {
    let cache = if immutable {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("{SCHEMAS}{name}") })
}

fn ref_name(schema: &Value) -> String {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(SCHEMAS))
        .unwrap_or_default()
        .to_string()
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

/// The OpenAPI document of one group-version.
fn group_version_document(group: &str, version: &str) -> Value {
    let kinds: Vec<&'static ResourceInfo> = crate::kinds::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let status = ref_name(&generator.subschema_for::<Status>().to_value());
    let delete_options = ref_name(&generator.subschema_for::<DeleteOptions>().to_value());
    let list_meta = ref_name(&generator.subschema_for::<ListMeta>().to_value());
    let scale = ref_name(&generator.subschema_for::<Scale>().to_value());
    let eviction = ref_name(&generator.subschema_for::<Eviction>().to_value());
    let binding = ref_name(&generator.subschema_for::<Binding>().to_value());
    let kind_schemas: Vec<(&ResourceInfo, String)> = kinds
        .iter()
        .map(|info| {
            let schema = crate::kinds::of(info).schema(&mut generator);
            (*info, ref_name(&schema.to_value()))
        })
        .collect();
    let mut schemas = generator.take_definitions(true);

    let mut tag_gvk = |name: &str, group: &str, version: &str, kind: &str| {
        if let Some(Value::Object(s)) = schemas.get_mut(name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(group, version, kind)]),
            );
        }
    };
    tag_gvk(&scale, "autoscaling", "v1", "Scale");
    tag_gvk(&eviction, "policy", "v1", "Eviction");
    tag_gvk(&binding, "", "v1", "Binding");
    tag_gvk(&status, "", "v1", "Status");
    for (info, name) in &kind_schemas {
        tag_gvk(name, info.group, info.version, info.kind);
    }
    for (info, name) in &kind_schemas {
        let list_name = format!("{}List", name);
        schemas.insert(
            list_name,
            json!({
                "description": format!("{} is a list of {}.", info.list_kind(), info.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                    "metadata": {"allOf": [schema_ref(&list_meta)], "description": "Standard list metadata."},
                    "items": {"type": "array", "items": {"allOf": [schema_ref(name)]}, "description": format!("List of {}.", info.plural)},
                },
                "x-kubernetes-group-version-kind": [gvk(info.group, info.version, &info.list_kind())],
            }),
        );
    }
    for schema in schemas.values_mut() {
        declare_patch_strategies(schema);
    }
    schemas.insert(
        WATCH_EVENT.into(),
        json!({
            "description": "One change a watch reports: one JSON object per line.",
            "type": "object",
            "required": ["type", "object"],
            "properties": {
                "type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]},
                "object": {"type": "object", "description": "The object, as it is after the change; a Status for ERROR."},
            },
        }),
    );
    if let Some(Value::Object(props)) = schemas
        .get_mut(&delete_options)
        .and_then(|s| s.get_mut("properties"))
        && let Some(Value::Object(policy)) = props.get_mut("propagationPolicy")
    {
        policy.insert("enum".into(), propagation_policy()["enum"].clone());
    }

    let names = Names {
        status,
        delete_options,
        scale,
        eviction,
        binding,
    };
    let mut paths = Map::new();
    for (info, name) in &kind_schemas {
        add_paths(&mut paths, info, name, &names);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Skiff", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// Adds `x-kubernetes-patch-strategy` and `-merge-key` to the list properties that
/// strategic merge patch merges rather than replaces.
fn declare_patch_strategies(schema: &mut Value) {
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (field, prop) in props.iter_mut() {
        let Some(prop) = prop.as_object_mut() else {
            continue;
        };
        if prop.get("type").and_then(Value::as_str) != Some("array") {
            continue;
        }
        let items = prop.get("items").map(ref_name).unwrap_or_default();
        if let Some((strategy, key)) = skiff_api::strategic::declared(field, &items) {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if let Some(key) = key {
                prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
        }
    }
}

struct Names {
    status: String,
    delete_options: String,
    scale: String,
    eviction: String,
    binding: String,
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": schema, "uniqueItems": true})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params(with_force: bool) -> Vec<Value> {
    let mut out = vec![
        dry_run_param(),
        query_param(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
            json!({"type": "string"}),
        ),
        query_param(
            "fieldValidation",
            "How the server handles fields the object's kind does not have, or names twice: \
             Ignore drops them, Warn (the default) drops them and answers with a Warning \
             header per field, Strict refuses the request.",
            json!({"type": "string", "enum": ["Ignore", "Warn", "Strict"]}),
        ),
    ];
    if with_force {
        out.push(query_param(
            "force",
            "Force is going to \"force\" Apply requests. It means user will re-acquire \
             conflicting fields owned by other people. Force flag must be unset for non-apply \
             patch requests.",
            json!({"type": "boolean"}),
        ));
    }
    out
}

fn dry_run_param() -> Value {
    query_param(
        "dryRun",
        "When present, indicates that modifications should not be persisted. Valid value: All.",
        json!({"type": "string", "enum": ["All"]}),
    )
}

fn list_params() -> Vec<Value> {
    let string = json!({"type": "string"});
    let boolean = json!({"type": "boolean"});
    let count = json!({"type": "integer", "minimum": 0});
    vec![
        query_param(
            "allowWatchBookmarks",
            "Ask for BOOKMARK events on a watch.",
            boolean.clone(),
        ),
        query_param(
            "continue",
            "The continue token of the previous page.",
            string.clone(),
        ),
        query_param(
            "fieldSelector",
            "Select objects by their fields.",
            string.clone(),
        ),
        query_param(
            "labelSelector",
            "Select objects by their labels.",
            string.clone(),
        ),
        query_param("limit", "The largest page to return.", count.clone()),
        query_param(
            "resourceVersion",
            "The resourceVersion to list at or watch from.",
            string.clone(),
        ),
        query_param(
            "resourceVersionMatch",
            "How resourceVersion applies: Exact or NotOlderThan.",
            json!({"type": "string", "enum": ["Exact", "NotOlderThan"]}),
        ),
        query_param(
            "sendInitialEvents",
            "With watch: send the current objects first, then a bookmark.",
            boolean.clone(),
        ),
        query_param("timeoutSeconds", "How long a watch may last.", count),
        query_param("watch", "Watch for changes instead of listing.", boolean),
    ]
}

/// What a deletecollection reads: which objects (by selector) and how to delete them.
fn delete_collection_params() -> Vec<Value> {
    let string = json!({"type": "string"});
    let mut params = vec![
        query_param(
            "fieldSelector",
            "Delete the objects these fields select.",
            string.clone(),
        ),
        query_param(
            "labelSelector",
            "Delete the objects these labels select.",
            string,
        ),
    ];
    params.extend(delete_params());
    params
}

fn delete_params() -> Vec<Value> {
    vec![
        dry_run_param(),
        query_param(
            "gracePeriodSeconds",
            "Seconds before the object is deleted; a negative value is read as 0.",
            json!({"type": "integer"}),
        ),
        query_param(
            "propagationPolicy",
            "Whether and how dependents are deleted: Orphan, Background or Foreground.",
            propagation_policy(),
        ),
    ]
}

fn propagation_policy() -> Value {
    json!({"type": "string", "enum": ["Background", "Foreground", "Orphan"]})
}

/// Responses are JSON: the server writes neither YAML nor protobuf.
fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn response(code: &str, description: &str, schema: Value) -> (String, Value) {
    (
        code.to_string(),
        json!({"description": description, "content": json_content(schema)}),
    )
}

/// A list's 200: the list, or with `watch` a stream of events, one JSON object a line.
/// Kubernetes sends that stream as `application/json` too, and declares it under
/// `application/json;stream=watch`, as here.
fn list_response(list: Value) -> (String, Value) {
    (
        "200".into(),
        json!({
            "description": "OK",
            "content": {
                "application/json": {"schema": list},
                "application/json;stream=watch": {"schema": schema_ref(WATCH_EVENT)},
            },
        }),
    )
}

/// What a delete answers: a Status once the object is gone, or the object itself while
/// it waits for its grace period or finalizers, as in Kubernetes.
fn deleted_response(code: &str, description: &str, status: &Value, obj: &Value) -> (String, Value) {
    response(
        code,
        description,
        json!({"anyOf": [status.clone(), obj.clone()]}),
    )
}

/// The errors an operation may answer, each as a `meta/v1` Status, by what it does.
fn error_responses(action: &str, status: &Value) -> Vec<(String, Value)> {
    let read = matches!(action, "get" | "list");
    let mut codes: Vec<(&str, &str)> = vec![
        (
            "400",
            "BadRequest: a parameter, selector or body that does not parse or is not supported.",
        ),
        (
            "401",
            "Unauthorized: no credentials, or ones that are not valid.",
        ),
        (
            "403",
            "Forbidden: the caller may not do this, or admission refused it.",
        ),
        (
            "404",
            "NotFound: the object, its namespace or the path does not exist.",
        ),
    ];
    if read {
        codes.extend([
            (
                "410",
                "Expired: the resourceVersion or continue token is older than the history kept.",
            ),
            (
                "422",
                "Invalid: parameters that contradict each other (sendInitialEvents without \
                 resourceVersionMatch=NotOlderThan and allowWatchBookmarks).",
            ),
            (
                "504",
                "Timeout: a resourceVersion newer than the server has seen (\"Too large resource \
                 version\"), as Kubernetes answers it.",
            ),
        ]);
    } else {
        codes.extend([
            (
                "409",
                "AlreadyExists, or Conflict: the object changed since the resourceVersion or \
                 UID the request names, or an apply would change fields other managers own.",
            ),
            (
                "413",
                "RequestEntityTooLarge: the body is larger than the server accepts.",
            ),
            (
                "415",
                "UnsupportedMediaType: the body's Content-Type is not one this operation takes.",
            ),
            (
                "422",
                "Invalid: the object breaks the kind's rules; details.causes names each field.",
            ),
        ]);
    }
    codes.push(("503", "ServiceUnavailable: the server is shutting down."));
    codes
        .into_iter()
        .map(|(code, description)| response(code, description, status.clone()))
        .collect()
}

struct Op<'a> {
    info: &'a ResourceInfo,
    action: &'a str,
    /// The Status schema's name, for the error responses.
    status: &'a str,
    verb_id: String,
    gvk: Value,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Vec<(String, Value)>,
}

impl Op<'_> {
    fn build(mut self) -> Value {
        let status = schema_ref(self.status);
        self.responses.extend(error_responses(self.action, &status));
        let mut op = json!({
            "tags": [format!("{}_{}", tag_group(self.info.group), self.info.version)],
            "operationId": self.verb_id,
            "description": format!("{} {}", self.action, self.info.kind),
            "parameters": self.params,
            "responses": self.responses.into_iter().collect::<Map<_, _>>(),
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if let Some(body) = self.body {
            op["requestBody"] = body;
        }
        op
    }
}

fn tag_group(group: &str) -> String {
    if group.is_empty() {
        "core".into()
    } else {
        group.replace('.', "_")
    }
}

fn operation_id(verb: &str, info: &ResourceInfo, scope: &str, suffix: &str) -> String {
    let group: String = tag_group(info.group)
        .split('_')
        .map(capitalise)
        .collect::<Vec<_>>()
        .join("");
    format!(
        "{verb}{group}{}{scope}{}{suffix}",
        capitalise(info.version),
        info.kind
    )
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An object body: JSON, or Kubernetes protobuf (what `require_json` takes).
fn body_of(schema: Value) -> Value {
    json!({
        "required": true,
        "content": {
            "application/json": {"schema": schema},
            skiff_api::protobuf::CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    })
}

/// A delete's body, which may be left out: DeleteOptions, as JSON.
fn delete_body(schema: Value) -> Value {
    json!({"required": false, "content": {"application/json": {"schema": schema}}})
}

/// Raw Wasm, as modules are uploaded.
fn wasm_content() -> Value {
    json!({"schema": {"type": "string", "format": "binary"}})
}

/// The four patch types the server applies. A JSON patch is a list of operations, an
/// apply configuration is YAML (or JSON, which is YAML too), the others an object.
fn patch_body() -> Value {
    let object = json!({"type": "object"});
    let json_patch = json!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"},
                "from": {"type": "string"},
                "value": {},
            },
        },
    });
    json!({
        "required": true,
        "content": {
            "application/json-patch+json": {"schema": json_patch},
            "application/merge-patch+json": {"schema": object},
            "application/strategic-merge-patch+json": {"schema": object},
            "application/apply-patch+yaml": {"schema": object},
        }
    })
}

fn add_paths(paths: &mut Map<String, Value>, info: &ResourceInfo, schema: &str, n: &Names) {
    let prefix = format!("/{}", gv_path(info.group, info.version));
    let scope = if info.namespaced { "Namespaced" } else { "" };
    let collection = if info.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", info.plural)
    } else {
        format!("{prefix}/{}", info.plural)
    };
    let item = format!("{collection}/{{name}}");
    let this = gvk(info.group, info.version, info.kind);
    let obj = schema_ref(schema);
    let list = schema_ref(&format!("{schema}List"));
    let status = schema_ref(&n.status);
    let mut scope_params = vec![];
    if info.namespaced {
        scope_params.push(path_param("namespace", "object name and auth scope"));
    }
    let mut item_params = scope_params.clone();
    item_params.insert(0, path_param("name", &format!("name of the {}", info.kind)));

    let op = |action: &'static str, verb: &str, suffix: &str, sc: &str| Op {
        info,
        action,
        status: &n.status,
        verb_id: operation_id(verb, info, sc, suffix),
        gvk: this.clone(),
        params: vec![],
        body: None,
        responses: vec![],
    };

    let mut coll = Map::new();
    coll.insert("parameters".into(), json!(scope_params));
    coll.insert(
        "get".into(),
        Op {
            params: list_params(),
            responses: vec![list_response(list.clone())],
            ..op("list", "list", "", scope)
        }
        .build(),
    );
    let is_module = info.kind == skiff_api::module::KIND;
    coll.insert(
        "post".into(),
        Op {
            params: write_params(false),
            body: Some(if is_module {
                // Modules are uploaded as raw bytes; the server makes the object.
                json!({"required": true, "content": {"application/wasm": wasm_content()}})
            } else {
                body_of(obj.clone())
            }),
            responses: vec![
                response("200", "OK", obj.clone()),
                response("201", "Created", obj.clone()),
                response("202", "Accepted", obj.clone()),
            ],
            ..op("post", "create", "", scope)
        }
        .build(),
    );
    coll.insert(
        "delete".into(),
        Op {
            params: delete_collection_params(),
            body: Some(delete_body(schema_ref(&n.delete_options))),
            // The objects it deleted (or marked for deletion), as Kubernetes answers.
            responses: vec![response("200", "OK", list.clone())],
            ..op("deletecollection", "deleteCollection", "", scope)
        }
        .build(),
    );
    paths.insert(collection.clone(), Value::Object(coll));

    if info.namespaced {
        let all = format!("{prefix}/{}", info.plural);
        paths.insert(
            all,
            json!({
                "get": Op {
                    params: list_params(),
                    responses: vec![list_response(list.clone())],
                    ..op("list", "list", "ForAllNamespaces", "")
                }
                .build()
            }),
        );
    }

    let mut one = Map::new();
    one.insert("parameters".into(), json!(item_params));
    one.insert(
        "get".into(),
        Op {
            responses: vec![if is_module {
                // The bytes, unless the client asks for JSON.
                (
                    "200".into(),
                    json!({"description": "OK", "content": {
                        "application/wasm": wasm_content(),
                        "application/json": {"schema": obj.clone()},
                    }}),
                )
            } else {
                response("200", "OK", obj.clone())
            }],
            ..op("get", "read", "", scope)
        }
        .build(),
    );
    let is_app = info.kind == skiff_api::app::KIND;
    let mut put_params = write_params(false);
    let mut put_body = body_of(obj.clone());
    if is_app {
        // One-request deploys: raw Wasm to an App (see `apps.rs`).
        put_body["content"]["application/wasm"] = wasm_content();
        put_params.extend([
            query_param(
                "replicas",
                "With a Wasm body: how many replicas to run.",
                json!({"type": "integer", "minimum": 0}),
            ),
            query_param(
                "route",
                "With a Wasm body: where the gateway serves the app (HOST, /PATH or HOST/PATH).",
                json!({"type": "string"}),
            ),
            query_param(
                "wait",
                "With a Wasm body: answer only once the new module serves on every replica.",
                json!({"type": "boolean"}),
            ),
            query_param(
                "timeoutSeconds",
                "With wait: how long to wait (120 unless given).",
                json!({"type": "integer", "minimum": 0}),
            ),
        ]);
    }
    one.insert(
        "put".into(),
        Op {
            params: put_params,
            body: Some(put_body),
            responses: vec![
                response("200", "OK", obj.clone()),
                response("201", "Created", obj.clone()),
            ],
            ..op("put", "replace", "", scope)
        }
        .build(),
    );
    one.insert(
        "patch".into(),
        Op {
            params: write_params(true),
            body: Some(patch_body()),
            responses: vec![
                response("200", "OK", obj.clone()),
                response("201", "Created", obj.clone()),
            ],
            ..op("patch", "patch", "", scope)
        }
        .build(),
    );
    one.insert(
        "delete".into(),
        Op {
            params: delete_params(),
            body: Some(delete_body(schema_ref(&n.delete_options))),
            responses: vec![
                deleted_response("200", "OK", &status, &obj),
                deleted_response("202", "Accepted", &status, &obj),
            ],
            ..op("delete", "delete", "", scope)
        }
        .build(),
    );
    paths.insert(item.clone(), Value::Object(one));

    for sub in info.subresources {
        let path = format!("{item}/{}", sub.name());
        let suffix = capitalise(sub.name());
        let mut ops = Map::new();
        ops.insert("parameters".into(), json!(item_params));
        match sub {
            Subresource::Status | Subresource::Scale => {
                let (target, target_gvk) = if *sub == Subresource::Scale {
                    (schema_ref(&n.scale), gvk("autoscaling", "v1", "Scale"))
                } else {
                    (obj.clone(), this.clone())
                };
                for (method, action, verb, params, body) in [
                    ("get", "get", "read", vec![], None),
                    (
                        "put",
                        "put",
                        "replace",
                        write_params(false),
                        Some(body_of(target.clone())),
                    ),
                    (
                        "patch",
                        "patch",
                        "patch",
                        write_params(true),
                        Some(patch_body()),
                    ),
                ] {
                    ops.insert(
                        method.into(),
                        Op {
                            gvk: target_gvk.clone(),
                            params,
                            body,
                            responses: vec![response("200", "OK", target.clone())],
                            ..op(action, verb, &suffix, scope)
                        }
                        .build(),
                    );
                }
            }
            Subresource::Eviction | Subresource::Binding => {
                let (target, target_gvk) = if *sub == Subresource::Eviction {
                    (schema_ref(&n.eviction), gvk("policy", "v1", "Eviction"))
                } else {
                    (schema_ref(&n.binding), gvk("", "v1", "Binding"))
                };
                ops.insert(
                    "post".into(),
                    Op {
                        gvk: target_gvk,
                        params: write_params(false),
                        body: Some(body_of(target)),
                        // As in Kubernetes, a Status says it was done.
                        responses: vec![response("201", "Created", status.clone())],
                        ..op("post", "create", &suffix, scope)
                    }
                    .build(),
                );
            }
            // A connection upgrade, not a REST operation: kubectl needs no schema for it.
            Subresource::PortForward => continue,
            // TokenRequest is served for kubectl and client libraries, which post it
            // without reading a schema; the schema is not published yet.
            Subresource::Token => continue,
            Subresource::Log => {
                let string = json!({"type": "string"});
                let boolean = json!({"type": "boolean"});
                let integer = json!({"type": "integer"});
                ops.insert(
                    "get".into(),
                    Op {
                        params: vec![
                            query_param("container", "The container to read.", string),
                            query_param("follow", "Stream the log.", boolean.clone()),
                            query_param("previous", "The previous instance's log.", boolean.clone()),
                            query_param("sinceSeconds", "Only lines this recent.", integer.clone()),
                            query_param("tailLines", "Only the last lines.", integer),
                            query_param("timestamps", "Prefix each line with its time.", boolean),
                        ],
                        responses: vec![(
                            "200".into(),
                            json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}),
                        )],
                        ..op("get", "read", "Log", scope)
                    }
                    .build(),
                );
            }
        }
        paths.insert(path, Value::Object(ops));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str) -> Value {
        serde_json::from_slice(&documents().by_path[path].1).unwrap()
    }

    #[test]
    fn the_index_lists_every_group_version_with_a_hash() {
        let index: Value = serde_json::from_slice(&documents().index).unwrap();
        let paths = index["paths"].as_object().unwrap();
        for key in [
            "api/v1",
            "apis/apps/v1",
            "apis/batch/v1",
            "apis/skiff.dev/v1",
        ] {
            let url = paths[key]["serverRelativeURL"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("/openapi/v3/{key}?hash=")),
                "{url}"
            );
        }
    }

    #[test]
    fn every_patch_operation_names_its_kind_and_takes_field_validation() {
        for (path, _) in documents().by_path.iter() {
            let doc = doc(path);
            let mut patches = 0;
            for (p, item) in doc["paths"].as_object().unwrap() {
                let Some(patch) = item.get("patch") else {
                    continue;
                };
                patches += 1;
                assert!(
                    patch["x-kubernetes-group-version-kind"]["kind"].is_string(),
                    "{p}"
                );
                let params = patch["parameters"].as_array().unwrap();
                assert!(
                    params
                        .iter()
                        .any(|q| q["name"] == "fieldValidation" && q["in"] == "query"),
                    "{p}"
                );
                assert!(
                    patch["requestBody"]["content"]
                        .get("application/strategic-merge-patch+json")
                        .is_some()
                );
            }
            assert!(patches > 0, "{path}");
        }
    }

    #[test]
    fn schemas_carry_kinds_refs_and_merge_keys() {
        let doc = doc("apis/apps/v1");
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        // References resolve inside the document.
        let spec_ref = deployment["properties"]["spec"]["allOf"][0]["$ref"]
            .as_str()
            .unwrap();
        let name = spec_ref.strip_prefix(SCHEMAS).unwrap();
        assert!(schemas.get(name).is_some(), "{name}");
        let pod_spec = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(
            pod_spec["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let container = &schemas["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(
            container["ports"]["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        assert_eq!(
            container["volumeMounts"]["x-kubernetes-patch-merge-key"],
            "mountPath"
        );
        assert!(
            container["args"]
                .get("x-kubernetes-patch-strategy")
                .is_none()
        );
        assert_eq!(
            schemas["io.k8s.api.apps.v1.DeploymentList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "DeploymentList"
        );
        let app = doc_schema("apis/skiff.dev/v1", "dev.skiff.v1.App");
        assert_eq!(app["x-kubernetes-group-version-kind"][0]["kind"], "App");
        assert!(app["properties"]["spec"].is_object());
    }

    /// What schemathesis found the documents saying that the server does not do; each
    /// now says what the server does.
    #[test]
    fn operations_declare_what_the_server_answers_and_takes() {
        let core = doc("api/v1");
        let paths = &core["paths"];
        let cm = &paths["/api/v1/namespaces/{namespace}/configmaps/{name}"];
        // Errors are Status objects, by code; responses are JSON only.
        for code in ["400", "401", "403", "404", "409", "422"] {
            let schema = &cm["put"]["responses"][code]["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                "{code}"
            );
        }
        assert!(
            cm["get"]["responses"]["200"]["content"]
                .get("application/yaml")
                .is_none()
        );
        // A delete answers a Status, or the object while it waits to go.
        let deleted = &cm["delete"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            deleted["anyOf"].as_array().map(Vec::len),
            Some(2),
            "{deleted}"
        );
        assert_eq!(cm["delete"]["requestBody"]["required"], false);
        // A watch is a stream of events; deletecollection answers the list it deleted.
        let list = &paths["/api/v1/namespaces/{namespace}/configmaps"];
        assert_eq!(
            list["get"]["responses"]["200"]["content"]["application/json;stream=watch"]["schema"]["$ref"],
            format!("{SCHEMAS}{WATCH_EVENT}")
        );
        assert_eq!(
            list["delete"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.ConfigMapList"
        );
        // Parameters with a closed set of values say so.
        let param = |op: &Value, name: &str| {
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no {name}"))["schema"]
                .clone()
        };
        assert_eq!(param(&cm["put"], "dryRun")["enum"], json!(["All"]));
        assert_eq!(
            param(&cm["patch"], "fieldValidation")["enum"],
            json!(["Ignore", "Warn", "Strict"])
        );
        assert_eq!(param(&list["get"], "limit")["minimum"], 0);
        assert_eq!(
            param(&cm["delete"], "propagationPolicy")["enum"],
            json!(["Background", "Foreground", "Orphan"])
        );
        assert!(cm["patch"]["requestBody"]["content"]["application/apply-patch+yaml"].is_object());
        // A JSON patch is a list of operations.
        assert_eq!(
            cm["patch"]["requestBody"]["content"]["application/json-patch+json"]["schema"]["type"],
            "array"
        );
        // Binding answers a Status.
        let binding = &paths["/api/v1/namespaces/{namespace}/pods/{name}/binding"]["post"];
        assert!(
            binding["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with(".Status")
        );

        let skiff = doc("apis/skiff.dev/v1");
        let paths = &skiff["paths"];
        // Modules go up and come down as raw Wasm.
        let upload = &paths["/apis/skiff.dev/v1/modules"]["post"]["requestBody"]["content"];
        assert_eq!(
            upload.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["application/wasm"]
        );
        assert!(
            paths["/apis/skiff.dev/v1/modules/{name}"]["get"]["responses"]["200"]["content"]
                .get("application/wasm")
                .is_some()
        );
        // An App takes a one-request deploy.
        let deploy = &paths["/apis/skiff.dev/v1/namespaces/{namespace}/apps/{name}"]["put"];
        assert!(
            deploy["requestBody"]["content"]
                .get("application/wasm")
                .is_some()
        );
        for name in ["replicas", "route", "wait", "timeoutSeconds"] {
            param(deploy, name);
        }
    }

    fn doc_schema(path: &str, name: &str) -> Value {
        doc(path)["components"]["schemas"][name].clone()
    }
}

//! Applying PATCH bodies to stored objects, as the Kubernetes API server does.
//!
//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are applied with the
//! `json-patch` crate, inside the same bounds kube-apiserver sets: at most 10 000
//! operations, and at most 3 MiB copied by `copy` operations in one patch. Strategic
//! merge patch is applied by `strategic.rs`. Server-side apply is recognised by content
//! type but is not a document patch: it merges by ownership (`crate::apply`), which the
//! API server runs; here it is [`PatchError::Unsupported`] (what the scale subresource,
//! which takes no apply, answers with 415).
//!
//! Errors say which status the server should answer: [`PatchError::Malformed`] is 400,
//! [`PatchError::Failed`] and [`PatchError::CopyTooLarge`] are 422,
//! [`PatchError::TooManyOperations`] is 413 and [`PatchError::Unsupported`] is 415.

use std::fmt;
use std::io;

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

/// Most operations one JSON patch may hold. The body cap does not bound this by itself:
/// an operation is a few dozen bytes, so a legal body carries tens of thousands, and each
/// one walks the document. kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes all `copy` operations of one JSON patch may duplicate. Without it a patch
/// that copies the document into itself doubles it per operation. kube-apiserver's
/// default `JSONPatchMaxCopyBytes`: twice etcd's 1.5 MiB request size.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// The four PATCH flavours Kubernetes accepts, told apart by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// `application/merge-patch+json`, RFC 7386.
    Merge,
    /// `application/json-patch+json`, RFC 6902.
    Json,
    /// `application/strategic-merge-patch+json`, Kubernetes' list-aware merge.
    StrategicMerge,
    /// `application/apply-patch+yaml`, server-side apply.
    Apply,
}

impl PatchType {
    /// Recognises a request's `Content-Type`, ignoring parameters such as
    /// `; charset=utf-8` and letter case (media types are case-insensitive).
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let essence = ct.split(';').next().unwrap_or("").trim();
        [
            PatchType::Merge,
            PatchType::Json,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ]
        .into_iter()
        .find(|t| t.content_type().eq_ignore_ascii_case(essence))
    }

    /// The media type that selects this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Json => "application/json-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.content_type())
    }
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not a patch of the declared type (bad JSON, not an object, unknown
    /// operation). Answer 400.
    #[error("{reason}")]
    Malformed {
        reason: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The patch is well-formed but an operation failed on this object (a `test` that
    /// did not match, a path that does not exist). Answer 422.
    #[error("the JSON patch could not be applied: {0}")]
    Failed(#[source] json_patch::PatchError),
    /// The JSON patch has more operations than [`MAX_JSON_PATCH_OPERATIONS`]. Answer 413.
    #[error("The allowed maximum operations in a JSON patch is {max}, got {got}")]
    TooManyOperations { max: usize, got: usize },
    /// The JSON patch's `copy` operations would duplicate more than
    /// [`MAX_JSON_PATCH_COPY_BYTES`]. Answer 422.
    #[error(
        "the JSON patch could not be applied: operation '/{operation}': unable to copy, accumulated size increased to {accumulated} bytes, which is greater than the limit of {limit}"
    )]
    CopyTooLarge {
        operation: usize,
        accumulated: usize,
        limit: usize,
    },
    /// A patch type this server does not apply yet. Answer 415.
    #[error("patch type {0} is not supported yet")]
    Unsupported(PatchType),
}

impl PatchError {
    fn malformed(reason: impl Into<String>, source: Option<serde_json::Error>) -> Self {
        PatchError::Malformed {
            reason: reason.into(),
            source,
        }
    }
}

/// Applies a patch of any type; the entry point for the API server's PATCH handler.
pub fn apply_patch(
    patch_type: PatchType,
    target: &Value,
    patch_body: &[u8],
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Merge => apply_merge_patch(target, patch_body),
        PatchType::Json => apply_json_patch(target, patch_body),
        PatchType::StrategicMerge => {
            let patch: Value = serde_json::from_slice(patch_body).map_err(|e| {
                PatchError::malformed(
                    format!("error decoding strategic merge patch: {e}"),
                    Some(e),
                )
            })?;
            crate::strategic::apply(target, &patch).map_err(|e| PatchError::malformed(e.0, None))
        }
        PatchType::Apply => Err(PatchError::Unsupported(patch_type)),
    }
}

/// Applies an RFC 7386 merge patch: objects merge key by key, `null` deletes, anything
/// else (lists included) replaces. The body must be a JSON object.
pub fn apply_merge_patch(target: &Value, patch_body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(patch_body)
        .map_err(|e| PatchError::malformed(format!("error decoding merge patch: {e}"), Some(e)))?;
    if !patch.is_object() {
        return Err(PatchError::malformed(
            "a merge patch must be a JSON object",
            None,
        ));
    }
    let mut doc = target.clone();
    json_patch::merge(&mut doc, &patch);
    Ok(doc)
}

/// Applies an RFC 6902 JSON patch. All operations apply or none: on any failure the
/// caller's object is untouched (we work on a copy).
pub fn apply_json_patch(target: &Value, patch_body: &[u8]) -> Result<Value, PatchError> {
    let patch: Patch = serde_json::from_slice(patch_body)
        .map_err(|e| PatchError::malformed(format!("error decoding JSON patch: {e}"), Some(e)))?;
    if patch.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            max: MAX_JSON_PATCH_OPERATIONS,
            got: patch.len(),
        });
    }
    let mut doc = target.clone();
    let mut copied = 0usize;
    // One operation at a time, so each `copy` is measured against the document as the
    // operations before it left it.
    for (index, op) in patch.iter().enumerate() {
        if let PatchOperation::Copy(copy) = op
            && let Some(source) = doc.pointer(copy.from.as_str())
        {
            copied = copied.saturating_add(json_size(source));
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(PatchError::CopyTooLarge {
                    operation: index,
                    accumulated: copied,
                    limit: MAX_JSON_PATCH_COPY_BYTES,
                });
            }
        }
        // `patch_unsafe` skips building an undo log: a failure discards `doc` anyway.
        if let Err(mut e) = json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)) {
            // Report the operation's index in the whole patch, not in the one-element slice.
            e.operation = index;
            return Err(PatchError::Failed(e));
        }
    }
    Ok(doc)
}

/// Bytes `v` takes as compact JSON, counted without building the string.
fn json_size(v: &Value) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merge(target: Value, patch: Value) -> Value {
        apply_merge_patch(&target, patch.to_string().as_bytes()).unwrap()
    }

    fn json_patch(target: Value, patch: Value) -> Result<Value, PatchError> {
        apply_json_patch(&target, patch.to_string().as_bytes())
    }

    #[test]
    fn content_types_round_trip_and_ignore_parameters() {
        for t in [
            PatchType::Merge,
            PatchType::Json,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
            assert_eq!(t.to_string(), t.content_type());
        }
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type(" application/json-patch+json ;charset=UTF-8"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        assert_eq!(PatchType::from_content_type(""), None);
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+jsonx"),
            None
        );
    }

    #[test]
    fn merge_patch_follows_rfc7386_examples() {
        // The test cases of RFC 7386 appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, want) in cases {
            assert_eq!(
                merge(target.clone(), patch.clone()),
                want,
                "{target} + {patch}"
            );
        }
    }

    #[test]
    fn merge_patch_on_a_kubernetes_object() {
        let pod = json!({
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "fe"}},
            "spec": {"containers": [{"name": "app", "image": "sha256:aa"}]}
        });
        let patched = merge(
            pod,
            json!({"metadata": {"labels": {"tier": null, "canary": "true"}}}),
        );
        assert_eq!(
            patched["metadata"]["labels"],
            json!({"app": "web", "canary": "true"})
        );
        assert_eq!(patched["spec"]["containers"][0]["image"], "sha256:aa");
    }

    #[test]
    fn merge_patch_body_must_be_a_json_object() {
        let target = json!({"a": 1});
        for body in [&b"[1]"[..], b"\"x\"", b"null", b"3", b"{", b"", b"not json"] {
            let err = apply_merge_patch(&target, body).unwrap_err();
            assert!(
                matches!(err, PatchError::Malformed { .. }),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
        }
        let err = apply_merge_patch(&target, b"[1]").unwrap_err();
        assert_eq!(err.to_string(), "a merge patch must be a JSON object");
        assert!(std::error::Error::source(&err).is_none());
        let err = apply_merge_patch(&target, b"{").unwrap_err();
        assert!(
            err.to_string().starts_with("error decoding merge patch: "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn json_patch_applies_every_operation() {
        let target = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"args": ["a", "b"]}});
        let patched = json_patch(
            target,
            json!([
                {"op": "test", "path": "/metadata/name", "value": "web"},
                {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
                {"op": "add", "path": "/spec/args/-", "value": "c"},
                {"op": "add", "path": "/spec/args/0", "value": "first"},
                {"op": "replace", "path": "/metadata/labels/app", "value": "api"},
                {"op": "remove", "path": "/spec/args/1"},
                {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
                {"op": "move", "from": "/metadata/annotations/tier", "path": "/metadata/annotations/moved"},
                {"op": "add", "path": "/metadata/labels/a~1b", "value": "escaped"}
            ]),
        )
        .unwrap();
        assert_eq!(
            patched,
            json!({
                "metadata": {
                    "name": "web",
                    "labels": {"app": "api", "tier": "fe", "a/b": "escaped"},
                    "annotations": {"app": "api", "moved": "fe"}
                },
                "spec": {"args": ["first", "b", "c"]}
            })
        );
        assert_eq!(
            json_patch(json!({"a": 1}), json!([])).unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn json_patch_failures_are_failed_and_leave_the_target_alone() {
        let target = json!({"metadata": {"name": "web"}, "spec": {"args": ["a"]}});
        let failing = [
            json!([{"op": "test", "path": "/metadata/name", "value": "db"}]),
            json!([{"op": "remove", "path": "/metadata/missing"}]),
            json!([{"op": "replace", "path": "/nope/deeper", "value": 1}]),
            json!([{"op": "add", "path": "/missing/parent", "value": 1}]),
            json!([{"op": "add", "path": "/spec/args/5", "value": 1}]),
            json!([{"op": "add", "path": "/spec/args/-1", "value": 1}]),
            json!([{"op": "move", "from": "/spec", "path": "/spec/inner"}]),
            json!([{"op": "copy", "from": "/absent", "path": "/x"}]),
        ];
        for patch in failing {
            let err = json_patch(target.clone(), patch.clone()).unwrap_err();
            assert!(matches!(err, PatchError::Failed(_)), "{patch}: {err:?}");
            assert!(std::error::Error::source(&err).is_some());
        }
        // A failure after successful operations reports the failing operation's index.
        let err = json_patch(
            target.clone(),
            json!([
                {"op": "add", "path": "/metadata/labels", "value": {}},
                {"op": "test", "path": "/metadata/name", "value": "db"}
            ]),
        )
        .unwrap_err();
        let PatchError::Failed(inner) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(inner.operation, 1);
        assert_eq!(
            err.to_string(),
            "the JSON patch could not be applied: operation '/1' failed at path '/metadata/name': value did not match"
        );
    }

    #[test]
    fn json_patch_malformed_bodies() {
        let target = json!({"a": 1});
        for body in [
            &b"{"[..],
            b"",
            b"{\"op\": \"add\"}",
            b"[{\"op\": \"frobnicate\", \"path\": \"/a\"}]",
            b"[{\"op\": \"add\", \"path\": \"/a\"}]",
            b"[{\"op\": \"add\", \"path\": \"a\", \"value\": 1}]",
            b"[{\"path\": \"/a\", \"value\": 1}]",
            b"[1]",
        ] {
            let err = apply_json_patch(&target, body).unwrap_err();
            assert!(
                matches!(err, PatchError::Malformed { .. }),
                "{:?}: {err:?}",
                String::from_utf8_lossy(body)
            );
            assert!(
                err.to_string().starts_with("error decoding JSON patch: "),
                "{err}"
            );
        }
    }

    #[test]
    fn json_patch_operation_count_is_bounded() {
        let op = json!({"op": "test", "path": "/a", "value": 1});
        let at_limit = Value::Array(vec![op.clone(); MAX_JSON_PATCH_OPERATIONS]);
        assert!(json_patch(json!({"a": 1}), at_limit).is_ok());
        let over = Value::Array(vec![op; MAX_JSON_PATCH_OPERATIONS + 1]);
        let err = json_patch(json!({"a": 1}), over).unwrap_err();
        assert!(
            matches!(
                err,
                PatchError::TooManyOperations {
                    max: 10_000,
                    got: 10_001
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }

    #[test]
    fn json_patch_copies_are_bounded() {
        // Each copy doubles the document; without a bound 40 of them would need a terabyte.
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/d", "path": format!("/d/c{i}")}))
            .collect();
        let target = json!({"d": {"seed": "x".repeat(1024)}});
        let err = json_patch(target, Value::Array(ops)).unwrap_err();
        let PatchError::CopyTooLarge {
            operation,
            accumulated,
            limit,
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(limit, MAX_JSON_PATCH_COPY_BYTES);
        assert!(accumulated > limit);
        assert!(
            (10..13).contains(&operation),
            "the limit is reached after ~11 doublings of 1 KiB, got {operation}"
        );

        // Small copies within the budget succeed.
        let ok = json_patch(
            json!({"a": {"b": 1}}),
            json!([{"op": "copy", "from": "/a", "path": "/c"}]),
        )
        .unwrap();
        assert_eq!(ok, json!({"a": {"b": 1}, "c": {"b": 1}}));
    }

    #[test]
    fn apply_patch_dispatches_on_type() {
        let target = json!({"a": 1});
        assert_eq!(
            apply_patch(PatchType::Merge, &target, br#"{"b": 2}"#).unwrap(),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(
            apply_patch(
                PatchType::Json,
                &target,
                br#"[{"op": "remove", "path": "/a"}]"#
            )
            .unwrap(),
            json!({})
        );
        let err = apply_patch(PatchType::Apply, &target, b"{}").unwrap_err();
        assert!(matches!(err, PatchError::Unsupported(PatchType::Apply)));
        assert_eq!(
            apply_patch(PatchType::StrategicMerge, &json!({"a": 1}), br#"{"b": 2}"#).unwrap(),
            json!({"a": 1, "b": 2})
        );
    }

    #[test]
    fn json_size_counts_compact_bytes() {
        let v = json!({"a": [1, "b", null]});
        assert_eq!(json_size(&v), v.to_string().len());
    }
}

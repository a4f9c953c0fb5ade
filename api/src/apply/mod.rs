//! Server-side apply (`application/apply-patch+yaml`) and field ownership
//! (`metadata.managedFields`), with the semantics of Kubernetes'
//! sigs.k8s.io/structured-merge-diff: field paths and their `FieldsV1` encoding
//! ([`fieldpath`]), what the schema says about lists ([`schema`]), the walks over objects
//! ([`typed`]: field sets, comparison, merge, removal) and the managers' entries
//! ([`managed`]: apply, update, conflicts). No I/O: the API server decides which part of an
//! object managers may own and stores the result.

pub mod fieldpath;
pub mod managed;
pub mod schema;
pub mod typed;

pub use fieldpath::{FieldSet, Path, PathElement};
pub use managed::{Applied, Entry, ManagedFields, Operation, Writer, apply, update};
pub use schema::{ApplySchema, Builtin, ListType, Structural};

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager as kube-apiserver names it: `"kubectl-client-side-apply" using apps/v1
    /// at 2026-01-01T00:00:00Z`.
    pub manager: String,
    /// The field, as `.spec.replicas`.
    pub path: String,
}

/// Why an apply (or the bookkeeping of an update) failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    /// An item of an associative list lacks one of its keys (a 422).
    #[error(
        "associative list with keys has an element that omits key field {key:?} (and doesn't have default value): {item}"
    )]
    MissingKey { key: String, item: String },
    /// An item of an associative list is not a map.
    #[error("{0}: expected a map as an item of an associative list")]
    NotAMap(String),
    /// A configuration names the same list item twice.
    #[error("duplicate entries for key {0}")]
    Duplicate(String),
    /// `metadata.managedFields` cannot be read (a 400 on a write that sets it).
    #[error("invalid managedFields: {0}")]
    BadFieldsV1(String),
    /// The apply would change fields other managers own (a 409).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
}

/// kube-apiserver's wording of apply conflicts: one on a line, or several grouped by
/// manager.
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager, only.path
        );
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", c.path));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let c = |m: &str, p: &str| Conflict {
            manager: format!("{m:?}"),
            path: p.into(),
        };
        let err = ApplyError::Conflicts(vec![
            c("b", ".spec.replicas"),
            c("a", ".metadata.labels.x"),
            c("b", ".spec.paused"),
        ]);
        assert_eq!(
            err.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .metadata.labels.x\nconflicts with \"b\":\n- .spec.replicas\n- .spec.paused"
        );
    }
}

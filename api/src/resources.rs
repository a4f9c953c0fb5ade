//! How a served resource kind is described: its group, version, names, scope,
//! subresources and how an object of it is normalised through its `k8s-openapi` type,
//! so stored JSON is exactly what Kubernetes would write. Each kind's description lives
//! with its behaviour in the control plane (`skiff_controlplane::kinds`), which keeps
//! the registry of served kinds.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A subresource a kind serves besides its main resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes change only `.status`.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `spec.replicas`.
    Scale,
    /// `pods/binding`: assigns a pod to a node once.
    Binding,
    /// `pods/log`: a container's log, proxied from the node that runs it.
    Log,
    /// `pods/eviction`: a `policy/v1` Eviction, what `kubectl drain` posts.
    Eviction,
    /// `pods/portforward`: the connection `kubectl port-forward` upgrades.
    PortForward,
    /// `serviceaccounts/token`: an `authentication.k8s.io/v1` TokenRequest, answered
    /// with a signed token and never stored.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Eviction => "eviction",
            Subresource::PortForward => "portforward",
            Subresource::Token => "token",
        }
    }
}

/// What a create does with a client-supplied `.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOnCreate {
    /// The kind has no status, or keeps what the client sent (Nodes, as Kubernetes allows).
    Keep,
    /// Status belongs to controllers: a create starts from an empty status.
    Reset,
    /// Reset, then set `status.phase` (Pods start `Pending`, Namespaces `Active`).
    Phase(&'static str),
}

/// One served resource kind.
#[derive(Debug)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether `metadata.generation` tracks changes to `.spec`.
    pub has_spec: bool,
    pub status_on_create: StatusOnCreate,
    /// Field selectors served beyond `metadata.name` and `metadata.namespace`.
    pub extra_fields: &'static [&'static str],
    /// Round-trips an object through its typed form: rejects wrong shapes, drops unknown
    /// fields and writes fields the way Kubernetes serialises them.
    pub normalize: fn(Value) -> Result<Value, serde_json::Error>,
    /// Registers the kind's OpenAPI schema (and those it refers to) with a generator and
    /// returns a reference to it, for `/openapi/v3`.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

pub fn through<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(value)?;
    serde_json::to_value(typed)
}

impl ResourceInfo {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The resource as Kubernetes names it in errors: `pods`, `deployments.apps`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_subresource(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// Store key prefix of every object of this kind, in every namespace.
    pub fn prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/{}/{}/", group, self.plural)
    }

    /// Store key prefix of the objects in one namespace (or of all, if cluster-scoped).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/", self.prefix(), ns),
            _ => self.prefix(),
        }
    }

    /// Store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.namespace_prefix(namespace), name)
    }

    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace" && self.namespaced)
            || self.extra_fields.contains(&field)
    }
}

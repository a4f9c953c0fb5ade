//! The table of served resource kinds: their group, version, names, scope,
//! subresources and how an object of each kind is normalised through its
//! `k8s-openapi` type, so stored JSON is exactly what Kubernetes would write.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coordination};
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};

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
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Eviction => "eviction",
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

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn through<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, serde_json::Error> {
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

const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];

static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: STATUS,
        has_spec: false,
        status_on_create: StatusOnCreate::Phase("Active"),
        extra_fields: &["status.phase"],
        normalize: through::<core::Namespace>,
        schema: schema_of::<core::Namespace>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: STATUS,
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &["spec.unschedulable"],
        normalize: through::<core::Node>,
        schema: schema_of::<core::Node>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            Subresource::Status,
            Subresource::Binding,
            Subresource::Log,
            Subresource::Eviction,
        ],
        has_spec: true,
        status_on_create: StatusOnCreate::Phase("Pending"),
        extra_fields: &[
            "spec.nodeName",
            "status.phase",
            "spec.restartPolicy",
            "spec.schedulerName",
            "status.podIP",
        ],
        normalize: through::<core::Pod>,
        schema: schema_of::<core::Pod>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[],
        normalize: through::<core::ConfigMap>,
        schema: schema_of::<core::ConfigMap>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &["type"],
        normalize: through::<core::Secret>,
        schema: schema_of::<core::Secret>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: STATUS,
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &[],
        normalize: through::<core::Service>,
        schema: schema_of::<core::Service>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        normalize: through::<core::Event>,
        schema: schema_of::<core::Event>,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: STATUS_SCALE,
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &[],
        normalize: through::<apps::Deployment>,
        schema: schema_of::<apps::Deployment>,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: STATUS_SCALE,
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &["status.replicas"],
        normalize: through::<apps::ReplicaSet>,
        schema: schema_of::<apps::ReplicaSet>,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: STATUS,
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &[],
        normalize: through::<apps::DaemonSet>,
        schema: schema_of::<apps::DaemonSet>,
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        namespaced: true,
        short_names: &[],
        categories: &["all"],
        subresources: STATUS,
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &["status.successful"],
        normalize: through::<batch::Job>,
        schema: schema_of::<batch::Job>,
    },
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[],
        normalize: through::<coordination::Lease>,
        schema: schema_of::<coordination::Lease>,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[],
        normalize: through::<core::Endpoints>,
        schema: schema_of::<core::Endpoints>,
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[],
        normalize: through::<discovery::EndpointSlice>,
        schema: schema_of::<discovery::EndpointSlice>,
    },
    ResourceInfo {
        group: crate::module::GROUP,
        version: crate::module::VERSION,
        kind: "Module",
        plural: "modules",
        singular: "module",
        namespaced: false,
        short_names: &["mod"],
        categories: &[],
        subresources: &[],
        has_spec: false,
        status_on_create: StatusOnCreate::Keep,
        extra_fields: &[],
        normalize: through::<crate::module::Module>,
        schema: schema_of::<crate::module::Module>,
    },
    ResourceInfo {
        group: crate::module::GROUP,
        version: crate::module::VERSION,
        kind: "App",
        plural: "apps",
        singular: "app",
        namespaced: true,
        short_names: &[],
        categories: &["all"],
        subresources: &[Subresource::Status],
        has_spec: true,
        status_on_create: StatusOnCreate::Reset,
        extra_fields: &[],
        normalize: through::<crate::app::App>,
        schema: schema_of::<crate::app::App>,
    },
];

/// Every served kind.
pub fn all() -> &'static [ResourceInfo] {
    RESOURCES
}

/// The kind served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The served group-versions, core first, in a stable order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_separate_namespaces_and_kinds() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/core/pods/default/web");
        assert_eq!(pods.namespace_prefix(None), "/core/pods/");
        let nodes = lookup("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/core/nodes/n1");
        let deploy = lookup("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.qualified_plural(), "deployments.apps");
        assert_eq!(deploy.api_version(), "apps/v1");
    }

    #[test]
    fn normalize_drops_unknown_fields_and_rejects_wrong_shapes() {
        let pods = lookup("", "v1", "pods").unwrap();
        let out = (pods.normalize)(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "sha256:00"}]}
        }))
        .unwrap();
        assert!(out["metadata"].get("bogus").is_none());
        assert_eq!(out["spec"]["containers"][0]["name"], "c");
        assert!((pods.normalize)(json!({"spec": {"containers": "nope"}})).is_err());
        assert!((pods.normalize)(json!({"apiVersion": "v1", "kind": "Node"})).is_err());
    }

    #[test]
    fn every_kind_is_unique_and_round_trips_an_empty_object() {
        for r in all() {
            let v = (r.normalize)(
                json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}}),
            );
            let v = v.unwrap_or_else(|e| panic!("{}: {e}", r.kind));
            assert_eq!(v["kind"], r.kind);
            assert_eq!(by_kind(&r.api_version(), r.kind).unwrap().plural, r.plural);
        }
    }
}

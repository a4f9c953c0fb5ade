//! What each served kind does beyond the generic API machinery, in one place per kind.
//!
//! Every kind the API server serves has a module here (`pod.rs`, `deployment.rs`, ...)
//! with a type implementing [`Kind`]: its defaults, its validation, its Table columns and
//! cells, and its create and delete hooks; its description (group, version, names,
//! scope, subresources, how it is normalised) is a `static INFO` in the same file.
//! [`builtins`] registers each kind with one line; routing, discovery and the
//! controllers find kinds here ([`lookup`], [`all`], [`by_kind`]), and the API server's
//! handlers only ever call the hooks of the kind [`of`] returns, so adding a kind
//! touches its own file and that one line (see docs/architecture.md, "Adding a kind").
//! This module sits below the API server and never imports it.
//!
//! The registry is filled at run time and holds `Arc<dyn Kind>` values, so a kind need
//! not be known when the server is compiled. A CustomResourceDefinition (a later issue)
//! plugs in as one more implementation of [`Kind`] built from the CRD object: its
//! `info()` a `ResourceInfo` made from the CRD's names and scope (leaked to `'static`, as
//! the served kinds are few and live as long as the server), `normalize` pruning against
//! the CRD's structural schema, `schema` returning that schema, `validate` running its
//! OpenAPI validation, and its printer columns for `columns` and `cells`; the CRD
//! controller (`crate::crd`) then calls [`replace`] when the CRD is established, again
//! when it changes, and [`unregister`] when it goes. Built-in kinds can be neither
//! replaced nor unregistered. Readers that build something from the whole registry
//! (the OpenAPI documents) rebuild it when [`generation`] moves.

pub mod app;
mod clusterrole;
mod clusterrolebinding;
mod configmap;
mod cronjob;
pub mod customresourcedefinition;
mod daemonset;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
pub mod fields;
mod gateway;
pub mod gatewayclass;
pub mod horizontalpodautoscaler;
mod httproute;
pub mod ingress;
pub mod ingressclass;
mod job;
mod lease;
mod module;
mod namespace;
mod node;
pub mod persistentvolume;
pub mod persistentvolumeclaim;
pub mod pod;
pub mod poddisruptionbudget;
pub mod print;
pub mod rbac;
mod replicaset;
mod role;
mod rolebinding;
mod secret;
mod service;
pub mod serviceaccount;
mod statefulset;
pub mod storageclass;
mod workload;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use skiff_api::resources::ResourceInfo;
use skiff_api::validation::{self as v, FieldError};

use crate::error::ApiResult;
use crate::objects;
use crate::state::ApiConfig;
use print::{AGE, Column, NAME};

/// Every kind compiled into the server, registered once when the registry is first used.
/// Adding a kind: one line here.
fn builtins() -> Vec<Arc<dyn Kind>> {
    vec![
        Arc::new(namespace::Namespace),
        Arc::new(node::Node),
        Arc::new(pod::Pod),
        Arc::new(configmap::ConfigMap),
        Arc::new(secret::Secret),
        Arc::new(service::Service),
        Arc::new(serviceaccount::ServiceAccount),
        Arc::new(event::Event),
        Arc::new(deployment::Deployment),
        Arc::new(replicaset::ReplicaSet),
        Arc::new(daemonset::DaemonSet),
        Arc::new(statefulset::StatefulSet),
        Arc::new(job::Job),
        Arc::new(cronjob::CronJob),
        Arc::new(lease::Lease),
        Arc::new(endpoints::Endpoints),
        Arc::new(endpointslice::EndpointSlice),
        Arc::new(module::Module),
        Arc::new(app::App),
        Arc::new(poddisruptionbudget::PodDisruptionBudget),
        Arc::new(ingressclass::IngressClass),
        Arc::new(ingress::Ingress),
        Arc::new(gatewayclass::GatewayClass),
        Arc::new(gateway::Gateway),
        Arc::new(httproute::HTTPRoute),
        Arc::new(storageclass::StorageClass),
        Arc::new(persistentvolume::PersistentVolume),
        Arc::new(persistentvolumeclaim::PersistentVolumeClaim),
        // The stored version first: discovery prefers the first version of a group.
        Arc::new(horizontalpodautoscaler::HorizontalPodAutoscaler),
        Arc::new(horizontalpodautoscaler::HorizontalPodAutoscalerV1),
        Arc::new(role::KIND),
        Arc::new(clusterrole::KIND),
        Arc::new(rolebinding::KIND),
        Arc::new(clusterrolebinding::KIND),
        Arc::new(customresourcedefinition::CustomResourceDefinition),
    ]
}

/// What a create knows besides the object: the uid it was given and the server's
/// configuration.
pub struct CreateContext<'a> {
    pub uid: &'a str,
    pub config: &'a ApiConfig,
}

/// The rules a name of a kind must follow: the messages of each rule it breaks.
pub type NameRules = fn(&str) -> Vec<String>;

/// The behaviour of one served kind. Every method has a default that does what a plain
/// kind needs, so a kind implements only what is particular to it.
pub trait Kind: Send + Sync {
    /// The kind's group, version, names, scope and subresources.
    fn info(&self) -> &'static ResourceInfo;

    /// Round-trips an object through the kind's typed form: rejects wrong shapes, drops
    /// unknown fields and writes fields the way Kubernetes serialises them.
    fn normalize(&self, obj: Value) -> Result<Value, serde_json::Error> {
        (self.info().normalize)(obj)
    }

    /// Registers the kind's OpenAPI schema with a generator and returns a reference to it.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.info().schema)(generator)
    }

    /// A kind served at a version other than the one it is stored at (`autoscaling/v1`
    /// HorizontalPodAutoscalers, stored as `autoscaling/v2`) converts at the API's edge:
    /// an object decoded at this version becomes the stored form here, before any other
    /// hook (defaults, validation and the Table cells all see the stored form)...
    fn to_stored(&self, obj: Value) -> Value {
        obj
    }

    /// ... and a stored object is shown at this version as this returns it; None when
    /// the stored form is this version's.
    fn served(&self, _stored: &Value) -> Option<Value> {
        None
    }

    /// For a kind with a `scale` subresource: the replicas its Scale shows, when
    /// `spec.replicas` is unset (what the kind's controller then runs).
    fn default_replicas(&self) -> i64 {
        0
    }

    /// For a kind with a `scale` subresource: where its object keeps the desired and the
    /// observed replicas, as field names from the root (a CRD names its own).
    fn replicas_fields(&self) -> (Vec<String>, Vec<String>) {
        (
            vec!["spec".into(), "replicas".into()],
            vec!["status".into(), "replicas".into()],
        )
    }

    /// For a kind with a `scale` subresource: the label selector (a `LabelSelector`
    /// object) of its pods, which its Scale's `status.selector` shows.
    fn scale_selector(&self, obj: &Value) -> Option<Value> {
        obj.pointer("/spec/selector").cloned()
    }

    /// What a create sets before defaulting, beyond system fields: what depends on the new
    /// object's uid or the server's configuration, or folds write-only fields.
    fn prepare_create(&self, _obj: &mut Value, _ctx: &CreateContext<'_>) {}

    /// What an update of the main resource folds or derives before defaulting (a
    /// Secret's write-only `stringData`).
    fn prepare_update(&self, _obj: &mut Value) {}

    /// Sets the defaults Kubernetes sets, on create and on update of the main resource.
    fn default(&self, _obj: &mut Value) {}

    /// What `metadata.name` must be; `None` for names the server checks elsewhere.
    fn name_rules(&self) -> Option<NameRules> {
        Some(v::is_dns1123_subdomain)
    }

    /// Checks a complete object about to be stored (metadata is checked for every kind).
    fn validate(&self, _obj: &Value, _errs: &mut Vec<FieldError>) {}

    /// Checks an update against the stored object, after [`Kind::validate`] of the new
    /// one: the fields Kubernetes makes immutable.
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// Refuses to delete the object of this name at all.
    fn check_delete(&self, _name: &str) -> ApiResult<()> {
        Ok(())
    }

    /// How long an object of this kind stays, marked for deletion, before it goes;
    /// `requested` is the grace period the delete asked for, if any.
    fn deletion_grace_seconds(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether a deleted object stays, marked, until a server loop removes it (a
    /// Namespace stays until the namespace cleaner has drained it).
    fn removed_by_server(&self) -> bool {
        false
    }

    /// What marking an object for deletion changes beyond its metadata.
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Whether a delete that removed the object answers with it (as for pods) rather than
    /// with a success Status.
    fn delete_returns_object(&self) -> bool {
        false
    }

    /// Whether the garbage collector follows objects of this kind: they own, or are
    /// owned by, other objects through `ownerReferences`.
    fn garbage_collected(&self) -> bool {
        false
    }

    /// For server-side apply: the structural schema whose `x-kubernetes-list-type` and
    /// `x-kubernetes-map-type` say how lists and maps merge (a custom resource's); None
    /// for the built-in kinds, which merge on strategic merge patch's keys.
    fn structural_schema(&self) -> Option<&Value> {
        None
    }

    /// The Table columns `kubectl get` shows.
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }

    /// One object's Table row, a cell per column.
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![print::name(obj), print::age(obj)]
    }
}

/// Group, version and resource: one kind may be served at several versions of its group,
/// each a registered kind of its own, all stored under the group and resource
/// (`ResourceInfo::prefix`) in one form.
type Key = (&'static str, &'static str, &'static str);

fn key(info: &ResourceInfo) -> Key {
    (info.group, info.version, info.plural)
}

/// The served kinds: in the order they were registered (discovery lists them so), and by
/// group and resource.
#[derive(Default)]
struct Registry {
    order: Vec<&'static ResourceInfo>,
    by_key: HashMap<Key, Arc<dyn Kind>>,
    /// The kinds compiled in, which run-time registrations may not touch.
    builtin: HashSet<Key>,
    /// Kinds unregistered at run time: a request already routed to one still finds its
    /// hooks ([`of`]) while it finishes, though nothing routes to it any more.
    retired: HashMap<Key, Arc<dyn Kind>>,
}

/// Moves on every run-time change of the registry.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A number that changes whenever a kind is registered, replaced or unregistered at
/// run time: what caches of the whole registry compare to know they are stale.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    let mut registry = Registry::default();
    for kind in builtins() {
        let info = kind.info();
        let previous = registry.by_key.insert(key(info), kind);
        assert!(previous.is_none(), "a kind is registered twice");
        registry.builtin.insert(key(info));
        registry.order.push(info);
    }
    RwLock::new(registry)
});

fn registry() -> std::sync::RwLockReadGuard<'static, Registry> {
    REGISTRY.read().unwrap_or_else(PoisonError::into_inner)
}

/// The kind served as `info`.
///
/// # Panics
/// If nothing registered it: every `ResourceInfo` the server routes to comes from a
/// registered kind ([`lookup`], [`all`]), and a kind registered at run time is
/// registered before it is routed to.
pub fn of(info: &ResourceInfo) -> Arc<dyn Kind> {
    let registry = registry();
    registry
        .by_key
        .get(&key(info))
        .or_else(|| registry.retired.get(&key(info)))
        .cloned()
        .unwrap_or_else(|| panic!("{} has no registered kind", info.qualified_plural()))
}

/// Registers a kind at run time (a CRD's); fails if its group and resource are taken.
pub fn register(kind: Arc<dyn Kind>) -> Result<(), String> {
    let info = kind.info();
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if registry.by_key.contains_key(&key(info)) {
        return Err(format!("{} is already served", info.qualified_plural()));
    }
    registry.by_key.insert(key(info), kind);
    registry.order.push(info);
    registry.retired.remove(&key(info));
    GENERATION.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Registers a kind at run time, or replaces the run-time kind served at its group,
/// version and resource (a CRD whose schema or columns changed); fails for a built-in
/// kind's place. A replaced kind keeps its place in discovery's order.
pub fn replace(kind: Arc<dyn Kind>) -> Result<(), String> {
    let info = kind.info();
    let k = key(info);
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if registry.builtin.contains(&k) {
        return Err(format!(
            "{} is served by the server itself",
            info.qualified_plural()
        ));
    }
    match registry.order.iter().position(|r| key(r) == k) {
        Some(i) => registry.order[i] = info,
        None => registry.order.push(info),
    }
    registry.by_key.insert(k, kind);
    registry.retired.remove(&k);
    GENERATION.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// Stops serving a kind registered at run time; false if it is built in or not served.
pub fn unregister(group: &str, version: &str, plural: &str) -> bool {
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    let Some(i) = registry
        .order
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
    else {
        return false;
    };
    let k = key(registry.order[i]);
    if registry.builtin.contains(&k) {
        return false;
    }
    registry.order.remove(i);
    if let Some(kind) = registry.by_key.remove(&k) {
        registry.retired.insert(k, kind);
    }
    GENERATION.fetch_add(1, Ordering::AcqRel);
    true
}

/// Whether the kind is compiled into the server.
pub fn is_builtin(info: &ResourceInfo) -> bool {
    registry().builtin.contains(&key(info))
}

/// Every served kind, in the order they were registered.
pub fn all() -> Vec<&'static ResourceInfo> {
    registry().order.clone()
}

/// The kind served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    registry()
        .order
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    registry()
        .order
        .iter()
        .copied()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The served group-versions, core first, in a stable order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in registry().order.iter() {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Whether an object that is being deleted may now go away: no finalizers hold it and
/// its grace period is over.
pub fn deletion_due(info: &ResourceInfo, obj: &Value, now: jiff::Timestamp) -> bool {
    if !objects::is_deleting(obj) || !objects::finalizers(obj).is_empty() {
        return false;
    }
    if of(info).removed_by_server() {
        // A server loop removes it (the namespace cleaner, once it has drained a namespace).
        return false;
    }
    let grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let deadline = objects::meta_str(obj, "deletionTimestamp").and_then(objects::parse_time);
    grace == 0 || deadline.is_none_or(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use skiff_api::resources::StatusOnCreate;

    #[test]
    fn every_served_resource_has_exactly_one_kind() {
        let builtins = builtins();
        let compiled_in = all().into_iter().filter(|i| is_builtin(i)).count();
        assert_eq!(builtins.len(), compiled_in);
        for info in crate::kinds::all() {
            let kind = of(info);
            assert!(std::ptr::eq(kind.info(), info), "{}", info.kind);
        }
    }

    struct Widget(&'static ResourceInfo);

    impl Kind for Widget {
        fn info(&self) -> &'static ResourceInfo {
            self.0
        }
    }

    #[test]
    fn kinds_can_be_registered_at_run_time() {
        let info: &'static ResourceInfo = Box::leak(Box::new(ResourceInfo {
            group: "example.com",
            version: "v1",
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            namespaced: true,
            short_names: &[],
            categories: &[],
            subresources: &[],
            has_spec: true,
            status_on_create: StatusOnCreate::Reset,
            extra_fields: &[],
            normalize: Ok,
            schema: |g| g.subschema_for::<Value>(),
        }));
        register(Arc::new(Widget(info))).unwrap();
        assert!(std::ptr::eq(of(info).info(), info));
        assert_eq!(of(info).columns(), vec![NAME, AGE]);
        assert!(register(Arc::new(Widget(info))).is_err());
        let pods = crate::kinds::lookup("", "v1", "pods").unwrap();
        assert!(register(Arc::new(Widget(pods))).is_err());
    }

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

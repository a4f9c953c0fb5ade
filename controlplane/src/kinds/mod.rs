//! What each served kind does beyond the generic API machinery, in one place per kind.
//!
//! Every kind the API server serves has a module here (`pod.rs`, `deployment.rs`, ...)
//! with a type implementing [`Kind`]: its defaults, its validation, its Table columns and
//! cells, and its create and delete hooks. The kind's static description (group,
//! version, names, scope, subresources, how it is normalised) stays in the api crate's
//! table (`skiff_api::resources`), which clients and the CLI share; the kind's `info()`
//! points at that entry. [`builtins`] registers each kind with one line, and the API
//! server's handlers only ever call the hooks of the kind [`of`] returns, so adding a
//! kind touches its own file and that one line (see docs/architecture.md, "Adding a
//! kind").
//!
//! The registry is filled at run time and holds `Arc<dyn Kind>` values, so a kind need
//! not be known when the server is compiled. A CustomResourceDefinition (a later issue)
//! plugs in as one more implementation of [`Kind`] built from the CRD object: its
//! `info()` a `ResourceInfo` made from the CRD's names and scope (leaked to `'static`, as
//! the served kinds are few and live as long as the server), `normalize` pruning against
//! the CRD's structural schema, `schema` returning that schema, `validate` running its
//! OpenAPI validation, and its printer columns for `columns` and `cells`; the CRD
//! controller then calls [`register`] when the CRD is established.

/// `info()` of a builtin kind: its entry in the api crate's table, looked up once.
macro_rules! served {
    ($group:expr, $plural:expr) => {{
        static INFO: std::sync::LazyLock<&'static skiff_api::resources::ResourceInfo> =
            std::sync::LazyLock::new(|| crate::kinds::served($group, $plural));
        *INFO
    }};
}

mod app;
mod configmap;
mod daemonset;
mod deployment;
mod endpoints;
mod endpointslice;
mod event;
mod job;
mod lease;
mod module;
mod namespace;
mod node;
pub mod pod;
mod replicaset;
mod secret;
mod service;
mod workload;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use skiff_api::resources::ResourceInfo;
use skiff_api::validation::{self as v, FieldError};

use crate::apiserver::DeleteOptions;
use crate::apiserver::error::ApiResult;
use crate::apiserver::tables::{self, AGE, Column, NAME};
use crate::state::ApiConfig;

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
        Arc::new(event::Event),
        Arc::new(deployment::Deployment),
        Arc::new(replicaset::ReplicaSet),
        Arc::new(daemonset::DaemonSet),
        Arc::new(job::Job),
        Arc::new(lease::Lease),
        Arc::new(endpoints::Endpoints),
        Arc::new(endpointslice::EndpointSlice),
        Arc::new(module::Module),
        Arc::new(app::App),
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

    /// What a create sets before defaulting, beyond system fields: what depends on the new
    /// object's uid or the server's configuration, or folds write-only fields.
    fn prepare_create(&self, _obj: &mut Value, _ctx: &CreateContext<'_>) {}

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

    /// How long an object of this kind stays, marked for deletion, before it goes.
    fn deletion_grace_seconds(&self, _obj: &Value, _opts: &DeleteOptions) -> i64 {
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

    /// The Table columns `kubectl get` shows.
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }

    /// One object's Table row, a cell per column.
    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![tables::name(obj), tables::age(obj)]
    }
}

/// The api crate's entry for the builtin kind served as `group/plural`.
fn served(group: &str, plural: &str) -> &'static ResourceInfo {
    skiff_api::resources::all()
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .unwrap_or_else(|| panic!("{plural}.{group} is in the api crate's table"))
}

type Key = (&'static str, &'static str);

fn key(info: &ResourceInfo) -> Key {
    (info.group, info.plural)
}

/// The served kinds, by group and resource.
static REGISTRY: LazyLock<RwLock<HashMap<Key, Arc<dyn Kind>>>> = LazyLock::new(|| {
    let mut kinds = HashMap::new();
    for kind in builtins() {
        let previous = kinds.insert(key(kind.info()), kind);
        assert!(previous.is_none(), "a kind is registered twice");
    }
    RwLock::new(kinds)
});

/// The kind served as `info`.
///
/// # Panics
/// If nothing registered it: every entry of `skiff_api::resources` has a builtin kind (a
/// test checks), and a kind registered at run time is registered before it is routed to.
pub fn of(info: &ResourceInfo) -> Arc<dyn Kind> {
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key(info))
        .cloned()
        .unwrap_or_else(|| panic!("{} has no registered kind", info.qualified_plural()))
}

/// Registers a kind at run time (a CRD's); fails if its group and resource are taken.
pub fn register(kind: Arc<dyn Kind>) -> Result<(), String> {
    let info = kind.info();
    let mut kinds = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if kinds.contains_key(&key(info)) {
        return Err(format!("{} is already served", info.qualified_plural()));
    }
    kinds.insert(key(info), kind);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::resources::{self, StatusOnCreate};

    #[test]
    fn every_served_resource_has_exactly_one_kind() {
        let builtins = builtins();
        assert_eq!(builtins.len(), resources::all().len());
        for info in resources::all() {
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
        let pods = resources::lookup("", "v1", "pods").unwrap();
        assert!(register(Arc::new(Widget(pods))).is_err());
    }
}

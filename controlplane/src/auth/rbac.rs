//! Role-based access control (rbac.authorization.k8s.io/v1), as kube-apiserver's RBAC
//! authorizer decides: a request is allowed when a rule of a role bound to its user, or
//! to one of its groups, matches it. Nothing is ever denied explicitly.
//!
//! - A **ClusterRoleBinding** grants its ClusterRole's rules everywhere: in every
//!   namespace, at the cluster scope and (for `nonResourceURLs`) on plain paths.
//! - A **RoleBinding** grants its Role's (or ClusterRole's) rules in its own namespace.
//! - A rule matches a verb, an API group and a resource (`pods`, `pods/log`, `*`,
//!   `*/scale`), optionally only objects of certain names; or, in a ClusterRole, paths
//!   (`/metrics`, `/apis/*`).
//!
//! The same rules answer `kubectl auth can-i` (SubjectAccessReviews), list what a user
//! may do (SelfSubjectRulesReviews) and stop escalation: whoever writes a role must
//! already hold every permission in it, and whoever binds a role must hold it, unless
//! a rule grants them the `escalate` or `bind` verb on it.
//!
//! Roles and bindings are read from watch-backed caches every server keeps ([`Rbac`]),
//! so a request costs no store read; a binding written through any server applies on
//! every server within the watch's latency, as in Kubernetes.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use skiff_api::selector::LabelSelector;

use crate::informer::{Cache, Informers};
use crate::objects;

pub const GROUP: &str = "rbac.authorization.k8s.io";

/// What a request asks to do, as RBAC sees it (Kubernetes' `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        namespace: Option<String>,
        group: String,
        resource: String,
        subresource: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }

    fn namespace(&self) -> Option<&str> {
        match self {
            Attributes::Resource { namespace, .. } => namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        }
    }
}

/// A user as authorization sees it: a name and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
}

/// One PolicyRule, read once from a role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut out = json!({"verbs": self.verbs});
        let mut put = |key: &str, list: &Vec<String>| {
            if !list.is_empty() {
                out[key] = json!(list);
            }
        };
        put("apiGroups", &self.api_groups);
        put("resources", &self.resources);
        put("resourceNames", &self.resource_names);
        put("nonResourceURLs", &self.non_resource_urls);
        out
    }

    /// Whether this rule allows the request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        match attrs {
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                any(&self.verbs, verb)
                    && any(&self.api_groups, group)
                    && self.resource_matches(resource, subresource.as_deref())
                    && (self.resource_names.is_empty()
                        || name
                            .as_deref()
                            .is_some_and(|n| self.resource_names.iter().any(|x| x == n)))
            }
            Attributes::NonResource { verb, path } => {
                any(&self.verbs, verb)
                    && self.non_resource_urls.iter().any(|u| url_matches(u, path))
            }
        }
    }

    fn resource_matches(&self, resource: &str, subresource: Option<&str>) -> bool {
        let combined = match subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
        })
    }
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// The four caches RBAC reads, set once the server's informers run.
struct Caches {
    roles: Arc<Cache>,
    cluster_roles: Arc<Cache>,
    role_bindings: Arc<Cache>,
    cluster_role_bindings: Arc<Cache>,
}

/// The roles and bindings a server authorizes with: caches of the four RBAC kinds.
#[derive(Default)]
pub struct Rbac {
    caches: OnceLock<Caches>,
}

fn info(plural: &str) -> &'static skiff_api::resources::ResourceInfo {
    crate::kinds::lookup(GROUP, "v1", plural).expect("RBAC kinds are served")
}

/// Where a decision came from, for the answer's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub binding: String,
    pub role: String,
}

impl Rbac {
    /// Starts the caches from `informers` and waits for their first list; until then
    /// nothing but `system:masters` is allowed.
    pub async fn follow(&self, informers: &Informers) -> bool {
        let caches = Caches {
            roles: informers.cache(GROUP, "roles"),
            cluster_roles: informers.cache(GROUP, "clusterroles"),
            role_bindings: informers.cache(GROUP, "rolebindings"),
            cluster_role_bindings: informers.cache(GROUP, "clusterrolebindings"),
        };
        let synced = informers
            .synced(&[
                &caches.roles,
                &caches.cluster_roles,
                &caches.role_bindings,
                &caches.cluster_role_bindings,
            ])
            .await;
        let _ = self.caches.set(caches);
        synced
    }

    fn caches(&self) -> Option<&Caches> {
        self.caches.get()
    }

    /// The rules of the role a binding refers to, in the binding's namespace.
    fn role_rules(&self, binding: &Value) -> Vec<Rule> {
        let Some(c) = self.caches() else {
            return Vec::new();
        };
        let role_ref = &binding["roleRef"];
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = match role_ref["kind"].as_str() {
            Some("ClusterRole") => c.cluster_roles.get(&info("clusterroles").key(None, name)),
            Some("Role") => {
                let ns = objects::namespace(binding);
                c.roles.get(&info("roles").key(ns, name))
            }
            _ => None,
        };
        role.map(|r| rules_of(&r)).unwrap_or_default()
    }

    /// Every binding that grants `subject` something in `namespace` (cluster-wide ones
    /// first), with its rules.
    fn visit(&self, subject: &Subject, namespace: Option<&str>) -> Vec<(Grant, Vec<Rule>)> {
        let Some(c) = self.caches() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut cluster = c.cluster_role_bindings.snapshot();
        cluster.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
        for b in cluster {
            if binds(&b, subject) {
                out.push((grant(&b), self.role_rules(&b)));
            }
        }
        if let Some(ns) = namespace {
            let mut local: Vec<_> = c
                .role_bindings
                .snapshot()
                .into_iter()
                .filter(|b| objects::namespace(b) == Some(ns))
                .collect();
            local.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
            for b in local {
                if binds(&b, subject) {
                    out.push((grant(&b), self.role_rules(&b)));
                }
            }
        }
        out
    }

    /// Whether `subject` may do what `attrs` asks, and the binding that allows it.
    pub fn authorize(&self, subject: &Subject, attrs: &Attributes) -> Option<Grant> {
        if subject.groups.iter().any(|g| g == MASTERS) {
            return Some(Grant {
                binding: String::new(),
                role: MASTERS.into(),
            });
        }
        self.visit(subject, attrs.namespace())
            .into_iter()
            .find(|(_, rules)| rules.iter().any(|r| r.allows(attrs)))
            .map(|(g, _)| g)
    }

    /// Every rule `subject` holds in `namespace` (cluster-wide rules included); with no
    /// namespace, only the cluster-wide ones.
    pub fn rules_for(&self, subject: &Subject, namespace: Option<&str>) -> Vec<Rule> {
        if subject.groups.iter().any(|g| g == MASTERS) {
            return vec![
                Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Rule::default()
                },
                Rule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Rule::default()
                },
            ];
        }
        self.visit(subject, namespace)
            .into_iter()
            .flat_map(|(_, rules)| rules)
            .collect()
    }

    /// The rules of a ClusterRole, if it exists.
    pub fn cluster_role(&self, name: &str) -> Option<Arc<Value>> {
        self.caches()?
            .cluster_roles
            .get(&info("clusterroles").key(None, name))
    }

    /// Every ClusterRole (for aggregation).
    pub fn cluster_roles(&self) -> Vec<Arc<Value>> {
        self.caches()
            .map(|c| c.cluster_roles.snapshot())
            .unwrap_or_default()
    }

    pub fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.caches()?
            .roles
            .get(&info("roles").key(Some(namespace), name))
    }
}

/// The group whose members may do anything, as in Kubernetes: admin tokens belong to it.
pub const MASTERS: &str = "system:masters";

fn grant(binding: &Value) -> Grant {
    let kind = binding["kind"].as_str().unwrap_or("RoleBinding");
    let name = objects::name(binding);
    let binding_name = match objects::namespace(binding) {
        Some(ns) => format!("{kind} \"{ns}/{name}\""),
        None => format!("{kind} \"{name}\""),
    };
    Grant {
        binding: binding_name,
        role: format!(
            "{} \"{}\"",
            binding["roleRef"]["kind"].as_str().unwrap_or_default(),
            binding["roleRef"]["name"].as_str().unwrap_or_default()
        ),
    }
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(Rule::from_json)
        .collect()
}

/// Whether a binding names `subject` (its user, one of its groups, or, for a
/// ServiceAccount subject, the account's user name).
pub fn binds(binding: &Value, subject: &Subject) -> bool {
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            match s["kind"].as_str() {
                Some("User") => subject.user == name,
                Some("Group") => subject.groups.iter().any(|g| g == name),
                Some("ServiceAccount") => {
                    let ns = s["namespace"]
                        .as_str()
                        .or_else(|| objects::namespace(binding))
                        .unwrap_or_default();
                    subject.user == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            }
        })
}

/// Whether `owner` rules cover every permission `requested` grants (Kubernetes'
/// `ConfirmNoEscalation`): each rule is broken into single permissions (one verb, group,
/// resource and name, or one verb and path) and each must be allowed by an owner rule
/// that grants at least as much. The permissions not covered are returned.
pub fn uncovered(owner: &[Rule], requested: &[Rule]) -> Vec<Rule> {
    let mut missing = Vec::new();
    for rule in requested {
        for atom in atoms(rule) {
            if !owner.iter().any(|o| covers(o, &atom)) {
                missing.push(atom);
            }
        }
    }
    missing
}

/// A rule broken into rules of one verb, group, resource and name (or path) each.
fn atoms(rule: &Rule) -> Vec<Rule> {
    let one = |s: &String| vec![s.clone()];
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Rule {
                verbs: one(verb),
                non_resource_urls: one(url),
                ..Rule::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<Vec<String>> = if rule.resource_names.is_empty() {
                    vec![Vec::new()]
                } else {
                    rule.resource_names.iter().map(one).collect()
                };
                for names in names {
                    out.push(Rule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        resource_names: names,
                        ..Rule::default()
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` grants at least the single permission `atom`.
fn covers(owner: &Rule, atom: &Rule) -> bool {
    let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    if !has(&owner.verbs, &atom.verbs[0]) {
        return false;
    }
    if let Some(url) = atom.non_resource_urls.first() {
        // A path pattern is covered by an equal or wider pattern.
        return owner.non_resource_urls.iter().any(|o| {
            o == "*"
                || o == url
                || o.strip_suffix('*')
                    .is_some_and(|prefix| url.starts_with(prefix))
        });
    }
    let (group, resource) = (&atom.api_groups[0], &atom.resources[0]);
    if !has(&owner.api_groups, group) {
        return false;
    }
    let resource_ok = owner.resources.iter().any(|o| {
        o == "*"
            || o == resource
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| o.strip_prefix("*/") == Some(sub))
    });
    if !resource_ok {
        return false;
    }
    owner.resource_names.is_empty()
        || atom
            .resource_names
            .first()
            .is_some_and(|n| owner.resource_names.contains(n))
}

/// The rules an aggregated ClusterRole gets: those of every ClusterRole its
/// `aggregationRule.clusterRoleSelectors` select (itself excepted), by name, without
/// repeats. None if the role is not aggregated.
pub fn aggregate(role: &Value, all: &[Arc<Value>]) -> Option<Vec<Value>> {
    let selectors: Vec<LabelSelector> = role
        .pointer("/aggregationRule/clusterRoleSelectors")?
        .as_array()?
        .iter()
        .filter_map(|s| serde_json::from_value(s.clone()).ok())
        .filter_map(|s| LabelSelector::from_label_selector(&s).ok())
        .collect();
    let mut sources: Vec<&Arc<Value>> = all
        .iter()
        .filter(|r| objects::name(r) != objects::name(role))
        .filter(|r| selectors.iter().any(|s| s.matches_value(r)))
        .collect();
    sources.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
    let mut seen = BTreeSet::new();
    let mut rules = Vec::new();
    for source in sources {
        for rule in source
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let canonical = Rule::from_json(rule).to_json();
            if seen.insert(canonical.to_string()) {
                rules.push(canonical);
            }
        }
    }
    Some(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            namespace: Some("default".into()),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let pods = rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}),
        );
        assert!(pods.allows(&res("get", "", "pods", None, Some("a"))));
        assert!(pods.allows(&res("get", "", "pods", Some("log"), Some("a"))));
        assert!(!pods.allows(&res("get", "", "pods", Some("status"), Some("a"))));
        assert!(!pods.allows(&res("delete", "", "pods", None, Some("a"))));
        assert!(!pods.allows(&res("get", "apps", "pods", None, None)));
        let scale = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(scale.allows(&res("update", "apps", "deployments", Some("scale"), None)));
        assert!(!scale.allows(&res("update", "apps", "deployments", None, None)));
        let named = rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"]}),
        );
        assert!(named.allows(&res("get", "", "configmaps", None, Some("one"))));
        assert!(!named.allows(&res("get", "", "configmaps", None, Some("two"))));
        assert!(
            !named.allows(&res("list", "", "configmaps", None, None)),
            "a list names nothing"
        );
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        let path = |p: &str| Attributes::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(urls.allows(&path("/healthz")));
        assert!(urls.allows(&path("/apis/apps/v1")));
        assert!(!urls.allows(&path("/api/v1")));
        assert!(
            !urls.allows(&res("get", "", "pods", None, None)),
            "paths are not resources"
        );
    }

    #[test]
    fn escalation_is_measured_permission_by_permission() {
        let owner = vec![
            rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"]}),
            ),
            rule(
                json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments", "*/scale"]}),
            ),
        ];
        let ok = vec![rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}),
        )];
        assert!(uncovered(&owner, &ok).is_empty());
        let ok = vec![rule(
            json!({"verbs": ["update"], "apiGroups": ["apps"], "resources": ["deployments/scale"]}),
        )];
        assert!(uncovered(&owner, &ok).is_empty());
        let more = vec![rule(
            json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        let missing = uncovered(&owner, &more);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].verbs, vec!["delete"]);
        // A wildcard asks for more than any list of verbs.
        let wild = vec![rule(
            json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        assert_eq!(uncovered(&owner, &wild).len(), 1);
        let secrets = vec![rule(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}),
        )];
        assert_eq!(uncovered(&owner, &secrets).len(), 1);
    }

    #[test]
    fn bindings_name_users_groups_and_service_accounts() {
        let b = json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "team"},
        "subjects": [
            {"kind": "User", "name": "alice"},
            {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "name": "bot"},
        ]});
        let s = |user: &str, groups: &[&str]| Subject {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert!(binds(&b, &s("alice", &[])));
        assert!(binds(&b, &s("bob", &["devs"])));
        assert!(binds(&b, &s("system:serviceaccount:team:bot", &[])));
        assert!(!binds(&b, &s("system:serviceaccount:other:bot", &[])));
        assert!(!binds(&b, &s("bob", &["ops"])));
    }

    #[test]
    fn aggregated_roles_take_the_rules_of_the_roles_they_select() {
        let a = Arc::new(json!({"metadata": {"name": "a", "labels": {"agg": "yes"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}));
        let b = Arc::new(json!({"metadata": {"name": "b", "labels": {"agg": "yes"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
                      {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]}));
        let c = Arc::new(json!({"metadata": {"name": "c"},
            "rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]}));
        let agg = json!({"metadata": {"name": "agg"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "yes"}}]}});
        let rules = aggregate(&agg, &[a, b, c]).unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert!(aggregate(&json!({"metadata": {"name": "x"}}), &[]).is_none());
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::informer::SharedInformers;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn bindings_written_after_the_caches_start_apply() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::state::ApiServer::on_redb_for_tests(dir.path());
        let stop = CancellationToken::new();
        let informers = SharedInformers::new(api.store.clone(), stop.clone());
        let scope = informers.scope(stop.clone());
        assert!(api.rbac.follow(&scope).await);
        let alice = Subject {
            user: "alice".into(),
            groups: vec![],
        };
        let attrs = Attributes::Resource {
            verb: "list".into(),
            namespace: Some("default".into()),
            group: String::new(),
            resource: "pods".into(),
            subresource: None,
            name: None,
        };
        assert!(api.rbac.authorize(&alice, &attrs).is_none());
        let bindings = info("rolebindings");
        crate::apiserver::internal::create(
            &api,
            bindings,
            Some("default"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "a", "namespace": "default"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "alice"}]}),
        )
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // `view` is aggregated by a controller this test does not run: the rules
        // come from system:aggregate-to-view through a second binding.
        crate::apiserver::internal::create(
            &api,
            bindings,
            Some("default"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "b", "namespace": "default"},
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "system:aggregate-to-view"},
                "subjects": [{"kind": "User", "name": "alice"}]}),
        )
        .await
        .unwrap();
        while api.rbac.authorize(&alice, &attrs).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the binding never applied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.cancel();
    }
}

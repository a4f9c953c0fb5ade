//! The gateway as an Ingress controller: the routes of the Ingresses of its classes,
//! the certificates of their TLS sections (served by SNI on the gateway's HTTPS
//! listener), and the address it writes into their status.
//!
//! An Ingress is the gateway's when its `ingressClassName` names a class whose
//! controller is `skiff.dev/gateway`, or when it names none and such a class is the
//! default (annotation `ingressclass.kubernetes.io/is-default-class: "true"`), or by the
//! legacy annotation `kubernetes.io/ingress.class`.
//!
//! Matching, as the Ingress API defines it: a rule's host matches exactly, or a
//! `*.example.com` wildcard matches one more label; rules with an exact host come first,
//! then wildcards, then rules with no host. Within them an `Exact` path must equal the
//! request's path, and a `Prefix` path matches whole `/`-separated elements (`/foo`
//! matches `/foo` and `/foo/bar`, not `/foobar`); Exact beats Prefix, and the longest
//! prefix wins. `ImplementationSpecific` is read as `Prefix`. A request no rule matches
//! goes to a `defaultBackend` (of the oldest Ingress that has one), then to the App
//! routes the gateway always had. Paths go to the app unchanged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde_json::{Value, json};

use crate::kinds::ingressclass::{CONTROLLER, IS_DEFAULT};
use crate::objects;

/// Where an Ingress rule sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Service of the Ingress's namespace.
    Service { namespace: String, name: String },
    /// A backend the gateway cannot serve, and why (the request gets 503 saying so).
    Broken(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostKind {
    Exact = 0,
    Wildcard = 1,
    Any = 2,
}

#[derive(Debug, Clone)]
struct Rule {
    host_kind: HostKind,
    /// The exact host, or the wildcard's suffix with its dot (`.example.com`).
    host: String,
    exact: bool,
    /// For a prefix: without its trailing `/` (empty for `/`).
    path: String,
    backend: Backend,
}

/// The routes of every Ingress the gateway serves.
#[derive(Debug, Default)]
pub struct IngressRoutes {
    rules: Vec<Rule>,
    default_backend: Option<Backend>,
}

/// The classes whose controller is the gateway, and whether one of them is the default.
pub fn our_classes(classes: &[Arc<Value>]) -> (Vec<String>, bool) {
    let ours: Vec<&Arc<Value>> = classes
        .iter()
        .filter(|c| c.pointer("/spec/controller").and_then(Value::as_str) == Some(CONTROLLER))
        .collect();
    let default = ours.iter().any(|c| {
        c.pointer("/metadata/annotations")
            .and_then(|a| a.get(IS_DEFAULT))
            .and_then(Value::as_str)
            == Some("true")
    });
    (
        ours.iter().map(|c| objects::name(c).to_string()).collect(),
        default,
    )
}

/// Whether an Ingress belongs to the gateway.
pub fn is_ours(ingress: &Value, classes: &(Vec<String>, bool)) -> bool {
    let named = ingress
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
        .or_else(|| {
            ingress
                .pointer("/metadata/annotations")
                .and_then(|a| a.get("kubernetes.io/ingress.class"))
                .and_then(Value::as_str)
        });
    match named {
        Some(class) => classes.0.iter().any(|c| c == class),
        None => classes.1,
    }
}

fn backend_of(
    ingress: &Value,
    backend: &Value,
    services: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
) -> Backend {
    let namespace = objects::namespace(ingress).unwrap_or("default");
    let Some(service) = backend.get("service").filter(|s| !s.is_null()) else {
        return Backend::Broken("resource backends are not served by the skiff gateway".into());
    };
    let name = service["name"].as_str().unwrap_or_default();
    let Some(svc) = services(namespace, name) else {
        return Backend::Broken(format!("service {namespace}/{name} does not exist"));
    };
    let port = &service["port"];
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array);
    let found = ports
        .into_iter()
        .flatten()
        .any(|p| match (port.get("number"), port.get("name")) {
            (Some(n), _) if !n.is_null() => p["port"] == *n,
            (_, Some(n)) => p["name"] == *n,
            _ => false,
        });
    if !found {
        return Backend::Broken(format!(
            "service {namespace}/{name} has no port {}",
            port.get("number")
                .filter(|n| !n.is_null())
                .or_else(|| port.get("name"))
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        ));
    }
    Backend::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

impl IngressRoutes {
    /// The routes of `ingresses` (only the gateway's), resolving Services through
    /// `services(namespace, name)`.
    pub fn build(
        ingresses: &[Arc<Value>],
        classes: &(Vec<String>, bool),
        services: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
    ) -> IngressRoutes {
        let mut ours: Vec<&Arc<Value>> = ingresses
            .iter()
            .filter(|i| !objects::is_deleting(i) && is_ours(i, classes))
            .collect();
        // Oldest first: its default backend wins, as with most controllers.
        ours.sort_by(|a, b| {
            let created = |i: &Value| objects::meta_str(i, "creationTimestamp").map(str::to_string);
            created(a)
                .cmp(&created(b))
                .then_with(|| objects::name(a).cmp(objects::name(b)))
        });
        let mut routes = IngressRoutes::default();
        for ingress in ours {
            if routes.default_backend.is_none()
                && let Some(b) = ingress
                    .pointer("/spec/defaultBackend")
                    .filter(|b| !b.is_null())
            {
                routes.default_backend = Some(backend_of(ingress, b, services));
            }
            for rule in ingress
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let host = rule["host"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let (host_kind, host) = if host.is_empty() {
                    (HostKind::Any, String::new())
                } else if let Some(rest) = host.strip_prefix('*') {
                    (HostKind::Wildcard, rest.to_string())
                } else {
                    (HostKind::Exact, host)
                };
                for path in rule
                    .pointer("/http/paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let exact = path["pathType"] == "Exact";
                    let text = path["path"].as_str().unwrap_or("/");
                    routes.rules.push(Rule {
                        host_kind,
                        host: host.clone(),
                        exact,
                        path: if exact {
                            text.to_string()
                        } else {
                            text.trim_end_matches('/').to_string()
                        },
                        backend: backend_of(ingress, &path["backend"], services),
                    });
                }
            }
        }
        routes
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default_backend.is_none()
    }

    /// The backend of the best rule for a request to `host` (lowercase, no port) and
    /// `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let best = self
            .rules
            .iter()
            .filter(|r| match r.host_kind {
                HostKind::Exact => r.host == host,
                HostKind::Wildcard => host
                    .strip_suffix(r.host.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                HostKind::Any => true,
            })
            .filter_map(|r| {
                let matched = if r.exact {
                    path == r.path
                } else {
                    path == r.path
                        || (path.starts_with(r.path.as_str())
                            && path.as_bytes().get(r.path.len()) == Some(&b'/'))
                        || r.path.is_empty()
                };
                // Host kind first, then Exact over Prefix, then the longest path.
                matched.then_some(((r.host_kind, !r.exact, usize::MAX - r.path.len()), r))
            })
            .min_by_key(|(rank, _)| *rank);
        best.map(|(_, r)| &r.backend)
    }

    pub fn default_backend(&self) -> Option<&Backend> {
        self.default_backend.as_ref()
    }
}

/// The certificates of the gateway's Ingresses' TLS sections, by host, which the HTTPS
/// listener picks by SNI; hosts with none (and clients that send no SNI) get a
/// self-signed default, as ingress controllers serve.
#[derive(Debug)]
pub struct Certificates {
    by_host: RwLock<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
    fallback: Arc<rustls::sign::CertifiedKey>,
}

impl Certificates {
    pub fn new() -> Certificates {
        let cert = rcgen::generate_simple_self_signed(vec!["skiff-ingress.invalid".to_string()])
            .expect("a self-signed certificate can be made");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .expect("rcgen's keys are supported");
        Certificates {
            by_host: RwLock::default(),
            fallback: Arc::new(rustls::sign::CertifiedKey::new(
                vec![cert.cert.der().clone()],
                signing,
            )),
        }
    }

    /// Replaces the certificates with those the gateway's Ingresses name now, then
    /// those its Gateways' HTTPS listeners name (`listeners`: host, namespace and
    /// Secret; an Ingress's certificate for a host comes first); a Secret that is
    /// missing or unusable is logged and skipped.
    pub fn update(
        &self,
        ingresses: &[Arc<Value>],
        classes: &(Vec<String>, bool),
        listeners: &[(String, String, String)],
        secret: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
    ) {
        let mut by_host = HashMap::new();
        for ingress in ingresses.iter().filter(|i| is_ours(i, classes)) {
            let namespace = objects::namespace(ingress).unwrap_or("default");
            for tls in ingress
                .pointer("/spec/tls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = tls["secretName"].as_str() else {
                    continue;
                };
                let key = match secret(namespace, name)
                    .ok_or("it does not exist".to_string())
                    .and_then(|s| certified_key(&s))
                {
                    Ok(key) => Arc::new(key),
                    Err(why) => {
                        tracing::warn!(ingress = %objects::name(ingress), %namespace, secret = %name, "the TLS secret is unusable: {why}");
                        continue;
                    }
                };
                for host in tls["hosts"].as_array().into_iter().flatten() {
                    if let Some(host) = host.as_str() {
                        by_host
                            .entry(host.to_ascii_lowercase())
                            .or_insert_with(|| key.clone());
                    }
                }
            }
        }
        for (host, namespace, name) in listeners {
            match secret(namespace, name)
                .ok_or("it does not exist".to_string())
                .and_then(|s| certified_key(&s))
            {
                Ok(key) => {
                    by_host
                        .entry(host.to_ascii_lowercase())
                        .or_insert_with(|| Arc::new(key));
                }
                Err(why) => {
                    tracing::warn!(%host, %namespace, secret = %name, "the Gateway listener's TLS secret is unusable: {why}");
                }
            }
        }
        *self.by_host.write().unwrap_or_else(|p| p.into_inner()) = by_host;
    }

    fn lookup(&self, host: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let by_host = self.by_host.read().unwrap_or_else(|p| p.into_inner());
        let host = host.to_ascii_lowercase();
        by_host.get(&host).cloned().or_else(|| {
            let (_, parent) = host.split_once('.')?;
            by_host.get(&format!("*.{parent}")).cloned()
        })
    }
}

impl Default for Certificates {
    fn default() -> Self {
        Certificates::new()
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            hello
                .server_name()
                .and_then(|name| self.lookup(name))
                .unwrap_or_else(|| self.fallback.clone()),
        )
    }
}

/// The key and chain of a `kubernetes.io/tls` Secret.
fn certified_key(secret: &Value) -> Result<rustls::sign::CertifiedKey, String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = secret
            .pointer(&format!("/data/{}", name.replace('/', "~1")))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("it has no {name}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("its {name} is not base64: {e}"))
    };
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(&field("tls.crt")?)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("its tls.crt is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("its tls.crt holds no certificate".into());
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&field("tls.key")?)
        .map_err(|e| format!("its tls.key is not a PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("its tls.key is not a supported key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(chain, signing))
}

/// The status an Ingress of the gateway's shows: the gateway's address among those of
/// the other servers' gateways already there. None when it already does.
pub fn status_with(ingress: &Value, address: &str) -> Option<Value> {
    let mut list: Vec<Value> = ingress
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.iter().any(|i| i["ip"] == address) {
        return None;
    }
    list.push(json!({"ip": address}));
    Some(json!({"loadBalancer": {"ingress": list}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ports: Value) -> Option<Arc<Value>> {
        Some(Arc::new(json!({"spec": {"ports": ports}})))
    }

    fn ingress(name: &str, spec: Value) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}),
        )
    }

    fn backend(name: &str) -> Value {
        json!({"service": {"name": name, "port": {"number": 80}}})
    }

    fn to(name: &str) -> Option<Backend> {
        Some(Backend::Service {
            namespace: "default".into(),
            name: name.into(),
        })
    }

    #[test]
    fn rules_match_as_the_ingress_api_says() {
        let classes = (vec!["skiff".to_string()], true);
        let services = |_: &str, name: &str| match name {
            "missing" => None,
            _ => svc(json!([{"port": 80, "name": "http"}])),
        };
        let routes = IngressRoutes::build(
            &[
                ingress(
                    "a",
                    json!({"ingressClassName": "skiff", "rules": [
                        {"host": "a.test", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": backend("root")},
                            {"path": "/api/", "pathType": "Prefix", "backend": backend("api")},
                            {"path": "/api/v1", "pathType": "Exact", "backend": backend("exact")},
                        ]}},
                        {"host": "*.wild.test", "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": backend("wild")},
                        ]}},
                        {"http": {"paths": [
                            {"path": "/any", "pathType": "ImplementationSpecific", "backend": backend("any")},
                            {"path": "/gone", "pathType": "Prefix", "backend": backend("missing")},
                        ]}},
                    ]}),
                ),
                ingress("b", json!({"defaultBackend": backend("fallback")})),
                ingress(
                    "other",
                    json!({"ingressClassName": "nginx", "defaultBackend": backend("theirs")}),
                ),
            ],
            &classes,
            &services,
        );
        let r = |host: &str, path: &str| routes.route(host, path).cloned();
        assert_eq!(r("a.test", "/"), to("root"));
        assert_eq!(r("a.test", "/api"), to("api"));
        assert_eq!(r("a.test", "/api/x"), to("api"));
        assert_eq!(
            r("a.test", "/apis"),
            to("root"),
            "prefixes match whole elements"
        );
        assert_eq!(r("a.test", "/api/v1"), to("exact"));
        assert_eq!(r("x.wild.test", "/q"), to("wild"));
        assert_eq!(
            r("y.x.wild.test", "/q"),
            None,
            "a wildcard covers one label"
        );
        assert_eq!(r("wild.test", "/q"), None);
        assert_eq!(r("other.test", "/any/thing"), to("any"));
        assert!(
            matches!(r("other.test", "/gone"), Some(Backend::Broken(m)) if m.contains("does not exist"))
        );
        assert_eq!(r("other.test", "/nothing"), None);
        assert_eq!(routes.default_backend().cloned(), to("fallback"));
    }

    #[test]
    fn classes_decide_which_ingresses_are_ours() {
        let classes = vec![
            Arc::new(
                json!({"metadata": {"name": "skiff", "annotations": {IS_DEFAULT: "true"}}, "spec": {"controller": CONTROLLER}}),
            ),
            Arc::new(
                json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
            ),
        ];
        let ours = our_classes(&classes);
        assert_eq!(ours, (vec!["skiff".to_string()], true));
        assert!(is_ours(&json!({"spec": {}}), &ours));
        assert!(is_ours(
            &json!({"spec": {"ingressClassName": "skiff"}}),
            &ours
        ));
        assert!(!is_ours(
            &json!({"spec": {"ingressClassName": "nginx"}}),
            &ours
        ));
        assert!(is_ours(
            &json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "skiff"}}, "spec": {}}),
            &ours
        ));
        assert!(!is_ours(
            &json!({"spec": {}}),
            &(vec!["skiff".to_string()], false)
        ));
    }

    #[test]
    fn the_status_gains_the_gateways_address_once() {
        let ing = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}});
        let status = status_with(&ing, "10.0.0.2").unwrap();
        assert_eq!(
            status["loadBalancer"]["ingress"].as_array().unwrap().len(),
            2
        );
        assert!(status_with(&ing, "10.0.0.1").is_none());
    }
}

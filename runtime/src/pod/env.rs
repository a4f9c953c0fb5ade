//! A container's environment: literal values with `$(VAR)` expansion, and values taken
//! from ConfigMaps, Secrets and the pod's own fields, as the kubelet resolves them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} \"{name}\" not found")]
    SourceMissing { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyMissing {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "unsupported fieldRef {0:?}: use metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP or status.hostIP"
    )]
    UnsupportedField(String),
    #[error("env {0}: resourceFieldRef is not supported")]
    UnsupportedSource(String),
    #[error("reading {kind} {name}: {message}")]
    SourceUnreadable {
        kind: &'static str,
        name: String,
        message: String,
    },
}

/// Values the pod's own fields resolve to.
pub struct PodFields<'a> {
    pub pod: &'a Pod,
    pub node_name: &'a str,
    pub host_ip: &'a str,
}

impl PodFields<'_> {
    fn get(&self, path: &str) -> Result<String, EnvError> {
        let meta = &self.pod.metadata;
        let in_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(
                map.as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node_name.to_string(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            // Wasm pods share the node's address, as hostNetwork pods do.
            "status.podIP" | "status.hostIP" => self.host_ip.to_string(),
            _ => in_map(&meta.labels, "metadata.labels['")
                .or_else(|| in_map(&meta.annotations, "metadata.annotations['"))
                .ok_or_else(|| EnvError::UnsupportedField(path.to_string()))?,
        })
    }
}

/// Reads ConfigMaps and Secrets once per resolution.
struct Sources<'a> {
    client: &'a kube::Client,
    namespace: &'a str,
    /// (kind, name) → the source's data as text, or `None` if it doesn't exist.
    cache: BTreeMap<(&'static str, String), Option<BTreeMap<String, String>>>,
}

impl Sources<'_> {
    /// The data of the ConfigMap or Secret (`kind` is "configmap" or "secret").
    async fn data(
        &mut self,
        kind: &'static str,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, EnvError> {
        let key = (kind, name.to_string());
        if !self.cache.contains_key(&key) {
            let unreadable = |e: kube::Error| EnvError::SourceUnreadable {
                kind,
                name: name.into(),
                message: e.to_string(),
            };
            let data = if kind == "secret" {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
                api.get_opt(name).await.map_err(unreadable)?.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                })
            } else {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
                api.get_opt(name)
                    .await
                    .map_err(unreadable)?
                    .map(|c| c.data.unwrap_or_default())
            };
            self.cache.insert(key.clone(), data);
        }
        Ok(self.cache[&key].as_ref())
    }
}

/// Expands `$(NAME)` from variables defined earlier; `$$(NAME)` escapes it.
fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some(end) = after.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &after[2..2 + end];
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&after[..3 + end]),
            }
            rest = &after[3 + end..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, in order, exactly as the guest will see it.
pub async fn resolve(
    client: &kube::Client,
    fields: &PodFields<'_>,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = fields
        .pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    let mut sources = Sources {
        client,
        namespace,
        cache: BTreeMap::new(),
    };
    // Every pod learns where its API server is, as kubelets tell theirs, before the
    // container's own variables (which may use them in `$(...)` or override them).
    let mut out: Vec<(String, String)> = vec![
        (
            "KUBERNETES_SERVICE_HOST".into(),
            crate::wasm::clusterapi::SERVICE_HOST.into(),
        ),
        (
            "KUBERNETES_SERVICE_PORT".into(),
            crate::wasm::clusterapi::SERVICE_PORT.into(),
        ),
    ];
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let source = from
            .config_map_ref
            .as_ref()
            .map(|r| ("configmap", &r.name, r.optional))
            .or_else(|| {
                from.secret_ref
                    .as_ref()
                    .map(|r| ("secret", &r.name, r.optional))
            });
        let Some((kind, name, optional)) = source else {
            continue;
        };
        match sources.data(kind, name).await?.cloned() {
            Some(d) => out.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            None if optional.unwrap_or(false) => {}
            None => {
                return Err(EnvError::SourceMissing {
                    kind,
                    name: name.clone(),
                });
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &out),
            Some(src) => {
                let key_ref = src
                    .config_map_key_ref
                    .as_ref()
                    .map(|r| ("configmap", &r.name, &r.key, r.optional))
                    .or_else(|| {
                        src.secret_key_ref
                            .as_ref()
                            .map(|r| ("secret", &r.name, &r.key, r.optional))
                    });
                if let Some((kind, name, key, optional)) = key_ref {
                    match sources.data(kind, name).await?.map(|d| d.get(key).cloned()) {
                        Some(Some(v)) => v,
                        _ if optional.unwrap_or(false) => continue,
                        Some(None) => {
                            return Err(EnvError::KeyMissing {
                                kind,
                                namespace: namespace.into(),
                                name: name.clone(),
                                key: key.clone(),
                            });
                        }
                        None => {
                            return Err(EnvError::SourceMissing {
                                kind,
                                name: name.clone(),
                            });
                        }
                    }
                } else if let Some(f) = &src.field_ref {
                    fields.get(&f.field_path)?
                } else {
                    return Err(EnvError::UnsupportedSource(var.name.clone()));
                }
            }
        };
        out.push((var.name.clone(), value));
    }
    // Later definitions win, as in Kubernetes; keep the last of each name.
    let mut seen = std::collections::HashSet::new();
    let mut deduped: Vec<(String, String)> = out
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    deduped.reverse();
    Ok(deduped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_references_expand_from_earlier_variables() {
        let defined = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &defined), "x-$(B)-$(A)-$");
    }

    #[test]
    fn pod_fields_resolve() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
        }))
        .unwrap();
        let f = PodFields {
            pod: &pod,
            node_name: "n1",
            host_ip: "127.0.0.1",
        };
        assert_eq!(f.get("metadata.name").unwrap(), "p");
        assert_eq!(f.get("spec.nodeName").unwrap(), "n1");
        assert_eq!(f.get("status.podIP").unwrap(), "127.0.0.1");
        assert_eq!(f.get("metadata.labels['app']").unwrap(), "web");
        assert!(f.get("spec.bogus").is_err());
    }
}

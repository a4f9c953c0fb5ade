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
    config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources<'_> {
    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            let cm = api
                .get_opt(name)
                .await
                .map_err(|e| EnvError::SourceUnreadable {
                    kind: "configmap",
                    name: name.into(),
                    message: e.to_string(),
                })?;
            self.config_maps
                .insert(name.to_string(), cm.map(|c| c.data.unwrap_or_default()));
        }
        Ok(self.config_maps[name].as_ref())
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, EnvError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| EnvError::SourceUnreadable {
                    kind: "secret",
                    name: name.into(),
                    message: e.to_string(),
                })?;
            let decoded = s.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            self.secrets.insert(name.to_string(), decoded);
        }
        Ok(self.secrets[name].as_ref())
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
        config_maps: BTreeMap::new(),
        secrets: BTreeMap::new(),
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(r) = &from.config_map_ref {
            (
                "configmap",
                r.name.clone(),
                r.optional.unwrap_or(false),
                sources.config_map(&r.name).await?.cloned(),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                "secret",
                r.name.clone(),
                r.optional.unwrap_or(false),
                sources.secret(&r.name).await?.cloned(),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => out.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            None if optional => {}
            None => return Err(EnvError::SourceMissing { kind, name }),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &out),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match sources
                        .config_map(&r.name)
                        .await?
                        .map(|d| d.get(&r.key).cloned())
                    {
                        Some(Some(v)) => v,
                        _ if optional => continue,
                        Some(None) => {
                            return Err(EnvError::KeyMissing {
                                kind: "configmap",
                                namespace: namespace.into(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                        None => {
                            return Err(EnvError::SourceMissing {
                                kind: "configmap",
                                name: r.name.clone(),
                            });
                        }
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match sources
                        .secret(&r.name)
                        .await?
                        .map(|d| d.get(&r.key).cloned())
                    {
                        Some(Some(v)) => v,
                        _ if optional => continue,
                        Some(None) => {
                            return Err(EnvError::KeyMissing {
                                kind: "secret",
                                namespace: namespace.into(),
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                        None => {
                            return Err(EnvError::SourceMissing {
                                kind: "secret",
                                name: r.name.clone(),
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

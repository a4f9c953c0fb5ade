//! Pod volumes as host directories that become WASI preopens: emptyDir, configMap and
//! secret (projected as files, written through cap-std so a key can never escape the
//! volume), hostPath only under the roots the agent allows, and persistentVolumeClaim:
//! a claim's bound volume, which for the built-in `local-path` provisioner is a
//! directory the agent keeps under its data directory (`storage/<volume>`), and
//! otherwise a hostPath or local volume under the allowed roots. Beside them, the pod's
//! ServiceAccount credentials (`serviceaccount.rs`).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::Api;

use crate::wasm::Preopen;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("hostPath {path} is not under a root this agent allows ({allowed})")]
    HostPathRefused { path: String, allowed: String },
    #[error(
        "volume {name}: {kind} volumes are not supported; use emptyDir, configMap, secret, hostPath or persistentVolumeClaim"
    )]
    Unsupported { name: String, kind: String },
    #[error("volume {volume}: {kind} {name} not found")]
    SourceMissing {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error("volume {volume}: key {key} not found in {kind} {name}")]
    KeyMissing {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("volume {volume}: path {path:?} must be relative and must not contain '..'")]
    BadPath { volume: String, path: String },
    #[error("volumeMount {mount}: no volume named {name}")]
    MountUnknown { mount: String, name: String },
    #[error("volume {volume}: persistentvolumeclaim {claim} is not bound to a volume yet")]
    NotBound { volume: String, claim: String },
    #[error("volume {volume}: reading its source failed: {message}")]
    SourceUnreadable { volume: String, message: String },
    #[error("volume {volume}: {source}")]
    Io {
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

impl VolumeError {
    /// Whether the pod fails outright (rather than waiting for a missing source to appear).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            VolumeError::HostPathRefused { .. }
                | VolumeError::Unsupported { .. }
                | VolumeError::BadPath { .. }
                | VolumeError::MountUnknown { .. }
        )
    }
}

/// Prepared volumes: name → host directory, and whether the volume is read-only by nature;
/// and the pod's ServiceAccount credentials, unless automounting is off.
pub struct Volumes {
    dirs: HashMap<String, (PathBuf, bool)>,
    pub service_account: Option<std::sync::Arc<super::serviceaccount::TokenMount>>,
}

fn io(volume: &str) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        volume: volume.to_string(),
        source,
    }
}

fn safe_relative(volume: &str, path: &str) -> Result<PathBuf, VolumeError> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(VolumeError::BadPath {
            volume: volume.to_string(),
            path: path.to_string(),
        });
    }
    Ok(p.to_path_buf())
}

/// Writes `files` (relative path → bytes) into a fresh directory through cap-std.
fn project(volume: &str, dir: &Path, files: Vec<(PathBuf, Vec<u8>)>) -> Result<(), VolumeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(volume))?;
    }
    std::fs::create_dir_all(dir).map_err(io(volume))?;
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(io(volume))?;
    for (rel, bytes) in files {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent).map_err(io(volume))?;
        }
        root.write(&rel, bytes).map_err(io(volume))?;
    }
    Ok(())
}

/// Chooses which keys become which files, as `items` says (all keys by default).
fn select(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: Vec<(String, Vec<u8>)>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
) -> Result<Vec<(PathBuf, Vec<u8>)>, VolumeError> {
    let Some(items) = items else {
        return data
            .into_iter()
            .map(|(k, v)| Ok((safe_relative(volume, &k)?, v)))
            .collect();
    };
    let mut out = Vec::new();
    for item in items {
        match data.iter().find(|(k, _)| *k == item.key) {
            Some((_, v)) => out.push((safe_relative(volume, &item.path)?, v.clone())),
            None if optional => {}
            None => {
                return Err(VolumeError::KeyMissing {
                    volume: volume.to_string(),
                    kind,
                    name: name.to_string(),
                    key: item.key.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn is_under(path: &Path, roots: &[PathBuf]) -> bool {
    roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| path.starts_with(root))
}

/// The provisioner whose volumes live under the agent's own `storage/` directory.
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.dev/local-path";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// A directory on the host the pod may use: absolute, and under an allowed root.
fn host_dir(
    name: &str,
    path: &str,
    create: bool,
    allowed: &[PathBuf],
) -> Result<PathBuf, VolumeError> {
    let refused = || VolumeError::HostPathRefused {
        path: path.to_string(),
        allowed: if allowed.is_empty() {
            "none configured; see --allow-host-path".into()
        } else {
            allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err(refused());
    }
    // Check before creating anything, on the nearest existing ancestor, so a refused
    // path never touches the host.
    let existing = requested
        .ancestors()
        .find(|a| a.exists())
        .and_then(|a| a.canonicalize().ok())
        .ok_or_else(refused)?;
    if !is_under(&existing, allowed) {
        return Err(refused());
    }
    if create {
        std::fs::create_dir_all(requested).map_err(io(name))?;
    }
    let real = requested.canonicalize().map_err(io(name))?;
    if !is_under(&real, allowed) {
        return Err(refused());
    }
    Ok(real)
}

/// The directory of a claim's bound volume.
async fn claim_dir(
    client: &kube::Client,
    namespace: &str,
    volume: &str,
    claim: &str,
    storage: &Path,
    allowed: &[PathBuf],
) -> Result<PathBuf, VolumeError> {
    let unreadable = |e: kube::Error| VolumeError::SourceUnreadable {
        volume: volume.into(),
        message: e.to_string(),
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = claims
        .get_opt(claim)
        .await
        .map_err(unreadable)?
        .ok_or_else(|| VolumeError::SourceMissing {
            volume: volume.into(),
            kind: "persistentvolumeclaim",
            name: claim.into(),
        })?;
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty() && bound)
    else {
        return Err(VolumeError::NotBound {
            volume: volume.into(),
            claim: claim.into(),
        });
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let pv = volumes
        .get_opt(&pv_name)
        .await
        .map_err(unreadable)?
        .ok_or_else(|| VolumeError::SourceMissing {
            volume: volume.into(),
            kind: "persistentvolume",
            name: pv_name.clone(),
        })?;
    let provisioner = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(String::as_str);
    if provisioner == Some(LOCAL_PATH_PROVISIONER) {
        let dir = storage.join(&pv_name);
        std::fs::create_dir_all(&dir).map_err(io(volume))?;
        return Ok(dir);
    }
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| VolumeError::Unsupported {
            name: volume.into(),
            kind: format!("persistentVolume {pv_name} (only hostPath and local volumes)"),
        })?;
    host_dir(volume, &path, false, allowed)
}

/// Removes the directories of local-path volumes that no longer exist (their claim
/// went and their reclaim policy was Delete). A volume the API cannot be asked about
/// now is kept: this runs again.
pub async fn reclaim_storage(client: &kube::Client, storage: &Path) {
    let Ok(entries) = std::fs::read_dir(storage) else {
        return;
    };
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(None) = volumes.get_opt(&name).await {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(volume = %name, "removed the directory of a deleted volume")
                }
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "removing a deleted volume's directory failed")
                }
            }
        }
    }
}

async fn prepare_one(
    client: &kube::Client,
    namespace: &str,
    vol: &Volume,
    dir: &Path,
    storage: &Path,
    allowed: &[PathBuf],
) -> Result<(PathBuf, bool), VolumeError> {
    let name = vol.name.as_str();
    if let Some(claim) = &vol.persistent_volume_claim {
        let dir = claim_dir(client, namespace, name, &claim.claim_name, storage, allowed).await?;
        return Ok((dir, claim.read_only.unwrap_or(false)));
    }
    if vol.empty_dir.is_some() {
        std::fs::create_dir_all(dir).map_err(io(name))?;
        return Ok((dir.to_path_buf(), false));
    }
    if let Some(cm) = &vol.config_map {
        let optional = cm.optional.unwrap_or(false);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let data = match api
            .get_opt(&cm.name)
            .await
            .map_err(|e| VolumeError::SourceUnreadable {
                volume: name.into(),
                message: e.to_string(),
            })? {
            Some(c) => c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .chain(
                    c.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect(),
            None if optional => Vec::new(),
            None => {
                return Err(VolumeError::SourceMissing {
                    volume: name.into(),
                    kind: "configmap",
                    name: cm.name.clone(),
                });
            }
        };
        project(
            name,
            dir,
            select(
                name,
                "configmap",
                &cm.name,
                data,
                cm.items.as_ref(),
                optional,
            )?,
        )?;
        return Ok((dir.to_path_buf(), true));
    }
    if let Some(s) = &vol.secret {
        let optional = s.optional.unwrap_or(false);
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let data =
            match api
                .get_opt(&secret_name)
                .await
                .map_err(|e| VolumeError::SourceUnreadable {
                    volume: name.into(),
                    message: e.to_string(),
                })? {
                Some(sec) => sec
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
                None if optional => Vec::new(),
                None => {
                    return Err(VolumeError::SourceMissing {
                        volume: name.into(),
                        kind: "secret",
                        name: secret_name,
                    });
                }
            };
        project(
            name,
            dir,
            select(
                name,
                "secret",
                &secret_name,
                data,
                s.items.as_ref(),
                optional,
            )?,
        )?;
        return Ok((dir.to_path_buf(), true));
    }
    if let Some(hp) = &vol.host_path {
        let create = matches!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
        return Ok((host_dir(name, &hp.path, create, allowed)?, false));
    }
    let kind = serde_json::to_value(vol)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|m| m.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "unknown".into());
    Err(VolumeError::Unsupported {
        name: name.into(),
        kind,
    })
}

impl Volumes {
    /// Prepares every volume of the pod under `pod_dir/volumes/`, and its ServiceAccount
    /// credentials (with `ca`, the cluster CA, PEM) under `pod_dir/serviceaccount/`.
    pub async fn prepare(
        client: &kube::Client,
        pod: &Pod,
        pod_dir: &Path,
        storage: &Path,
        allowed: &[PathBuf],
        ca: &str,
    ) -> Result<Volumes, VolumeError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut dirs = HashMap::new();
        for vol in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let dir = pod_dir.join("volumes").join(&vol.name);
            dirs.insert(
                vol.name.clone(),
                prepare_one(client, namespace, vol, &dir, storage, allowed).await?,
            );
        }
        let service_account = super::serviceaccount::prepare(client, pod, pod_dir, ca)
            .await?
            .map(std::sync::Arc::new);
        Ok(Volumes {
            dirs,
            service_account,
        })
    }

    /// The preopens a container gets from its volumeMounts.
    pub fn preopens(&self, container: &Container) -> Result<Vec<Preopen>, VolumeError> {
        let mut out = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let (dir, forced_ro) =
                self.dirs
                    .get(&m.name)
                    .ok_or_else(|| VolumeError::MountUnknown {
                        mount: m.mount_path.clone(),
                        name: m.name.clone(),
                    })?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => {
                    let p = dir.join(safe_relative(&m.name, sub)?);
                    std::fs::create_dir_all(&p).map_err(io(&m.name))?;
                    p
                }
                None => dir.clone(),
            };
            out.push(Preopen {
                host,
                guest: m.mount_path.clone(),
                read_only: *forced_ro || m.read_only.unwrap_or(false),
            });
        }
        // A container that mounts something of its own there keeps it, as in Kubernetes.
        if let Some(sa) = &self.service_account
            && !out
                .iter()
                .any(|p| p.guest == super::serviceaccount::MOUNT_PATH)
        {
            out.push(Preopen {
                host: sa.dir.clone(),
                guest: super::serviceaccount::MOUNT_PATH.into(),
                read_only: true,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_cannot_escape() {
        assert!(safe_relative("v", "a/b.txt").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_relative("v", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn projection_writes_selected_keys() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("cm");
        let data = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ];
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            ..Default::default()
        }];
        project(
            "v",
            &target,
            select("v", "configmap", "cm", data, Some(&items), false).unwrap(),
        )
        .unwrap();
        assert_eq!(std::fs::read(target.join("sub/b.txt")).unwrap(), b"2");
        assert!(!target.join("a").exists());
    }

    #[test]
    fn host_paths_must_be_under_an_allowed_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("ok")).unwrap();
        let allowed = vec![root.path().to_path_buf()];
        assert!(is_under(
            &root.path().join("ok").canonicalize().unwrap(),
            &allowed
        ));
        assert!(!is_under(Path::new("/etc"), &allowed));
        assert!(!is_under(
            &root.path().join("ok").canonicalize().unwrap(),
            &[]
        ));
    }
}

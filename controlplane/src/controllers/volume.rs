//! The persistent volume controller and the built-in `local-path` provisioner.
//!
//! Claims (PersistentVolumeClaims), as Kubernetes' binder handles them:
//! - a claim with no class gets the default StorageClass (Kubernetes' retroactive
//!   default class assignment);
//! - a claim that names a volume, or that an Available volume of its class, size and
//!   access modes fits, is bound to it (`spec.volumeName`, the volume's `claimRef`);
//! - a claim of a class whose provisioner is `skiff.dev/local-path` gets a new volume:
//!   with `WaitForFirstConsumer` once a pod that uses it is scheduled, on that pod's
//!   node; with `Immediate`, once any pod using it is scheduled too (a local volume has
//!   to live on some node, and only a pod says which). The volume is a directory the
//!   node's agent keeps under its data directory (`storage/<volume>`), pinned to that
//!   node by `nodeAffinity`, so the claim's pods follow it there and its data survives
//!   pod restarts, agent restarts and rescheduling.
//!
//! Volumes: Available with no claim, Bound with one, Released once their claim is gone.
//! A Released volume whose reclaim policy is Delete is deleted; its agent removes the
//! directory. Retain keeps both for an administrator. Capacity is recorded, not
//! enforced: a local-path volume may hold more than its claim asked for.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::{Action, Context, Controller, split_key};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::kinds::storageclass::{LOCAL_PATH_PROVISIONER, is_default};
use crate::objects;
use crate::state::ApiServer;

/// The annotation a provisioned volume carries, naming its provisioner.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Where the scheduled pod of a waiting claim landed (Kubernetes' scheduler writes it).
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The nominal path of a local-path volume; each agent keeps it under its own data
/// directory (`storage/<volume>`), whatever this says.
const LOCAL_PATH_ROOT: &str = "/var/lib/skiff/storage";

fn claims() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "persistentvolumeclaims").expect("claims are served")
}

fn volumes() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "persistentvolumes").expect("volumes are served")
}

struct Volumes {
    api: Arc<ApiServer>,
    claims: Arc<Cache>,
    volumes: Arc<Cache>,
    classes: Arc<Cache>,
    pods: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let ctrl = Arc::new(Volumes {
        api: ctx.api().clone(),
        claims: ctx.cache("", "persistentvolumeclaims"),
        volumes: ctx.cache("", "persistentvolumes"),
        classes: ctx.cache("storage.k8s.io", "storageclasses"),
        pods: ctx.cache("", "pods"),
    });
    // Claims: woken by their pods being scheduled, and by their volumes.
    let binder = Controller::new(&ctx, "persistentvolume-binder", &ctrl.claims)
        .watches(&ctrl.pods, claims_of_pod)
        .watches(&ctrl.volumes, |e| {
            changed(e)
                .and_then(|pv| claim_ref(pv).map(|(ns, name, _)| format!("{ns}/{name}")))
                .into_iter()
                .collect()
        })
        .watches_all(&ctrl.classes)
        .run(
            ctrl.clone(),
            |c, key| async move { c.sync_claim(&key).await },
            stop.clone(),
        );
    // Volumes: woken by their claims.
    let reclaimer = Controller::new(&ctx, "persistentvolume-reclaimer", &ctrl.volumes)
        .watches(&ctrl.claims, |e| {
            changed(e)
                .and_then(|c| {
                    c.pointer("/spec/volumeName")?
                        .as_str()
                        .map(|v| format!("/{v}"))
                })
                .into_iter()
                .collect()
        })
        .run(
            ctrl.clone(),
            |c, key| async move { c.sync_volume(&key).await },
            stop,
        );
    tokio::join!(binder, reclaimer);
}

fn changed(e: &CacheEvent) -> Option<&Value> {
    match e {
        CacheEvent::Changed { object, .. } | CacheEvent::Deleted(object) => Some(object),
        CacheEvent::Resynced => None,
    }
}

/// The claims a pod uses, as `namespace/name` keys.
fn claims_of_pod(e: &CacheEvent) -> Vec<String> {
    let Some(pod) = changed(e) else {
        return vec![];
    };
    let ns = objects::namespace(pod).unwrap_or_default();
    claim_names(pod)
        .into_iter()
        .map(|c| format!("{ns}/{c}"))
        .collect()
}

/// The names of the claims a pod's volumes use.
pub fn claim_names(pod: &Value) -> Vec<String> {
    pod.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/persistentVolumeClaim/claimName")?.as_str())
        .map(str::to_string)
        .collect()
}

/// A volume's claim: namespace, name, uid.
fn claim_ref(pv: &Value) -> Option<(&str, &str, &str)> {
    let c = pv.pointer("/spec/claimRef")?;
    Some((
        c["namespace"].as_str()?,
        c["name"].as_str()?,
        c["uid"].as_str().unwrap_or_default(),
    ))
}

/// A Kubernetes quantity in bytes, for comparing sizes (binary and decimal suffixes).
fn bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "m" => 1e-3,
        _ => return None,
    };
    Some(n * scale)
}

/// Whether an Available volume fits a claim: class, size and access modes.
fn fits(pv: &Value, claim: &Value, class: &str) -> bool {
    let pv_class = pv
        .pointer("/spec/storageClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let size = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).and_then(bytes);
    let big_enough = match (
        size(pv, "/spec/capacity/storage"),
        size(claim, "/spec/resources/requests/storage"),
    ) {
        (Some(have), Some(want)) => have >= want,
        _ => false,
    };
    let modes = |v: &Value| -> Vec<String> {
        v.pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect()
    };
    let pv_modes = modes(pv);
    pv_class == class
        && pv.pointer("/spec/claimRef").is_none_or(Value::is_null)
        && !objects::is_deleting(pv)
        && big_enough
        && modes(claim).iter().all(|m| pv_modes.contains(m))
}

impl Volumes {
    fn class(&self, name: &str) -> Option<Arc<Value>> {
        let info = crate::kinds::lookup("storage.k8s.io", "v1", "storageclasses")
            .expect("storage classes are served");
        self.classes.get(&info.key(None, name))
    }

    async fn sync_claim(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(claim) = self.claims.get(&claims().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&claim) {
            return Ok(Action::Done);
        }
        let uid = objects::meta_str(&claim, "uid").unwrap_or_default();
        // Bound already: keep its status true to its volume.
        if let Some(volume) = claim.pointer("/spec/volumeName").and_then(Value::as_str) {
            let pv = self.volumes.get(&volumes().key(None, volume));
            let ours = pv
                .as_ref()
                .and_then(|pv| claim_ref(pv))
                .is_some_and(|(n, c, u)| n == ns && c == name && (u.is_empty() || u == uid));
            return match pv {
                Some(pv) if ours => self.claim_bound(&claim, &pv).await,
                Some(pv) if pv.pointer("/spec/claimRef").is_none_or(Value::is_null) => {
                    // The user named an unclaimed volume: claim it.
                    self.bind(&claim, &pv).await
                }
                _ => self.claim_phase(&claim, "Lost").await,
            };
        }
        // No class: the default one, if there is one.
        let class_name = match claim.pointer("/spec/storageClassName") {
            Some(Value::String(c)) => c.clone(),
            Some(_) | None => {
                let default = self
                    .classes
                    .snapshot()
                    .into_iter()
                    .filter(|c| is_default(c))
                    .map(|c| objects::name(&c).to_string())
                    .min();
                if let Some(default) = default {
                    internal::update(&self.api, claims(), Some(ns), name, |current| {
                        let mut next = current.clone();
                        if current
                            .pointer("/spec/storageClassName")
                            .is_none_or(Value::is_null)
                        {
                            next["spec"]["storageClassName"] = json!(default);
                        }
                        Ok(next)
                    })
                    .await?;
                    // The change comes back through the cache.
                    return Ok(Action::Done);
                }
                String::new()
            }
        };
        // An Available volume that fits, smallest first.
        let mut candidates: Vec<Arc<Value>> = self
            .volumes
            .snapshot()
            .into_iter()
            .filter(|pv| fits(pv, &claim, &class_name))
            .collect();
        candidates.sort_by(|a, b| {
            let size = |v: &Value| {
                v.pointer("/spec/capacity/storage")
                    .and_then(Value::as_str)
                    .and_then(bytes)
                    .unwrap_or(f64::MAX)
            };
            size(a).total_cmp(&size(b))
        });
        if let Some(pv) = candidates.first() {
            return self.bind(&claim, pv).await;
        }
        let class = self.class(&class_name);
        let provisioner = class
            .as_ref()
            .and_then(|c| c["provisioner"].as_str())
            .unwrap_or_default();
        if provisioner != LOCAL_PATH_PROVISIONER {
            return self.claim_phase(&claim, "Pending").await;
        }
        // A local volume lives on one node: the first scheduled pod that uses it says which.
        let node = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| objects::namespace(p) == Some(ns) && !objects::is_deleting(p))
            .filter(|p| claim_names(p).iter().any(|c| c == name))
            .find_map(|p| {
                p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
            });
        let Some(node) = node else {
            return self.claim_phase(&claim, "Pending").await;
        };
        let class = class.expect("a class has a provisioner");
        self.provision(&claim, &class, &node).await
    }

    /// Makes a local-path volume for `claim` on `node` and binds it.
    async fn provision(
        &self,
        claim: &Value,
        class: &Value,
        node: &str,
    ) -> Result<Action, ApiError> {
        let (ns, name) = (
            objects::namespace(claim).unwrap_or_default(),
            objects::name(claim),
        );
        let uid = objects::meta_str(claim, "uid").unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        let pv = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": pv_name,
                "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": claim.pointer("/spec/resources/requests/storage")},
                "accessModes": claim.pointer("/spec/accessModes"),
                "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                "storageClassName": objects::name(class),
                "volumeMode": "Filesystem",
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid},
                "local": {"path": format!("{LOCAL_PATH_ROOT}/{pv_name}")},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                ]}]}},
            },
        });
        let created = match internal::create(&self.api, volumes(), None, pv).await {
            Ok(pv) => pv,
            Err(ApiError::AlreadyExists(_)) => {
                match self.volumes.get(&volumes().key(None, &pv_name)) {
                    Some(pv) => (*pv).clone(),
                    None => return Ok(Action::RequeueAfter(std::time::Duration::from_secs(1))),
                }
            }
            Err(e) => return Err(e),
        };
        record_event(
            &self.api,
            claim,
            "Normal",
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {pv_name} on node {node}"),
            "skiff.dev/local-path",
        )
        .await;
        internal::update(&self.api, claims(), Some(ns), name, |current| {
            let mut next = current.clone();
            objects::set_path(
                &mut next,
                &["metadata", "annotations", SELECTED_NODE],
                json!(node),
            );
            Ok(next)
        })
        .await?;
        self.bind(claim, &created).await
    }

    /// Binds `claim` and `pv` to each other: the volume's claimRef first (so no other
    /// claim takes it), then the claim's volumeName, then both statuses.
    async fn bind(&self, claim: &Value, pv: &Value) -> Result<Action, ApiError> {
        let (ns, name) = (
            objects::namespace(claim).unwrap_or_default(),
            objects::name(claim),
        );
        let uid = objects::meta_str(claim, "uid")
            .unwrap_or_default()
            .to_string();
        let pv_name = objects::name(pv).to_string();
        let claimed = internal::update(&self.api, volumes(), None, &pv_name, |current| {
            match claim_ref(current) {
                Some((n, c, u)) if n == ns && c == name && (u.is_empty() || u == uid) => {}
                Some(_) => {
                    return Err(ApiError::Conflict(
                        crate::error::Subject::new(volumes(), &pv_name),
                        "the volume is bound to another claim".into(),
                    ));
                }
                None => {}
            }
            let mut next = current.clone();
            next["spec"]["claimRef"] = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid});
            Ok(next)
        })
        .await;
        let pv = match claimed {
            Ok(pv) => pv,
            // Another claim won it: look again.
            Err(ApiError::Conflict(..) | ApiError::NotFound(_)) => return Ok(Action::Done),
            Err(e) => return Err(e),
        };
        internal::update(&self.api, claims(), Some(ns), name, |current| {
            let mut next = current.clone();
            next["spec"]["volumeName"] = json!(pv_name);
            objects::set_path(
                &mut next,
                &["metadata", "annotations", "pv.kubernetes.io/bind-completed"],
                json!("yes"),
            );
            Ok(next)
        })
        .await?;
        self.volume_phase(&pv, "Bound").await?;
        self.claim_bound(claim, &pv).await
    }

    async fn claim_bound(&self, claim: &Value, pv: &Value) -> Result<Action, ApiError> {
        let status = json!({
            "phase": "Bound",
            "accessModes": pv.pointer("/spec/accessModes"),
            "capacity": pv.pointer("/spec/capacity"),
        });
        if claim.get("status") != Some(&status) {
            internal::merge_status(
                &self.api,
                claims(),
                objects::namespace(claim),
                objects::name(claim),
                &status,
            )
            .await?;
        }
        if pv.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            self.volume_phase(pv, "Bound").await?;
        }
        Ok(Action::Done)
    }

    async fn claim_phase(&self, claim: &Value, phase: &str) -> Result<Action, ApiError> {
        if claim.pointer("/status/phase").and_then(Value::as_str) != Some(phase) {
            internal::merge_status(
                &self.api,
                claims(),
                objects::namespace(claim),
                objects::name(claim),
                &json!({"phase": phase}),
            )
            .await?;
        }
        Ok(Action::Done)
    }

    async fn volume_phase(&self, pv: &Value, phase: &str) -> Result<(), ApiError> {
        if pv.pointer("/status/phase").and_then(Value::as_str) == Some(phase) {
            return Ok(());
        }
        match internal::merge_status(
            &self.api,
            volumes(),
            None,
            objects::name(pv),
            &json!({"phase": phase}),
        )
        .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A volume's phase from its claim; a Released volume of policy Delete goes.
    async fn sync_volume(&self, key: &str) -> Result<Action, ApiError> {
        let (_, name) = split_key(key);
        let Some(pv) = self.volumes.get(&volumes().key(None, name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&pv) {
            return Ok(Action::Done);
        }
        let Some((ns, claim_name, uid)) = claim_ref(&pv) else {
            self.volume_phase(&pv, "Available").await?;
            return Ok(Action::Done);
        };
        let claim = self.claims.get(&claims().key(Some(ns), claim_name));
        let live = claim
            .as_ref()
            .is_some_and(|c| uid.is_empty() || objects::meta_str(c, "uid") == Some(uid));
        if live {
            // Bound, or about to be: the binder sets the phase with the claim's.
            return Ok(Action::Done);
        }
        let policy = pv
            .pointer("/spec/persistentVolumeReclaimPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Retain");
        if policy == "Delete" {
            let opts = DeleteOptions {
                precondition_uid: objects::meta_str(&pv, "uid").map(str::to_string),
                ..Default::default()
            };
            match internal::delete(&self.api, volumes(), None, name, &opts).await {
                Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => {}
                Err(e) => return Err(e),
            }
            return Ok(Action::Done);
        }
        self.volume_phase(&pv, "Released").await?;
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_across_suffixes() {
        assert_eq!(bytes("1Gi"), Some(1073741824.0));
        assert!(bytes("1G").unwrap() < bytes("1Gi").unwrap());
        assert_eq!(bytes("500Mi").map(|b| b as u64), Some(524288000));
        assert_eq!(bytes("bogus"), None);
    }

    #[test]
    fn a_volume_fits_a_claim_by_class_size_and_modes() {
        let pv = json!({"spec": {"storageClassName": "manual", "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}});
        let claim = |size: &str, modes: Value| json!({"spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes}});
        assert!(fits(&pv, &claim("1Gi", json!(["ReadWriteOnce"])), "manual"));
        assert!(!fits(
            &pv,
            &claim("3Gi", json!(["ReadWriteOnce"])),
            "manual"
        ));
        assert!(!fits(
            &pv,
            &claim("1Gi", json!(["ReadWriteMany"])),
            "manual"
        ));
        assert!(!fits(&pv, &claim("1Gi", json!(["ReadWriteOnce"])), "fast"));
        let mut taken = pv.clone();
        taken["spec"]["claimRef"] = json!({"name": "other"});
        assert!(!fits(
            &taken,
            &claim("1Gi", json!(["ReadWriteOnce"])),
            "manual"
        ));
    }
}

//! The StatefulSet controller: pods with stable names `NAME-0..NAME-(N-1)`, each with its
//! own claims from the `volumeClaimTemplates` (`TEMPLATE-NAME-i`, made before the pod and
//! kept across its restarts, so a pod that comes back finds its data), as Kubernetes
//! runs them:
//! - **OrderedReady** creates pod i only once pods 0..i are Running and Ready, and
//!   scales down from the highest ordinal, one pod at a time, once the others are
//!   Ready; **Parallel** creates and deletes them all at once.
//! - **RollingUpdate** replaces pods whose template revision is old, from the highest
//!   ordinal down to `partition`, one at a time, each once all are Ready; **OnDelete**
//!   only gives the new template to pods that were deleted.
//! - `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` makes the StatefulSet
//!   own its claims (the garbage collector deletes them with it); `whenScaled: Delete`
//!   makes a scaled-away pod own its claims before it is deleted. Retain (the default)
//!   keeps them, so scaling back up finds the same data.
//! - A pod that failed or finished is deleted and made again.
//!
//! Revisions are a hash of the template in the `controller-revision-hash` label (no
//! ControllerRevision objects, so `kubectl rollout undo` of a StatefulSet is not served).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::{is_ready, pods_info};
use super::{Action, Context, Controller, controller_of, split_key};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::error::ApiError;
use crate::informer::Cache;
use crate::objects;
use crate::state::ApiServer;

pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

fn sts_info() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "statefulsets").expect("statefulsets are served")
}

fn claims_info() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "persistentvolumeclaims").expect("claims are served")
}

struct StatefulSets {
    api: Arc<ApiServer>,
    sets: Arc<Cache>,
    pods: Arc<Cache>,
    claims: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let ctrl = Arc::new(StatefulSets {
        api: ctx.api().clone(),
        sets: ctx.cache("apps", "statefulsets"),
        pods: ctx.cache("", "pods"),
        claims: ctx.cache("", "persistentvolumeclaims"),
    });
    Controller::new(&ctx, "statefulset", &ctrl.sets)
        .owns(&ctrl.pods, "StatefulSet")
        .workers(2)
        .run(
            ctrl.clone(),
            |c, key| async move { c.sync(&key).await },
            stop,
        )
        .await;
}

/// The revision of a StatefulSet's template: `NAME-<hash>`.
fn revision(sts: &Value) -> String {
    let template = sts.pointer("/spec/template").cloned().unwrap_or_default();
    let hash = hex::encode(&Sha256::digest(template.to_string().as_bytes())[..5]);
    format!("{}-{hash}", objects::name(sts))
}

/// The ordinal of a pod named `SET-i`.
fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    objects::name(pod)
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn owner_ref(sts: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "name": objects::name(sts), "uid": objects::meta_str(sts, "uid"), "controller": true, "blockOwnerDeletion": true})
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn running_and_ready(pod: &Value) -> bool {
    !objects::is_deleting(pod) && phase(pod) == "Running" && is_ready(pod)
}

/// The claim templates: name and template.
fn claim_templates(sts: &Value) -> Vec<(String, Value)> {
    sts.pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let name = t.pointer("/metadata/name")?.as_str()?.to_string();
            Some((name, t.clone()))
        })
        .collect()
}

/// The claim of template `template` for pod `pod`.
fn claim_name(template: &str, pod: &str) -> String {
    format!("{template}-{pod}")
}

/// Pod `i` of the set, from the current template.
fn pod_for(sts: &Value, i: i64, revision: &str) -> Value {
    let set = objects::name(sts);
    let name = format!("{set}-{i}");
    let mut labels = sts
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels[POD_NAME_LABEL] = json!(name);
    labels[POD_INDEX_LABEL] = json!(i.to_string());
    labels[REVISION_LABEL] = json!(revision);
    let mut spec = sts
        .pointer("/spec/template/spec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    spec["hostname"] = json!(name);
    if let Some(service) = sts.pointer("/spec/serviceName").and_then(Value::as_str)
        && !service.is_empty()
    {
        spec["subdomain"] = json!(service);
    }
    // Each claim template becomes the pod's own claim, replacing a volume of that name.
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for (template, _) in claim_templates(sts) {
        volumes.retain(|v| v["name"] != template.as_str());
        volumes.push(json!({"name": template, "persistentVolumeClaim": {"claimName": claim_name(&template, &name)}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": sts.pointer("/spec/template/metadata/annotations"),
            "ownerReferences": [owner_ref(sts)],
        },
        "spec": spec,
    })
}

impl StatefulSets {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(sts) = self.sets.get(&sts_info().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&sts) {
            return Ok(Action::Done);
        }
        let uid = objects::meta_str(&sts, "uid").unwrap_or_default();
        let replicas = sts
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0);
        let parallel = sts.pointer("/spec/podManagementPolicy") == Some(&json!("Parallel"));
        let update = revision(&sts);
        let mut pods: HashMap<i64, Arc<Value>> = HashMap::new();
        for pod in self.pods.snapshot() {
            if objects::namespace(&pod) == Some(ns)
                && controller_of(&pod).is_some_and(|(k, _, u)| k == "StatefulSet" && u == uid)
                && let Some(i) = ordinal(name, &pod)
            {
                pods.insert(i, pod);
            }
        }
        // Failed and finished pods are made again, as Kubernetes does.
        for (i, pod) in &pods {
            if matches!(phase(pod), "Failed" | "Succeeded") && !objects::is_deleting(pod) {
                self.delete_pod(
                    &sts,
                    pod,
                    &format!("pod {name}-{i} {}", phase(pod).to_lowercase()),
                )
                .await?;
                return Ok(Action::Done);
            }
        }
        // Create what is missing, below the replica count.
        for i in 0..replicas {
            match pods.get(&i) {
                None => {
                    self.ensure_claims(&sts, i).await?;
                    let pod = pod_for(&sts, i, &update);
                    match internal::create(&self.api, pods_info(), Some(ns), pod).await {
                        Ok(_) => {
                            record_event(
                                &self.api,
                                &sts,
                                "Normal",
                                "SuccessfulCreate",
                                format!("create Pod {name}-{i} in StatefulSet {name} successful"),
                                "statefulset-controller",
                            )
                            .await;
                        }
                        Err(ApiError::AlreadyExists(_)) => {}
                        Err(e) => return Err(e),
                    }
                    if !parallel {
                        return self.write_status(&sts, &update, &pods).await;
                    }
                }
                Some(pod) if !parallel && !running_and_ready(pod) => {
                    // OrderedReady: the next waits for this one.
                    return self.write_status(&sts, &update, &pods).await;
                }
                Some(_) => {}
            }
        }
        // Scale down: the highest ordinals go; OrderedReady one at a time.
        let mut condemned: Vec<i64> = pods.keys().copied().filter(|i| *i >= replicas).collect();
        condemned.sort_unstable_by(|a, b| b.cmp(a));
        if !condemned.is_empty() {
            let when_scaled = sts
                .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenScaled")
                .and_then(Value::as_str)
                == Some("Delete");
            for i in condemned {
                let pod = &pods[&i];
                if objects::is_deleting(pod) {
                    if parallel {
                        continue;
                    }
                    return self.write_status(&sts, &update, &pods).await;
                }
                if !parallel
                    && !(0..replicas).all(|j| pods.get(&j).is_some_and(|p| running_and_ready(p)))
                {
                    return self.write_status(&sts, &update, &pods).await;
                }
                if when_scaled {
                    self.give_claims_to(&sts, pod).await?;
                }
                self.delete_pod(
                    &sts,
                    pod,
                    &format!("delete Pod {name}-{i} in StatefulSet {name} successful"),
                )
                .await?;
                if !parallel {
                    return self.write_status(&sts, &update, &pods).await;
                }
            }
        }
        // Rolling update: highest ordinal first, down to the partition, one at a time.
        let rolling = sts
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        if rolling {
            let partition = sts
                .pointer("/spec/updateStrategy/rollingUpdate/partition")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let all_ready =
                (0..replicas).all(|j| pods.get(&j).is_some_and(|p| running_and_ready(p)));
            let stale = (partition.max(0)..replicas).rev().find(|i| {
                pods.get(i).is_some_and(|p| {
                    p.pointer(&format!(
                        "/metadata/labels/{}",
                        REVISION_LABEL.replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                        != Some(update.as_str())
                })
            });
            if let Some(i) = stale
                && all_ready
            {
                let pod = &pods[&i];
                self.delete_pod(
                    &sts,
                    pod,
                    &format!("delete Pod {name}-{i} in StatefulSet {name} for update"),
                )
                .await?;
            }
        }
        self.write_status(&sts, &update, &pods).await
    }

    /// Creates pod `i`'s claims that do not exist yet.
    async fn ensure_claims(&self, sts: &Value, i: i64) -> Result<(), ApiError> {
        let ns = objects::namespace(sts);
        let pod = format!("{}-{i}", objects::name(sts));
        let owned_by_set = sts
            .pointer("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted")
            .and_then(Value::as_str)
            == Some("Delete");
        for (template, spec) in claim_templates(sts) {
            let name = claim_name(&template, &pod);
            if self.claims.get(&claims_info().key(ns, &name)).is_some() {
                continue;
            }
            let mut labels = spec
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            for (k, v) in sts
                .pointer("/spec/selector/matchLabels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                labels[k] = v.clone();
            }
            let mut claim = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": spec.pointer("/metadata/annotations"),
                },
                "spec": spec["spec"],
            });
            if owned_by_set {
                let mut owner = owner_ref(sts);
                owner["controller"] = json!(false);
                claim["metadata"]["ownerReferences"] = json!([owner]);
            }
            match internal::create(&self.api, claims_info(), ns, claim).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// With `whenScaled: Delete`, a scaled-away pod alone owns its claims, so they go
    /// with it.
    async fn give_claims_to(&self, sts: &Value, pod: &Value) -> Result<(), ApiError> {
        let ns = objects::namespace(sts);
        let owner = json!({"apiVersion": "v1", "kind": "Pod", "name": objects::name(pod), "uid": objects::meta_str(pod, "uid"), "controller": false, "blockOwnerDeletion": true});
        let set_uid = json!(objects::meta_str(sts, "uid"));
        for (template, _) in claim_templates(sts) {
            let name = claim_name(&template, objects::name(pod));
            let result = internal::update(&self.api, claims_info(), ns, &name, |current| {
                let mut next = current.clone();
                let mut refs = current
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                // The pod alone: the garbage collector deletes a dependent only once
                // every owner is gone, and the set stays (as Kubernetes hands the claim
                // over from the set to the pod).
                refs.retain(|r| r["uid"] != set_uid);
                if !refs.iter().any(|r| r["uid"] == owner["uid"]) {
                    refs.push(owner.clone());
                }
                next["metadata"]["ownerReferences"] = json!(refs);
                Ok(next)
            })
            .await;
            match result {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, sts: &Value, pod: &Value, message: &str) -> Result<(), ApiError> {
        let opts = DeleteOptions {
            precondition_uid: objects::meta_str(pod, "uid").map(str::to_string),
            ..Default::default()
        };
        match internal::delete(
            &self.api,
            pods_info(),
            objects::namespace(pod),
            objects::name(pod),
            &opts,
        )
        .await
        {
            Ok(_) => {
                record_event(
                    &self.api,
                    sts,
                    "Normal",
                    "SuccessfulDelete",
                    message.to_string(),
                    "statefulset-controller",
                )
                .await;
                Ok(())
            }
            Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The status from the set's pods as this sync read them (by ordinal).
    async fn write_status(
        &self,
        sts: &Value,
        update: &str,
        pods: &HashMap<i64, Arc<Value>>,
    ) -> Result<Action, ApiError> {
        let (ns, name) = (objects::namespace(sts), objects::name(sts));
        let pods: Vec<&Arc<Value>> = pods.values().filter(|p| !objects::is_deleting(p)).collect();
        let rev = |p: &Value| {
            p.pointer("/metadata/labels")
                .and_then(|l| l.get(REVISION_LABEL))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let ready = pods.iter().filter(|p| running_and_ready(p)).count();
        let updated = pods
            .iter()
            .filter(|p| rev(p).as_deref() == Some(update))
            .count();
        let current_revision = match sts
            .pointer("/status/currentRevision")
            .and_then(Value::as_str)
        {
            Some(current) if updated < pods.len() => current.to_string(),
            _ => update.to_string(),
        };
        let current = pods
            .iter()
            .filter(|p| rev(p).as_deref() == Some(current_revision.as_str()))
            .count();
        let status = json!({
            "observedGeneration": sts.pointer("/metadata/generation"),
            "replicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": current,
            "updatedReplicas": updated,
            "currentRevision": current_revision,
            "updateRevision": update,
            "collisionCount": 0,
        });
        let changed = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| sts.pointer(&format!("/status/{k}")) != Some(v));
        if changed {
            match internal::merge_status(&self.api, sts_info(), ns, name, &status).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_stable_names_labels_and_their_own_claims() {
        let sts = json!({"metadata": {"name": "db", "uid": "u1"}, "spec": {
            "serviceName": "db",
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "m", "image": "x"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
        }});
        let pod = pod_for(&sts, 2, "db-abc");
        assert_eq!(pod["metadata"]["name"], "db-2");
        assert_eq!(pod["metadata"]["labels"][POD_NAME_LABEL], "db-2");
        assert_eq!(pod["metadata"]["labels"][POD_INDEX_LABEL], "2");
        assert_eq!(pod["metadata"]["labels"][REVISION_LABEL], "db-abc");
        assert_eq!(pod["spec"]["hostname"], "db-2");
        assert_eq!(pod["spec"]["subdomain"], "db");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-db-2"
        );
        assert_eq!(ordinal("db", &pod), Some(2));
        assert_eq!(ordinal("d", &pod), None);
        assert_ne!(
            revision(&sts),
            revision(&json!({"metadata": {"name": "db"}, "spec": {"template": {}}}))
        );
    }
}

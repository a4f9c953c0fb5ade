//! How a Deployment's pods move: claiming its ReplicaSets and counting their pods,
//! finding or creating the ReplicaSet of the current template, the rolling,
//! recreating and proportional scaling steps, and the clean-up of old revisions.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    COMPONENT, Counts, DESIRED_REPLICAS, DeploymentController, MAX_REPLICAS, NOT_COPIED, REVISION,
    REVISION_HISTORY, Rollout, TEMPLATE_HASH, annotation, deploy_info, fenceposts, int_field,
    is_recreate, owner_ref, revision, rs_info, spec_replicas, template_hash, without_hash,
};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::controllers::podutil::{availability, is_active, labels};
use crate::controllers::{Action, adopt, controller_of, release, selector_of};
use crate::error::ApiError;
use crate::objects;

impl DeploymentController {
    /// Claims the Deployment's ReplicaSets (adopting orphans its selector matches,
    /// releasing those it no longer does) and counts their pods.
    pub(super) async fn load(&self, d: Arc<Value>) -> Result<Option<Rollout>, ApiError> {
        let ns = objects::namespace(&d).unwrap_or_default();
        let Some(selector) = selector_of(&d) else {
            return Ok(None);
        };
        let uid = objects::meta_str(&d, "uid").unwrap_or_default();
        let mut owned: Vec<Value> = Vec::new();
        for rs in self
            .replicasets
            .snapshot()
            .into_iter()
            .filter(|r| objects::namespace(r) == Some(ns))
        {
            let matches = selector.matches(&labels(&rs));
            match controller_of(&rs) {
                Some((_, _, owner)) if owner == uid => {
                    if matches {
                        owned.push((*rs).clone());
                    } else {
                        release(&self.api, rs_info(), &rs, uid).await?;
                    }
                }
                None if matches && !objects::is_deleting(&rs) => {
                    if let Some(adopted) = adopt(&self.api, rs_info(), &rs, owner_ref(&d)).await? {
                        owned.push(adopted);
                    }
                }
                _ => {}
            }
        }
        owned.sort_by(|a, b| {
            (objects::meta_str(a, "creationTimestamp"), objects::name(a))
                .cmp(&(objects::meta_str(b, "creationTimestamp"), objects::name(b)))
        });
        let uids: HashMap<&str, ()> = owned
            .iter()
            .filter_map(|r| objects::meta_str(r, "uid"))
            .map(|u| (u, ()))
            .collect();
        let min_ready = int_field(&d, "/spec/minReadySeconds").unwrap_or(0);
        let now = jiff::Timestamp::now();
        let mut counts: HashMap<String, Counts> = HashMap::new();
        let mut next_available: Option<i64> = None;
        for pod in self.pods.snapshot() {
            if objects::namespace(&pod) != Some(ns) {
                continue;
            }
            let Some(("ReplicaSet", _, rs_uid)) = controller_of(&pod) else {
                continue;
            };
            if !uids.contains_key(rs_uid) {
                continue;
            }
            let c = counts.entry(rs_uid.to_string()).or_default();
            let terminal = matches!(
                pod.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            c.existing += i64::from(!terminal);
            if !is_active(&pod) {
                continue;
            }
            c.active += 1;
            match availability(&pod, min_ready, now) {
                Ok(()) => {
                    c.ready += 1;
                    c.available += 1;
                }
                Err(Some(wait)) => {
                    c.ready += 1;
                    next_available = Some(next_available.map_or(wait, |w| w.min(wait)));
                }
                Err(None) => {}
            }
        }
        Ok(Some(Rollout {
            d,
            old: owned,
            new: None,
            counts,
            next_available,
            created: false,
        }))
    }

    /// A replicas change that the ReplicaSets haven't been told of yet.
    pub(super) fn is_scaling_event(&self, r: &Rollout) -> bool {
        let wanted = spec_replicas(&r.d).to_string();
        r.all()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| annotation(rs, DESIRED_REPLICAS).is_some_and(|v| v != wanted))
    }

    /// Finds the ReplicaSet of the current template (creating it if asked) and moves it
    /// from `old` to `new`, giving it the next revision if an older template came back.
    pub(super) async fn find_new(&self, r: &mut Rollout, create: bool) -> Result<(), ApiError> {
        let d = r.d.clone();
        let wanted = without_hash(d.pointer("/spec/template"));
        let pos = r
            .old
            .iter()
            .position(|rs| without_hash(rs.pointer("/spec/template")) == wanted);
        let existing = pos.map(|i| r.old.remove(i));
        let next_revision = r.old.iter().map(revision).max().unwrap_or(0) + 1;
        let new = match existing {
            Some(rs) => {
                let stale_revision = revision(&rs) < next_revision;
                let min_ready = d.pointer("/spec/minReadySeconds");
                if stale_revision || rs.pointer("/spec/minReadySeconds") != min_ready {
                    let old_revision = revision(&rs);
                    let min_ready = min_ready.cloned();
                    internal::update(
                        &self.api,
                        rs_info(),
                        objects::namespace(&rs),
                        objects::name(&rs),
                        |cur| {
                            let mut next = cur.clone();
                            if stale_revision {
                                let history = annotation(cur, REVISION_HISTORY)
                                    .map(|h| format!("{h},{old_revision}"))
                                    .unwrap_or_else(|| old_revision.to_string());
                                let ann = annotations_mut(&mut next);
                                ann[REVISION] = json!(next_revision.to_string());
                                if old_revision > 0 {
                                    ann[REVISION_HISTORY] = json!(history);
                                }
                                copy_annotations(&d, &mut next);
                            }
                            match &min_ready {
                                Some(v) => next["spec"]["minReadySeconds"] = v.clone(),
                                None => {
                                    objects::remove_path(&mut next, &["spec", "minReadySeconds"])
                                }
                            }
                            Ok(next)
                        },
                    )
                    .await?
                } else {
                    rs
                }
            }
            None if create => {
                r.created = true;
                self.create_new(&d, next_revision).await?
            }
            None => return Ok(()),
        };
        let revision = revision(&new).to_string();
        if annotation(&d, REVISION) != Some(revision.as_str()) {
            let updated = internal::update(
                &self.api,
                deploy_info(),
                objects::namespace(&d),
                objects::name(&d),
                |cur| {
                    let mut next = cur.clone();
                    let ann = annotations_mut(&mut next);
                    ann[REVISION] = json!(revision);
                    Ok(next)
                },
            )
            .await?;
            r.d = Arc::new(updated);
        }
        r.new = Some(new);
        Ok(())
    }

    /// Creates the ReplicaSet of the current template, with no pods yet.
    async fn create_new(&self, d: &Value, revision: i64) -> Result<Value, ApiError> {
        let collisions = int_field(d, "/status/collisionCount").unwrap_or(0);
        let template = d.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = template_hash(&template, collisions);
        let mut template = template;
        objects::set_path(
            &mut template,
            &["metadata", "labels", TEMPLATE_HASH],
            json!(hash),
        );
        let mut selector = d.pointer("/spec/selector").cloned().unwrap_or_default();
        objects::set_path(&mut selector, &["matchLabels", TEMPLATE_HASH], json!(hash));
        let (surge, _) = fenceposts(d);
        let replicas = spec_replicas(d);
        let mut rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{}-{hash}", objects::name(d)),
                "labels": template.pointer("/metadata/labels"),
                "annotations": {
                    REVISION: revision.to_string(),
                    DESIRED_REPLICAS: replicas.to_string(),
                    MAX_REPLICAS: (replicas + surge).to_string(),
                },
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {
                "replicas": 0,
                "selector": selector,
                "template": template,
            },
        });
        if let Some(v) = d.pointer("/spec/minReadySeconds") {
            rs["spec"]["minReadySeconds"] = v.clone();
        }
        copy_annotations(d, &mut rs);
        let ns = objects::namespace(d);
        match internal::create(&self.api, rs_info(), ns, rs.clone()).await {
            Ok(created) => {
                self.event(
                    d,
                    format!("Created new replica set {}", objects::name(&created)),
                )
                .await;
                Ok(created)
            }
            Err(ApiError::AlreadyExists(subject)) => {
                // Ours already (the cache hadn't shown it yet), or a hash collision.
                if let Some(current) =
                    internal::get(&self.api, rs_info(), ns, objects::name(&rs)).await?
                {
                    let ours = controller_of(&current)
                        .is_some_and(|(_, _, uid)| Some(uid) == objects::meta_str(d, "uid"));
                    if ours
                        && without_hash(current.pointer("/spec/template"))
                            == without_hash(d.pointer("/spec/template"))
                    {
                        return Ok(current);
                    }
                }
                internal::merge_status(
                    &self.api,
                    deploy_info(),
                    ns,
                    objects::name(d),
                    &json!({"collisionCount": collisions + 1}),
                )
                .await?;
                Err(ApiError::AlreadyExists(subject))
            }
            Err(e) => Err(e),
        }
    }

    /// Sets a ReplicaSet's replicas (and the annotations saying for which Deployment
    /// size); true if the replicas changed.
    async fn scale_rs(&self, r: &Rollout, rs: &mut Value, replicas: i64) -> Result<bool, ApiError> {
        let d = &r.d;
        let (surge, _) = fenceposts(d);
        let desired = spec_replicas(d).to_string();
        let max = (spec_replicas(d) + surge).to_string();
        let from = spec_replicas(rs);
        if from == replicas
            && annotation(rs, DESIRED_REPLICAS) == Some(desired.as_str())
            && annotation(rs, MAX_REPLICAS) == Some(max.as_str())
        {
            return Ok(false);
        }
        let updated = internal::update(
            &self.api,
            rs_info(),
            objects::namespace(rs),
            objects::name(rs),
            |cur| {
                let mut next = cur.clone();
                next["spec"]["replicas"] = json!(replicas);
                let ann = annotations_mut(&mut next);
                ann[DESIRED_REPLICAS] = json!(desired);
                ann[MAX_REPLICAS] = json!(max);
                Ok(next)
            },
        )
        .await?;
        *rs = updated;
        if from != replicas {
            let way = if replicas > from { "up" } else { "down" };
            self.event(
                d,
                format!(
                    "Scaled {way} replica set {} from {from} to {replicas}",
                    objects::name(rs)
                ),
            )
            .await;
        }
        Ok(from != replicas)
    }

    async fn event(&self, d: &Value, message: String) {
        record_event(
            &self.api,
            d,
            "Normal",
            "ScalingReplicaSet",
            message,
            COMPONENT,
        )
        .await;
    }

    /// One step of a rolling update: surge the new ReplicaSet, or else retire old pods
    /// as far as availability allows; then clean up and report.
    pub(super) async fn rolling(&self, r: &mut Rollout) -> Result<Action, ApiError> {
        self.find_new(r, true).await?;
        let d = r.d.clone();
        let replicas = spec_replicas(&d);
        let (surge, unavailable) = fenceposts(&d);
        // Grow (or trim) the new ReplicaSet.
        let mut new = r.new.take().expect("find_new created it");
        let current = spec_replicas(&new);
        let target = if current >= replicas {
            replicas
        } else {
            let total = r.total_replicas() + current;
            let room = (replicas + surge - total).max(0);
            current + room.min(replicas - current)
        };
        let scaled_up = self.scale_rs(r, &mut new, target).await? && target > current;
        r.new = Some(new);
        if scaled_up {
            return self.update_status(r, true).await;
        }
        // Shrink old ReplicaSets within the availability budget.
        let old_pods: i64 = r.old.iter().map(spec_replicas).sum();
        if old_pods > 0 {
            let new_rs = r.new.as_ref().expect("set above");
            let min_available = replicas - unavailable;
            let new_unavailable = spec_replicas(new_rs) - r.available(new_rs);
            let budget = r.total_replicas() - min_available - new_unavailable;
            let mut scaled_down = false;
            if budget > 0 {
                // First old pods that aren't available: removing them costs nothing.
                let mut cleaned = 0;
                for i in 0..r.old.len() {
                    let rs = &r.old[i];
                    let unhealthy = spec_replicas(rs) - r.available(rs);
                    if cleaned >= budget || unhealthy <= 0 {
                        continue;
                    }
                    let n = unhealthy.min(budget - cleaned);
                    let mut rs = r.old[i].clone();
                    let to = spec_replicas(&rs) - n;
                    scaled_down |= self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                    cleaned += n;
                }
                // Then available ones, oldest first, keeping minAvailable.
                let available: i64 = r.all().map(|rs| r.available(rs)).sum();
                let mut allowed = (available - min_available).max(0);
                for i in 0..r.old.len() {
                    if allowed == 0 {
                        break;
                    }
                    let n = spec_replicas(&r.old[i]).min(allowed);
                    if n == 0 {
                        continue;
                    }
                    let mut rs = r.old[i].clone();
                    let to = spec_replicas(&rs) - n;
                    scaled_down |= self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                    allowed -= n;
                }
            }
            if scaled_down {
                return self.update_status(r, true).await;
            }
        }
        if self.complete(r) {
            self.cleanup(r).await?;
        }
        self.update_status(r, true).await
    }

    /// Recreate: every old pod gone before the new ReplicaSet gets any.
    pub(super) async fn recreate(&self, r: &mut Rollout) -> Result<Action, ApiError> {
        self.find_new(r, false).await?;
        let mut scaled_down = false;
        for i in 0..r.old.len() {
            let mut rs = r.old[i].clone();
            if spec_replicas(&rs) > 0 {
                scaled_down |= self.scale_rs(r, &mut rs, 0).await?;
                r.old[i] = rs;
            }
        }
        let old_pods_left = r.old.iter().any(|rs| r.counts(rs).existing > 0);
        if scaled_down || old_pods_left {
            return self.update_status(r, true).await;
        }
        if r.new.is_none() {
            self.find_new(r, true).await?;
        }
        let mut new = r.new.take().expect("find_new created it");
        self.scale_rs(r, &mut new, spec_replicas(&r.d)).await?;
        r.new = Some(new);
        if self.complete(r) {
            self.cleanup(r).await?;
        }
        self.update_status(r, true).await
    }

    /// Resizes the ReplicaSets for a new replicas count without rolling anything:
    /// a lone ReplicaSet takes it all; mid-rollout, the change is spread over them in
    /// proportion to their sizes, as Kubernetes does.
    pub(super) async fn scale(&self, r: &mut Rollout) -> Result<(), ApiError> {
        let replicas = spec_replicas(&r.d);
        let active: Vec<usize> = (0..r.old.len())
            .filter(|i| spec_replicas(&r.old[*i]) > 0)
            .collect();
        let new_active = r.new.as_ref().is_some_and(|n| spec_replicas(n) > 0);
        let saturated = r
            .new
            .as_ref()
            .is_some_and(|n| spec_replicas(n) == replicas && r.available(n) >= replicas);
        if active.is_empty() || saturated {
            // The new ReplicaSet alone (if any) takes the count; old ones go.
            if let Some(mut new) = r.new.take() {
                self.scale_rs(r, &mut new, replicas).await?;
                r.new = Some(new);
            }
            for i in active {
                let mut rs = r.old[i].clone();
                self.scale_rs(r, &mut rs, 0).await?;
                r.old[i] = rs;
            }
            return Ok(());
        }
        if (active.len() == 1 && !new_active) || is_recreate(&r.d) {
            // One ReplicaSet holds every pod: it takes the whole count.
            let last = active[active.len() - 1];
            let mut rs = r.old[last].clone();
            self.scale_rs(r, &mut rs, replicas).await?;
            r.old[last] = rs;
            return Ok(());
        }
        // Mid-rollout: spread the change in proportion to sizes, largest first; among
        // equals, newer ones grow first and older ones shrink first.
        let (surge, _) = fenceposts(&r.d);
        let total = r.total_replicas();
        let to_add = replicas + surge - total;
        let mut sizes: Vec<(Option<usize>, i64)> = r
            .new
            .iter()
            .map(|n| (None, spec_replicas(n)))
            .chain(
                active
                    .iter()
                    .rev()
                    .map(|i| (Some(*i), spec_replicas(&r.old[*i]))),
            )
            .filter(|(_, n)| *n > 0)
            .collect();
        if to_add < 0 {
            sizes.reverse();
        }
        sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut added = 0;
        let mut targets: Vec<(Option<usize>, i64)> = Vec::new();
        for (idx, n) in &sizes {
            let share = if total > 0 { n * to_add / total } else { 0 };
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            targets.push((*idx, n + share));
        }
        if let Some(first) = targets.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
        for (idx, to) in targets {
            match idx {
                None => {
                    let mut new = r.new.take().expect("listed above");
                    self.scale_rs(r, &mut new, to).await?;
                    r.new = Some(new);
                }
                Some(i) => {
                    let mut rs = r.old[i].clone();
                    self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                }
            }
        }
        Ok(())
    }

    /// Deletes the oldest scaled-down ReplicaSets beyond revisionHistoryLimit.
    pub(super) async fn cleanup(&self, r: &Rollout) -> Result<(), ApiError> {
        let limit = int_field(&r.d, "/spec/revisionHistoryLimit")
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&Value> = r
            .old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0 && r.counts(rs).existing == 0 && !objects::is_deleting(rs)
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision(rs));
        for rs in &idle[..idle.len() - limit] {
            match internal::delete(
                &self.api,
                rs_info(),
                objects::namespace(rs),
                objects::name(rs),
                &DeleteOptions::default(),
            )
            .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// An object's annotations as a JSON object, created if missing.
fn annotations_mut(obj: &mut Value) -> &mut Value {
    let ann = objects::meta_mut(obj)
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if !ann.is_object() {
        *ann = json!({});
    }
    ann
}

/// Copies the Deployment's own annotations (change-cause and the like) onto a
/// ReplicaSet, as `kubectl rollout history` expects to find them there.
fn copy_annotations(d: &Value, rs: &mut Value) {
    let Some(from) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    else {
        return;
    };
    let ann = annotations_mut(rs);
    for (k, v) in from {
        if !NOT_COPIED.contains(&k.as_str()) {
            ann[k] = v.clone();
        }
    }
}

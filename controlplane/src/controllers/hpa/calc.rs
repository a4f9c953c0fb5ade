//! The replica count one metric asks for, as Kubernetes' replica calculator works it
//! out: the ratio of the metric's value to its target, times the pods that reported it,
//! left alone within the tolerance; pods being deleted or failed are ignored; pods
//! without a sample count as using the target (scale-down) or nothing (scale-up); pods
//! not ready yet count as using nothing on a scale-up, and never hold one back.
//!
//! Values are thousandths of the metric's unit (millicores, milli-bytes, milli-requests
//! per second), as Kubernetes compares quantities by `MilliValue`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::objects;

/// One pod's value of a metric over a scrape window.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: i64,
    /// The end of the window the value was measured over.
    pub timestamp: Timestamp,
    pub window: Duration,
}

/// Samples by pod name.
pub type Samples = HashMap<String, Sample>;

/// How the calculator judges pods and ratios (kube-controller-manager's defaults).
#[derive(Debug, Clone)]
pub struct Calculator {
    /// A ratio within this of 1 changes nothing (`--horizontal-pod-autoscaler-tolerance`).
    pub tolerance: f64,
    /// For cpu, a pod started this recently is only counted once it is ready and a whole
    /// window has been measured since (`--horizontal-pod-autoscaler-cpu-initialization-period`).
    pub cpu_initialization: SignedDuration,
    /// For cpu, a pod that is not ready and went not-ready within this of starting has
    /// never been ready (`--horizontal-pod-autoscaler-initial-readiness-delay`).
    pub readiness_delay: SignedDuration,
    pub now: Timestamp,
}

impl Calculator {
    pub fn new(now: Timestamp) -> Calculator {
        Calculator {
            tolerance: 0.1,
            cpu_initialization: SignedDuration::from_mins(5),
            readiness_delay: SignedDuration::from_secs(30),
            now,
        }
    }
}

/// What a resource metric's utilization came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Utilization {
    pub replicas: i64,
    /// Percent of the pods' requests.
    pub utilization: i64,
    /// The average value per pod, in thousandths.
    pub average: i64,
}

/// The pods a calculation counts, sorted as Kubernetes' `groupPods` sorts them.
#[derive(Debug, Default)]
struct Groups {
    ready: usize,
    unready: HashSet<String>,
    missing: HashSet<String>,
    ignored: HashSet<String>,
}

fn time_at(obj: &Value, pointer: &str) -> Option<Timestamp> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(objects::parse_time)
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

impl Calculator {
    fn group(&self, pods: &[Arc<Value>], samples: &Samples, cpu: bool) -> Groups {
        let mut groups = Groups::default();
        for pod in pods {
            let name = objects::name(pod).to_string();
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending");
            if objects::is_deleting(pod) || phase == "Failed" {
                groups.ignored.insert(name);
                continue;
            }
            if phase == "Pending" {
                groups.unready.insert(name);
                continue;
            }
            let Some(sample) = samples.get(&name) else {
                groups.missing.insert(name);
                continue;
            };
            if cpu && self.cpu_unready(pod, sample) {
                groups.unready.insert(name);
                continue;
            }
            groups.ready += 1;
        }
        groups
    }

    /// Whether a cpu sample of a running pod is too early to count.
    fn cpu_unready(&self, pod: &Value, sample: &Sample) -> bool {
        let (Some(condition), Some(started)) =
            (ready_condition(pod), time_at(pod, "/status/startTime"))
        else {
            return true;
        };
        let not_ready = condition["status"] == "False";
        let transition = time_at(condition, "/lastTransitionTime").unwrap_or(started);
        if started + self.cpu_initialization > self.now {
            // Still starting: not ready, or no whole window since it became ready.
            let window = SignedDuration::try_from(sample.window).unwrap_or(SignedDuration::ZERO);
            not_ready || sample.timestamp < transition + window
        } else {
            // Not ready and never has been.
            not_ready && started + self.readiness_delay > transition
        }
    }

    /// A resource's utilization of the pods' requests against a target percent.
    pub fn resource_replicas(
        &self,
        current: i64,
        target_utilization: i64,
        pods: &[Arc<Value>],
        mut samples: Samples,
        requests: &HashMap<String, i64>,
        cpu: bool,
    ) -> Result<Utilization, String> {
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        let groups = self.group(pods, &samples, cpu);
        samples.retain(|name, _| !groups.ignored.contains(name) && !groups.unready.contains(name));
        if samples.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let (ratio, utilization, average) =
            utilization_ratio(&samples, requests, target_utilization)?;
        let result = |replicas| Utilization {
            replicas,
            utilization,
            average,
        };
        let up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
        if !up_with_unready && groups.missing.is_empty() {
            if (1.0 - ratio).abs() <= self.tolerance {
                return Ok(result(current));
            }
            return Ok(result((ratio * groups.ready as f64).ceil() as i64));
        }
        let filler = |value| Sample {
            value,
            timestamp: self.now,
            window: Duration::ZERO,
        };
        if ratio < 1.0 {
            // Scaling down: a pod without a sample is taken to use its whole request
            // (or the target, if that is above 100%).
            let fallback = target_utilization.max(100);
            for name in &groups.missing {
                let request = requests.get(name).copied().unwrap_or(0);
                samples.insert(name.clone(), filler(request * fallback / 100));
            }
        } else if ratio > 1.0 {
            for name in &groups.missing {
                samples.insert(name.clone(), filler(0));
            }
        }
        if up_with_unready {
            for name in &groups.unready {
                samples.insert(name.clone(), filler(0));
            }
        }
        let (new_ratio, _, _) = utilization_ratio(&samples, requests, target_utilization)?;
        Ok(result(self.settle(
            current,
            ratio,
            new_ratio,
            samples.len(),
        )))
    }

    /// The replicas a recomputed ratio asks for, unless it is within the tolerance or
    /// turned the direction around, as Kubernetes guards both.
    fn settle(&self, current: i64, ratio: f64, new_ratio: f64, counted: usize) -> i64 {
        if (1.0 - new_ratio).abs() <= self.tolerance
            || (ratio < 1.0 && new_ratio > 1.0)
            || (ratio > 1.0 && new_ratio < 1.0)
        {
            return current;
        }
        let replicas = (new_ratio * counted as f64).ceil() as i64;
        if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
            return current;
        }
        replicas
    }

    /// A per-pod value (a Pods metric, or a resource's AverageValue) against a target
    /// average: the replicas, and the average the pods reported.
    pub fn plain_replicas(
        &self,
        current: i64,
        target: i64,
        pods: &[Arc<Value>],
        mut samples: Samples,
        cpu: bool,
    ) -> Result<(i64, i64), String> {
        if pods.is_empty() {
            return Err("no pods returned by selector while calculating replica count".into());
        }
        let groups = self.group(pods, &samples, cpu);
        samples.retain(|name, _| !groups.ignored.contains(name) && !groups.unready.contains(name));
        if samples.is_empty() {
            return Err("did not receive metrics for targeted pods (pods might be unready)".into());
        }
        let (ratio, average) = usage_ratio(&samples, target);
        let up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
        if !up_with_unready && groups.missing.is_empty() {
            if (1.0 - ratio).abs() <= self.tolerance {
                return Ok((current, average));
            }
            return Ok(((ratio * groups.ready as f64).ceil() as i64, average));
        }
        let filler = |value| Sample {
            value,
            timestamp: self.now,
            window: Duration::ZERO,
        };
        // Scaling down, a pod without a sample is taken to be exactly at the target.
        let missing_value = if ratio < 1.0 { target } else { 0 };
        for name in &groups.missing {
            samples.insert(name.clone(), filler(missing_value));
        }
        if up_with_unready {
            for name in &groups.unready {
                samples.insert(name.clone(), filler(0));
            }
        }
        let (new_ratio, _) = usage_ratio(&samples, target);
        Ok((
            self.settle(current, ratio, new_ratio, samples.len()),
            average,
        ))
    }

    /// An object's value against a target value: the ratio times the ready pods (or,
    /// from zero replicas, the ratio itself).
    pub fn object_replicas(&self, current: i64, usage: i64, target: i64, ready_pods: usize) -> i64 {
        let ratio = usage as f64 / target as f64;
        if current == 0 {
            return ratio.ceil() as i64;
        }
        if (1.0 - ratio).abs() <= self.tolerance {
            return current;
        }
        (ratio * ready_pods as f64).ceil() as i64
    }

    /// An object's value against a target average per replica: the replicas, and the
    /// average per current replica.
    pub fn object_per_pod_replicas(
        &self,
        status_replicas: i64,
        usage: i64,
        target: i64,
    ) -> (i64, i64) {
        let mut replicas = status_replicas;
        let ratio = usage as f64 / (target as f64 * status_replicas as f64);
        if (1.0 - ratio).abs() > self.tolerance {
            replicas = (usage as f64 / target as f64).ceil() as i64;
        }
        let average = if status_replicas > 0 {
            (usage as f64 / status_replicas as f64).ceil() as i64
        } else {
            usage
        };
        (replicas, average)
    }
}

/// The usage of the pods with samples against their requests: the ratio to the target
/// percent, the percent, and the average sample.
fn utilization_ratio(
    samples: &Samples,
    requests: &HashMap<String, i64>,
    target: i64,
) -> Result<(f64, i64, i64), String> {
    let (mut total, mut requested, mut counted) = (0i64, 0i64, 0i64);
    for (name, sample) in samples {
        if let Some(request) = requests.get(name) {
            total += sample.value;
            requested += request;
            counted += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = total * 100 / requested;
    Ok((
        utilization as f64 / target as f64,
        utilization,
        total / counted,
    ))
}

/// The average sample, and its ratio to the target.
fn usage_ratio(samples: &Samples, target: i64) -> (f64, i64) {
    let total: i64 = samples.values().map(|s| s.value).sum();
    let average = total / samples.len().max(1) as i64;
    (average as f64 / target as f64, average)
}

/// Each pod's request of a resource (cpu in millicores, anything else in milli-units),
/// summed over its containers or taken from one; every container counted must request it.
pub fn pod_requests(
    pods: &[Arc<Value>],
    container: Option<&str>,
    resource: &str,
) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for pod in pods {
        let mut total = 0i64;
        let containers = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &containers {
            let name = c["name"].as_str().unwrap_or_default();
            if container.is_some_and(|want| want != name) {
                continue;
            }
            let request = c
                .pointer(&format!("/resources/requests/{resource}"))
                .and_then(|q| match q {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .and_then(|q| milli(&q, resource));
            match request {
                Some(r) => total += r,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {name} of Pod {}",
                        objects::name(pod)
                    ));
                }
            }
        }
        out.insert(objects::name(pod).to_string(), total);
    }
    Ok(out)
}

/// A quantity in thousandths: millicores for cpu, milli-units otherwise.
pub fn milli(q: &str, resource: &str) -> Option<i64> {
    let value = if resource == "cpu" {
        u64::from(skiff_api::quantity::millicores(q).ok()?)
    } else {
        skiff_api::quantity::milli_value(q).ok()?
    };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    /// A running pod, ready since long ago, requesting 100m cpu.
    fn pod(name: &str) -> Arc<Value> {
        pod_with(name, "Running", true, "2026-01-01T10:00:00Z")
    }

    fn pod_with(name: &str, phase: &str, ready: bool, since: &str) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
            "status": {"phase": phase, "startTime": since, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": since}]},
        }))
    }

    fn samples(values: &[(&str, i64)]) -> Samples {
        values
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    Sample {
                        value: *value,
                        timestamp: now(),
                        window: Duration::from_secs(15),
                    },
                )
            })
            .collect()
    }

    fn cpu(
        calc: &Calculator,
        current: i64,
        target: i64,
        pods: &[Arc<Value>],
        s: Samples,
    ) -> Utilization {
        let requests = pod_requests(pods, None, "cpu").unwrap();
        calc.resource_replicas(current, target, pods, s, &requests, true)
            .unwrap()
    }

    #[test]
    fn the_ratio_rule_with_its_tolerance() {
        let calc = Calculator::new(now());
        let pods = [pod("a"), pod("b")];
        // 90m of 100m each against 50%: 180% → ceil(1.8 × 2) = 4.
        let r = cpu(&calc, 2, 50, &pods, samples(&[("a", 90), ("b", 90)]));
        assert_eq!(
            r,
            Utilization {
                replicas: 4,
                utilization: 90,
                average: 90
            }
        );
        // 54% against 50% is within 10%: stay.
        assert_eq!(
            cpu(&calc, 2, 50, &pods, samples(&[("a", 54), ("b", 54)])).replicas,
            2
        );
        // 56% is not.
        assert_eq!(
            cpu(&calc, 2, 50, &pods, samples(&[("a", 56), ("b", 56)])).replicas,
            3
        );
        // 10% against 50%: ceil(0.2 × 2) = 1.
        assert_eq!(
            cpu(&calc, 2, 50, &pods, samples(&[("a", 10), ("b", 10)])).replicas,
            1
        );
    }

    #[test]
    fn missing_pods_hold_back_both_ways() {
        let calc = Calculator::new(now());
        let pods = [pod("a"), pod("b"), pod("c"), pod("d")];
        // Scale-down: the two without samples count as 100% of their request, so
        // (10+10+100+100)/400 = 55% against 50% is within tolerance: stay at 4.
        assert_eq!(
            cpu(&calc, 4, 50, &pods, samples(&[("a", 10), ("b", 10)])).replicas,
            4
        );
        // Without them it would have gone to 1.
        let two = [pod("a"), pod("b")];
        assert_eq!(
            cpu(&calc, 2, 50, &two, samples(&[("a", 10), ("b", 10)])).replicas,
            1
        );
        // Scale-up: they count as 0: (100+100)/400 = 50%... at target, stay.
        assert_eq!(
            cpu(&calc, 4, 50, &pods, samples(&[("a", 100), ("b", 100)])).replicas,
            4
        );
        // 150%+150% → (300)/400 = 75% vs 50%: ceil(1.5 × 4) = 6.
        assert_eq!(
            cpu(&calc, 4, 50, &pods, samples(&[("a", 150), ("b", 150)])).replicas,
            6
        );
    }

    #[test]
    fn unready_and_deleted_pods() {
        let calc = Calculator::new(now());
        // b started a minute ago and is not ready: a scale-up counts it as 0.
        let pods = [
            pod("a"),
            pod_with("b", "Running", false, "2026-01-01T11:59:00Z"),
        ];
        let r = cpu(&calc, 2, 50, &pods, samples(&[("a", 100), ("b", 100)]));
        // a alone: 100% → ratio 2; with b at 0: 50% → at target: stay.
        assert_eq!(r.replicas, 2);
        assert_eq!(
            r.utilization, 100,
            "the status shows what the ready pods use"
        );
        // A Pending pod is unready too, a Failed or deleted one ignored.
        let mut gone = (*pod("c")).clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        let pods = [
            pod("a"),
            pod_with("p", "Pending", false, "2026-01-01T11:59:00Z"),
            pod_with("f", "Failed", false, "2026-01-01T10:00:00Z"),
            Arc::new(gone),
        ];
        let r = cpu(
            &calc,
            4,
            50,
            &pods,
            samples(&[("a", 100), ("f", 100), ("c", 100)]),
        );
        // a: 200% of target; p counts 0: (100+0)/200 = 50% → at target: stay at 4.
        assert_eq!(r.replicas, 4);
        // Scale-down is not held back by unready pods.
        let r = cpu(&calc, 4, 50, &pods, samples(&[("a", 10)]));
        assert_eq!(r.replicas, 1);
        // A ready pod whose sample predates one window since it became ready is too
        // early (started 2 minutes ago, ready 10 s ago).
        let fresh = pod_with("b", "Running", true, "2026-01-01T11:59:50Z");
        let mut fresh_v = (*fresh).clone();
        fresh_v["status"]["startTime"] = json!("2026-01-01T11:58:00Z");
        let pods = [pod("a"), Arc::new(fresh_v)];
        let r = cpu(&calc, 2, 50, &pods, samples(&[("a", 100), ("b", 100)]));
        assert_eq!(r.replicas, 2);
        // No usable sample at all is an error.
        let requests = pod_requests(&[pod("a")], None, "cpu").unwrap();
        let err = calc
            .resource_replicas(1, 50, &[pod("a")], Samples::new(), &requests, true)
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("did not receive metrics"), "{err}");
    }

    #[test]
    fn requests_are_required_for_utilization() {
        let mut bare = (*pod("a")).clone();
        bare["spec"]["containers"][0]["resources"] = json!({});
        let err = pod_requests(&[Arc::new(bare)], None, "cpu").unwrap_err();
        assert_eq!(err, "missing request for cpu in container app of Pod a");
        let memory = pod_requests(&[pod("a")], Some("app"), "memory").unwrap();
        assert_eq!(memory["a"], 64 * 1024 * 1024 * 1000);
    }

    #[test]
    fn plain_and_object_metrics() {
        let calc = Calculator::new(now());
        let pods = [pod("a"), pod("b")];
        // 30 rps each against 10: ceil(3 × 2) = 6; average 30.
        let (replicas, average) = calc
            .plain_replicas(
                2,
                10_000,
                &pods,
                samples(&[("a", 30_000), ("b", 30_000)]),
                false,
            )
            .unwrap();
        assert_eq!((replicas, average), (6, 30_000));
        // Scale-down with one pod missing: it counts as at target. (2 + 10)/2 = 6 of 10:
        // ceil(0.6 × 2) = 2: stay.
        let (replicas, _) = calc
            .plain_replicas(2, 10_000, &pods, samples(&[("a", 2_000)]), false)
            .unwrap();
        assert_eq!(replicas, 2);
        // An object's 100 rps against a target value of 20: 5× the ready pods.
        assert_eq!(calc.object_replicas(2, 100_000, 20_000, 2), 10);
        assert_eq!(
            calc.object_replicas(2, 21_000, 20_000, 2),
            2,
            "within tolerance"
        );
        assert_eq!(
            calc.object_replicas(0, 30_000, 20_000, 0),
            2,
            "from zero: the ratio"
        );
        // Against an average of 20 per replica: 100/20 = 5.
        assert_eq!(
            calc.object_per_pod_replicas(2, 100_000, 20_000),
            (5, 50_000)
        );
        assert_eq!(
            calc.object_per_pod_replicas(5, 100_000, 20_000),
            (5, 20_000)
        );
    }
}

//! The autoscaler against a real API server and caches: usage recorded as the scraper
//! records it, one sync at a time.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::informer::SharedInformers;
use crate::kinds::app::APP_LABEL;
use crate::usage::{ContainerCounters, NodeCounters, PodCounters, Report};

struct Fixture {
    api: Arc<ApiServer>,
    ctrl: Autoscaler,
    _dir: tempfile::TempDir,
    /// Holds the caches: they stop when it goes.
    _informers: Arc<crate::informer::Informers>,
    stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn deployments() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "deployments").unwrap()
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let api = Arc::new(ApiServer::on_redb_for_tests(dir.path()));
    let stop = CancellationToken::new();
    let informers = SharedInformers::new(api.store.clone(), stop.clone()).scope(stop.clone());
    let hpas = informers.cache("autoscaling", "horizontalpodautoscalers");
    let pods = informers.cache("", "pods");
    assert!(informers.synced(&[&hpas, &pods]).await);
    let ctrl = Autoscaler {
        api: api.clone(),
        hpas,
        pods,
        sync_period: Duration::from_secs(15),
        memory: Mutex::new(HashMap::new()),
    };
    Fixture {
        api,
        ctrl,
        _dir: dir,
        _informers: informers,
        stop,
    }
}

impl Fixture {
    async fn deployment(&self, replicas: i64) {
        internal::create(
            &self.api,
            deployments(),
            Some("default"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "sha256:00",
                            "resources": {"requests": {"cpu": "100m"}}}]}}}}),
        )
        .await
        .unwrap();
    }

    /// A running, ready pod of the Deployment, started an hour ago.
    async fn pod(&self, name: &str) {
        let pods = crate::kinds::lookup("", "v1", "pods").unwrap();
        internal::create(
            &self.api,
            pods,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "sha256:00",
                    "resources": {"requests": {"cpu": "100m"}}}]}}),
        )
        .await
        .unwrap();
        let started = objects::format_time(Timestamp::now() - SignedDuration::from_hours(1));
        internal::merge_status(
            &self.api,
            pods,
            Some("default"),
            name,
            &json!({"phase": "Running", "startTime": started, "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": started}]}),
        )
        .await
        .unwrap();
    }

    async fn hpa(&self, spec: Value) {
        internal::create(
            &self.api,
            hpa_info(),
            Some("default"),
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .await
        .unwrap();
    }

    /// Two scrapes 10 s apart in which each pod used `millicores` and served `rps`.
    async fn usage(&self, pods: &[&str], millicores: u64, rps: u64) {
        let at = SystemTime::now();
        // Usage counts only for the incarnation measured: the agent reports each pod's uid.
        let pods_info = crate::kinds::lookup("", "v1", "pods").unwrap();
        let mut uids = std::collections::HashMap::new();
        for name in pods {
            let pod = internal::get(&self.api, pods_info, Some("default"), name)
                .await
                .unwrap()
                .expect("the pod exists");
            uids.insert(*name, objects::meta_str(&pod, "uid").unwrap().to_string());
        }
        let report = |seconds: u64| Report {
            node: NodeCounters::default(),
            pods: pods
                .iter()
                .map(|name| PodCounters {
                    namespace: "default".into(),
                    name: name.to_string(),
                    uid: uids[name].clone(),
                    containers: vec![ContainerCounters {
                        name: "app".into(),
                        cpu_nanos: millicores * 1_000_000 * seconds,
                        memory_bytes: 1 << 20,
                    }],
                    requests: rps * seconds,
                    in_flight: 0,
                    errors: 0,
                })
                .collect(),
        };
        self.api.usage.forget_node("n1");
        self.api
            .usage
            .record("n1", at - Duration::from_secs(10), report(100));
        self.api.usage.record("n1", at, report(110));
    }

    /// Waits for the caches to hold `pods` pods and the autoscaler.
    async fn settle(&self, pods: usize) {
        for _ in 0..200 {
            let seen = self.ctrl.pods.snapshot().len();
            if seen == pods
                && self
                    .ctrl
                    .hpas
                    .get(&hpa_info().key(Some("default"), "web"))
                    .is_some()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the caches never caught up");
    }

    async fn replicas(&self) -> i64 {
        let d = internal::get(&self.api, deployments(), Some("default"), "web")
            .await
            .unwrap()
            .unwrap();
        d["spec"]["replicas"].as_i64().unwrap()
    }

    async fn status(&self) -> Value {
        internal::get(&self.api, hpa_info(), Some("default"), "web")
            .await
            .unwrap()
            .unwrap()["status"]
            .clone()
    }

    /// Forgets when it last synced, as if the period had passed.
    fn due(&self) {
        self.ctrl.memory("default/web", |m| m.synced = None);
    }

    async fn events(&self) -> Vec<(String, String)> {
        let events = crate::kinds::lookup("", "v1", "events").unwrap();
        let page = self
            .api
            .store
            .list(crate::store::ListRequest::all(
                &events.prefix(),
                &|_: &Value| true,
            ))
            .await
            .unwrap();
        page.items
            .iter()
            .map(|e| {
                (
                    e.object["reason"].as_str().unwrap_or_default().to_string(),
                    e.object["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

fn condition_of<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {status}"))
}

fn cpu_target(percent: i64) -> Value {
    json!([{"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": percent}}}])
}

#[tokio::test]
async fn cpu_above_target_scales_the_deployment_up_through_its_scale() {
    let f = fixture().await;
    f.deployment(2).await;
    f.pod("a").await;
    f.pod("b").await;
    f.hpa(
        json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1, "maxReplicas": 10, "metrics": cpu_target(50)}),
    )
    .await;
    f.settle(2).await;
    // 90m of 100m requested each: 180% of a 50% target → ceil(1.8 × 2) = 4.
    f.usage(&["a", "b"], 90, 0).await;
    assert_eq!(
        f.ctrl.sync("default/web").await.unwrap(),
        Action::RequeueAfter(Duration::from_secs(15))
    );
    assert_eq!(f.replicas().await, 4);
    let status = f.status().await;
    assert_eq!(status["currentReplicas"], 2);
    assert_eq!(status["desiredReplicas"], 4);
    assert!(status["lastScaleTime"].is_string());
    assert_eq!(
        status["currentMetrics"][0]["resource"]["current"],
        json!({"averageUtilization": 90, "averageValue": "90m"})
    );
    assert_eq!(
        condition_of(&status, "AbleToScale")["reason"],
        "SucceededRescale"
    );
    assert_eq!(
        condition_of(&status, "ScalingActive")["reason"],
        "ValidMetricFound"
    );
    assert_eq!(condition_of(&status, "ScalingLimited")["status"], "False");
    let events = f.events().await;
    assert!(
        events.contains(&(
            "SuccessfulRescale".into(),
            "New size: 4; reason: cpu resource utilization (percentage of request) above target"
                .into()
        )),
        "{events:?}"
    );
    // Its own status write does not make it sync again before the period is over.
    match f.ctrl.sync("default/web").await.unwrap() {
        Action::RequeueAfter(left) => assert!(left <= Duration::from_secs(15)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn scale_down_waits_for_the_window_and_limits_are_reported() {
    let f = fixture().await;
    f.deployment(2).await;
    f.pod("a").await;
    f.pod("b").await;
    f.hpa(
        json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 1, "maxReplicas": 3, "metrics": cpu_target(50)}),
    )
    .await;
    f.settle(2).await;
    // 300% wants 12; max is 3.
    f.usage(&["a", "b"], 150, 0).await;
    f.ctrl.sync("default/web").await.unwrap();
    assert_eq!(f.replicas().await, 3);
    let status = f.status().await;
    let limited = condition_of(&status, "ScalingLimited");
    assert_eq!(
        (limited["status"].as_str(), limited["reason"].as_str()),
        (Some("True"), Some("TooManyReplicas"))
    );
    // Idle now: the default 5-minute window holds the recommendation of 12 (capped to 3).
    f.usage(&["a", "b"], 1, 0).await;
    f.due();
    f.ctrl.sync("default/web").await.unwrap();
    assert_eq!(f.replicas().await, 3);
    let status = f.status().await;
    assert_eq!(
        condition_of(&status, "AbleToScale")["reason"],
        "ScaleDownStabilized"
    );
}

#[tokio::test]
async fn requests_per_second_scale_an_app_target() {
    let f = fixture().await;
    // The App's scale, and pods labelled as its Deployment labels them.
    let apps = crate::kinds::lookup("skiff.dev", "v1", "apps").unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    internal::create(
        &f.api,
        apps,
        Some("default"),
        json!({"apiVersion": "skiff.dev/v1", "kind": "App",
        "metadata": {"name": "web", "namespace": "default"}, "spec": {"module": digest}}),
    )
    .await
    .unwrap();
    let pods = crate::kinds::lookup("", "v1", "pods").unwrap();
    for name in ["a"] {
        internal::create(
            &f.api,
            pods,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {APP_LABEL: "web"}},
            "spec": {"containers": [{"name": "app", "image": "sha256:00"}]}}),
        )
        .await
        .unwrap();
        internal::merge_status(&f.api, pods, Some("default"), name, &json!({"phase": "Running",
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
            .await
            .unwrap();
    }
    f.hpa(
        json!({"scaleTargetRef": {"apiVersion": "skiff.dev/v1", "kind": "App", "name": "web"},
        "maxReplicas": 5, "metrics": [
            {"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "10"}}},
            {"type": "Object", "object": {"metric": {"name": "http_requests_per_second"},
                "describedObject": {"apiVersion": "skiff.dev/v1", "kind": "App", "name": "web"},
                "target": {"type": "Value", "value": "15"}}}]}),
    )
    .await;
    f.settle(1).await;
    // 30 rps on one replica: the Pods metric asks 3, the Object one ceil(2 × 1) = 2.
    f.usage(&["a"], 1, 30).await;
    f.ctrl.sync("default/web").await.unwrap();
    let app = internal::get(&f.api, apps, Some("default"), "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app["spec"]["replicas"], 3);
    let status = f.status().await;
    assert_eq!(
        status["currentMetrics"][0]["pods"]["current"]["averageValue"],
        "30"
    );
    assert_eq!(
        status["currentMetrics"][1]["object"]["current"]["value"],
        "30"
    );
    let events = f.events().await;
    assert!(
        events.iter().any(|(r, m)| r == "SuccessfulRescale"
            && m == "New size: 3; reason: pods metric http_requests_per_second above target"),
        "{events:?}"
    );
}

#[tokio::test]
async fn metrics_that_cannot_be_read_say_so() {
    let f = fixture().await;
    f.deployment(2).await;
    f.pod("a").await;
    f.hpa(
        json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "maxReplicas": 4, "metrics": cpu_target(50)}),
    )
    .await;
    f.settle(1).await;
    // Nothing scraped yet.
    f.ctrl.sync("default/web").await.unwrap();
    assert_eq!(f.replicas().await, 2);
    let status = f.status().await;
    let active = condition_of(&status, "ScalingActive");
    assert_eq!(active["status"], "False");
    assert_eq!(active["reason"], "FailedGetResourceMetric");
    assert!(
        active["message"].as_str().unwrap().starts_with("the HPA was unable to compute the replica count: unable to get metrics for resource cpu"),
        "{active}"
    );
    // The same failure again is not a second event.
    f.due();
    f.ctrl.sync("default/web").await.unwrap();
    let warnings = f
        .events()
        .await
        .into_iter()
        .filter(|(r, _)| r == "FailedGetResourceMetric")
        .count();
    assert_eq!(warnings, 1);
    // External metrics are not served; a target that does not exist cannot be scaled.
    internal::update(&f.api, hpa_info(), Some("default"), "web", |cur| {
        let mut next = cur.clone();
        next["spec"]["metrics"] = json!([{"type": "External", "external": {"metric": {"name": "queue"},
            "target": {"type": "Value", "value": "1"}}}]);
        Ok(next)
    })
    .await
    .unwrap();
    f.settle(1).await;
    for _ in 0..100 {
        if f.ctrl
            .hpas
            .get(&hpa_info().key(Some("default"), "web"))
            .is_some_and(|h| h["spec"]["metrics"][0]["type"] == "External")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.ctrl.sync("default/web").await.unwrap();
    let status = f.status().await;
    assert_eq!(
        condition_of(&status, "ScalingActive")["reason"],
        "FailedGetExternalMetric"
    );
    internal::update(&f.api, hpa_info(), Some("default"), "web", |cur| {
        let mut next = cur.clone();
        next["spec"]["scaleTargetRef"]["name"] = json!("nope");
        Ok(next)
    })
    .await
    .unwrap();
    for _ in 0..100 {
        if f.ctrl
            .hpas
            .get(&hpa_info().key(Some("default"), "web"))
            .is_some_and(|h| h["spec"]["scaleTargetRef"]["name"] == "nope")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.ctrl.sync("default/web").await.unwrap();
    let status = f.status().await;
    let able = condition_of(&status, "AbleToScale");
    assert_eq!(
        (able["status"].as_str(), able["reason"].as_str()),
        (Some("False"), Some("FailedGetScale"))
    );
    assert!(
        able["message"]
            .as_str()
            .unwrap()
            .contains("\"nope\" not found"),
        "{able}"
    );
}

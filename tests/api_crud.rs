//! End to end against the real `skiff server` binary: create/get/list/update/patch/
//! delete with Kubernetes semantics, selectors, paging, subresources, and every error
//! path answering the right Status while changing nothing.

mod common;

use std::time::Duration;

use common::{Api, ServerProcess, configmap, eventually, pod, rv};
use serde_json::{Value, json};

const NS: &str = "/api/v1/namespaces/default";

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProcess, Api) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), extra);
    let api = server.api();
    (dir, server, api)
}

fn assert_status(resp: &(u16, Value), code: u16, reason: &str) {
    assert_eq!(resp.0, code, "unexpected status: {}", resp.1);
    assert_eq!(resp.1["kind"], "Status", "{}", resp.1);
    assert_eq!(resp.1["reason"], reason, "{}", resp.1);
    assert_eq!(resp.1["code"], code, "{}", resp.1);
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    crud_with_compare_and_swap,
    generate_name_defaults_and_generation,
    json_patch_and_merge_patch,
    label_and_field_selectors_cover_every_operator,
    paging_is_consistent_while_objects_change,
    every_error_path_answers_a_status_and_changes_nothing,
    graceful_pod_deletion_and_finalizers,
    deletecollection_and_namespace_deletion,
    binding_assigns_a_node_exactly_once,
    discovery_and_health,
    secrets_fold_string_data,
    field_validation_strict_warn_and_ignore,
    openapi_v3_serves_an_index_and_a_document_per_group_version,
    a_method_a_path_does_not_serve_is_405_with_allow,
    a_patch_that_replaces_the_object_with_a_non_object_is_invalid,
    managed_fields_whose_field_set_is_not_an_object_are_invalid,
    hundreds_of_unknown_fields_do_not_make_hundreds_of_warning_headers,
);

async fn crud_with_compare_and_swap() {
    let (_d, _s, api) = start(&[]);
    let (code, created) = api
        .post(
            &format!("{NS}/configmaps"),
            &configmap("app", json!({"tier": "web"})),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    assert!(created["metadata"]["creationTimestamp"].is_string());
    let first_rv = rv(&created);

    let (code, got) = api.get(&format!("{NS}/configmaps/app")).await;
    assert_eq!((code, &got), (200, &created));

    // Update with the current resourceVersion succeeds and bumps it.
    let mut update = got.clone();
    update["data"]["k"] = json!("v2");
    let (code, updated) = api.put(&format!("{NS}/configmaps/app"), &update).await;
    assert_eq!(code, 200, "{updated}");
    assert!(rv(&updated) > first_rv);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    // The same (now stale) resourceVersion loses the compare-and-swap.
    update["data"]["k"] = json!("v3");
    let conflict = api.put(&format!("{NS}/configmaps/app"), &update).await;
    assert_status(&conflict, 409, "Conflict");
    assert_eq!(
        api.get(&format!("{NS}/configmaps/app")).await.1["data"]["k"],
        "v2"
    );

    // Delete with a stale resourceVersion precondition is refused too.
    let stale = json!({"preconditions": {"resourceVersion": first_rv.to_string()}});
    assert_status(
        &api.delete(&format!("{NS}/configmaps/app"), Some(&stale))
            .await,
        409,
        "Conflict",
    );
    let (code, status) = api.delete(&format!("{NS}/configmaps/app"), None).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["uid"], created["metadata"]["uid"]);
    assert_status(
        &api.get(&format!("{NS}/configmaps/app")).await,
        404,
        "NotFound",
    );
}

async fn generate_name_defaults_and_generation() {
    let (_d, _s, api) = start(&[]);
    let body = json!({"metadata": {"generateName": "web-"}, "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "sha256:00"}]}}}});
    let (code, d) = api
        .post("/apis/apps/v1/namespaces/default/deployments", &body)
        .await;
    assert_eq!(code, 201, "{d}");
    let name = d["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let path = format!("/apis/apps/v1/namespaces/default/deployments/{name}");

    // A metadata-only change keeps the generation; a spec change bumps it.
    let (_, d2) = api
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
        )
        .await;
    assert_eq!(d2["metadata"]["generation"], 1);
    let (_, d3) = api
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    assert_eq!(d3["metadata"]["generation"], 2);

    // The main resource ignores status; /status changes only status.
    let (_, d4) = api
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"status":{"replicas":7},"spec":{"paused":true}}"#,
        )
        .await;
    // (The deployment controller may have written status.replicas meanwhile; the
    // patch's 7 must not be there.)
    assert_ne!(d4["status"]["replicas"], 7, "{d4}");
    assert_eq!(d4["spec"]["paused"], true);
    let (code, d5) = api
        .patch(
            &format!("{path}/status"),
            "application/merge-patch+json",
            r#"{"status":{"replicas":7},"spec":{"paused":false}}"#,
        )
        .await;
    assert_eq!(code, 200, "{d5}");
    assert_eq!(d5["status"]["replicas"], 7);
    assert_eq!(d5["spec"]["paused"], true);
    assert_eq!(d5["metadata"]["generation"], 3);

    // Scale reads and writes spec.replicas.
    let (code, scale) = api.get(&format!("{path}/scale")).await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(
        (
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(3), Some("app=web"))
    );
    let (code, scale) = api
        .patch(
            &format!("{path}/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":5}}"#,
        )
        .await;
    assert_eq!((code, scale["spec"]["replicas"].as_i64()), (200, Some(5)));
    assert_eq!(api.get(&path).await.1["spec"]["replicas"], 5);
}

async fn json_patch_and_merge_patch() {
    let (_d, _s, api) = start(&[]);
    api.post(
        &format!("{NS}/configmaps"),
        &configmap("p", json!({"a": "1"})),
    )
    .await;
    let path = format!("{NS}/configmaps/p");
    let (code, out) = api.patch(&path, "application/json-patch+json", r#"[{"op":"add","path":"/data/x","value":"y"},{"op":"remove","path":"/metadata/labels/a"}]"#).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["data"], json!({"k": "v", "x": "y"}));
    assert!(
        out["metadata"]
            .get("labels")
            .is_none_or(|l| l.as_object().unwrap().is_empty())
    );
    let (code, out) = api
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"data":{"k":null}}"#,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(out["data"], json!({"x": "y"}));
    // A failing test operation is Invalid and changes nothing.
    let before = api.get(&path).await.1;
    let failed = api.patch(&path, "application/json-patch+json", r#"[{"op":"test","path":"/data/x","value":"nope"},{"op":"add","path":"/data/z","value":"1"}]"#).await;
    assert_status(&failed, 422, "Invalid");
    assert_eq!(api.get(&path).await.1, before);
    // A patch that names a stale resourceVersion is a Conflict.
    let stale = format!(
        r#"{{"metadata":{{"resourceVersion":"{}"}},"data":{{"q":"1"}}}}"#,
        rv(&before) - 1
    );
    assert_status(
        &api.patch(&path, "application/merge-patch+json", &stale)
            .await,
        409,
        "Conflict",
    );
}

async fn label_and_field_selectors_cover_every_operator() {
    let (_d, _s, api) = start(&[]);
    for (name, labels) in [
        ("a", json!({"env": "prod", "tier": "web"})),
        ("b", json!({"env": "dev", "tier": "web"})),
        ("c", json!({"env": "test"})),
        ("d", json!({})),
    ] {
        assert_eq!(
            api.post(&format!("{NS}/configmaps"), &configmap(name, labels))
                .await
                .0,
            201
        );
    }
    let names = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (selector, expected) in [
        ("env=prod", vec!["a"]),
        ("env==prod", vec!["a"]),
        ("env!=prod", vec!["b", "c", "d"]),
        ("env in (prod,dev)", vec!["a", "b"]),
        ("env notin (prod,dev)", vec!["c", "d"]),
        ("tier", vec!["a", "b"]),
        ("!tier", vec!["c", "d"]),
        ("tier=web,env!=dev", vec!["a"]),
        ("", vec!["a", "b", "c", "d"]),
    ] {
        let q =
            reqwest::Url::parse_with_params("http://x/", &[("labelSelector", selector)]).unwrap();
        let (code, list) = api
            .get(&format!("{NS}/configmaps?{}", q.query().unwrap()))
            .await;
        assert_eq!(code, 200, "{selector}: {list}");
        assert_eq!(names(list), expected, "labelSelector {selector:?}");
    }
    let (_, list) = api
        .get(&format!("{NS}/configmaps?fieldSelector=metadata.name%3Db"))
        .await;
    assert_eq!(names(list), vec!["b"]);
    let (_, list) = api
        .get(&format!(
            "{NS}/configmaps?fieldSelector=metadata.name!%3Db,metadata.namespace%3Ddefault"
        ))
        .await;
    assert_eq!(names(list), vec!["a", "c", "d"]);

    // Pods: spec.nodeName and status.phase, with = and !=.
    api.post(&format!("{NS}/pods"), &pod("on-n1", Some("n1")))
        .await;
    api.post(&format!("{NS}/pods"), &pod("unbound", None)).await;
    let (_, list) = api
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
        .await;
    assert_eq!(names(list), vec!["on-n1"]);
    let (_, list) = api.get("/api/v1/pods?fieldSelector=spec.nodeName%3D").await;
    assert_eq!(names(list), vec!["unbound"]);
    let (_, list) = api
        .get("/api/v1/pods?fieldSelector=status.phase%3DPending,spec.nodeName!%3Dn1")
        .await;
    assert_eq!(names(list), vec!["unbound"]);
    let (_, list) = api
        .get("/api/v1/pods?fieldSelector=status.phase!%3DPending")
        .await;
    assert!(names(list).is_empty());

    assert_status(
        &api.get(&format!("{NS}/configmaps?labelSelector=a%20in%20("))
            .await,
        400,
        "BadRequest",
    );
    assert_status(
        &api.get(&format!("{NS}/configmaps?fieldSelector=spec.nodeName%3Dx"))
            .await,
        400,
        "BadRequest",
    );
}

async fn paging_is_consistent_while_objects_change() {
    let (_d, _s, api) = start(&[]);
    for i in 0..25 {
        api.post(
            &format!("{NS}/configmaps"),
            &configmap(&format!("cm-{i:02}"), json!({})),
        )
        .await;
    }
    let (_, first) = api.get(&format!("{NS}/configmaps?limit=10")).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 10);
    let list_rv = first["metadata"]["resourceVersion"].clone();
    // Changes after the first page must not show in later pages of the same list.
    api.post(&format!("{NS}/configmaps"), &configmap("cm-99", json!({})))
        .await;
    api.delete(&format!("{NS}/configmaps/cm-20"), None).await;

    let mut names: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let (code, page) = api
            .get(&format!("{NS}/configmaps?limit=10&continue={token}"))
            .await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], list_rv);
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected);
    assert_status(
        &api.get(&format!("{NS}/configmaps?limit=10&continue=garbage"))
            .await,
        400,
        "BadRequest",
    );
}

async fn every_error_path_answers_a_status_and_changes_nothing() {
    let (_d, _s, api) = start(&["--max-body-bytes", "4096"]);
    api.post(&format!("{NS}/configmaps"), &configmap("keep", json!({})))
        .await;
    // What the rejected writes below could have touched, object by object. (Not the
    // list's resourceVersion: that is the cluster's revision, which the server's own
    // Lease renewals move meanwhile, on either store.)
    let kinds = ["/api/v1/configmaps", "/api/v1/pods", "/api/v1/namespaces"];
    let snapshot = || async {
        let mut items = Vec::new();
        for path in kinds {
            let (code, list) = api.get(path).await;
            assert_eq!(code, 200, "{list}");
            items.push(list["items"].clone());
        }
        items
    };
    let before = snapshot().await;

    let malformed = api
        .raw(
            reqwest::Method::POST,
            &format!("{NS}/configmaps"),
            "application/json",
            b"{not json".to_vec(),
        )
        .await;
    assert_status(&malformed, 400, "BadRequest");
    let wrong_kind = api
        .post(
            &format!("{NS}/configmaps"),
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}),
        )
        .await;
    assert_status(&wrong_kind, 400, "BadRequest");
    let wrong_shape = api
        .post(
            &format!("{NS}/configmaps"),
            &json!({"metadata": {"name": "x"}, "data": ["no"]}),
        )
        .await;
    assert_status(&wrong_shape, 400, "BadRequest");
    let ns_mismatch = api
        .post(
            &format!("{NS}/configmaps"),
            &json!({"metadata": {"name": "x", "namespace": "kube-system"}}),
        )
        .await;
    assert_status(&ns_mismatch, 400, "BadRequest");

    let missing = api.get(&format!("{NS}/configmaps/nope")).await;
    assert_status(&missing, 404, "NotFound");
    assert_eq!(missing.1["details"]["name"], "nope");
    assert_eq!(missing.1["details"]["kind"], "configmaps");
    assert_status(
        &api.get("/api/v1/namespaces/missing/configmaps/x").await,
        404,
        "NotFound",
    );
    assert_status(
        &api.post(
            "/api/v1/namespaces/missing/configmaps",
            &configmap("x", json!({})),
        )
        .await,
        404,
        "NotFound",
    );
    assert_status(
        &api.get("/apis/nope.example/v1/widgets").await,
        404,
        "NotFound",
    );

    assert_status(
        &api.post(&format!("{NS}/configmaps"), &configmap("keep", json!({})))
            .await,
        409,
        "AlreadyExists",
    );

    let big = json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(8192)}});
    assert_status(
        &api.post(&format!("{NS}/configmaps"), &big).await,
        413,
        "RequestEntityTooLarge",
    );

    let smp = api
        .patch(&format!("{NS}/configmaps/keep"), "text/plain", "{}")
        .await;
    assert_status(&smp, 415, "UnsupportedMediaType");

    let invalid = api
        .post(
            &format!("{NS}/pods"),
            &json!({"metadata": {"name": "UPPER"}, "spec": {"containers": [{"name": "c"}]}}),
        )
        .await;
    assert_status(&invalid, 422, "Invalid");
    let causes: Vec<&str> = invalid.1["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(causes, vec!["metadata.name", "spec.containers[0].image"]);
    assert_eq!(
        invalid.1["details"]["causes"][1]["reason"],
        "FieldValueRequired"
    );

    assert_status(
        &api.delete("/api/v1/namespaces/default", None).await,
        403,
        "Forbidden",
    );
    assert_status(
        &api.raw(
            reqwest::Method::PUT,
            &format!("{NS}/configmaps"),
            "application/json",
            b"{}".to_vec(),
        )
        .await,
        405,
        "MethodNotAllowed",
    );

    // None of the rejected writes changed anything.
    assert_eq!(snapshot().await, before);
    let (_, configmaps) = api.get(&format!("{NS}/configmaps")).await;
    assert_eq!(configmaps["items"].as_array().unwrap().len(), 1);
}

async fn graceful_pod_deletion_and_finalizers() {
    let (_d, _s, api) = start(&[]);
    // Unbound pods go at once.
    api.post(&format!("{NS}/pods"), &pod("unbound", None)).await;
    let (code, gone) = api.delete(&format!("{NS}/pods/unbound"), None).await;
    assert_eq!(code, 200);
    assert_eq!(gone["metadata"]["name"], "unbound");
    assert_eq!(api.get(&format!("{NS}/pods/unbound")).await.0, 404);

    // Bound pods get a deletionTimestamp and go when the grace period ends.
    api.post(&format!("{NS}/pods"), &pod("bound", Some("n1")))
        .await;
    let (code, terminating) = api
        .delete(
            &format!("{NS}/pods/bound"),
            Some(&json!({"gracePeriodSeconds": 1})),
        )
        .await;
    assert_eq!(code, 200, "{terminating}");
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 1);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        api.get(&format!("{NS}/pods/bound")).await.0,
        200,
        "still there during its grace period"
    );
    eventually(
        "the bound pod to go after its grace",
        Duration::from_secs(10),
        || async { (api.get(&format!("{NS}/pods/bound")).await.0 == 404).then_some(()) },
    )
    .await;

    // The agent's confirmation (grace 0) removes a terminating pod at once.
    api.post(&format!("{NS}/pods"), &pod("confirm", Some("n1")))
        .await;
    api.delete(&format!("{NS}/pods/confirm"), None).await;
    assert_eq!(api.get(&format!("{NS}/pods/confirm")).await.0, 200);
    api.delete(&format!("{NS}/pods/confirm?gracePeriodSeconds=0"), None)
        .await;
    assert_eq!(api.get(&format!("{NS}/pods/confirm")).await.0, 404);

    // A finalizer holds deletion until it is removed.
    let mut held = configmap("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.post(&format!("{NS}/configmaps"), &held).await;
    let (code, marked) = api.delete(&format!("{NS}/configmaps/held"), None).await;
    assert_eq!(code, 200);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    assert_eq!(api.get(&format!("{NS}/configmaps/held")).await.0, 200);
    let (code, _) = api
        .patch(
            &format!("{NS}/configmaps/held"),
            "application/merge-patch+json",
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{NS}/configmaps/held")).await.0, 404);

    // Propagation policies are recorded as the finalizers the garbage collector acts on.
    api.post(&format!("{NS}/configmaps"), &configmap("fg", json!({})))
        .await;
    let (_, fg) = api
        .delete(
            &format!("{NS}/configmaps/fg"),
            Some(&json!({"propagationPolicy": "Foreground"})),
        )
        .await;
    assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    api.post(&format!("{NS}/configmaps"), &configmap("or", json!({})))
        .await;
    let (_, or) = api
        .delete(
            &format!("{NS}/configmaps/or?propagationPolicy=Orphan"),
            None,
        )
        .await;
    assert_eq!(or["metadata"]["finalizers"], json!(["orphan"]));
}

async fn deletecollection_and_namespace_deletion() {
    let (_d, _s, api) = start(&[]);
    api.post("/api/v1/namespaces", &json!({"metadata": {"name": "team"}}))
        .await;
    for i in 0..5 {
        let labels = if i % 2 == 0 {
            json!({"even": "yes"})
        } else {
            json!({})
        };
        api.post(
            "/api/v1/namespaces/team/configmaps",
            &configmap(&format!("c{i}"), labels),
        )
        .await;
    }
    let (code, deleted) = api
        .delete(
            "/api/v1/namespaces/team/configmaps?labelSelector=even",
            None,
        )
        .await;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(deleted["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        api.get("/api/v1/namespaces/team/configmaps").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    api.post("/api/v1/namespaces/team/pods", &pod("p", None))
        .await;
    let (code, ns) = api.delete("/api/v1/namespaces/team", None).await;
    assert_eq!(code, 200);
    assert_eq!(ns["status"]["phase"], "Terminating");
    // No new content while terminating.
    let refused = api
        .post(
            "/api/v1/namespaces/team/configmaps",
            &configmap("late", json!({})),
        )
        .await;
    assert!(matches!(refused.0, 403 | 404), "{refused:?}");
    eventually(
        "namespace team to be drained and removed",
        Duration::from_secs(10),
        || async { (api.get("/api/v1/namespaces/team").await.0 == 404).then_some(()) },
    )
    .await;
    assert!(
        api.get("/api/v1/namespaces/team/configmaps").await.1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        api.get("/api/v1/namespaces/team/pods").await.1["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

async fn binding_assigns_a_node_exactly_once() {
    let (_d, _s, api) = start(&[]);
    api.post(&format!("{NS}/pods"), &pod("p", None)).await;
    let binding = |node: &str| json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}});
    let (code, _) = api
        .post(&format!("{NS}/pods/p/binding"), &binding("n1"))
        .await;
    assert_eq!(code, 201);
    let (_, p) = api.get(&format!("{NS}/pods/p")).await;
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
    assert_status(
        &api.post(&format!("{NS}/pods/p/binding"), &binding("n2"))
            .await,
        409,
        "Conflict",
    );
    assert_eq!(
        api.get(&format!("{NS}/pods/p")).await.1["spec"]["nodeName"],
        "n1"
    );
}

async fn discovery_and_health() {
    let (_d, _s, api) = start(&[]);
    let (code, core) = api.get("/api/v1").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "namespaces",
        "nodes",
        "nodes/status",
        "pods",
        "pods/status",
        "pods/binding",
        "configmaps",
        "secrets",
        "services",
        "events",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let (_, groups) = api.get("/apis").await;
    let groups: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        groups,
        vec![
            "apps",
            "batch",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "skiff.dev",
            "policy",
            "networking.k8s.io",
            "gateway.networking.k8s.io",
            "storage.k8s.io",
            "autoscaling",
            "rbac.authorization.k8s.io",
            "apiextensions.k8s.io",
            "metrics.k8s.io",
            "custom.metrics.k8s.io",
            "authorization.k8s.io",
            "authentication.k8s.io",
        ]
    );
    // A group served at two versions prefers the one it stores.
    let (_, autoscaling) = api.get("/apis/autoscaling").await;
    assert_eq!(autoscaling["preferredVersion"]["version"], "v2");
    let versions: Vec<&str> = autoscaling["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v2", "v1"]);
    let (_, apps) = api.get("/apis/apps/v1").await;
    let deploy = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments")
        .unwrap();
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    assert!(
        deploy["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("watch"))
    );
    assert_eq!(api.get("/version").await.1["major"], "1");
    for h in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(api.get(h).await.0, 200, "{h}");
    }
    // `?verbose` lists each check, as kube-apiserver does; the store is one of them.
    let (code, verbose) = api.text("/readyz?verbose").await;
    assert_eq!(code, 200, "{verbose}");
    assert!(verbose.contains("[+]ping ok"), "{verbose}");
    assert!(
        verbose.contains("[+]redb ok") || verbose.contains("[+]etcd ok"),
        "{verbose}"
    );
    assert!(verbose.ends_with("readyz check passed\n"), "{verbose}");
    let (_, api_versions) = api.get("/api").await;
    assert_eq!(api_versions["versions"], json!(["v1"]));
}

async fn secrets_fold_string_data() {
    let (_d, _s, api) = start(&[]);
    let (code, s) = api
        .post(
            &format!("{NS}/secrets"),
            &json!({"metadata": {"name": "s"}, "stringData": {"user": "admin"}}),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    assert_eq!(s["data"]["user"], "YWRtaW4=");
    assert!(s.get("stringData").is_none());
    assert_eq!(s["type"], "Opaque");
    // Updates fold it too, over what `data` holds.
    let (code, s) = api
        .patch(
            &format!("{NS}/secrets/s"),
            "application/merge-patch+json",
            r#"{"stringData": {"pass": "pw"}}"#,
        )
        .await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["data"], json!({"user": "YWRtaW4=", "pass": "cHc="}));
    assert!(s.get("stringData").is_none());
}

async fn field_validation_strict_warn_and_ignore() {
    let (_d, _s, api) = start(&[]);
    let cms = format!("{NS}/configmaps");
    let with_typo = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo","labelz":{"a":"b"}},"data":{"k":"v"},"dat":{"x":"y"}}"#;
    let send = |method: reqwest::Method, path: String, ct: &'static str, body: &'static str| {
        let req = api
            .http
            .request(method, format!("{}{path}", api.base))
            .header("content-type", ct)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let warnings: Vec<String> = resp
                .headers()
                .get_all("warning")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (code, body, warnings)
        }
    };
    let post = reqwest::Method::POST;

    // Strict refuses, naming every unknown field by its path, and stores nothing.
    let (code, status, _) = send(
        post.clone(),
        format!("{cms}?fieldValidation=Strict"),
        "application/json",
        with_typo,
    )
    .await;
    assert_status(&(code, status.clone()), 400, "BadRequest");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("strict decoding error")
            && message.contains(r#"unknown field "metadata.labelz""#)
            && message.contains(r#"unknown field "dat""#),
        "{message}"
    );
    assert_eq!(api.get(&format!("{cms}/typo")).await.0, 404);

    // Duplicate keys count too.
    let (code, status, _) = send(
        post.clone(),
        format!("{cms}?fieldValidation=Strict"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"k":"1","k":"2"}}"#,
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"duplicate field "data.k""#),
        "{status}"
    );

    // Warn (the default) stores the object without the fields, and says so.
    let (code, created, warnings) =
        send(post.clone(), cms.clone(), "application/json", with_typo).await;
    assert_eq!(code, 201, "{created}");
    assert!(created.get("dat").is_none());
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"dat\"""#,
            r#"299 - "unknown field \"metadata.labelz\"""#
        ]
    );

    // Patches: the patched object is checked; Strict changes nothing.
    let item = format!("{cms}/typo");
    let (code, status, _) = send(
        reqwest::Method::PATCH,
        format!("{item}?fieldValidation=Strict"),
        "application/merge-patch+json",
        r#"{"data":{"k":"changed"},"spec":{"x":1}}"#,
    )
    .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"unknown field "spec""#)
    );
    assert_eq!(api.get(&item).await.1["data"]["k"], "v");
    let (code, patched, warnings) = send(
        reqwest::Method::PATCH,
        format!("{item}?fieldValidation=Ignore"),
        "application/strategic-merge-patch+json",
        r#"{"data":{"k":"changed"},"spec":{"x":1}}"#,
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["data"]["k"], "changed");
    assert!(warnings.is_empty() && patched.get("spec").is_none());
    let (code, _, warnings) = send(
        reqwest::Method::PATCH,
        item.clone(),
        "application/json-patch+json",
        r#"[{"op":"add","path":"/extra","value":1}]"#,
    )
    .await;
    assert_eq!((code, warnings.len()), (200, 1));

    // An unknown directive value is a BadRequest.
    let (code, status, _) = send(
        post,
        format!("{cms}?fieldValidation=Loose"),
        "application/json",
        with_typo,
    )
    .await;
    assert_eq!(code, 400, "{status}");
}

async fn openapi_v3_serves_an_index_and_a_document_per_group_version() {
    let (_d, _s, api) = start(&[]);
    let (code, index) = api.get("/openapi/v3").await;
    assert_eq!(code, 200, "{index}");
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap();
    let (code, doc) = api.get(url).await;
    assert_eq!(code, 200);
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );
    assert!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]
            .is_object()
    );
    assert_eq!(api.get("/openapi/v3/apis/nothing/v9").await.0, 404);
}

/// Found by schemathesis (tests/schemathesis.rs): its unsupported-method check sent a
/// DELETE to the all-namespaces path of secrets, which served it as a deletecollection
/// across every namespace and deleted the cluster's own credentials; and its 405s had no
/// `Allow` header.
async fn a_method_a_path_does_not_serve_is_405_with_allow() {
    let (_d, _s, api) = start(&[]);
    let secret = json!({"metadata": {"name": "kept"}, "stringData": {"k": "v"}});
    assert_eq!(api.post(&format!("{NS}/secrets"), &secret).await.0, 201);
    let send = |method: &str, path: &str| {
        let request = api.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", api.base),
        );
        async move {
            let response = request.send().await.unwrap();
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string());
            let code = response.status().as_u16();
            (code, allow, response.json::<Value>().await.unwrap())
        }
    };
    let (code, allow, status) = send(
        "DELETE",
        "/api/v1/secrets?allowWatchBookmarks=true&continue=&fieldSelector=&labelSelector=&limit=0\
         &resourceVersion=&resourceVersionMatch=&sendInitialEvents=true&timeoutSeconds=0&watch=true",
    )
    .await;
    assert_status(&(code, status), 405, "MethodNotAllowed");
    assert_eq!(allow.as_deref(), Some("GET"));
    assert_eq!(api.get(&format!("{NS}/secrets/kept")).await.0, 200);
    assert_eq!(
        api.get("/api/v1/namespaces/kube-system/secrets").await.0,
        200
    );

    for (method, path, methods) in [
        (
            "TRACE",
            "/api/v1/namespaces/0/pods/0",
            "GET, PUT, PATCH, DELETE",
        ),
        ("TRACE", "/api/v1/nodes/0/status", "GET, PUT, PATCH"),
        (
            "PUT",
            "/api/v1/namespaces/default/secrets",
            "GET, POST, DELETE",
        ),
        ("GET", "/api/v1/namespaces/default/pods/p/binding", "POST"),
    ] {
        let (code, allow, status) = send(method, path).await;
        assert_status(&(code, status), 405, "MethodNotAllowed");
        assert_eq!(allow.as_deref(), Some(methods), "{method} {path}");
    }
}

/// Found by schemathesis: a JSON patch that replaces the whole document (path "") with
/// an array made the handler panic, and the client saw the connection close with no
/// response. Whatever the patch type, the patched object must still be an object.
async fn a_patch_that_replaces_the_object_with_a_non_object_is_invalid() {
    let (_d, _s, api) = start(&[]);
    assert_eq!(
        api.post(&format!("{NS}/configmaps"), &configmap("fuzz", json!({})))
            .await
            .0,
        201
    );
    let deployment = json!({"metadata": {"name": "fuzz"}, "spec": {
        "selector": {"matchLabels": {"app": "fuzz"}},
        "template": {"metadata": {"labels": {"app": "fuzz"}}, "spec": {"containers": [{"name": "c", "image": "sha256:00"}]}}}});
    assert_eq!(
        api.post("/apis/apps/v1/namespaces/default/deployments", &deployment)
            .await
            .0,
        201
    );
    let json_patch = "application/json-patch+json";
    for (path, body) in [
        // The request schemathesis sent, as it sent it.
        (
            format!(
                "{NS}/configmaps/fuzz?dryRun=All&fieldManager=&fieldValidation=Ignore&force=true"
            ),
            r#"[{"from": "", "op": "add", "path": "", "value": [null, null]}]"#,
        ),
        (
            format!("{NS}/configmaps/fuzz"),
            r#"[{"op": "replace", "path": "", "value": "text"}]"#,
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments/fuzz/scale".to_string(),
            r#"[{"op": "add", "path": "", "value": [null, null]}]"#,
        ),
    ] {
        let refused = api.patch(&path, json_patch, body).await;
        assert_status(&refused, 422, "Invalid");
    }
    let (code, cm) = api.get(&format!("{NS}/configmaps/fuzz")).await;
    assert_eq!((code, &cm["data"]), (200, &json!({"k": "v"})));
}

/// Found by schemathesis: `metadata.managedFields[].fieldsV1` holds raw JSON, and an
/// array there was stored and answered back, breaking the schema the server publishes
/// (FieldsV1 is an object).
async fn managed_fields_whose_field_set_is_not_an_object_are_invalid() {
    let (_d, _s, api) = start(&[]);
    // The request schemathesis sent, as it sent it.
    let body: Value = serde_json::from_str(
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"annotations": {}, "creationTimestamp": "2000-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0, "deletionTimestamp": "2000-01-01T00:00:00Z", "finalizers": [], "generation": 0, "labels": {}, "managedFields": [{"apiVersion": "", "fieldsType": "", "fieldsV1": [null, null], "manager": "", "operation": "", "subresource": "", "time": "2000-01-01T00:00:00Z"}], "name": "fuzz-66812", "ownerReferences": [], "selfLink": ""}, "spec": {"finalizers": []}, "status": {"conditions": [], "phase": ""}}"#,
    )
    .unwrap();
    let refused = api
        .post(
            "/api/v1/namespaces?dryRun=All&fieldManager=&fieldValidation=Ignore",
            &body,
        )
        .await;
    assert_status(&refused, 422, "Invalid");
    assert_eq!(
        refused.1["details"]["causes"][0]["field"],
        "metadata.managedFields[0].fieldsV1"
    );
    // The same on an update; a field set that is an object is kept.
    assert_eq!(
        api.post(&format!("{NS}/configmaps"), &configmap("fuzz", json!({})))
            .await
            .0,
        201
    );
    let mut cm = configmap("fuzz", json!({}));
    cm["metadata"]["managedFields"] =
        json!([{"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": "f:data"}]);
    assert_status(
        &api.put(&format!("{NS}/configmaps/fuzz"), &cm).await,
        422,
        "Invalid",
    );
    // A well-formed entry (server-side apply needs its operation too) is taken as sent.
    cm["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Update",
        "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]);
    let (code, updated) = api.put(&format!("{NS}/configmaps/fuzz"), &cm).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(
        updated["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {}})
    );
}

/// Found by schemathesis: a PUT whose body had hundreds of unknown fields got one
/// `Warning` header per field, and the client refused the response ("got more than 100
/// headers"). The request schemathesis sent was an Endpoints full of generated keys;
/// this is the same with plain ones.
async fn hundreds_of_unknown_fields_do_not_make_hundreds_of_warning_headers() {
    let (_d, _s, api) = start(&[]);
    let mut body = configmap("many", json!({}));
    for i in 0..300 {
        body[format!("unknown{i}")] = json!(i);
    }
    for (method, path) in [
        (reqwest::Method::POST, format!("{NS}/configmaps")),
        (reqwest::Method::PUT, format!("{NS}/configmaps/many")),
    ] {
        let response = api
            .http
            .request(method.clone(), format!("{}{path}", api.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        let warnings: Vec<String> = response
            .headers()
            .get_all("warning")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(warnings.len() <= 32, "{} warnings", warnings.len());
        assert!(warnings[0].contains("unknown field"), "{warnings:?}");
        assert!(
            warnings
                .last()
                .unwrap()
                .contains("more warnings were left out"),
            "{warnings:?}"
        );
    }
}

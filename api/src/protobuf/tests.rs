//! Bodies encoded by prost with k8s-pb's types (kube-rs' bindings of the Kubernetes
//! protobufs), exactly as a Go client would send them, decode to the JSON a client
//! would have sent.

use std::collections::BTreeMap;

use k8s_pb::api::{apps::v1 as apps, core::v1 as core};
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::{api::resource::Quantity, runtime, util::intstr::IntOrString};
use prost::Message;
use serde_json::json;

use super::*;
use crate::resources::{StatusOnCreate, schema_of, through};

/// The kinds these tests decode, described as a server serves them.
fn served() -> &'static [&'static ResourceInfo] {
    fn info<T>(
        group: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> &'static ResourceInfo
    where
        T: schemars::JsonSchema + serde::de::DeserializeOwned + serde::Serialize,
    {
        Box::leak(Box::new(ResourceInfo {
            group,
            version: "v1",
            kind,
            plural,
            singular: "",
            namespaced: true,
            short_names: &[],
            categories: &[],
            subresources: &[],
            has_spec: true,
            status_on_create: StatusOnCreate::Keep,
            extra_fields: &[],
            normalize: through::<T>,
            schema: schema_of::<T>,
        }))
    }
    static SERVED: OnceLock<Vec<&'static ResourceInfo>> = OnceLock::new();
    SERVED.get_or_init(|| {
        use k8s_openapi::api::{apps::v1 as a, core::v1 as c};
        vec![
            info::<c::Pod>("", "Pod", "pods"),
            info::<c::ConfigMap>("", "ConfigMap", "configmaps"),
            info::<c::Secret>("", "Secret", "secrets"),
            info::<a::Deployment>("apps", "Deployment", "deployments"),
        ]
    })
}

fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    super::decode(body, || served().to_vec())
}

fn envelope(api_version: &str, kind: &str, object: &impl Message) -> Vec<u8> {
    let unknown = runtime::Unknown {
        type_meta: Some(runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    [MAGIC, &unknown.encode_to_vec()].concat()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn a_deployment_decodes_with_its_quantities_times_and_int_or_strings() {
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: s("web"),
            labels: labels.clone(),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: s("25%"),
                    }),
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(0),
                        str_val: None,
                    }),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: s("main"),
                        image: s("sha256:abc"),
                        args: vec!["100ms".into(), "x".into()],
                        ports: vec![core::ContainerPort {
                            container_port: Some(80),
                            ..Default::default()
                        }],
                        env: vec![core::EnvVar {
                            name: s("A"),
                            value: s("1"),
                            ..Default::default()
                        }],
                        resources: Some(core::ResourceRequirements {
                            limits: BTreeMap::from([(
                                "memory".to_string(),
                                Quantity { string: s("64Mi") },
                            )]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    host_network: Some(false),
                    restart_policy: s(""),
                    hostname: s(""),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let decoded = decode(&envelope("apps/v1", "Deployment", &deployment)).unwrap();
    assert_eq!(
        decoded,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "creationTimestamp": "2023-11-14T22:13:20Z",
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "main",
                            "image": "sha256:abc",
                            "args": ["100ms", "x"],
                            "ports": [{"containerPort": 80}],
                            "env": [{"name": "A", "value": "1"}],
                            "resources": {"limits": {"memory": "64Mi"}},
                        }],
                        "hostNetwork": false,
                    },
                },
            },
        })
    );
    // The JSON is what k8s-openapi reads.
    let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(decoded).unwrap();
    assert_eq!(typed.spec.replicas, Some(0));
}

#[test]
fn secrets_configmaps_delete_options_and_acronym_fields() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta {
            name: s("creds"),
            ..Default::default()
        }),
        data: BTreeMap::from([("token".to_string(), b"\x00\xffhi".to_vec())]),
        r#type: s("Opaque"),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "Secret", &secret)).unwrap(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
               "data": {"token": "AP9oaQ=="}, "type": "Opaque"})
    );

    let status = core::PodStatus {
        pod_ip: s("10.0.0.1"),
        host_ip: s("192.168.1.1"),
        ..Default::default()
    };
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            name: s("p"),
            ..Default::default()
        }),
        spec: None,
        status: Some(status),
    };
    let decoded = decode(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        decoded["status"],
        json!({"podIP": "10.0.0.1", "hostIP": "192.168.1.1"})
    );

    let options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: s("Foreground"),
        preconditions: Some(meta::Preconditions {
            uid: s("u-1"),
            resource_version: None,
        }),
        dry_run: vec!["All".into()],
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("apps/v1", "DeleteOptions", &options)).unwrap(),
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
               "propagationPolicy": "Foreground", "preconditions": {"uid": "u-1"},
               "dryRun": ["All"]})
    );
}

#[test]
fn malformed_bodies_are_refused_with_a_reason() {
    let cm = core::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            name: s("c"),
            ..Default::default()
        }),
        data: BTreeMap::from([("k".to_string(), "v".to_string())]),
        ..Default::default()
    };
    let good = envelope("v1", "ConfigMap", &cm);
    assert_eq!(decode(&good).unwrap()["data"], json!({"k": "v"}));
    for cut in [5, good.len() / 2, good.len() - 1] {
        let e = decode(&good[..cut]).unwrap_err();
        assert!(e.0.contains("truncated") || e.0.contains("not"), "{e}");
    }
    assert!(decode(b"{\"kind\":\"ConfigMap\"}").is_err());
    let e = decode(&envelope("v1", "Widget", &cm)).unwrap_err();
    assert!(e.0.contains("Widget"), "{e}");
    // Garbage after the magic never panics.
    for seed in 0..200u32 {
        let junk: Vec<u8> = (0..64)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7)) as u8)
            .collect();
        let _ = decode(&[MAGIC, &junk].concat());
    }
}

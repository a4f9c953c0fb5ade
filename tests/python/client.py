"""The official Kubernetes Python client against Skiff: list, create, patch and watch.

Run by tests/python_client.rs with the kubeconfig of a `skiff dev` cluster as argument.
Prints one line per step; any failure raises and exits non-zero.
"""

import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()

namespaces = sorted(ns.metadata.name for ns in v1.list_namespace().items)
assert "default" in namespaces and "kube-system" in namespaces, namespaces
print("list namespaces:", ",".join(namespaces))

nodes = v1.list_node().items
assert nodes and all(
    any(c.type == "Ready" and c.status == "True" for c in n.status.conditions) for n in nodes
), nodes
print("nodes ready:", len(nodes))

cm = client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="from-python", labels={"app": "py"}),
    data={"greeting": "hi"},
)
created = v1.create_namespaced_config_map("default", cm)
print("created:", created.metadata.name, "rv", created.metadata.resource_version)

# A dict body goes as a strategic merge patch; a list as a JSON patch.
patched = v1.patch_namespaced_config_map(
    "from-python", "default", {"data": {"greeting": "hello", "extra": "1"}}
)
assert patched.data == {"greeting": "hello", "extra": "1"}, patched.data
patched = v1.patch_namespaced_config_map(
    "from-python", "default", [{"op": "remove", "path": "/data/extra"}]
)
assert patched.data == {"greeting": "hello"}, patched.data
print("patched:", patched.data)

try:
    v1.create_namespaced_config_map("default", cm)
    raise AssertionError("a second create should conflict")
except client.ApiException as e:
    assert e.status == 409, e
    print("conflict:", e.status, e.reason)

listed = v1.list_namespaced_config_map("default", label_selector="app=py").items
assert [c.metadata.name for c in listed] == ["from-python"], listed
print("listed by label:", len(listed))

deployment = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="main", image=sys.argv[2], args=["60m"])]
            ),
        ),
    ),
)
apps.create_namespaced_deployment("default", deployment)
apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 2}})

# Watch the pods until both replicas run, from the list's resourceVersion.
w = watch.Watch()
running = set()
for event in w.stream(
    v1.list_namespaced_pod, "default", label_selector="app=py-web", timeout_seconds=60
):
    pod = event["object"]
    if pod.status.phase == "Running":
        running.add(pod.metadata.name)
    if len(running) == 2:
        w.stop()
assert len(running) == 2, running
print("watched running pods:", len(running))

# The kinds of issue 19 through their typed APIs: the client parses every answer into
# its models, so a field of the wrong shape fails here.
storage = client.StorageV1Api()
classes = [c.metadata.name for c in storage.list_storage_class().items]
assert "local-path" in classes, classes
sts = client.V1StatefulSet(
    metadata=client.V1ObjectMeta(name="py-db"),
    spec=client.V1StatefulSetSpec(
        replicas=1,
        service_name="py-db",
        selector=client.V1LabelSelector(match_labels={"app": "py-db"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-db"}),
            spec=client.V1PodSpec(
                containers=[
                    client.V1Container(
                        name="main",
                        image=sys.argv[2],
                        args=["60m"],
                        volume_mounts=[client.V1VolumeMount(name="data", mount_path="/data")],
                    )
                ]
            ),
        ),
        volume_claim_templates=[
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="data"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadWriteOnce"],
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"}),
                ),
            )
        ],
    ),
)
apps.create_namespaced_stateful_set("default", sts)
w = watch.Watch()
for event in w.stream(
    apps.list_namespaced_stateful_set, "default", field_selector="metadata.name=py-db", timeout_seconds=60
):
    status = event["object"].status
    if status and (status.ready_replicas or 0) == 1:
        w.stop()
claim = v1.read_namespaced_persistent_volume_claim("data-py-db-0", "default")
assert claim.status.phase == "Bound", claim.status
volume = v1.read_persistent_volume(claim.spec.volume_name)
print("statefulset ready with claim:", claim.status.phase, volume.spec.storage_class_name)

policy = client.PolicyV1Api()
policy.create_namespaced_pod_disruption_budget(
    "default",
    client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="py-db"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1, selector=client.V1LabelSelector(match_labels={"app": "py-db"})
        ),
    ),
)
for _ in range(600):
    pdb = policy.read_namespaced_pod_disruption_budget("py-db", "default")
    if pdb.status and pdb.status.observed_generation == pdb.metadata.generation:
        break
    w = watch.Watch()
    for _event in w.stream(
        policy.list_namespaced_pod_disruption_budget, "default", timeout_seconds=1
    ):
        w.stop()
print("budget:", pdb.status.current_healthy, pdb.status.desired_healthy, pdb.status.disruptions_allowed)

batch = client.BatchV1Api()
batch.create_namespaced_cron_job(
    "default",
    client.V1CronJob(
        metadata=client.V1ObjectMeta(name="py-cron"),
        spec=client.V1CronJobSpec(
            schedule="@hourly",
            suspend=True,
            job_template=client.V1JobTemplateSpec(
                spec=client.V1JobSpec(
                    template=client.V1PodTemplateSpec(
                        spec=client.V1PodSpec(
                            restart_policy="Never",
                            containers=[client.V1Container(name="main", image=sys.argv[2])],
                        )
                    )
                )
            ),
        ),
    ),
)
cron = batch.read_namespaced_cron_job("py-cron", "default")
print("cronjob:", cron.spec.schedule, cron.spec.concurrency_policy)

networking = client.NetworkingV1Api()
ingress_classes = [c.metadata.name for c in networking.list_ingress_class().items]
networking.create_namespaced_ingress(
    "default",
    client.V1Ingress(
        metadata=client.V1ObjectMeta(name="py-web"),
        spec=client.V1IngressSpec(
            rules=[
                client.V1IngressRule(
                    host="py.test",
                    http=client.V1HTTPIngressRuleValue(
                        paths=[
                            client.V1HTTPIngressPath(
                                path="/",
                                path_type="Prefix",
                                backend=client.V1IngressBackend(
                                    service=client.V1IngressServiceBackend(
                                        name="py-web", port=client.V1ServiceBackendPort(number=80)
                                    )
                                ),
                            )
                        ]
                    ),
                )
            ]
        ),
    ),
)
print("ingress classes:", ",".join(ingress_classes))
print("ok")

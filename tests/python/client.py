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
print("ok")

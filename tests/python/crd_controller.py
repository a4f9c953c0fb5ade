"""A small controller written with the official Kubernetes Python client, run against
Skiff unchanged: it defines a cluster-scoped custom resource (Gadget), watches its
objects with CustomObjectsApi and writes each one's status through the status
subresource, as operators written with the client do.

Run by tests/crd.rs with the kubeconfig as argument. Prints one line per step; any
failure raises and exits non-zero.
"""

import sys
import threading
import time

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
ext = client.ApiextensionsV1Api()
custom = client.CustomObjectsApi()
GROUP, VERSION, PLURAL = "tools.example.com", "v1", "gadgets"
DEADLINE = 30


def wait_for(what, check):
    end = time.time() + DEADLINE
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


crd = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Cluster",
        "names": {"plural": PLURAL, "singular": "gadget", "kind": "Gadget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "speed": {"type": "integer", "minimum": 1, "default": 1}
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observedGeneration": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}
ext.create_custom_resource_definition(crd)


def established():
    got = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    conditions = (got.status and got.status.conditions) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


wait_for("the CRD to be established", established)
print("established:", f"{PLURAL}.{GROUP}")

stop = threading.Event()


def controller():
    """Level-based: whatever the event, bring the object's status up to date."""
    while not stop.is_set():
        w = watch.Watch()
        for event in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=5):
            obj = event["object"]
            if event["type"] == "DELETED":
                continue
            generation = obj["metadata"].get("generation")
            status = obj.get("status") or {}
            if status.get("observedGeneration") == generation:
                continue
            custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, obj["metadata"]["name"],
                {"status": {"phase": "Reconciled", "observedGeneration": generation}},
            )
            if stop.is_set():
                w.stop()


thread = threading.Thread(target=controller, daemon=True)
thread.start()

for name in ["g1", "g2"]:
    custom.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gadget", "metadata": {"name": name}, "spec": {}}
    )
print("created: g1 g2")


def observed(name, generation):
    obj = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    status = obj.get("status") or {}
    if status.get("phase") == "Reconciled" and status.get("observedGeneration") == generation:
        return obj
    return None


for name in ["g1", "g2"]:
    obj = wait_for(f"{name} reconciled", lambda: observed(name, 1))
    assert obj["spec"]["speed"] == 1, obj
    print("reconciled:", name, obj["status"]["observedGeneration"])

custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "g1", {"spec": {"speed": 5}})
obj = wait_for("g1 reconciled again", lambda: observed("g1", 2))
print("reconciled again: g1", obj["status"]["observedGeneration"])

try:
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "g1", {"spec": {"speed": 0}})
    raise AssertionError("speed 0 should be refused")
except client.ApiException as e:
    import json

    body = json.loads(e.body)
    fields = [c["field"] for c in body["details"]["causes"]]
    print("invalid:", e.status, ",".join(fields))

listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
assert sorted(o["metadata"]["name"] for o in listed) == ["g1", "g2"], listed

stop.set()
custom.delete_collection_cluster_custom_object(GROUP, VERSION, PLURAL)
left = wait_for(
    "the collection to be deleted",
    lambda: (lambda items: "none" if not items else None)(
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    ),
)
print("deleted collection: 0 left")
ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
print("ok")

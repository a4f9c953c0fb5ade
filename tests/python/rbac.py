"""The official Kubernetes Python client asks Skiff's RBAC what a user may do, and is
refused where it may not. Run by tests/rbac.rs with a user's kubeconfig."""

import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
authz = client.AuthorizationV1Api()


def may(verb, resource, namespace):
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, verb=verb, resource=resource
            )
        )
    )
    return authz.create_self_subject_access_review(review).status.allowed


print("may list pods in lead:", may("list", "pods", "lead"))
print("may list pods in default:", may("list", "pods", "default"))

rules = authz.create_self_subject_rules_review(
    client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace="lead"))
)
print("rules in lead:", any("rolebindings" in (r.resources or []) for r in rules.status.resource_rules))

core = client.CoreV1Api()
print("pods in lead:", len(core.list_namespaced_pod("lead").items))
try:
    core.list_namespaced_pod("default")
    print("list in default: allowed")
except ApiException as e:
    print("list in default:", e.status)
print("ok")

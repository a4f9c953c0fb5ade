"""Pod start latency as an outside client sees it, with the official Kubernetes Python client.

Run by `skiff bench pods --path outside` (src/bench/pods.rs writes this file out and runs
it once per run); it can also be run by hand against any cluster:

    python3 pod_start.py KUBECONFIG IMAGE --pods 200 --prefix run-1

It opens a watch on the pods labelled `bench=<label>`, then creates the pods one at a
time with `create_namespaced_pod` (without a node: the scheduler binds them), or with
`--concurrency C` C creators each doing the same. A creator waits for its pod to be seen
Running before it creates the next one, so no pod queues behind another's start. For
each pod the clock starts just before the create call and stops when the watch (a
separate thread running `watch.Watch().stream`) delivers the pod with phase Running and
its container in state running. Both clocks are `time.perf_counter()` in this process,
so the figure includes the client's own work: serializing the request, TLS, parsing the
response and every watch event into model objects, and the GIL shared by both threads.

It also records, per pod, when the create call returned and when the watch first showed
the pod bound to a node, to split the figure into stages. The last line of stdout is
one JSON object: {"running_ms": [...], "created_ms": [...], "bound_ms": [...]}, each in
creation order (measured pods only; the warm-up pods are left out).
"""

import argparse
import json
import sys
import threading
import time

from kubernetes import client, config, watch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kubeconfig")
    parser.add_argument("image")
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--label", default="outside", help="the pods' `bench` label")
    parser.add_argument("--prefix", default="outside", help="the pods' names start with it")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per pod")
    args = parser.parse_args()

    config.load_kube_config(config_file=args.kubeconfig)
    v1 = client.CoreV1Api()
    selector = "bench=" + args.label

    # What the watch thread records, by pod name: when the pod was seen bound and
    # Running; `running` events wake the creator waiting for that pod.
    lock = threading.Lock()
    bound_at, running_at, running = {}, {}, {}
    failed = []

    rv = v1.list_namespaced_pod(args.namespace, label_selector=selector, limit=1).metadata.resource_version
    # Events after the list's resourceVersion are all delivered, also those of pods
    # created before the stream's request is sent (the warm-up pods cover that start).
    w = watch.Watch()

    def watcher():
        try:
            stream = w.stream(
                v1.list_namespaced_pod,
                args.namespace,
                label_selector=selector,
                resource_version=rv,
                timeout_seconds=3600,
            )
            for event in stream:
                now = time.perf_counter()
                pod = event["object"]
                name = pod.metadata.name
                with lock:
                    if pod.spec.node_name and name not in bound_at:
                        bound_at[name] = now
                    statuses = (pod.status and pod.status.container_statuses) or []
                    if (
                        pod.status
                        and pod.status.phase == "Running"
                        and statuses
                        and all(s.state and s.state.running for s in statuses)
                        and name not in running_at
                    ):
                        running_at[name] = now
                        done = running.get(name)
                        if done:
                            done.set()
        except Exception as e:  # the creators time out and report it
            failed.append(repr(e))

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()

    def pod(name):
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={"bench": args.label}),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="main", image=args.image, args=["60m"])]
            ),
        )

    total = args.warmup + args.pods
    names = ["%s-%d" % (args.prefix, i) for i in range(total)]
    sent_at, created_at = {}, {}
    next_index = [0]

    def creator():
        while True:
            with lock:
                i = next_index[0]
                if i >= total:
                    return
                next_index[0] += 1
                name = names[i]
                done = running[name] = threading.Event()
            body = pod(name)
            sent_at[name] = time.perf_counter()
            v1.create_namespaced_pod(args.namespace, body)
            created_at[name] = time.perf_counter()
            if not done.wait(args.timeout):
                raise SystemExit(
                    "pod %s not seen Running within %.0f s%s"
                    % (name, args.timeout, (": watch failed: " + failed[0]) if failed else "")
                )

    errors = []

    def guarded():
        try:
            creator()
        except BaseException as e:
            errors.append(str(e))

    creators = [threading.Thread(target=guarded) for _ in range(max(1, args.concurrency))]
    for t in creators:
        t.start()
    for t in creators:
        t.join()
    w.stop()
    if errors:
        print(errors[0], file=sys.stderr)
        sys.exit(1)

    measured = names[args.warmup:]
    ms = lambda at, name: round((at[name] - sent_at[name]) * 1000.0, 3)
    print(
        json.dumps(
            {
                "running_ms": [ms(running_at, n) for n in measured],
                "created_ms": [ms(created_at, n) for n in measured],
                "bound_ms": [ms(bound_at, n) if n in bound_at else None for n in measured],
            }
        )
    )


if __name__ == "__main__":
    main()

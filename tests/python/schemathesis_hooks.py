"""Schemathesis hooks for tests/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

They do three things to the generated requests, just before each is sent, and add
one check:

- Watches end on their own: a request with `watch` true gets `timeoutSeconds` 0 or 1
  when it has none or a larger one (an invalid value is left alone, for the server to
  refuse). Watches stay covered, and a watch that outlives its timeoutSeconds fails the
  `finishes_in_time` check below instead of hanging the run.
- Most requests name objects that exist: the fuzzer's random names and namespaces
  would only ever reach 404, so two requests in three get the seeded namespace and
  name instead (`SKIFF_FUZZ_SEEDS`, written by the test), and their bodies the
  apiVersion, kind, name and namespace that the path implies, so that they reach
  validation, admission and the store rather than stopping at the first mismatch. A
  collection DELETE gets the scratch namespace, so it does not empty the seeded one.
- Writes to the Secrets in kube-system are not spared: the credentials are token
  records, not Secrets, so deleting every Secret there must lock nobody out (the
  test's last checks are admin requests).
- Each request's start is noted, for `finishes_in_time`: no request may take longer
  than `SKIFF_FUZZ_REQUEST_SECONDS`, and no watch longer than its timeoutSeconds plus
  the same slack.

Which requests are rewritten depends only on the generated values (a CRC of them), so
a run with a fixed seed rewrites the same ones.
"""

import json
import os
import time
import zlib

import schemathesis

# Raw bodies: modules and deploys take Wasm, creates and updates Kubernetes protobuf.
schemathesis.serializer.alias("application/wasm", "application/octet-stream")
schemathesis.serializer.alias("application/vnd.kubernetes.protobuf", "application/octet-stream")
# Server-side apply configurations are YAML, and JSON is YAML.
schemathesis.serializer.alias("application/apply-patch+yaml", "application/json")

SEEDS = json.loads(os.environ["SKIFF_FUZZ_SEEDS"])
REQUEST_SECONDS = float(os.environ["SKIFF_FUZZ_REQUEST_SECONDS"])

_started = {}


def _truthy(value):
    return str(value).lower() in ("1", "true")


def _draw(case, salt):
    """A number from the generated request alone, so the same run rewrites the same cases."""
    key = json.dumps(
        [case.operation.label, case.path_parameters, case.query, salt],
        sort_keys=True,
        default=str,
    )
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


def _gvk(case):
    gvk = case.operation.definition.raw.get("x-kubernetes-group-version-kind") or {}
    group, version, kind = gvk.get("group", ""), gvk.get("version", ""), gvk.get("kind")
    return (f"{group}/{version}" if group else version), kind


def _use_seeds(case):
    params = case.path_parameters
    if not isinstance(params, dict) or _draw(case, "seed") % 3 == 0:
        return
    collection_delete = case.method.upper() == "DELETE" and "name" not in params
    if "namespace" in params:
        params["namespace"] = SEEDS["scratch" if collection_delete else "namespace"]
    if "name" in params:
        params["name"] = SEEDS["module" if "/modules/" in case.path else "name"]
    body = case.body
    if case.method.upper() in ("POST", "PUT") and isinstance(body, dict):
        api_version, kind = _gvk(case)
        body["apiVersion"], body["kind"] = api_version, kind
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        for field in ("resourceVersion", "uid", "generateName"):
            meta.pop(field, None)
        if "name" in params:
            meta["name"] = params["name"]
        else:
            meta["name"] = f"fuzz-{_draw(case, 'name') % 100000}"
        if "namespace" in params:
            meta["namespace"] = params["namespace"]
        else:
            meta.pop("namespace", None)


def _waits(case):
    """Whether the request waits for something: a watch, or a deploy with `wait`."""
    query = case.query if isinstance(case.query, dict) else {}
    return _truthy(query.get("watch")) or _truthy(query.get("wait"))


def _bound_watch(case):
    query = case.query
    if not isinstance(query, dict) or not _waits(case):
        return
    timeout = query.get("timeoutSeconds")
    try:
        seconds = int(str(timeout))
    except ValueError:
        seconds = None
    if timeout is None or (seconds is not None and seconds > 1):
        query["timeoutSeconds"] = _draw(case, "timeout") % 2


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    _use_seeds(case)
    _bound_watch(case)
    _started[case.id] = time.monotonic()


def _watch_seconds(case):
    query = case.query if isinstance(case.query, dict) else {}
    if not _waits(case):
        return None
    try:
        return max(int(str(query.get("timeoutSeconds"))), 0)
    except ValueError:
        return 0


@schemathesis.check
def finishes_in_time(ctx, response, case):
    """No request outlives its budget, and no watch its timeoutSeconds (plus the slack)."""
    started = _started.get(case.id)
    if started is None:
        return None
    elapsed = time.monotonic() - started
    watch = _watch_seconds(case)
    limit = REQUEST_SECONDS + (watch or 0)
    if elapsed > limit:
        what = f"a wait with timeoutSeconds={watch}" if watch is not None else "a request"
        raise AssertionError(f"{what} took {elapsed:.1f}s, more than its {limit:.0f}s")
    return None


def _is_watch(case):
    query = case.query if isinstance(case.query, dict) else {}
    return case.method.upper() == "GET" and _truthy(query.get("watch"))


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """A watch answers a stream of JSON lines as `application/json`, as Kubernetes does,
    which is not one JSON document of the list's schema: `watch_is_json_lines` checks it."""
    return not (_is_watch(case) and failure.code in ("ST108", "ST109"))


WATCH_EVENTS = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"}


@schemathesis.check
def watch_is_json_lines(ctx, response, case):
    """Each line of a watch is a JSON object with a known `type` and an `object`."""
    if not _is_watch(case) or response.status_code != 200:
        return None
    for number, line in enumerate(response.content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as e:
            raise AssertionError(f"watch line {number} is not JSON: {e}: {line[:200]!r}")
        if not isinstance(event, dict) or event.get("type") not in WATCH_EVENTS:
            raise AssertionError(f"watch line {number} has no known type: {line[:200]!r}")
        if not isinstance(event.get("object"), dict):
            raise AssertionError(f"watch line {number} has no object: {line[:200]!r}")
    return None

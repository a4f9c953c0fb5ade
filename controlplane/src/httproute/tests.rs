//! Matching, precedence, weights, filters and statuses of HTTPRoutes, from objects as
//! the API server stores them (defaulted).

use super::status::{attached_routes, gateway_status, route_status};
use super::*;
use serde_json::json;
use skiff_api::gatewayapi::GROUP;

fn classes() -> HashSet<String> {
    our_classes(&[
        Arc::new(json!({"metadata": {"name": "skiff"}, "spec": {"controllerName": CONTROLLER}})),
        Arc::new(
            json!({"metadata": {"name": "other"}, "spec": {"controllerName": "example.com/lb"}}),
        ),
    ])
}

fn gateway(name: &str, class: &str, listeners: Value) -> Arc<Value> {
    Arc::new(
        json!({"metadata": {"name": name, "namespace": "default", "generation": 1},
        "spec": {"gatewayClassName": class, "listeners": listeners}}),
    )
}

fn http_listener(name: &str, hostname: Option<&str>) -> Value {
    let mut l = json!({"name": name, "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Same"}}});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

/// A route named `name`, created at second `age` of the day, with `spec`; its parent
/// defaults to the Gateway `gw`.
fn route(name: &str, age: u32, mut spec: Value) -> Arc<Value> {
    if spec.get("parentRefs").is_none() {
        spec["parentRefs"] = json!([{"group": GROUP, "kind": "Gateway", "name": "gw"}]);
    }
    let mut obj = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default", "generation": 1,
            "creationTimestamp": format!("2026-01-01T00:00:{age:02}Z")},
        "spec": spec});
    crate::kinds::of(crate::kinds::lookup(GROUP, "v1", "httproutes").unwrap()).default(&mut obj);
    Arc::new(obj)
}

fn to(name: &str) -> Value {
    json!({"name": name, "port": 80})
}

fn services(_: &str, name: &str) -> Option<Arc<Value>> {
    (name != "missing").then(|| Arc::new(json!({"spec": {"ports": [{"port": 80}]}})))
}

fn table(gateways: &[Arc<Value>], routes: &[Arc<Value>]) -> HttpRoutes {
    HttpRoutes::build(gateways, routes, &classes(), &services)
}

/// The Service a request goes to (with one backend per rule), or None.
fn served(
    t: &HttpRoutes,
    host: &str,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut request = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(()).unwrap();
    let hit = t.route(host, &request)?;
    match hit.action.pick()? {
        Backend::Service { name, .. } => Some(name.clone()),
        Backend::Broken(why) => Some(format!("broken: {why}")),
    }
}

#[test]
fn precedence_is_the_gateway_apis() {
    let gw = gateway("gw", "skiff", json!([http_listener("http", None)]));
    let routes = [
        route(
            "any-host",
            1,
            json!({"rules": [{"backendRefs": [to("any")]}]}),
        ),
        route(
            "wild",
            2,
            json!({"hostnames": ["*.a.test"], "rules": [{"backendRefs": [to("wild")]}]}),
        ),
        route(
            "exact",
            3,
            json!({"hostnames": ["x.a.test"], "rules": [
                {"backendRefs": [to("root")]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api/"}}], "backendRefs": [to("api")]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}], "backendRefs": [to("post")]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-canary", "value": "1"}]}], "backendRefs": [to("canary")]},
                {"matches": [{"path": {"type": "Exact", "value": "/api/v1"}}], "backendRefs": [to("exact")]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/q"}, "queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": [to("query")]},
            ]}),
        ),
        // Younger, with the same match as `exact`'s first rule: the older wins.
        route(
            "younger",
            4,
            json!({"hostnames": ["x.a.test"], "rules": [{"backendRefs": [to("younger")]}]}),
        ),
    ];
    let t = table(&[gw], &routes);
    let r = |host: &str, method: &str, uri: &str, headers: &[(&str, &str)]| {
        served(&t, host, method, uri, headers)
    };
    assert_eq!(r("x.a.test", "GET", "/", &[]).as_deref(), Some("root"));
    assert_eq!(
        r("x.a.test", "GET", "/api", &[]).as_deref(),
        Some("api"),
        "a trailing / is ignored"
    );
    assert_eq!(
        r("x.a.test", "GET", "/apis", &[]).as_deref(),
        Some("root"),
        "prefixes match whole elements"
    );
    assert_eq!(
        r("x.a.test", "POST", "/api/x", &[]).as_deref(),
        Some("post"),
        "a method beats headers"
    );
    assert_eq!(
        r("x.a.test", "GET", "/api/x", &[("x-canary", "1")]).as_deref(),
        Some("canary")
    );
    assert_eq!(
        r("x.a.test", "GET", "/api/x", &[("x-canary", "2")]).as_deref(),
        Some("api")
    );
    assert_eq!(
        r("x.a.test", "POST", "/api/v1", &[]).as_deref(),
        Some("exact"),
        "Exact beats any prefix"
    );
    assert_eq!(
        r("x.a.test", "GET", "/q?v=2", &[]).as_deref(),
        Some("query")
    );
    assert_eq!(r("x.a.test", "GET", "/q?v=3", &[]).as_deref(), Some("root"));
    assert_eq!(r("y.a.test", "GET", "/", &[]).as_deref(), Some("wild"));
    assert_eq!(
        r("z.y.a.test", "GET", "/", &[]).as_deref(),
        Some("wild"),
        "a wildcard covers several labels"
    );
    assert_eq!(r("a.test", "GET", "/", &[]).as_deref(), Some("any"));
}

#[test]
fn hostnames_intersect_with_the_listeners() {
    let h = |s: &str| s.to_string();
    assert_eq!(intersect(None, &[]), vec![Host::Any]);
    assert_eq!(
        intersect(Some("*.a.test"), &[]),
        vec![Host::Wildcard(".a.test".into())]
    );
    assert_eq!(
        intersect(Some("*.a.test"), &[h("x.a.test"), h("b.test")]),
        vec![Host::Exact("x.a.test".into())]
    );
    assert_eq!(
        intersect(Some("x.a.test"), &[h("*.a.test")]),
        vec![Host::Exact("x.a.test".into())]
    );
    assert_eq!(
        intersect(Some("*.a.test"), &[h("*.test")]),
        vec![Host::Wildcard(".a.test".into())]
    );
    assert!(intersect(Some("x.b.test"), &[h("*.a.test")]).is_empty());
}

#[test]
fn only_routes_of_our_gateways_and_allowed_listeners_attach() {
    let gateways = [
        gateway(
            "gw",
            "skiff",
            json!([http_listener("http", Some("*.a.test")),
            {"name": "tcp", "port": 9000, "protocol": "TCP"}]),
        ),
        gateway("theirs", "other", json!([http_listener("http", None)])),
    ];
    let routes = [
        route(
            "ok",
            1,
            json!({"hostnames": ["x.a.test"], "rules": [{"backendRefs": [to("ok")]}]}),
        ),
        route(
            "host",
            2,
            json!({"hostnames": ["b.test"], "rules": [{"backendRefs": [to("no")]}]}),
        ),
        route(
            "theirs",
            3,
            json!({"parentRefs": [{"name": "theirs"}], "rules": [{"backendRefs": [to("no")]}]}),
        ),
        route(
            "section",
            4,
            json!({"parentRefs": [{"name": "gw", "sectionName": "nope"}]}),
        ),
        route(
            "tcp",
            5,
            json!({"parentRefs": [{"name": "gw", "sectionName": "tcp"}]}),
        ),
    ];
    let t = table(&gateways, &routes);
    assert_eq!(
        served(&t, "x.a.test", "GET", "/", &[]).as_deref(),
        Some("ok")
    );
    assert_eq!(served(&t, "b.test", "GET", "/", &[]), None);
    let reason = |r: &Arc<Value>| {
        route_status(r, &gateways, &classes(), &services).map(|s| {
            s.pointer("/parents/0/conditions/0/reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
    };
    assert_eq!(reason(&routes[0]).as_deref(), Some("Accepted"));
    assert_eq!(
        reason(&routes[1]).as_deref(),
        Some("NoMatchingListenerHostname")
    );
    assert_eq!(reason(&routes[2]), None, "another controller's Gateway");
    assert_eq!(reason(&routes[3]).as_deref(), Some("NoMatchingParent"));
    assert_eq!(reason(&routes[4]).as_deref(), Some("NotAllowedByListeners"));
    let attached = attached_routes(&gateways, &routes, &classes());
    let status = gateway_status(&gateways[0], &|_, _| None, "127.0.0.1", &attached);
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(
        status["listeners"][0]["supportedKinds"][0]["kind"],
        "HTTPRoute"
    );
    assert_eq!(
        status["listeners"][1]["conditions"][0]["reason"],
        "UnsupportedProtocol"
    );
    assert_eq!(status["conditions"][1]["type"], "Programmed");
    // Written once: the same status again keeps its transition times.
    let mut stored = (*gateways[0]).clone();
    stored["status"] = status.clone();
    assert_eq!(
        gateway_status(&stored, &|_, _| None, "127.0.0.1", &attached),
        status
    );
}

#[test]
fn a_missing_service_is_reported_and_answered_500() {
    let gw = gateway("gw", "skiff", json!([http_listener("http", None)]));
    let r = route(
        "r",
        1,
        json!({"rules": [{"backendRefs": [to("missing")]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/re.*"}}], "backendRefs": [to("x")]}]}),
    );
    let status = route_status(&r, std::slice::from_ref(&gw), &classes(), &services).unwrap();
    let conditions = &status["parents"][0]["conditions"];
    assert_eq!(status["parents"][0]["controllerName"], CONTROLLER);
    assert_eq!(conditions[1]["type"], "ResolvedRefs");
    assert_eq!(conditions[1]["status"], "False");
    assert_eq!(conditions[1]["reason"], "BackendNotFound");
    assert_eq!(conditions[2]["type"], "PartiallyInvalid");
    assert_eq!(conditions[2]["reason"], "UnsupportedValue");
    let t = table(&[gw], &[r]);
    assert!(
        served(&t, "a.test", "GET", "/", &[])
            .unwrap()
            .starts_with("broken: service default/missing does not exist")
    );
}

#[test]
fn weights_split_requests_in_proportion() {
    let gw = gateway("gw", "skiff", json!([http_listener("http", None)]));
    let r = route(
        "canary",
        1,
        json!({"rules": [{"backendRefs": [
        {"name": "stable", "port": 80, "weight": 90},
        {"name": "canary", "port": 80, "weight": 10},
        {"name": "off", "port": 80, "weight": 0}]}]}),
    );
    let t = table(std::slice::from_ref(&gw), &[r]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10_000 {
        *counts
            .entry(served(&t, "a.test", "GET", "/", &[]).unwrap())
            .or_default() += 1;
    }
    let stable = counts["stable"];
    assert!((8_800..=9_200).contains(&stable), "{counts:?}");
    assert!(!counts.contains_key("off"));
    let zero = route(
        "zero",
        1,
        json!({"rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 0}]}]}),
    );
    let t = table(&[gw], &[zero]);
    assert_eq!(
        served(&t, "a.test", "GET", "/", &[]),
        None,
        "all weights 0: no backend (500)"
    );
}

#[test]
fn filters_modify_headers_and_rewrite_paths() {
    let gw = gateway("gw", "skiff", json!([http_listener("http", None)]));
    let r = route(
        "f",
        1,
        json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "x-set", "value": "new"}],
                    "add": [{"name": "x-add", "value": "two"}],
                    "remove": ["x-gone"]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "inner.test",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}],
             "backendRefs": [to("a")]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/strip/"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
             "backendRefs": [to("a")]},
            {"matches": [{"path": {"type": "Exact", "value": "/full"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/healthz"}}}],
             "backendRefs": [to("a")]},
        ]}),
    );
    let t = table(&[gw], &[r]);
    let rewrite = |uri: &str| {
        let mut request = http::Request::builder()
            .uri(uri)
            .header("x-set", "old")
            .header("x-add", "one")
            .header("x-gone", "1")
            .body(())
            .unwrap();
        t.route("a.test", &request).unwrap().apply(&mut request);
        request
    };
    let request = rewrite("/old/x?q=1");
    assert_eq!(request.uri(), "/new/x?q=1");
    assert_eq!(request.headers()["x-set"], "new");
    let added: Vec<_> = request.headers().get_all("x-add").iter().collect();
    assert_eq!(added, ["one", "two"]);
    assert!(!request.headers().contains_key("x-gone"));
    assert_eq!(request.headers()["host"], "inner.test");
    assert_eq!(rewrite("/old").uri(), "/new");
    assert_eq!(rewrite("/strip/healthz").uri(), "/healthz");
    assert_eq!(rewrite("/strip").uri(), "/");
    assert_eq!(rewrite("/full").uri(), "/healthz");
}

#[test]
fn https_listeners_name_their_certificates() {
    let gw = gateway(
        "gw",
        "skiff",
        json!([{"name": "https", "port": 443, "protocol": "HTTPS",
        "hostname": "secure.test", "allowedRoutes": {"namespaces": {"from": "Same"}},
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "secure-tls"}]}}]),
    );
    assert_eq!(
        listener_certificates(std::slice::from_ref(&gw), &classes()),
        [(
            "secure.test".to_string(),
            "default".to_string(),
            "secure-tls".to_string()
        )]
    );
    let attached = HashMap::new();
    let missing = gateway_status(&gw, &|_, _| None, "127.0.0.1", &attached);
    let conditions = &missing["listeners"][0]["conditions"];
    assert_eq!(
        conditions[1]["status"], "False",
        "not programmed without its certificate"
    );
    assert_eq!(conditions[2]["reason"], "InvalidCertificateRef");
    let found = gateway_status(
        &gw,
        &|_, _| Some(Arc::new(json!({}))),
        "127.0.0.1",
        &attached,
    );
    assert_eq!(found["listeners"][0]["conditions"][1]["status"], "True");
    assert_eq!(found["listeners"][0]["conditions"][2]["status"], "True");
}

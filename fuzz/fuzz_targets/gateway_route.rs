//! The gateway's routing (`skiff_controlplane::gateway::route_request`): which app a
//! request's Host and path pick, and the path the app then sees.
//!
//! The input is lines of text: `host: H` (the Host header), `path: P` (the request
//! target), `prefix: X` (an `X-Forwarded-Prefix` a proxy in front set), and any number
//! of `svc: NS/NAME [ROUTES]`, the Services that exist with their `skiff.dev/routes`
//! annotation. Properties, besides never panicking:
//! - a request only ever reaches a Service that exists;
//! - a Host route (`NAME.NS.localhost`, or an annotated host without a path) passes the
//!   request on unchanged;
//! - a path prefix route strips exactly its prefix: the path matched it, and the
//!   `X-Forwarded-Prefix` the app is given (after the proxy's own) followed by the path
//!   the app sees is the path the client asked for (`/NS/NAME` alone is seen as `/`),
//!   with the query kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::routes::{FORWARDED_PREFIX_HEADER, Route};
use skiff_controlplane::gateway::{RouteEntry, route_request};

skiff_fuzz::cap_allocations!();

fuzz_target!(|data: &[u8]| {
    let Some(input) = skiff_fuzz::text(data) else {
        return;
    };
    let mut host = None;
    let mut path = "/";
    let mut outer = None;
    let mut services: Vec<(&str, &str)> = Vec::new();
    let mut routes: Vec<RouteEntry> = Vec::new();
    for line in input.lines() {
        if let Some(h) = line.strip_prefix("host: ") {
            host = Some(h);
        } else if let Some(p) = line.strip_prefix("path: ") {
            path = p;
        } else if let Some(p) = line.strip_prefix("prefix: ") {
            outer = Some(p);
        } else if let Some(svc) = line.strip_prefix("svc: ") {
            let (name, annotation) = svc.split_once(' ').unwrap_or((svc, ""));
            // Every Service has a namespace and a name.
            let Some((namespace, name)) = name.split_once('/') else {
                continue;
            };
            if namespace.is_empty() || name.is_empty() {
                continue;
            }
            services.push((namespace, name));
            for route in Route::parse_list(annotation) {
                routes.push(RouteEntry {
                    route,
                    namespace: namespace.to_string(),
                    service: name.to_string(),
                });
            }
        }
    }
    // What hyper would refuse before the gateway saw it is not a request.
    let mut builder = http::Request::builder().uri(path);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    if let Some(outer) = outer {
        builder = builder.header(FORWARDED_PREFIX_HEADER, outer);
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    let before = request.clone();
    let exists = |namespace: &str, name: &str| services.contains(&(namespace, name));

    let Some(target) = route_request(&routes, exists, &mut request) else {
        assert_eq!(
            request.uri(),
            before.uri(),
            "an unrouted request was changed"
        );
        return;
    };
    assert!(
        exists(&target.namespace, &target.service),
        "{input:?} was routed to {target:?}, which does not exist"
    );
    let asked = before.uri().path();
    let query = before.uri().query();
    let given_prefix = request
        .headers()
        .get(FORWARDED_PREFIX_HEADER)
        .and_then(|v| v.to_str().ok());
    match target.prefix.as_deref() {
        None | Some("/") => {
            assert_eq!(request.uri(), before.uri(), "a Host route changed the path");
            assert_eq!(
                request.headers(),
                before.headers(),
                "a Host route changed the headers"
            );
        }
        Some(prefix) => {
            let bare = prefix.strip_suffix('/').expect("a prefix ends with /");
            assert!(
                asked.starts_with(prefix) || asked == bare,
                "{input:?}: {asked:?} was routed by the prefix {prefix:?}, which it does not start with"
            );
            let seen = request.uri().path();
            let outer = before
                .headers()
                .get(FORWARDED_PREFIX_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().trim_end_matches('/'))
                .unwrap_or_default();
            let own = given_prefix
                .and_then(|p| p.strip_prefix(outer))
                .unwrap_or_else(|| panic!("{input:?}: the app was not told the prefix {prefix:?}"));
            assert_eq!(own, bare, "{input:?}: the app was told another prefix");
            if asked == bare {
                assert_eq!(seen, "/");
            } else {
                assert_eq!(
                    format!("{own}{seen}"),
                    asked,
                    "{input:?}: the app sees {seen:?}"
                );
            }
            assert_eq!(request.uri().query(), query, "the query was not kept");
        }
    }
});

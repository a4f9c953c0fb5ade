//! How HTTP requests find an app, shared by the gateway and the agent's listener so
//! both route alike: routes (a Host and/or a path prefix), how specific a match is, what
//! path the app then sees (a matched prefix is stripped), and the headers and
//! annotations they agree on.

/// The annotation listing an app's routes (on its pods and its Service),
/// comma-separated: `HOST`, `/PATH/` or `HOST/PATH/`.
pub const ROUTES_ANNOTATION: &str = "skiff.dev/routes";
/// The pod annotation listing the hosts its guest may call out to.
pub const OUTBOUND_ANNOTATION: &str = "skiff.dev/allowed-outbound-hosts";
/// The header the gateway names the pod it chose in (`NAMESPACE/NAME`).
pub const POD_HEADER: &str = "x-skiff-pod";
/// The header an agent marks its answers with when no app saw the request, so the
/// gateway may try another replica.
pub const UNSERVED_HEADER: &str = "x-skiff-unserved";
/// The header a request's id travels in, from the gateway to the agent and into the
/// spans of both (the name ingress-nginx and Envoy use).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The header that tells an app the path prefix it was reached under, which routing
/// stripped from the path (the name Traefik, Spring and ASP.NET use): `/NS/NAME`.
pub const FORWARDED_PREFIX_HEADER: &str = "x-forwarded-prefix";

/// The request's id: the one its client or the gateway gave it, else a new random one,
/// which is then set on the request so whoever it is forwarded to sees the same id.
pub fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    if let Some(id) = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
    {
        return id.to_string();
    }
    let id = format!("{:032x}", rand::random::<u128>());
    headers.insert(
        REQUEST_ID_HEADER,
        http::HeaderValue::from_str(&id).expect("hex is a valid header value"),
    );
    id
}

/// A host and/or path prefix an app answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lowercase, without a port.
    pub host: Option<String>,
    /// Starts and ends with `/`, and ends with just one.
    pub path_prefix: Option<String>,
}

impl Route {
    /// Parses one entry of a routes annotation; None for an empty one.
    pub fn parse(entry: &str) -> Option<Route> {
        let entry = entry.trim();
        if entry.is_empty() {
            return None;
        }
        let (host, path) = match entry.find('/') {
            Some(0) => (None, Some(entry)),
            Some(i) => (Some(&entry[..i]), Some(&entry[i..])),
            None => (Some(entry), None),
        };
        Some(Route {
            host: host.map(|h| strip_port(h).to_ascii_lowercase()),
            // Exactly one trailing `/`, so that what matches (`/a/x` and `/a` under
            // `/a//`) is what gets stripped and named in X-Forwarded-Prefix.
            path_prefix: path.map(|p| format!("{}/", p.trim_end_matches('/'))),
        })
    }

    /// Every route of a routes annotation.
    pub fn parse_list(list: &str) -> Vec<Route> {
        list.split(',').filter_map(Route::parse).collect()
    }

    /// How specific the match is, if the request (host without port, lowercase) matches:
    /// a host match counts most, then a longer prefix.
    pub fn matches(&self, host: &str, path: &str) -> Option<usize> {
        if let Some(h) = &self.host
            && h != host
        {
            return None;
        }
        let prefix_len = match &self.path_prefix {
            None => 0,
            Some(p) => {
                let bare = &p[..p.len() - 1];
                if path.starts_with(p.as_str()) || path == bare {
                    p.len()
                } else {
                    return None;
                }
            }
        };
        Some(usize::from(self.host.is_some()) * 100_000 + prefix_len)
    }
}

/// The path (with its query) an app sees of a request that matched the path prefix
/// `prefix` (which ends with `/`): the prefix taken off, keeping the leading `/`, so
/// `/default/web/x?q=1` under `/default/web/` is `/x?q=1`, and `/default/web` is `/`.
/// A path the prefix does not match is returned unchanged.
pub fn strip_prefix(path_and_query: &str, prefix: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let bare = prefix.strip_suffix('/').unwrap_or(prefix);
    let rest = if path == bare {
        "/"
    } else if let Some(rest) = path.strip_prefix(bare)
        && rest.starts_with('/')
    {
        rest
    } else {
        return path_and_query.to_string();
    };
    match query {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    }
}

/// The `X-Forwarded-Prefix` for a request routed by `prefix`: `prefix` without its
/// trailing `/`, after the prefix a proxy in front already gave (`outer`), so the app
/// learns the whole prefix it is reached under.
pub fn forwarded_prefix(outer: Option<&str>, prefix: &str) -> String {
    let outer = outer
        .map(str::trim)
        .unwrap_or_default()
        .trim_end_matches('/');
    let own = prefix.trim_end_matches('/');
    format!("{outer}{own}")
}

/// Gives the app its own path, on the gateway and on the agent alike: the matched
/// route's `prefix` (ending with `/`) taken off the request's path, the query kept, and
/// named in `X-Forwarded-Prefix` after any prefix a proxy in front gave. A route at `/`
/// has nothing to strip and changes nothing.
pub fn strip_route_prefix<B>(request: &mut http::Request<B>, prefix: &str) {
    if forwarded_prefix(None, prefix).is_empty() {
        return;
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let Ok(stripped) = strip_prefix(path_and_query, prefix).parse() else {
        return;
    };
    let mut uri = request.uri().clone().into_parts();
    uri.path_and_query = Some(stripped);
    let Ok(uri) = http::Uri::from_parts(uri) else {
        return;
    };
    *request.uri_mut() = uri;
    let outer = request
        .headers()
        .get(FORWARDED_PREFIX_HEADER)
        .and_then(|v| v.to_str().ok());
    if let Ok(v) = http::HeaderValue::from_str(&forwarded_prefix(outer, prefix)) {
        request.headers_mut().insert(FORWARDED_PREFIX_HEADER, v);
    }
}

/// A Host header's host: without the port, lowercase.
pub fn request_host(host: &str) -> String {
    strip_port(host).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The host a request is for: its Host header, else its URI's authority.
pub fn host_of<B>(request: &http::Request<B>) -> String {
    request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_hosts_paths_and_both() {
        assert_eq!(
            Route::parse("web.default.localhost"),
            Some(Route {
                host: Some("web.default.localhost".into()),
                path_prefix: None
            })
        );
        assert_eq!(
            Route::parse("/default/web"),
            Some(Route {
                host: None,
                path_prefix: Some("/default/web/".into())
            })
        );
        assert_eq!(
            Route::parse("Example.com:8080/api/"),
            Some(Route {
                host: Some("example.com".into()),
                path_prefix: Some("/api/".into())
            })
        );
        assert_eq!(Route::parse("  "), None);
        assert_eq!(Route::parse_list("a.localhost, /x/,").len(), 2);
    }

    #[test]
    fn a_prefix_ends_with_one_slash() {
        // Found by the gateway_route fuzz target: the route `//` matched the path `/` as
        // the prefix `//`, which strip_route_prefix reads as the root, so the app was
        // routed by a prefix it was neither stripped of nor told.
        let route = Route::parse("//").unwrap();
        assert_eq!(route.path_prefix.as_deref(), Some("/"));
        assert!(route.matches("hello.det.localhost", "/").is_some());
        let route = Route::parse("/a//").unwrap();
        assert_eq!(route.path_prefix.as_deref(), Some("/a/"));
        let mut r = request("/a/x", &[]);
        strip_route_prefix(&mut r, route.path_prefix.as_deref().unwrap());
        assert_eq!(r.uri().path(), "/x");
        assert_eq!(r.headers()[FORWARDED_PREFIX_HEADER], "/a");
    }

    #[test]
    fn matching_prefers_hosts_then_longer_prefixes() {
        let host = Route::parse("web.default.localhost").unwrap();
        let path = Route::parse("/default/web/").unwrap();
        let longer = Route::parse("/default/web/api/").unwrap();
        assert!(host.matches("web.default.localhost", "/x").is_some());
        assert!(host.matches("other.localhost", "/x").is_none());
        assert!(path.matches("any", "/default/web/x").is_some());
        assert!(path.matches("any", "/default/web").is_some());
        assert!(path.matches("any", "/default/webby").is_none());
        assert!(
            longer.matches("any", "/default/web/api/v1").unwrap()
                > path.matches("any", "/default/web/api/v1").unwrap()
        );
        assert!(
            host.matches("web.default.localhost", "/default/web/")
                .unwrap()
                > path
                    .matches("web.default.localhost", "/default/web/")
                    .unwrap()
        );
        assert_eq!(
            request_host("Web.Default.localhost:8080"),
            "web.default.localhost"
        );
    }

    #[test]
    fn a_matched_prefix_is_stripped_and_the_query_kept() {
        let prefix = "/default/web/";
        assert_eq!(strip_prefix("/default/web/x", prefix), "/x");
        assert_eq!(strip_prefix("/default/web/a/b/", prefix), "/a/b/");
        assert_eq!(strip_prefix("/default/web/", prefix), "/");
        assert_eq!(strip_prefix("/default/web", prefix), "/");
        assert_eq!(strip_prefix("/default/web?q=1&r=/x", prefix), "/?q=1&r=/x");
        assert_eq!(strip_prefix("/default/web/x?q=1", prefix), "/x?q=1");
        assert_eq!(strip_prefix("/default/web//x", prefix), "//x");
        // Not under the prefix: unchanged.
        assert_eq!(strip_prefix("/default/webby/x", prefix), "/default/webby/x");
        assert_eq!(
            strip_prefix("/other?q=/default/web/", prefix),
            "/other?q=/default/web/"
        );
        // Every path matches a route's prefix exactly when it is stripped.
        let route = Route::parse(prefix).unwrap();
        for path in [
            "/default/web",
            "/default/web/",
            "/default/web/x",
            "/default/webby",
        ] {
            assert_eq!(
                route.matches("h", path).is_some(),
                strip_prefix(path, prefix) != path,
                "{path}"
            );
        }
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_routed_request_loses_its_prefix_and_names_it() {
        let mut r = request("/default/web/x/y?q=1&r=2", &[]);
        strip_route_prefix(&mut r, "/default/web/");
        assert_eq!(r.uri().to_string(), "/x/y?q=1&r=2");
        assert_eq!(r.headers()[FORWARDED_PREFIX_HEADER], "/default/web");

        let mut r = request("http://gw:8080/default/web", &[]);
        strip_route_prefix(&mut r, "/default/web/");
        assert_eq!(r.uri().path(), "/");
        assert_eq!(r.uri().authority().unwrap().as_str(), "gw:8080");

        // Behind another proxy that stripped its own prefix: the app learns both.
        let mut r = request("/default/web/", &[(FORWARDED_PREFIX_HEADER, "/outer")]);
        strip_route_prefix(&mut r, "/default/web/");
        assert_eq!(r.uri().path(), "/");
        assert_eq!(r.headers()[FORWARDED_PREFIX_HEADER], "/outer/default/web");

        // A route at the root strips nothing and says nothing.
        let mut r = request("/x", &[]);
        strip_route_prefix(&mut r, "/");
        assert_eq!(r.uri().path(), "/x");
        assert!(!r.headers().contains_key(FORWARDED_PREFIX_HEADER));
    }

    #[test]
    fn the_forwarded_prefix_follows_an_outer_one() {
        assert_eq!(forwarded_prefix(None, "/default/web/"), "/default/web");
        assert_eq!(forwarded_prefix(Some(""), "/default/web/"), "/default/web");
        assert_eq!(
            forwarded_prefix(Some("/outer/"), "/default/web/"),
            "/outer/default/web"
        );
        assert_eq!(
            forwarded_prefix(Some("/outer"), "/default/web/"),
            "/outer/default/web"
        );
    }
}

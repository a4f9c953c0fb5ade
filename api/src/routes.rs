//! How HTTP requests find an app, shared by the gateway and the agent's listener so
//! both route alike: routes (a Host and/or a path prefix), how specific a match is, and
//! the headers and annotations they agree on.

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
    /// Starts and ends with `/`.
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
            path_prefix: path.map(|p| {
                if p.ends_with('/') {
                    p.to_string()
                } else {
                    format!("{p}/")
                }
            }),
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
}

//! Timestamps as Kubernetes writes them in objects (RFC 3339, whole seconds, UTC), for
//! the server and the agent alike.

/// Now, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_in_kubernetes_format() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z') && s.len() == 20, "{s}");
        assert_eq!(format_time(parse_time(&s).unwrap()), s);
    }
}

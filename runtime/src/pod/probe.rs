//! `httpGet` probes against an HTTP pod's own handler, as the kubelet runs them: after
//! `initialDelaySeconds`, every `periodSeconds`, each within `timeoutSeconds`; a status
//! from 200 to 399 passes. `successThreshold` passes in a row make it pass,
//! `failureThreshold` failures in a row make it fail. The request goes straight to a
//! fresh instance, with no network in between.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use k8s_openapi::api::core::v1::Probe;

use crate::apps::ServedPod;

#[derive(Debug, Clone)]
pub(crate) struct HttpProbe {
    path: String,
    headers: Vec<(String, String)>,
    pub initial_delay: Duration,
    pub period: Duration,
    timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl HttpProbe {
    /// The probe, if the container has one; an error for kinds an HTTP app can't have.
    pub fn from_spec(probe: Option<&Probe>) -> Result<Option<HttpProbe>, String> {
        let Some(probe) = probe else {
            return Ok(None);
        };
        let Some(get) = &probe.http_get else {
            return Err(
                "only httpGet probes are supported for HTTP apps (exec, tcpSocket and grpc are not)"
                    .to_string(),
            );
        };
        // The port, named or numbered, means the one handler an HTTP app has.
        let _ = &get.port;
        let secs = |v: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
        };
        let mut path = get.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Ok(Some(HttpProbe {
            path,
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }))
    }

    /// One probe: Ok, or what failed, as the kubelet words it.
    pub async fn check(&self, pod: &ServedPod) -> Result<(), String> {
        let mut request = hyper::Request::get(self.path.as_str())
            .header(http::header::HOST, "localhost")
            .header(http::header::USER_AGENT, "skiff-probe/1.0");
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("invalid probe request: {e}"))?;
        let response = tokio::time::timeout(
            self.timeout,
            pod.program.serve(&pod.spec, request, pod.stop.clone()),
        )
        .await
        .map_err(|_| format!("Get \"{}\": context deadline exceeded", self.path))?;
        let code = response.status().as_u16();
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    }
}

/// Consecutive results of one probe, and whether it passes now.
#[derive(Debug)]
pub(crate) struct ProbeState {
    pub passing: bool,
    successes: u32,
    failures: u32,
}

impl ProbeState {
    pub fn new(passing: bool) -> ProbeState {
        ProbeState {
            passing,
            successes: 0,
            failures: 0,
        }
    }

    /// Records a result; returns whether `passing` flipped.
    pub fn record(&mut self, probe: &HttpProbe, ok: bool) -> bool {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.passing && self.successes >= probe.success_threshold {
                self.passing = true;
                return true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.passing && self.failures >= probe.failure_threshold {
                self.passing = false;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: u32, failure: u32) -> HttpProbe {
        HttpProbe {
            path: "/".into(),
            headers: vec![],
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_count_results_in_a_row() {
        let p = probe(2, 3);
        let mut s = ProbeState::new(false);
        assert!(!s.record(&p, true));
        assert!(s.record(&p, true), "two passes in a row make it pass");
        assert!(s.passing);
        assert!(!s.record(&p, false));
        assert!(!s.record(&p, false));
        assert!(!s.record(&p, true), "a pass resets the failures");
        assert!(!s.record(&p, false));
        assert!(!s.record(&p, false));
        assert!(s.record(&p, false), "three failures in a row make it fail");
        assert!(!s.passing);
    }

    #[test]
    fn only_http_get_probes_are_taken() {
        let exec: Probe =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        assert!(HttpProbe::from_spec(Some(&exec)).is_err());
        let get: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"path": "healthz", "port": 80}, "periodSeconds": 2}),
        )
        .unwrap();
        let p = HttpProbe::from_spec(Some(&get)).unwrap().unwrap();
        assert_eq!(p.path, "/healthz");
        assert_eq!(p.period, Duration::from_secs(2));
        assert_eq!(p.failure_threshold, 3);
        assert!(HttpProbe::from_spec(None).unwrap().is_none());
    }
}

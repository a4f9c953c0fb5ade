//! One container's loop: pull, configure, run, and on exit restart (with back-off) or
//! stop, as its pod's restart policy says. Each turn of the loop moves the container's
//! [`State`] along an explicit transition and reports it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use super::state::{PodState, State, Terminated, restarts};
use crate::config::backoff;
use crate::events::EventType::{Normal, Warning};
use skiff_api::image::PullPolicy;

use crate::images::{PullContext, PullSource};
use crate::logs::ContainerLog;
use crate::pod::env::{PodFields, resolve};
use crate::pod::probe::{HttpProbe, ProbeState};
use crate::pod::volumes::Volumes;
use crate::runtime::Runtime;
use crate::wasm::{HttpSpec, OutboundHosts, Program, ProgramKind, RunSpec};

/// A container that has run this long without failing starts its back-off afresh, as
/// the kubelet does.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// The steps of the loop. Each names what happens next.
enum Step {
    Pull,
    Configure(Arc<Program>),
    Run(Arc<Program>, RunSpec),
    /// An HTTP component: registered for requests until the pod stops.
    Serve(Arc<Program>, RunSpec),
    Exited(Terminated, Instant),
    BackOff(Duration),
}

pub(crate) struct ContainerLoop {
    pub rt: Arc<Runtime>,
    pub pod: Arc<Pod>,
    pub index: usize,
    pub volumes: Arc<Volumes>,
    pub log: Arc<ContainerLog>,
    pub status: tokio::sync::watch::Sender<PodState>,
    pub stop: CancellationToken,
    /// The container's events are sent once this is cancelled: after the pod's first
    /// status write (see `EventRecorder::record_after`).
    pub events_after: CancellationToken,
    /// The pod's usage, which this container's guests add to.
    pub usage: Arc<crate::usage::PodUsage>,
}

impl ContainerLoop {
    fn container(&self) -> &k8s_openapi::api::core::v1::Container {
        &self
            .pod
            .spec
            .as_ref()
            .expect("bound pods have a spec")
            .containers[self.index]
    }

    fn name(&self) -> &str {
        &self.container().name
    }

    fn set(&self, state: State) {
        self.status
            .send_modify(|s| s.containers[self.index].state = state);
    }

    fn event(&self, kind: crate::events::EventType, reason: &str, message: String) {
        self.rt.events.record_after(
            Some(&self.events_after),
            &self.pod,
            Some(self.name()),
            kind,
            reason,
            message,
        );
    }

    /// Starts the log of a new instance; a failure is logged, and the guest runs
    /// without its output kept.
    fn start_log(&self, after_restart: bool) {
        if let Err(e) = self.log.start_instance(after_restart) {
            tracing::warn!(error = %e, "opening the container log failed");
        }
    }

    /// The Pulled event, worded as the kubelet's (1.28+), with where the time went.
    fn pulled_event(&self, image: &str, source: PullSource) {
        let message = match source {
            PullSource::Present { tier } => {
                self.rt.metrics.module_cache_hit(tier);
                format!("Container image \"{image}\" already present on machine")
            }
            PullSource::Pulled {
                took,
                waited,
                transfer,
                compiled,
                bytes,
            } => {
                match compiled {
                    Some(took) => self.rt.metrics.module_compiled(took),
                    None => self.rt.metrics.module_cache_hit("disk"),
                }
                if let Some(t) = transfer {
                    self.rt.metrics.image_pulled(bytes, t);
                }
                let secs = |d: Duration| format!("{:.3}s", d.as_secs_f64());
                let mut parts = Vec::new();
                if let Some(t) = transfer {
                    parts.push(format!("transfer {}", secs(t)));
                }
                if let Some(c) = compiled {
                    parts.push(format!("compile {}", secs(c)));
                }
                format!(
                    "Successfully pulled image \"{image}\" in {} ({} including waiting). Image size: {bytes} bytes.{}",
                    secs(took.saturating_sub(waited)),
                    secs(took),
                    if parts.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", parts.join(", "))
                    }
                )
            }
        };
        self.event(Normal, "Pulled", message);
    }

    /// Sleeps unless stopped; returns false when stopped.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.cancelled() => false,
        }
    }

    pub async fn run(self) {
        let image = self.container().image.clone().unwrap_or_default();
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let pull = PullContext {
            // The API server defaults and validates the policy; a pod from an older
            // server or the node's offline cache gets the same default here.
            policy: PullPolicy::of(self.container().image_pull_policy.as_deref(), &image)
                .unwrap_or_else(|_| PullPolicy::default_for(&image)),
            namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
            pull_secrets: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.image_pull_secrets.as_ref())
                .into_iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect(),
        };
        let mut pull_failures = 0u32;
        let mut crash_failures = 0u32;
        let mut step = Step::Pull;
        // "Pulling" is announced once, before the first fetch or compile.
        let mut announced_pull = false;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            step = match step {
                Step::Pull
                    if !self.rt.images.is_loaded(&image, pull.policy)
                        && !std::mem::replace(&mut announced_pull, true) =>
                {
                    self.event(Normal, "Pulling", format!("Pulling image \"{image}\""));
                    Step::Pull
                }
                Step::Pull => match self.rt.images.pull(&image, &pull).await {
                    Ok(pulled) => {
                        pull_failures = 0;
                        for warning in &pulled.warnings {
                            self.event(Warning, "Failed", warning.clone());
                        }
                        // Reported with the next status write (Running, or why not).
                        let index = self.index;
                        self.status.send_if_modified(|s| {
                            s.containers[index].image_id = Some(pulled.image_id.clone());
                            false
                        });
                        self.pulled_event(&image, pulled.source);
                        Step::Configure(pulled.program)
                    }
                    Err(e) => {
                        let message = e.to_string();
                        self.set(State::waiting(e.reason(), Some(message.clone())));
                        self.event(
                            Warning,
                            "Failed",
                            format!("Failed to pull image \"{image}\": {message}"),
                        );
                        if !e.retryable() {
                            // The bytes are what they are: nothing to retry until the pod changes.
                            self.stop.cancelled().await;
                            return;
                        }
                        let delay = backoff(
                            self.rt.config.backoff_base,
                            self.rt.config.backoff_max,
                            pull_failures,
                        );
                        pull_failures += 1;
                        if !self.pause(Duration::from_millis(200).min(delay)).await {
                            return;
                        }
                        if e.reason() == "ErrImageNeverPull" {
                            // The kubelet keeps this reason while it waits for the image.
                            step = Step::BackOff(delay);
                            continue;
                        }
                        self.set(State::waiting(
                            "ImagePullBackOff",
                            Some(format!("Back-off pulling image \"{image}\": {message}")),
                        ));
                        self.event(
                            Normal,
                            "BackOff",
                            format!("Back-off pulling image \"{image}\""),
                        );
                        Step::BackOff(delay)
                    }
                },
                Step::Configure(program) => match self.configure().await {
                    Ok(spec) if program.kind() == ProgramKind::HttpComponent => {
                        Step::Serve(program, spec)
                    }
                    Ok(spec) => Step::Run(program, spec),
                    Err(message) => {
                        self.set(State::waiting(
                            "CreateContainerConfigError",
                            Some(message.clone()),
                        ));
                        self.event(Warning, "Failed", format!("Error: {message}"));
                        let delay = backoff(
                            self.rt.config.backoff_base,
                            self.rt.config.backoff_max,
                            pull_failures,
                        );
                        pull_failures += 1;
                        if !self.pause(delay).await {
                            return;
                        }
                        Step::Configure(program)
                    }
                },
                Step::Run(program, spec) => {
                    let after_restart = self.status.borrow().containers[self.index].started_once;
                    let began = Instant::now();
                    self.event(
                        Normal,
                        "Created",
                        format!("Created container {}", self.name()),
                    );
                    // Running once the guest is instantiated, as a container is once
                    // its process runs: a guest that cannot be instantiated never is.
                    let started_at = std::sync::Mutex::new(None);
                    let outcome = program
                        .run_reporting(spec, self.stop.child_token(), || {
                            let now = skiff_api::time::now_rfc3339();
                            self.status.send_modify(|s| {
                                let c = &mut s.containers[self.index];
                                c.state = State::Running {
                                    started_at: now.clone(),
                                };
                                c.started_once = true;
                            });
                            self.event(
                                Normal,
                                "Started",
                                format!("Started container {}", self.name()),
                            );
                            self.rt.metrics.instance_started();
                            *started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
                            // The log file is made now, before the entry point runs (so
                            // no output is lost), but after Running is on its way: the
                            // status write does not wait for the filesystem.
                            self.start_log(after_restart);
                        })
                        .await;
                    let started_at = started_at.into_inner().unwrap_or_else(|p| p.into_inner());
                    if started_at.is_some() {
                        self.rt.metrics.instance_ended();
                    } else {
                        // Never instantiated: the attempt still turns the log over, as
                        // one that ran would.
                        self.start_log(after_restart);
                    }
                    self.log.end_instance();
                    let started_at = started_at.unwrap_or_else(skiff_api::time::now_rfc3339);
                    Step::Exited(Terminated::from_outcome(&outcome, started_at), began)
                }
                Step::Serve(program, spec) => {
                    let began = Instant::now();
                    match self.serve(program, spec).await {
                        Some(terminated) => Step::Exited(terminated, began),
                        None => return,
                    }
                }
                Step::Exited(terminated, began) => {
                    if self.stop.is_cancelled() {
                        return;
                    }
                    tracing::info!(
                        container = %self.name(),
                        reason = terminated.reason,
                        exit_code = terminated.exit_code,
                        detail = terminated.message.as_deref().unwrap_or_default(),
                        "container exited"
                    );
                    match terminated.reason {
                        "Trap" => self.event(
                            Warning,
                            "Trap",
                            format!(
                                "Container {} trapped: {}",
                                self.name(),
                                terminated.message.clone().unwrap_or_default()
                            ),
                        ),
                        "OOMKilled" => self.event(
                            Warning,
                            "OOMKilled",
                            format!(
                                "Container {} exceeded its memory limit: {}",
                                self.name(),
                                terminated.message.clone().unwrap_or_default()
                            ),
                        ),
                        _ => {}
                    }
                    if !restarts(&policy, &terminated) {
                        self.status.send_modify(|s| {
                            let c = &mut s.containers[self.index];
                            c.state = State::Terminated(terminated.clone());
                            c.done = true;
                        });
                        self.stop.cancelled().await;
                        return;
                    }
                    if began.elapsed() >= BACKOFF_RESET_AFTER {
                        crash_failures = 0;
                    }
                    // The first restart is immediate; then the back-off doubles.
                    let delay = if crash_failures == 0 {
                        Duration::ZERO
                    } else {
                        backoff(
                            self.rt.config.backoff_base,
                            self.rt.config.backoff_max,
                            crash_failures - 1,
                        )
                    };
                    crash_failures += 1;
                    let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
                    let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
                    let uid = self.pod.metadata.uid.clone().unwrap_or_default();
                    self.rt
                        .metrics
                        .container_restarted(&ns, &pod_name, self.name());
                    self.status.send_modify(|s| {
                        let c = &mut s.containers[self.index];
                        c.restart_count += 1;
                        c.last = Some(terminated.clone());
                        c.state = if delay.is_zero() {
                            State::Terminated(terminated.clone())
                        } else {
                            State::waiting(
                                "CrashLoopBackOff",
                                Some(format!("back-off {}s restarting failed container={} pod={pod_name}_{ns}({uid})", delay.as_secs(), self.name())),
                            )
                        };
                    });
                    if !delay.is_zero() {
                        self.event(Warning, "BackOff", format!("Back-off restarting failed container {} in pod {pod_name}_{ns}({uid})", self.name()));
                    }
                    Step::BackOff(delay)
                }
                Step::BackOff(delay) => {
                    if !self.pause(delay).await {
                        return;
                    }
                    Step::Pull
                }
            };
        }
    }

    /// Serves an HTTP component's requests until the pod stops (None) or its liveness
    /// probe fails (the terminated state to restart from). Running once the component
    /// is compiled and pre-instantiated (it is, by now); Ready then, or once its
    /// readiness probe passes.
    async fn serve(&self, program: Arc<Program>, spec: RunSpec) -> Option<Terminated> {
        let (readiness, liveness) = match (
            HttpProbe::from_spec(self.container().readiness_probe.as_ref()),
            HttpProbe::from_spec(self.container().liveness_probe.as_ref()),
        ) {
            (Ok(r), Ok(l)) => (r, l),
            (Err(e), _) | (_, Err(e)) => {
                self.set(State::waiting(
                    "CreateContainerConfigError",
                    Some(e.clone()),
                ));
                self.event(Warning, "Failed", format!("Error: {e}"));
                self.stop.cancelled().await;
                return None;
            }
        };
        let after_restart = self.status.borrow().containers[self.index].started_once;
        self.start_log(after_restart);
        let annotations = self.pod.metadata.annotations.clone().unwrap_or_default();
        let annotation = |k: &str| annotations.get(k).map(String::as_str);
        let timeout = annotation("skiff.dev/request-timeout")
            .and_then(parse_duration)
            .unwrap_or(self.rt.config.request_timeout);
        let outbound = OutboundHosts::new(
            annotation(crate::apps::OUTBOUND_ANNOTATION)
                .unwrap_or_default()
                .split(',')
                .map(str::to_string),
        );
        let concurrency = annotation("skiff.dev/max-concurrency")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(crate::apps::DEFAULT_MAX_CONCURRENCY);
        let routes = annotation(crate::apps::ROUTES_ANNOTATION)
            .unwrap_or_default()
            .split(',')
            .filter_map(crate::apps::Route::parse)
            .collect();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let app = crate::apps::app_of(&self.pod);
        let faults = {
            let (rt, namespace, app) = (self.rt.clone(), namespace.clone(), app.clone());
            crate::wasm::FaultHook::new(move |kind| rt.metrics.http_fault(&namespace, &app, kind))
        };
        let served = Arc::new(crate::apps::ServedPod {
            counters: self.usage.requests.clone(),
            requests: self.rt.metrics.app_requests(&namespace, &app),
            namespace,
            name: self.pod.metadata.name.clone().unwrap_or_default(),
            app,
            program,
            spec: HttpSpec {
                run: spec,
                timeout,
                outbound,
                cluster_api: self.rt.cluster_api.clone(),
                max_body_bytes: self.rt.config.max_request_body,
                faults,
            },
            routes,
            // Its own token, not a child of the pod's: when the pod stops, the requests
            // in flight finish within the grace period (the drain below) and only then
            // is what is left stopped. A child token stopped them at once, with 503.
            stop: CancellationToken::new(),
            ready: std::sync::atomic::AtomicBool::new(readiness.is_none()),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency)),
        });
        let started_at = skiff_api::time::now_rfc3339();
        self.event(
            Normal,
            "Created",
            format!("Created container {}", self.name()),
        );
        self.rt.apps.insert(served.clone());
        self.status.send_modify(|s| {
            let c = &mut s.containers[self.index];
            c.state = State::Running {
                started_at: started_at.clone(),
            };
            c.started_once = true;
            c.probe_ready = readiness.is_none();
        });
        self.event(
            Normal,
            "Started",
            format!("Started container {}", self.name()),
        );
        self.rt.metrics.instance_started();
        let liveness_failed = self
            .probe(&served, readiness.as_ref(), liveness.as_ref())
            .await;
        served
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(message) = liveness_failed {
            self.event(
                Normal,
                "Killing",
                format!(
                    "Container {} failed liveness probe, will be restarted",
                    self.name()
                ),
            );
            served.stop.cancel();
            self.rt.apps.remove(&served);
            self.rt.metrics.instance_ended();
            self.log.end_instance();
            return Some(Terminated {
                exit_code: super::state::EXIT_KILLED,
                reason: "Error",
                message: Some(format!("liveness probe failed: {message}")),
                started_at,
                finished_at: skiff_api::time::now_rfc3339(),
            });
        }
        // Drain: take no new requests (the gateway tries another replica), let those in
        // flight finish within the grace period, then stop what is left.
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(Duration::from_secs(grace), served.slots.acquire_many(all)).await;
        if drained.is_err() {
            self.event(
                Warning,
                "Killing",
                format!(
                    "Stopping container {} with requests still in flight after {grace}s",
                    self.name()
                ),
            );
        }
        served.stop.cancel();
        self.rt.apps.remove(&served);
        self.rt.metrics.instance_ended();
        self.log.end_instance();
        None
    }

    /// Runs the probes until the pod stops (None) or the liveness probe fails (what
    /// failed). Readiness results go to the pod's Ready condition and to routing.
    async fn probe(
        &self,
        served: &Arc<crate::apps::ServedPod>,
        readiness: Option<&HttpProbe>,
        liveness: Option<&HttpProbe>,
    ) -> Option<String> {
        let now = tokio::time::Instant::now();
        let mut next_ready = readiness.map(|p| now + p.initial_delay);
        let mut next_live = liveness.map(|p| now + p.initial_delay);
        let mut ready_state = ProbeState::new(false);
        let mut live_state = ProbeState::new(true);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(next_ready.unwrap_or_else(far)), if next_ready.is_some() => {
                    let probe = readiness.expect("scheduled only with a probe");
                    let result = probe.check(served).await;
                    if let Err(e) = &result {
                        self.event(Warning, "Unhealthy", format!("Readiness probe failed: {e}"));
                    }
                    if ready_state.record(probe, result.is_ok()) {
                        let ready = ready_state.passing;
                        served.ready.store(ready, std::sync::atomic::Ordering::Release);
                        self.status.send_modify(|s| s.containers[self.index].probe_ready = ready);
                    }
                    next_ready = Some(tokio::time::Instant::now() + probe.period);
                }
                _ = tokio::time::sleep_until(next_live.unwrap_or_else(far)), if next_live.is_some() => {
                    let probe = liveness.expect("scheduled only with a probe");
                    let result = probe.check(served).await;
                    if let Err(e) = &result {
                        self.event(Warning, "Unhealthy", format!("Liveness probe failed: {e}"));
                    }
                    if live_state.record(probe, result.is_ok()) && !live_state.passing {
                        return Some(result.err().unwrap_or_default());
                    }
                    next_live = Some(tokio::time::Instant::now() + probe.period);
                }
            }
        }
    }

    /// The instance's argv, environment, preopens and limits.
    async fn configure(&self) -> Result<RunSpec, String> {
        let c = self.container();
        let node = self.rt.config.name.clone();
        let fields = PodFields {
            pod: &self.pod,
            node_name: &node,
            host_ip: &self.rt.host_ip,
        };
        let env = resolve(&self.rt.client, &fields, c)
            .await
            .map_err(|e| e.to_string())?;
        let preopens = self.volumes.preopens(c).map_err(|e| e.to_string())?;
        // Kubernetes: command replaces the entrypoint, args follow it. A Wasm command has
        // no entrypoint of its own, so argv[0] is the command or the container's name.
        let mut args: Vec<String> = c.command.clone().unwrap_or_default();
        if args.is_empty() {
            args.push(c.name.clone());
        }
        args.extend(c.args.clone().unwrap_or_default());
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        let memory_limit = limits
            .and_then(|l| l.get("memory"))
            .map(|q| skiff_api::quantity::bytes(&q.0))
            .transpose()
            .map_err(|e| format!("resources.limits.memory: {e}"))?;
        let cpu_limit_millicores = limits
            .and_then(|l| l.get("cpu"))
            .map(|q| skiff_api::quantity::millicores(&q.0))
            .transpose()
            .map_err(|e| format!("resources.limits.cpu: {e}"))?;
        Ok(RunSpec {
            args,
            env,
            preopens,
            output: self.log.clone(),
            memory_limit,
            cpu_limit_millicores,
            usage: self.usage.containers[self.index].1.clone(),
        })
    }
}

/// A duration as annotations write it: `500ms`, `10s`, `2m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("fast"), None);
    }
}

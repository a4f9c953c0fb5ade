//! A container's lifecycle as data: its state (waiting, running, terminated), what it
//! was before the last restart, and the transitions the container loop may take; and
//! a pod's live state, made of its containers'.

use serde_json::{Value, json};

use crate::wasm::Outcome;

/// Exit codes reported for outcomes that are not a guest's own exit, as a container
/// runtime reports a process killed by a signal (128 + signal).
pub const EXIT_TRAP: i32 = 134;
pub const EXIT_KILLED: i32 = 137;

/// The live state of a pod, from which its status is derived.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    pub containers: Vec<ContainerStatus>,
    /// A pod-level failure (a refused volume), with its reason and message.
    pub failure: Option<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled` or `Trap`.
    pub reason: &'static str,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

impl Terminated {
    /// What an instance's outcome means as a terminated state.
    pub fn from_outcome(outcome: &Outcome, started_at: String) -> Terminated {
        let (exit_code, reason, message) = match outcome {
            Outcome::Exited(0) => (0, "Completed", None),
            Outcome::Exited(code) => (*code, "Error", None),
            Outcome::Trapped(trap) => (EXIT_TRAP, "Trap", Some(trap.clone())),
            Outcome::OutOfMemory(msg) => (EXIT_KILLED, "OOMKilled", Some(msg.clone())),
            Outcome::Interrupted => (
                EXIT_KILLED,
                "Error",
                Some("stopped by the agent".to_string()),
            ),
            Outcome::Failed(msg) => (128, "Error", Some(msg.clone())),
        };
        Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at: skiff_api::time::now_rfc3339(),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    fn to_json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        });
        if let Some(m) = &self.message {
            t["message"] = json!(m);
        }
        json!({"terminated": t})
    }
}

/// The state of one container, as `containerStatuses[].state` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not running: pulling, backing off, or misconfigured. `reason` is what kubectl
    /// shows as the pod's STATUS (ErrImagePull, CrashLoopBackOff, InvalidModule, ...).
    Waiting {
        reason: &'static str,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated(Terminated),
}

impl State {
    pub fn waiting(reason: &'static str, message: impl Into<Option<String>>) -> State {
        State::Waiting {
            reason,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated(t) => t.to_json(),
        }
    }
}

/// Everything the pod status says about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    /// What the image resolved to (`REGISTRY/REPO@sha256:...`), once pulled.
    pub image_id: Option<String>,
    pub state: State,
    pub last: Option<Terminated>,
    pub restart_count: u32,
    /// Whether the container has ever started in this pod.
    pub started_once: bool,
    /// Whether the container has finished for good (its restart policy won't run it again).
    pub done: bool,
    /// Whether its readiness probe (if any) passes; a running container without one is
    /// ready.
    pub probe_ready: bool,
}

impl ContainerStatus {
    pub fn new(name: &str, image: &str, restart_count: u32) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            image: image.to_string(),
            image_id: None,
            state: State::waiting("ContainerCreating", None),
            last: None,
            restart_count,
            started_once: restart_count > 0,
            done: false,
            probe_ready: true,
        }
    }

    pub fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. }) && self.probe_ready
    }

    pub fn to_json(&self, pod_uid: &str) -> Value {
        let mut s = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id.as_deref().unwrap_or(&self.image),
            "containerID": format!("wasm://{pod_uid}/{}", self.name),
            "state": self.state.to_json(),
            "ready": self.ready(),
            "started": matches!(self.state, State::Running { .. }),
            "restartCount": self.restart_count,
        });
        if let Some(last) = &self.last {
            s["lastState"] = last.to_json();
        }
        s
    }
}

/// Whether a restart policy runs a container again after it terminated like this.
pub fn restarts(policy: &str, terminated: &Terminated) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => !terminated.succeeded(),
        _ => true,
    }
}

/// The pod phase Kubernetes derives from its containers.
pub fn phase(containers: &[ContainerStatus]) -> &'static str {
    if containers.iter().any(|c| !c.started_once && !c.done) {
        return "Pending";
    }
    if containers.iter().all(|c| c.done) {
        let all_ok = containers
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.succeeded()));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    "Running"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(code: i32) -> ContainerStatus {
        let mut c = ContainerStatus::new("c", "i", 0);
        c.started_once = true;
        c.done = true;
        c.state = State::Terminated(Terminated::from_outcome(&Outcome::Exited(code), "t".into()));
        c
    }

    #[test]
    fn phases_follow_kubernetes() {
        assert_eq!(phase(&[ContainerStatus::new("c", "i", 0)]), "Pending");
        assert_eq!(phase(&[done(0)]), "Succeeded");
        assert_eq!(phase(&[done(0), done(3)]), "Failed");
        let mut running = ContainerStatus::new("r", "i", 0);
        running.started_once = true;
        running.state = State::Running {
            started_at: "t".into(),
        };
        assert_eq!(phase(&[done(3), running]), "Running");
    }

    #[test]
    fn outcomes_map_to_reasons() {
        let t = |o: Outcome| Terminated::from_outcome(&o, "t".into());
        assert_eq!(t(Outcome::Exited(0)).reason, "Completed");
        assert_eq!(
            (
                t(Outcome::Exited(3)).reason,
                t(Outcome::Exited(3)).exit_code
            ),
            ("Error", 3)
        );
        assert_eq!(t(Outcome::Trapped("unreachable".into())).reason, "Trap");
        assert_eq!(t(Outcome::OutOfMemory("limit".into())).reason, "OOMKilled");
        assert!(restarts("Always", &t(Outcome::Exited(0))));
        assert!(!restarts("OnFailure", &t(Outcome::Exited(0))));
        assert!(restarts("OnFailure", &t(Outcome::Trapped("x".into()))));
        assert!(!restarts("Never", &t(Outcome::Exited(1))));
    }
}

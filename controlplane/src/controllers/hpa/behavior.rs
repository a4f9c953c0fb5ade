//! `behavior`, as Kubernetes applies it to a recommendation: first the stabilization
//! windows (scaling up goes only as high as the lowest recommendation of the scale-up
//! window; scaling down only as low as the highest of the scale-down window), then the
//! rate policies (how many pods, or what percent, may be added or removed per period,
//! counting the changes already made in that period), then min and max. Each autoscaler
//! keeps its recent recommendations and scale events in memory, as the controller in
//! kube-controller-manager does.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::kinds::horizontalpodautoscaler::{default_scale_down, default_scale_up, fill_rules};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i64,
    pub period_seconds: i64,
}

/// One direction's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub window_seconds: i64,
    pub select: Select,
    pub policies: Vec<Policy>,
}

impl Rules {
    fn from_value(rules: &Value) -> Rules {
        Rules {
            window_seconds: rules["stabilizationWindowSeconds"].as_i64().unwrap_or(0),
            select: match rules["selectPolicy"].as_str() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            policies: rules["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Policy {
                    kind: if p["type"] == "Pods" {
                        PolicyKind::Pods
                    } else {
                        PolicyKind::Percent
                    },
                    value: p["value"].as_i64().unwrap_or(0),
                    period_seconds: p["periodSeconds"].as_i64().unwrap_or(0),
                })
                .collect(),
        }
    }

    fn longest_period(&self) -> i64 {
        self.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

/// The scale-up and scale-down rules of an autoscaler's `spec.behavior`, with
/// Kubernetes' defaults for what it leaves out (all of it, when it has none).
pub fn rules_of(behavior: Option<&Value>) -> (Rules, Rules) {
    let behavior = behavior.filter(|b| b.is_object());
    let up = fill_rules(behavior.and_then(|b| b.get("scaleUp")), default_scale_up());
    let down = fill_rules(
        behavior.and_then(|b| b.get("scaleDown")),
        default_scale_down(),
    );
    (Rules::from_value(&up), Rules::from_value(&down))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recommendation {
    replicas: i64,
    at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScaleEvent {
    change: i64,
    at: Timestamp,
}

/// What one autoscaler remembers between syncs.
#[derive(Debug, Default, Clone)]
pub struct History {
    recommendations: Vec<Recommendation>,
    ups: Vec<ScaleEvent>,
    downs: Vec<ScaleEvent>,
}

/// A decision and why, as the AbleToScale and ScalingLimited conditions say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub replicas: i64,
    pub reason: &'static str,
    pub message: &'static str,
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

/// The replicas added (or removed) by the events within the last `period` seconds.
fn changed_within(events: &[ScaleEvent], period: i64, now: Timestamp) -> i64 {
    let cutoff = now - secs(period);
    events
        .iter()
        .filter(|e| e.at > cutoff)
        .map(|e| e.change)
        .sum()
}

impl History {
    /// Applies the stabilization windows to `desired` and records it. Returns the
    /// stabilized recommendation and the AbleToScale reason and message for it, used
    /// when it differs from `desired`.
    pub fn stabilize(
        &mut self,
        now: Timestamp,
        current: i64,
        desired: i64,
        up: &Rules,
        down: &Rules,
    ) -> Limited {
        let up_cutoff = now - secs(up.window_seconds);
        let down_cutoff = now - secs(down.window_seconds);
        let (mut up_limit, mut down_limit) = (desired, desired);
        let mut old = None;
        for (i, r) in self.recommendations.iter().enumerate() {
            if r.at > up_cutoff {
                up_limit = up_limit.min(r.replicas);
            }
            if r.at > down_cutoff {
                down_limit = down_limit.max(r.replicas);
            }
            if r.at < up_cutoff && r.at < down_cutoff {
                old = Some(i);
            }
        }
        let replicas = current.max(up_limit).min(down_limit);
        let sample = Recommendation {
            replicas: desired,
            at: now,
        };
        match old {
            Some(i) => self.recommendations[i] = sample,
            None => self.recommendations.push(sample),
        }
        let (reason, message) = if desired >= current {
            (
                "ScaleUpStabilized",
                "recent recommendations were lower than current one, applying the lowest recent recommendation",
            )
        } else {
            (
                "ScaleDownStabilized",
                "recent recommendations were higher than current one, applying the highest recent recommendation",
            )
        };
        Limited {
            replicas,
            reason,
            message,
        }
    }

    /// Applies the rate policies and min and max to a stabilized recommendation.
    #[allow(clippy::too_many_arguments)] // reason: Kubernetes' NormalizationArg, spelled out
    pub fn limit(
        &self,
        now: Timestamp,
        current: i64,
        desired: i64,
        min: i64,
        max: i64,
        up: &Rules,
        down: &Rules,
    ) -> Limited {
        if desired > current {
            let rate = self.scale_up_limit(now, current, up).max(current);
            let (ceiling, reason, message) = if max > rate {
                (
                    rate,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if desired > ceiling {
                return Limited {
                    replicas: ceiling,
                    reason,
                    message,
                };
            }
        } else if desired < current {
            let rate = self.scale_down_limit(now, current, down).min(current);
            let (floor, reason, message) = if min < rate {
                (
                    rate,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if desired < floor {
                return Limited {
                    replicas: floor,
                    reason,
                    message,
                };
            }
        }
        Limited {
            replicas: desired,
            reason: "DesiredWithinRange",
            message: "the desired count is within the acceptable range",
        }
    }

    /// The most replicas the scale-up policies allow now.
    fn scale_up_limit(&self, now: Timestamp, current: i64, rules: &Rules) -> i64 {
        let pick: fn(i64, i64) -> i64 = match rules.select {
            Select::Disabled => return current,
            Select::Min => i64::min,
            Select::Max => i64::max,
        };
        let mut result: Option<i64> = None;
        for policy in &rules.policies {
            let start = current - changed_within(&self.ups, policy.period_seconds, now)
                + changed_within(&self.downs, policy.period_seconds, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start + policy.value,
                PolicyKind::Percent => {
                    (start as f64 * (1.0 + policy.value as f64 / 100.0)).ceil() as i64
                }
            };
            result = Some(result.map_or(proposed, |r| pick(r, proposed)));
        }
        result.unwrap_or(current)
    }

    /// The fewest replicas the scale-down policies allow now (with `Min`, the policy
    /// that removes the fewest wins).
    fn scale_down_limit(&self, now: Timestamp, current: i64, rules: &Rules) -> i64 {
        let pick: fn(i64, i64) -> i64 = match rules.select {
            Select::Disabled => return current,
            Select::Min => i64::max,
            Select::Max => i64::min,
        };
        let mut result: Option<i64> = None;
        for policy in &rules.policies {
            let start = current - changed_within(&self.ups, policy.period_seconds, now)
                + changed_within(&self.downs, policy.period_seconds, now);
            let proposed = match policy.kind {
                PolicyKind::Pods => start - policy.value,
                PolicyKind::Percent => (start as f64 * (1.0 - policy.value as f64 / 100.0)) as i64,
            };
            result = Some(result.map_or(proposed, |r| pick(r, proposed)));
        }
        result.unwrap_or(current)
    }

    /// Records a rescale from `from` to `to`, forgetting events older than any policy
    /// period of their direction.
    pub fn record_scale(&mut self, now: Timestamp, from: i64, to: i64, up: &Rules, down: &Rules) {
        let keep = |events: &mut Vec<ScaleEvent>, rules: &Rules| {
            let cutoff = now - secs(rules.longest_period());
            events.retain(|e| e.at > cutoff);
        };
        keep(&mut self.ups, up);
        keep(&mut self.downs, down);
        if to > from {
            self.ups.push(ScaleEvent {
                change: to - from,
                at: now,
            });
        } else if to < from {
            self.downs.push(ScaleEvent {
                change: from - to,
                at: now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t0() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn at(s: i64) -> Timestamp {
        t0() + secs(s)
    }

    /// Stabilizes then limits, and records a rescale, as one sync does.
    fn sync(
        h: &mut History,
        s: i64,
        current: i64,
        desired: i64,
        min: i64,
        max: i64,
        behavior: Option<&Value>,
    ) -> i64 {
        let (up, down) = rules_of(behavior);
        let stable = h.stabilize(at(s), current, desired, &up, &down);
        let limited = h.limit(at(s), current, stable.replicas, min, max, &up, &down);
        if limited.replicas != current {
            h.record_scale(at(s), current, limited.replicas, &up, &down);
        }
        limited.replicas
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let (up, down) = rules_of(None);
        assert_eq!(up.window_seconds, 0);
        assert_eq!(up.select, Select::Max);
        assert_eq!(up.policies.len(), 2);
        assert_eq!(down.window_seconds, 300);
        assert_eq!(
            down.policies,
            vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period_seconds: 15
            }]
        );
        let (up, _) = rules_of(Some(&json!({"scaleUp": {"selectPolicy": "Disabled"}})));
        assert_eq!(up.select, Select::Disabled);
        assert_eq!(up.policies.len(), 2, "the rest filled in");
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut h = History::default();
        assert_eq!(sync(&mut h, 0, 5, 5, 1, 10, None), 5);
        // Load drops: the recommendation of 5 a moment ago holds it.
        assert_eq!(sync(&mut h, 15, 5, 1, 1, 10, None), 5);
        assert_eq!(sync(&mut h, 290, 5, 1, 1, 10, None), 5);
        // 5 minutes after the last 5 was recommended it goes, all at once (100%/15s).
        assert_eq!(sync(&mut h, 301, 5, 1, 1, 10, None), 1);
        // A shorter window goes sooner.
        let short = json!({"scaleDown": {"stabilizationWindowSeconds": 30}});
        let mut h = History::default();
        assert_eq!(sync(&mut h, 0, 5, 5, 1, 10, Some(&short)), 5);
        assert_eq!(sync(&mut h, 15, 5, 2, 1, 10, Some(&short)), 5);
        assert_eq!(sync(&mut h, 31, 5, 2, 1, 10, Some(&short)), 2);
    }

    #[test]
    fn scale_up_is_immediate_but_rate_limited() {
        let mut h = History::default();
        // From 1: max(1 + 4 pods, 1 × 200%) = 5 per 15 s.
        assert_eq!(sync(&mut h, 0, 1, 20, 1, 30, None), 5);
        // Within the same period the 4 already added count against it.
        assert_eq!(sync(&mut h, 5, 5, 20, 1, 30, None), 5);
        // A period later: from 5, max(9, 10) = 10.
        assert_eq!(sync(&mut h, 16, 5, 20, 1, 30, None), 10);
        // maxReplicas caps it.
        assert_eq!(sync(&mut h, 32, 10, 50, 1, 12, None), 12);
        // A scale-up window takes the lowest recent recommendation.
        let slow = json!({"scaleUp": {"stabilizationWindowSeconds": 60}});
        let mut h = History::default();
        assert_eq!(sync(&mut h, 0, 2, 2, 1, 10, Some(&slow)), 2);
        assert_eq!(sync(&mut h, 15, 2, 6, 1, 10, Some(&slow)), 2);
        assert_eq!(sync(&mut h, 61, 2, 6, 1, 10, Some(&slow)), 6);
    }

    #[test]
    fn policies_select_max_min_or_disabled() {
        let pods_and_percent = |select: &str| {
            json!({"scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": select, "policies": [
                {"type": "Pods", "value": 2, "periodSeconds": 60},
                {"type": "Percent", "value": 50, "periodSeconds": 60}]}})
        };
        // From 10 towards 1: Pods allows 8, Percent 5; Max picks the bigger change (5).
        let b = pods_and_percent("Max");
        assert_eq!(sync(&mut History::default(), 0, 10, 1, 1, 10, Some(&b)), 5);
        let b = pods_and_percent("Min");
        assert_eq!(sync(&mut History::default(), 0, 10, 1, 1, 10, Some(&b)), 8);
        let b = pods_and_percent("Disabled");
        assert_eq!(sync(&mut History::default(), 0, 10, 1, 1, 10, Some(&b)), 10);
        // Within the period, what was removed counts: from 8 (10 at the period's start)
        // the Min policy still allows only 8.
        let b = pods_and_percent("Min");
        let mut h = History::default();
        assert_eq!(sync(&mut h, 0, 10, 1, 1, 10, Some(&b)), 8);
        assert_eq!(sync(&mut h, 30, 8, 1, 1, 10, Some(&b)), 8);
        assert_eq!(sync(&mut h, 61, 8, 1, 1, 10, Some(&b)), 6);
    }

    #[test]
    fn limits_say_why() {
        let (up, down) = rules_of(None);
        let h = History::default();
        let l = h.limit(t0(), 3, 2, 3, 10, &up, &down);
        assert_eq!((l.replicas, l.reason), (3, "TooFewReplicas"));
        let l = h.limit(t0(), 3, 100, 1, 5, &up, &down);
        assert_eq!((l.replicas, l.reason), (5, "TooManyReplicas"));
        let l = h.limit(t0(), 3, 100, 1, 50, &up, &down);
        assert_eq!((l.replicas, l.reason), (7, "ScaleUpLimit"));
        let l = h.limit(t0(), 3, 4, 1, 50, &up, &down);
        assert_eq!((l.replicas, l.reason), (4, "DesiredWithinRange"));
    }
}

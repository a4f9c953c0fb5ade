//! The CronJob controller's time arithmetic, as Kubernetes' controller v2 does it: the
//! latest unmet schedule time and how many were missed, where the search starts, when
//! to look again, and the Job name and timestamp a schedule time gives.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::cron::Schedule;
use crate::objects;

/// Kubernetes' arbitrary bound: beyond this many missed times something is wrong (a
/// clock skew, a controller down for days), and only the latest is started.
pub(super) const MAX_MISSED: i64 = 100;
/// How long after a schedule time the requeue lands, so the time has surely come.
pub(super) const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// How many schedule times passed unmet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    /// More than [`MAX_MISSED`]: this many, roughly.
    Many(i64),
}

/// The latest schedule time at or before `now` since `earliest` (exclusive), and how
/// many were missed: Kubernetes' `mostRecentScheduleTime`, which estimates the count
/// from the interval between the first two times rather than walking every one.
pub fn most_recent_schedule_time(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Missed) {
    let Some(t1) = schedule.next_after(earliest, tz) else {
        return (None, Missed::None);
    };
    if now < t1 {
        return (None, Missed::None);
    }
    let t2 = match schedule.next_after(t1, tz) {
        Some(t2) if now >= t2 => t2,
        _ => return (Some(t1), Missed::None),
    };
    let between = t2.duration_since(t1).as_secs().max(1);
    let missed = now.duration_since(t1).as_secs() / between + 1;
    // Start one interval before the estimate, and let the schedule find the exact
    // times (irregular schedules such as `30 6-16/4 * * 1-5`).
    let potential_earliest = t1
        .checked_add(jiff::SignedDuration::from_secs((missed - 2) * between))
        .unwrap_or(t1);
    let mut most_recent = None;
    let mut t = schedule.next_after(potential_earliest, tz);
    while let Some(at) = t.filter(|at| *at <= now) {
        most_recent = Some(at);
        t = schedule.next_after(at, tz);
    }
    let missed = match missed {
        n if n > MAX_MISSED => Missed::Many(n),
        n if n > 1 => Missed::Few,
        _ => Missed::None,
    };
    (most_recent, missed)
}

/// Where the search for unmet times starts: the last schedule time, or the creation;
/// with `startingDeadlineSeconds`, no earlier than that long ago.
pub(super) fn earliest_time(cj: &Value, now: Timestamp, with_deadline: bool) -> Timestamp {
    let mut earliest = time_at(cj, "/status/lastScheduleTime")
        .or_else(|| time_at(cj, "/metadata/creationTimestamp"))
        .unwrap_or(now);
    if with_deadline && let Some(deadline) = starting_deadline(cj) {
        let limit = now
            .checked_sub(jiff::SignedDuration::from_secs(deadline))
            .unwrap_or(Timestamp::MIN);
        earliest = earliest.max(limit);
    }
    earliest
}

/// How long until the time after the latest one at or before `now` (Kubernetes'
/// `nextScheduleTimeDuration`), plus a small delta.
pub(super) fn next_schedule_delay(
    cj: &Value,
    schedule: &Schedule,
    tz: &TimeZone,
    now: Timestamp,
) -> Option<Duration> {
    let earliest = earliest_time(cj, now, false);
    let from = match most_recent_schedule_time(schedule, tz, earliest, now) {
        (Some(t), _) => t,
        (None, Missed::None) => earliest,
        (None, _) => now,
    };
    let next = schedule.next_after(from, tz)?;
    Some(next.duration_since(now).unsigned_abs() + NEXT_SCHEDULE_DELTA)
}

pub(super) fn time_at(obj: &Value, pointer: &str) -> Option<Timestamp> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(objects::parse_time)
}

pub(super) fn starting_deadline(cj: &Value) -> Option<i64> {
    cj.pointer("/spec/startingDeadlineSeconds")
        .and_then(Value::as_i64)
}

/// The name of the Job for the time `scheduled`: deterministic, so a time already
/// started is not started again (the create finds it exists).
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// RFC 3339 in the CronJob's zone, as Go's `time.RFC3339` prints it (`Z` for UTC).
pub(super) fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let text = t
        .to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    match text.strip_suffix("+00:00") {
        Some(utc) => format!("{utc}Z"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn most_recent(spec: &str, earliest: &str, now: &str) -> (Option<String>, Missed) {
        let (t, missed) = most_recent_schedule_time(
            &Schedule::parse(spec).unwrap(),
            &TimeZone::UTC,
            utc(earliest),
            utc(now),
        );
        (t.map(objects::format_time), missed)
    }

    #[test]
    fn nothing_is_due_before_the_first_time() {
        assert_eq!(
            most_recent(
                "*/5 * * * *",
                "2026-12-07T08:00:00Z",
                "2026-12-07T08:04:59Z"
            ),
            (None, Missed::None)
        );
        assert_eq!(
            most_recent(
                "*/5 * * * *",
                "2026-12-07T08:00:00Z",
                "2026-12-07T08:05:00Z"
            ),
            (Some("2026-12-07T08:05:00Z".into()), Missed::None)
        );
    }

    #[test]
    fn a_few_missed_times_start_only_the_latest() {
        assert_eq!(
            most_recent(
                "*/1 * * * *",
                "2026-12-07T08:00:00Z",
                "2026-12-07T08:03:30Z"
            ),
            (Some("2026-12-07T08:03:00Z".into()), Missed::Few)
        );
    }

    #[test]
    fn more_than_a_hundred_missed_times_are_counted_and_the_latest_started() {
        // Three hours of a minutely schedule: 180 missed.
        assert_eq!(
            most_recent("* * * * *", "2026-12-07T08:00:00Z", "2026-12-07T11:00:10Z"),
            (Some("2026-12-07T11:00:00Z".into()), Missed::Many(180))
        );
        // Exactly 100 is still "a few".
        assert_eq!(
            most_recent("* * * * *", "2026-12-07T08:00:00Z", "2026-12-07T09:40:00Z"),
            (Some("2026-12-07T09:40:00Z".into()), Missed::Few)
        );
        // An irregular schedule still finds its exact latest time.
        assert_eq!(
            most_recent(
                "30 6-16/4 * * 1-5",
                "2026-11-01T00:00:00Z",
                "2026-12-07T12:00:00Z"
            )
            .0,
            Some("2026-12-07T10:30:00Z".into())
        );
    }

    #[test]
    fn the_starting_deadline_moves_the_earliest_time() {
        let cj = json!({
            "metadata": {"creationTimestamp": "2026-12-07T08:00:00Z"},
            "spec": {"startingDeadlineSeconds": 30},
        });
        let now = utc("2026-12-07T11:00:45Z");
        assert_eq!(earliest_time(&cj, now, true), utc("2026-12-07T11:00:15Z"));
        assert_eq!(earliest_time(&cj, now, false), utc("2026-12-07T08:00:00Z"));
        // A deadline longer than time itself is no deadline (and no overflow).
        let forever = json!({
            "metadata": {"creationTimestamp": "2026-12-07T08:00:00Z"},
            "spec": {"startingDeadlineSeconds": i64::MAX},
        });
        assert_eq!(
            earliest_time(&forever, now, true),
            utc("2026-12-07T08:00:00Z")
        );
        // So the 11:00 time, 45s old, is not started: the next is 11:01.
        let s = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            most_recent_schedule_time(&s, &TimeZone::UTC, earliest_time(&cj, now, true), now).0,
            None
        );
        assert_eq!(
            next_schedule_delay(&cj, &s, &TimeZone::UTC, now),
            Some(Duration::from_secs(15) + NEXT_SCHEDULE_DELTA)
        );
    }
}

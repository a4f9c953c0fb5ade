//! Cron schedules as Kubernetes reads a CronJob's `spec.schedule`: the five standard
//! fields (minute, hour, day of month, month, day of week) with `*`, `?`, ranges, steps,
//! lists and the names JAN-DEC and SUN-SAT, or one of the macros `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`; and the next
//! time a schedule fires after a given instant in an IANA time zone.
//!
//! Why our own parser rather than a crate: Kubernetes parses with robfig/cron's
//! `ParseStandard`, and what it accepts and how it reads the day fields is the API's
//! contract. Both Vixie cron and robfig run a job when the day of month OR the day of
//! week matches if both fields are restricted, and when both match otherwise; but robfig
//! counts a field as unrestricted only when it is `*` or `?` with a step of 1, so `*/2`
//! in the day-of-month field restricts it, where Vixie cron treats any field starting
//! with `*` as unrestricted. `croner` follows Vixie cron and accepts what Kubernetes
//! refuses (seconds, `L`, `#`, `W`), so it would need a second validator in front of it;
//! the `cron` crate wants a seconds field. The parser is small, and owning it makes the
//! day rule and the error messages robfig's, which the API returns. Time zones come
//! from jiff, with its bundled tz database as a fallback when the host has no
//! /usr/share/zoneinfo (a fresh Debian container).

use jiff::civil::{DateTime, date};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How far ahead [`Schedule::next_after`] looks before deciding a schedule never fires
/// (`0 0 30 2 *`); robfig/cron gives up after five years too.
const SEARCH_YEARS: i16 = 5;

/// A parsed schedule: a bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether day of month or day of week is unrestricted (`*` or `?`), which makes
    /// the day rule AND instead of OR.
    any_day: bool,
}

/// Why a schedule does not parse, worded as robfig/cron words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty spec string")]
    Empty,
    #[error("expected exactly 5 fields, found {found}: [{fields}]")]
    FieldCount { found: usize, fields: String },
    #[error("unrecognized descriptor: {0}")]
    UnknownDescriptor(String),
    #[error("{0}")]
    BadField(String),
}

/// One field's bounds and names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
/// Month names, from 1.
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// Weekday names, from 0 (Sunday).
const DAY_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Schedule {
    /// Parses a schedule as robfig/cron's `ParseStandard` does, except that `@every`
    /// and a `TZ=`/`CRON_TZ=` prefix are refused (the CronJob's `timeZone` field says
    /// the zone).
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let expanded = if spec.starts_with('@') {
            match spec {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(ScheduleError::UnknownDescriptor(spec.to_string())),
            }
        } else {
            spec
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                found: fields.len(),
                fields: fields.join(" "),
            });
        }
        let (days_of_month, dom_star) = field(fields[2], &DAY_OF_MONTH)?;
        let (days_of_week, dow_star) = field(fields[4], &DAY_OF_WEEK)?;
        Ok(Schedule {
            minutes: field(fields[0], &MINUTE)?.0,
            hours: field(fields[1], &HOUR)?.0,
            days_of_month,
            months: field(fields[3], &MONTH)?.0,
            days_of_week,
            any_day: dom_star || dow_star,
        })
    }

    /// Whether the schedule fires on this day: both day fields must match when either
    /// is unrestricted, either one when both are restricted (robfig's `dayMatches`).
    fn day_matches(&self, t: DateTime) -> bool {
        let dom = bit(self.days_of_month, t.day() as u32);
        let dow = bit(
            self.days_of_week,
            t.weekday().to_sunday_zero_offset() as u32,
        );
        if self.any_day { dom && dow } else { dom || dow }
    }

    /// The first time after `after` (strictly) that the schedule fires, reading the
    /// fields as wall-clock time in `tz`; None if it never fires (within five years).
    ///
    /// A wall-clock time skipped by a DST change fires at the instant jiff's
    /// "compatible" rule maps it to (an hour later); a repeated hour fires once.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut t = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let last_year = t.year().saturating_add(SEARCH_YEARS);
        loop {
            if t.year() > last_year {
                return None;
            }
            if !bit(self.months, t.month() as u32) {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = date(y, m, 1).at(0, 0, 0, 0);
            } else if !self.day_matches(t) {
                t = t.date().tomorrow().ok()?.at(0, 0, 0, 0);
            } else if !bit(self.hours, t.hour() as u32) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if !bit(self.minutes, t.minute() as u32) {
                t = t.checked_add(1.minute()).ok()?;
            } else {
                let at = tz.to_ambiguous_timestamp(t).compatible().ok()?;
                if at > after {
                    return Some(at);
                }
                t = t.checked_add(1.minute()).ok()?;
            }
        }
    }
}

/// The time zone a CronJob's `spec.timeZone` names; UTC when it names none (Kubernetes
/// uses the controller manager's local zone, which is UTC in most clusters).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, jiff::Error> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name),
    }
}

fn bit(set: u64, value: u32) -> bool {
    set & (1 << value) != 0
}

/// One field: its comma-separated ranges, and whether it is unrestricted.
fn field(expr: &str, bounds: &Bounds) -> Result<(u64, bool), ScheduleError> {
    let mut bits = 0;
    let mut star = false;
    for part in expr.split(',') {
        let (b, s) = range(part, bounds)?;
        bits |= b;
        star |= s;
    }
    Ok((bits, star))
}

/// `*`, `?`, `N`, `N-M`, each optionally `/STEP` (robfig's `getRange`).
fn range(expr: &str, bounds: &Bounds) -> Result<(u64, bool), ScheduleError> {
    let bad = |m: String| ScheduleError::BadField(m);
    let mut range_and_step = expr.split('/');
    let low_and_high: Vec<&str> = range_and_step
        .next()
        .unwrap_or_default()
        .split('-')
        .collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut star) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        (bounds.min, bounds.max, true)
    } else {
        let start = value(low_and_high[0], bounds)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => value(low_and_high[1], bounds)?,
            _ => return Err(bad(format!("too many hyphens: {expr}"))),
        };
        (start, end, false)
    };
    let step = match (range_and_step.next(), range_and_step.next()) {
        (None, _) => 1,
        (Some(step), None) => {
            let step = number(step)?;
            if single {
                end = bounds.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        (Some(_), Some(_)) => return Err(bad(format!("too many slashes: {expr}"))),
    };
    if start < bounds.min {
        return Err(bad(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            bounds.min
        )));
    }
    if end > bounds.max {
        return Err(bad(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            bounds.max
        )));
    }
    if start > end {
        return Err(bad(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(bad(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0u64, |acc, v| acc | (1 << v));
    Ok((bits, star))
}

/// A number, or one of the field's names (case-insensitive).
fn value(text: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = bounds.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + bounds.min);
    }
    number(text)
}

fn number(text: &str) -> Result<u32, ScheduleError> {
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Err(ScheduleError::BadField(format!(
            "negative number ({n}) not allowed: {text}"
        ))),
        // Beyond any field's maximum: the range check reports it.
        Ok(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
        Err(_) => Err(ScheduleError::BadField(format!(
            "failed to parse int from {text}: strconv.Atoi: parsing \"{text}\": invalid syntax"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The next `n` firing times after `from`, in `tz`, as RFC 3339 in UTC.
    fn next_n(spec: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(spec).unwrap();
        let tz = time_zone(Some(tz)).unwrap();
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = schedule.next_after(t, &tz).unwrap();
                crate::objects::format_time(t)
            })
            .collect()
    }

    #[test]
    fn every_minute_and_steps() {
        assert_eq!(
            next_n("*/1 * * * *", "UTC", "2026-12-07T08:00:30Z", 3),
            [
                "2026-12-07T08:01:00Z",
                "2026-12-07T08:02:00Z",
                "2026-12-07T08:03:00Z"
            ]
        );
        // Strictly after: a time on the schedule is not its own next time.
        assert_eq!(
            next_n("*/15 * * * *", "UTC", "2026-12-07T08:15:00Z", 2),
            ["2026-12-07T08:30:00Z", "2026-12-07T08:45:00Z"]
        );
        assert_eq!(
            next_n("5/20 9-17 * * *", "UTC", "2026-12-07T17:50:00Z", 2),
            ["2026-12-08T09:05:00Z", "2026-12-08T09:25:00Z"]
        );
    }

    #[test]
    fn lists_ranges_and_names() {
        // 2026-12-07 is a Monday.
        assert_eq!(
            next_n("0 12 * * MON-FRI", "UTC", "2026-12-11T13:00:00Z", 2),
            ["2026-12-14T12:00:00Z", "2026-12-15T12:00:00Z"]
        );
        assert_eq!(
            next_n("30 6 1 jan,Jul *", "UTC", "2026-12-07T00:00:00Z", 2),
            ["2027-01-01T06:30:00Z", "2027-07-01T06:30:00Z"]
        );
        assert_eq!(
            next_n("0 0,12 * * sun", "UTC", "2026-12-07T00:00:00Z", 2),
            ["2026-12-13T00:00:00Z", "2026-12-13T12:00:00Z"]
        );
    }

    #[test]
    fn macros() {
        let from = "2026-12-07T08:00:30Z";
        assert_eq!(next_n("@hourly", "UTC", from, 1), ["2026-12-07T09:00:00Z"]);
        assert_eq!(next_n("@daily", "UTC", from, 1), ["2026-12-08T00:00:00Z"]);
        assert_eq!(
            next_n("@midnight", "UTC", from, 1),
            ["2026-12-08T00:00:00Z"]
        );
        assert_eq!(next_n("@weekly", "UTC", from, 1), ["2026-12-13T00:00:00Z"]);
        assert_eq!(next_n("@monthly", "UTC", from, 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(next_n("@yearly", "UTC", from, 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(
            next_n("@annually", "UTC", from, 1),
            ["2027-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn restricted_days_of_month_and_week_are_ored() {
        // The 13th, or any Friday: Fri 11th, Sun 13th, Fri 18th.
        assert_eq!(
            next_n("0 0 13 * 5", "UTC", "2026-12-07T00:00:00Z", 3),
            [
                "2026-12-11T00:00:00Z",
                "2026-12-13T00:00:00Z",
                "2026-12-18T00:00:00Z"
            ]
        );
        // `*` in either field makes it AND: only Fridays.
        assert_eq!(
            next_n("0 0 * * 5", "UTC", "2026-12-07T00:00:00Z", 2),
            ["2026-12-11T00:00:00Z", "2026-12-18T00:00:00Z"]
        );
        // robfig, unlike Vixie cron, counts `*/2` as a restriction: odd days OR Mondays.
        assert_eq!(
            next_n("0 0 */2 * 1", "UTC", "2026-12-07T00:00:00Z", 3),
            [
                "2026-12-09T00:00:00Z",
                "2026-12-11T00:00:00Z",
                "2026-12-13T00:00:00Z"
            ]
        );
        assert_eq!(
            next_n("0 0 */2 * 1", "UTC", "2026-12-13T00:00:00Z", 2),
            ["2026-12-14T00:00:00Z", "2026-12-15T00:00:00Z"]
        );
        // `?` is `*`.
        assert_eq!(
            Schedule::parse("0 0 ? * 5").unwrap(),
            Schedule::parse("0 0 * * 5").unwrap()
        );
    }

    #[test]
    fn time_zones_read_the_fields_as_wall_clock_time() {
        // 09:00 in Tokyo (UTC+9, no DST) is 00:00 UTC.
        assert_eq!(
            next_n("0 9 * * *", "Asia/Tokyo", "2026-12-07T01:00:00Z", 2),
            ["2026-12-08T00:00:00Z", "2026-12-09T00:00:00Z"]
        );
        // New York in winter (UTC-5) and in summer (UTC-4), away from the changes.
        assert_eq!(
            next_n("30 2 * * *", "America/New_York", "2026-12-07T00:00:00Z", 1),
            ["2026-12-07T07:30:00Z"]
        );
        assert_eq!(
            next_n("30 2 * * *", "America/New_York", "2026-07-01T00:00:00Z", 1),
            ["2026-07-01T06:30:00Z"]
        );
        // A daily time lands on the same wall-clock hour across a DST change.
        assert_eq!(
            next_n("0 12 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 2),
            ["2026-03-28T11:00:00Z", "2026-03-29T10:00:00Z"]
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert_eq!(time_zone(None).unwrap(), TimeZone::UTC);
    }

    #[test]
    fn a_schedule_that_never_fires_has_no_next_time() {
        let never = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            never.next_after(utc("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn bad_schedules_say_why_as_robfig_does() {
        let err = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(err(""), "empty spec string");
        assert_eq!(
            err("* * * *"),
            "expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(
            err("* * * * * *"),
            "expected exactly 5 fields, found 6: [* * * * * *]"
        );
        assert_eq!(err("@every 1h"), "unrecognized descriptor: @every 1h");
        assert_eq!(err("@reboot"), "unrecognized descriptor: @reboot");
        assert_eq!(
            err("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            err("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(err("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            err("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            err("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(err("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(err("*/2/3 * * * *"), "too many slashes: */2/3");
        assert_eq!(
            err("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            err("* * * FOO *"),
            "failed to parse int from FOO: strconv.Atoi: parsing \"FOO\": invalid syntax"
        );
    }
}

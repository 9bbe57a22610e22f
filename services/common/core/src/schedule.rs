//! Schedules: when a periodic task fires, and what a late scheduler does about the times it
//! missed.
//!
//! A schedule fires on a [`Timing`]: a cron expression (5 fields, or 6 with seconds first)
//! evaluated in an IANA time zone, or a fixed interval counted from an anchor instant. Fire times
//! are a pure function of the timing, so every scheduler instance computes the same ones; a fire's
//! task id and idempotency key are derived from (schedule id, fire time) ([`fire_key`],
//! [`fire_task_id`]), so one fire time can only ever become one task, whoever fires it.
//!
//! A scheduler that comes late to a schedule ([`Timing::plan`]) fires every due time that is at
//! most `grace` old as usual; the older ones were *missed* (the schedulers were down or stalled)
//! and the schedule's [`Catchup`] policy decides: [`Catchup::One`] collapses them into one fire
//! (the latest), [`Catchup::All`] fires the latest `limit` of them in order, [`Catchup::Skip`]
//! fires none. Either way the schedule's next fire is the first time after now.
//!
//! Cron and daylight saving time (croner's rules): a wall-clock time that a spring-forward gap
//! skips fires at the first instant after the gap; a time that a fall-back repeats fires once.
//!
//! Over 400 lines because of its tests, which start near line 528 (cron, time zones, daylight
//! saving, catch-up); the fire's task template ([`check_template`], [`fire_task`]) would move out
//! first.

use std::str::FromStr as _;

use chrono::{DateTime, Duration, TimeZone as _, Timelike as _, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use sha2::{Digest, Sha256};

use dispatch_proto::v1 as pb;
use prost::Message as _;

use crate::error::Violations;
use crate::ids::TaskId;
use crate::task::{NewTask, Tenant};
use crate::validate::{SpecLimits, parse_task_spec_with};

/// Largest schedule name, in characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Largest cron expression, in bytes.
pub const CRON_MAX_BYTES: usize = 256;
/// Smallest fixed interval: one second.
pub const INTERVAL_MIN_MS: u64 = 1_000;
/// Largest fixed interval: 366 days.
pub const INTERVAL_MAX_MS: u64 = 366 * 24 * 3_600_000;
/// Largest jitter: one hour.
pub const JITTER_MAX_MS: u32 = 3_600_000;
/// Largest catch-up bound of [`Catchup::All`].
pub const CATCHUP_LIMIT_MAX: u32 = 100;
/// The catch-up bound of [`Catchup::All`] when none is given.
pub const CATCHUP_LIMIT_DEFAULT: u32 = 10;
/// Missed times counted one by one at most (a cron schedule's count stops there).
const COUNT_CAP: u64 = 100_000;

/// A schedule's identity (a UUIDv7): fire ids derive from it, so a schedule deleted and created
/// again under its name never collides with the old one's fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleId(uuid::Uuid);

impl ScheduleId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// From the 16 bytes stored in MySQL.
    ///
    /// # Errors
    /// Not 16 bytes.
    pub fn from_slice(b: &[u8]) -> Result<Self, String> {
        uuid::Uuid::from_slice(b)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// The 16 bytes stored in MySQL.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for ScheduleId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a schedule does while the task of its previous fire has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The fire is skipped (and counted).
    Skip,
    /// The fire happens anyway.
    Allow,
}

impl Overlap {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Allow => "allow",
        }
    }

    /// From the stored name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "allow" => Ok(Self::Allow),
            other => Err(format!("unknown overlap policy {other:?}")),
        }
    }
}

/// What a scheduler that comes back after downtime does with the times it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// One fire, for the latest missed time.
    One,
    /// Every missed time, at most this many (the latest ones), oldest first.
    All(u32),
    /// None of the missed times.
    Skip,
}

impl Catchup {
    /// The stored name (the bound of `All` is stored apart).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::All(_) => "all",
            Self::Skip => "skip",
        }
    }

    /// From the stored name and bound.
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str, limit: u32) -> Result<Self, String> {
        match s {
            "one" => Ok(Self::One),
            "all" => Ok(Self::All(limit)),
            "skip" => Ok(Self::Skip),
            other => Err(format!("unknown catch-up policy {other:?}")),
        }
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    /// A cron expression in a time zone.
    Cron {
        /// The parsed expression.
        cron: Box<Cron>,
        /// The zone its fields are read in.
        tz: chrono_tz::Tz,
    },
    /// Every `every` from `anchor` on.
    Every {
        /// The interval.
        every: Duration,
        /// The first fire time (fires are `anchor + k * every`).
        anchor: DateTime<Utc>,
    },
}

/// Parses a cron expression: 5 fields (minute precision) or 6 with seconds first, names of
/// months and weekdays, `L`, `W`, `#`, and the `@hourly`-style nicknames.
///
/// # Errors
/// A description of what is wrong.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err("is required (or set interval_ms)".into());
    }
    if expr.len() > CRON_MAX_BYTES {
        return Err(format!("must be at most {CRON_MAX_BYTES} bytes"));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("is not a valid cron expression ({e}): {expr:?}"))?;
    // A pattern that parses but never matches (e.g. 30 February) would spin every scheduler.
    let probe = Utc
        .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    cron.find_next_occurrence(&probe, false)
        .map_err(|e| format!("never fires ({e}): {expr:?}"))?;
    Ok(cron)
}

/// Parses an IANA time zone name (`Europe/Berlin`); empty is `UTC`.
///
/// # Errors
/// An unknown zone.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    if name.is_empty() {
        return Ok(chrono_tz::UTC);
    }
    chrono_tz::Tz::from_str(name).map_err(|_| {
        format!("unknown time zone {name:?}; use an IANA name such as UTC or Europe/Berlin")
    })
}

/// Checks a schedule name: 1..=100 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// A description of what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS {
        return Err(format!("must be 1..={NAME_MAX_CHARS} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("may contain only [A-Za-z0-9._-]".into());
    }
    Ok(())
}

/// What one scheduler pass does with a schedule that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The times to fire, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Due times not fired because of the catch-up policy (a lower bound when very many).
    pub missed: u64,
    /// The next fire time (none: the timing never fires again).
    pub next: Option<DateTime<Utc>>,
}

impl Timing {
    /// A cron timing.
    ///
    /// # Errors
    /// As [`parse_cron`] and [`parse_time_zone`].
    pub fn cron(expr: &str, time_zone: &str) -> Result<Self, String> {
        Ok(Self::Cron {
            cron: Box::new(parse_cron(expr)?),
            tz: parse_time_zone(time_zone)?,
        })
    }

    /// An interval timing.
    ///
    /// # Errors
    /// An interval outside 1 s..=366 days.
    pub fn every(interval_ms: u64, anchor: DateTime<Utc>) -> Result<Self, String> {
        if !(INTERVAL_MIN_MS..=INTERVAL_MAX_MS).contains(&interval_ms) {
            return Err(format!(
                "is {interval_ms} ms; must be {INTERVAL_MIN_MS}..={INTERVAL_MAX_MS} ms (1 s to 366 days)"
            ));
        }
        Ok(Self::Every {
            every: Duration::milliseconds(i64::try_from(interval_ms).unwrap_or(i64::MAX)),
            anchor,
        })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, tz } => {
                // Cron times are whole seconds: from the second `t` falls in.
                let t = t.with_nanosecond(0).unwrap_or(t).with_timezone(tz);
                cron.find_next_occurrence(&t, false)
                    .ok()
                    .map(|n| n.with_timezone(&Utc))
            }
            Self::Every { every, anchor } => {
                if t < *anchor {
                    return Some(*anchor);
                }
                let k = (t - *anchor).num_milliseconds() / every.num_milliseconds();
                anchor.checked_add_signed(*every * i32::try_from(k + 1).ok()?)
            }
        }
    }

    /// The first fire time at or after `t`.
    pub fn at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(t - Duration::milliseconds(1))
            .filter(|n| *n >= t)
            .or_else(|| self.next_after(t))
    }

    /// The last fire time strictly before `t`.
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, tz } => {
                // A time with a fraction of a second is after its whole second.
                let whole = t.with_nanosecond(0).unwrap_or(t);
                let start = if whole < t {
                    whole + Duration::seconds(1)
                } else {
                    whole
                };
                cron.find_previous_occurrence(&start.with_timezone(tz), false)
                    .ok()
                    .map(|n| n.with_timezone(&Utc))
            }
            Self::Every { every, anchor } => {
                if t <= *anchor {
                    return None;
                }
                let ms = (t - *anchor).num_milliseconds() - 1;
                let k = ms / every.num_milliseconds();
                anchor.checked_add_signed(*every * i32::try_from(k).ok()?)
            }
        }
    }

    /// How many fire times lie in `[from, until)` (counted up to a cap for cron).
    fn count(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
        if from >= until {
            return 0;
        }
        match self {
            Self::Every { every, .. } => {
                let first = self.at_or_after(from);
                let Some(first) = first.filter(|f| *f < until) else {
                    return 0;
                };
                let span = (until - first).num_milliseconds() - 1;
                u64::try_from(span / every.num_milliseconds() + 1).unwrap_or(0)
            }
            Self::Cron { .. } => {
                let mut n = 0;
                let mut t = self.at_or_after(from);
                while let Some(x) = t.filter(|x| *x < until) {
                    n += 1;
                    if n >= COUNT_CAP {
                        break;
                    }
                    t = self.next_after(x);
                }
                n
            }
        }
    }

    /// What to do now (`now`) with a schedule whose next fire time is `next_fire_at` (due:
    /// `next_fire_at <= now`): fire the due times at most `grace` old; of the older (missed)
    /// ones, fire what `catchup` says; the next fire time is the first after `now`.
    pub fn plan(
        &self,
        next_fire_at: DateTime<Utc>,
        now: DateTime<Utc>,
        grace: Duration,
        catchup: Catchup,
    ) -> Plan {
        let cutoff = now - grace;
        // Due and recent enough: every one fires.
        let mut on_time = Vec::new();
        let mut t = if next_fire_at >= cutoff {
            Some(next_fire_at)
        } else {
            self.at_or_after(cutoff)
        };
        while let Some(x) = t.filter(|x| *x <= now) {
            on_time.push(x);
            t = self.next_after(x);
        }
        // Missed: [next_fire_at, cutoff).
        let missed_total = self.count(next_fire_at, cutoff);
        let keep = match catchup {
            Catchup::Skip => 0,
            Catchup::One => 1,
            Catchup::All(limit) => u64::from(limit),
        };
        let mut recent = Vec::new();
        let mut t = if missed_total > 0 {
            self.before(cutoff)
        } else {
            None
        };
        while let Some(x) = t.filter(|x| *x >= next_fire_at) {
            if recent.len() as u64 >= keep.min(missed_total) {
                break;
            }
            recent.push(x);
            t = self.before(x);
        }
        recent.reverse();
        let missed = missed_total.saturating_sub(recent.len() as u64);
        recent.extend(on_time);
        Plan {
            fire: recent,
            missed,
            next: self.next_after(now),
        }
    }
}

/// The idempotency key of the fire of schedule `schedule_id` at `fire_at` (`trigger`: an
/// operator's TriggerSchedule at that instant, apart from the timing's own fires).
pub fn fire_key(schedule_id: &ScheduleId, fire_at: DateTime<Utc>, trigger: bool) -> String {
    let kind = if trigger { ":trigger" } else { "" };
    // Fault build: a random part makes every attempt at one fire a new key (and task id).
    #[cfg(feature = "fault-random-fire-id")]
    let kind = format!("{kind}:{}", uuid::Uuid::now_v7().simple());
    format!(
        "schedule:{}:{}{kind}",
        schedule_id.0.simple(),
        fire_at.timestamp_millis()
    )
}

/// The task id of a fire: the id a submit with the fire's key ([`fire_key`]) gets, so a second
/// attempt at the same fire (another scheduler instance, a failover, a restart) is refused by the
/// tasks table's primary key (and its unique (tenant, idempotency key)).
pub fn fire_task_id(tenant: &str, key: &str) -> TaskId {
    TaskId::from_idempotency_key(tenant, key)
}

/// The jitter of a fire: a delay in `0..=jitter_ms` derived from (schedule, fire time), so every
/// attempt at one fire computes the same `run_at`.
pub fn jitter(schedule_id: &ScheduleId, fire_at: DateTime<Utc>, jitter_ms: u32) -> Duration {
    if jitter_ms == 0 {
        return Duration::zero();
    }
    let mut h = Sha256::new();
    h.update(b"dispatch.v1/schedule-jitter\0");
    h.update(schedule_id.as_bytes());
    h.update(fire_at.timestamp_millis().to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let ms = u64::from_be_bytes(b) % (u64::from(jitter_ms) + 1);
    Duration::milliseconds(i64::try_from(ms).unwrap_or(0))
}

/// Checks a schedule's task template (`prefix`: its field path, e.g. `schedule.template`) as
/// SubmitTask checks a task, under the deployment's `limits`; `run_at`, `deadline` and
/// `idempotency_key` must be unset (each fire sets its own).
///
/// # Errors
/// Every field violation found.
pub fn check_template(
    prefix: &str,
    tenant: &Tenant,
    spec: &pb::TaskSpec,
    now: DateTime<Utc>,
    limits: &SpecLimits,
) -> Result<(), Violations> {
    let mut v = Violations::default();
    if spec.run_at.is_some() {
        v.add(
            format!("{prefix}.run_at"),
            "must be unset: each fire runs at its fire time (plus jitter_ms)",
        );
    }
    if spec.deadline.is_some() {
        v.add(
            format!("{prefix}.deadline"),
            "must be unset: an absolute deadline would pass for every later fire",
        );
    }
    if !spec.idempotency_key.is_empty() {
        v.add(
            format!("{prefix}.idempotency_key"),
            "must be unset: each fire's key is derived from (schedule, fire time)",
        );
    }
    // The rest as SubmitTask checks it (the fields above are reported once, above).
    let rest = pb::TaskSpec {
        run_at: None,
        deadline: None,
        idempotency_key: String::new(),
        ..spec.clone()
    };
    if let Err(more) = parse_task_spec_with(prefix, tenant, rest, now, limits) {
        v.0.extend(more.0);
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

/// The task of one fire of a schedule: the template (protobuf `TaskSpec`) with the fire's
/// idempotency key and id ([`fire_key`], [`fire_task_id`]) and `run_at` = the fire time plus its
/// [`jitter`]. The template was checked when the schedule was created; per-task timeouts are not
/// checked again (the deployment's limits may have changed since).
///
/// # Errors
/// A template that no longer decodes or parses.
pub fn fire_task(
    template: &[u8],
    tenant: &Tenant,
    schedule_id: &ScheduleId,
    fire_at: DateTime<Utc>,
    trigger: bool,
    jitter_ms: u32,
    now: DateTime<Utc>,
) -> Result<NewTask, String> {
    let mut spec = pb::TaskSpec::decode(template).map_err(|e| format!("template: {e}"))?;
    spec.run_at = None;
    spec.deadline = None;
    spec.idempotency_key = fire_key(schedule_id, fire_at, trigger);
    let limits = SpecLimits {
        max_task_timeout_ms: u32::MAX,
        ..SpecLimits::default()
    };
    let mut t = parse_task_spec_with("template", tenant, spec, now, &limits)
        .map_err(|v| format!("template: {}", v.summary()))?;
    let key = t
        .idempotency_key
        .as_ref()
        .map(|k| k.as_str())
        .unwrap_or_default();
    t.task_id = fire_task_id(tenant.as_str(), key);
    t.run_at = Some(fire_at + jitter(schedule_id, fire_at, jitter_ms));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let t = Timing::cron("*/15 * * * * *", "").expect("6 fields");
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:07.500Z")),
            Some(at("2026-01-01T00:00:15Z"))
        );
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:15Z")),
            Some(at("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            t.before(at("2026-01-01T00:00:15Z")),
            Some(at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            t.before(at("2026-01-01T00:00:15.200Z")),
            Some(at("2026-01-01T00:00:15Z"))
        );
        let t = Timing::cron("30 9 * * MON-FRI", "UTC").expect("5 fields");
        // 2026-01-03 is a Saturday.
        assert_eq!(
            t.next_after(at("2026-01-03T00:00:00Z")),
            Some(at("2026-01-05T09:30:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        for bad in ["", "* * *", "61 * * * * *", "every minute", "0 0 30 2 *"] {
            assert!(parse_cron(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_time_zone("Mars/Olympus").is_err());
        assert!(parse_time_zone("Europe/Berlin").is_ok());
        assert!(check_name("nightly-report_1.v2").is_ok());
        assert!(check_name("has space").is_err());
        assert!(check_name("").is_err());
        assert!(Timing::every(999, Utc::now()).is_err());
    }

    #[test]
    fn time_zones_and_dst() {
        // 09:00 in Berlin is 08:00 UTC in winter, 07:00 in summer.
        let t = Timing::cron("0 0 9 * * *", "Europe/Berlin").expect("cron");
        assert_eq!(
            t.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            t.next_after(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T07:00:00Z"))
        );
        // 02:30 does not exist on 2026-03-29 in Berlin (02:00 -> 03:00): it fires at 03:00 local.
        let t = Timing::cron("0 30 2 * * *", "Europe/Berlin").expect("cron");
        assert_eq!(
            t.next_after(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        // 02:30 happens twice on 2026-10-25 (03:00 -> 02:00): it fires once.
        let first = t.next_after(at("2026-10-24T12:00:00Z")).expect("next");
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        let second = t.next_after(first).expect("next");
        assert_eq!(second, at("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn intervals_are_anchored() {
        let t = Timing::every(10_000, at("2026-01-01T00:00:03Z")).expect("interval");
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T00:00:03Z"))
        );
        assert_eq!(
            t.next_after(at("2026-01-01T00:00:03Z")),
            Some(at("2026-01-01T00:00:13Z"))
        );
        assert_eq!(
            t.at_or_after(at("2026-01-01T00:00:13Z")),
            Some(at("2026-01-01T00:00:13Z"))
        );
        assert_eq!(
            t.before(at("2026-01-01T00:00:13Z")),
            Some(at("2026-01-01T00:00:03Z"))
        );
        assert_eq!(t.before(at("2026-01-01T00:00:03Z")), None);
    }

    /// A minute schedule whose fires fall 30 s off the minute, 10 min late.
    fn late() -> (Timing, DateTime<Utc>, DateTime<Utc>) {
        let anchor = at("2026-01-01T00:00:30Z");
        let t = Timing::every(60_000, anchor).expect("interval");
        (t, anchor, at("2026-01-01T00:10:00Z"))
    }

    #[test]
    fn catch_up_one_fires_the_latest_missed_time_once() {
        let (t, from, now) = late();
        let p = t.plan(from, now, Duration::seconds(5), Catchup::One);
        assert_eq!(p.fire, vec![at("2026-01-01T00:09:30Z")]);
        assert_eq!(p.missed, 9);
        assert_eq!(p.next, Some(at("2026-01-01T00:10:30Z")));
    }

    #[test]
    fn catch_up_all_fires_the_latest_missed_times_up_to_the_bound() {
        let (t, from, now) = late();
        let p = t.plan(from, now, Duration::seconds(5), Catchup::All(3));
        assert_eq!(
            p.fire,
            vec![
                at("2026-01-01T00:07:30Z"),
                at("2026-01-01T00:08:30Z"),
                at("2026-01-01T00:09:30Z")
            ]
        );
        assert_eq!(p.missed, 7);
        let p = t.plan(from, now, Duration::seconds(5), Catchup::All(100));
        assert_eq!(p.fire.len(), 10);
        assert_eq!(p.missed, 0);
        assert_eq!(p.fire[0], from);
    }

    #[test]
    fn catch_up_skip_fires_none_of_the_missed_but_the_on_time_ones() {
        let (t, from, now) = late();
        let p = t.plan(from, now, Duration::seconds(5), Catchup::Skip);
        assert!(p.fire.is_empty());
        assert_eq!(p.missed, 10);
        // A second late is on time (within grace): it fires whatever the policy.
        let p = t.plan(
            at("2026-01-01T00:09:30Z"),
            at("2026-01-01T00:09:31Z"),
            Duration::seconds(5),
            Catchup::Skip,
        );
        assert_eq!(p.fire, vec![at("2026-01-01T00:09:30Z")]);
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn every_second_within_grace_fires_each_time() {
        let t = Timing::every(1_000, at("2026-01-01T00:00:00Z")).expect("interval");
        let p = t.plan(
            at("2026-01-01T00:00:10Z"),
            at("2026-01-01T00:00:13.400Z"),
            Duration::seconds(5),
            Catchup::Skip,
        );
        assert_eq!(p.fire.len(), 4);
        assert_eq!(p.next, Some(at("2026-01-01T00:00:14Z")));
        // A cron schedule very far behind counts a bounded number of misses.
        let t = Timing::cron("* * * * * *", "").expect("cron");
        let p = t.plan(
            at("2025-01-01T00:00:00Z"),
            at("2026-01-01T00:00:00Z"),
            Duration::seconds(5),
            Catchup::One,
        );
        // The latest missed time once, then the six on time (00:00:00 and the five before).
        assert_eq!(p.fire.len(), 7, "{:?}", p.fire);
        assert_eq!(p.fire[0], at("2025-12-31T23:59:54Z"));
        assert!(p.missed >= COUNT_CAP - 1);
    }

    #[cfg(not(feature = "fault-random-fire-id"))]
    #[test]
    fn fire_ids_and_jitter_are_derived_from_schedule_and_time() {
        let s = ScheduleId::new();
        let f = at("2026-01-01T00:00:00Z");
        let k = fire_key(&s, f, false);
        assert_eq!(k, fire_key(&s, f, false));
        assert_ne!(k, fire_key(&s, f, true));
        assert!(k.len() <= crate::task::limits::IDEMPOTENCY_KEY_MAX_CHARS);
        assert_ne!(
            fire_key(&s, f, false),
            fire_key(&s, f + Duration::seconds(1), false)
        );
        let j = jitter(&s, f, 1_000);
        assert_eq!(j, jitter(&s, f, 1_000));
        assert!(j >= Duration::zero() && j <= Duration::seconds(1));
        assert_eq!(jitter(&s, f, 0), Duration::zero());
    }

    #[test]
    fn a_fire_has_one_task_id() {
        let s = ScheduleId::new();
        let k = fire_key(&s, Utc::now(), false);
        assert_eq!(fire_task_id("acme", &k), fire_task_id("acme", &k));
        assert_ne!(fire_task_id("acme", &k), fire_task_id("globex", &k));
    }

    #[test]
    fn a_fire_is_the_template_at_its_fire_time() {
        let tenant = Tenant::parse("acme").expect("tenant");
        let spec = pb::TaskSpec {
            business_key: "nightly".into(),
            task_type: "report.build".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        assert!(
            check_template(
                "schedule.template",
                &tenant,
                &spec,
                Utc::now(),
                &SpecLimits::default()
            )
            .is_ok()
        );
        let bad = pb::TaskSpec {
            idempotency_key: "k".into(),
            task_type: "Bad Type".into(),
            ..spec.clone()
        };
        let v = check_template(
            "schedule.template",
            &tenant,
            &bad,
            Utc::now(),
            &SpecLimits::default(),
        )
        .expect_err("invalid");
        let fields: Vec<_> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "schedule.template.idempotency_key",
                "schedule.template.task_type"
            ]
        );
        let s = ScheduleId::new();
        let f = at("2026-01-01T00:00:00Z");
        let t =
            fire_task(&spec.encode_to_vec(), &tenant, &s, f, false, 0, Utc::now()).expect("task");
        assert_eq!(t.run_at, Some(f));
        assert_eq!(
            t.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
            Some(fire_key(&s, f, false))
        );
        assert_eq!(t.task_type.as_str(), "report.build");
        assert!(fire_task(b"\xff\xff", &tenant, &s, f, false, 0, Utc::now()).is_err());
    }
}

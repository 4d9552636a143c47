//! Cloudflare's cron dialect: parsing a Cron Trigger expression and finding
//! the minutes it fires at.
//!
//! What it does: five fields (minute, hour, day of month, month, day of
//! week), in UTC, with lists, ranges and steps; month names `JAN`-`DEC`
//! and weekday names `SUN`-`SAT` (case-insensitive); weekdays numbered as
//! Cloudflare numbers them, 1 = Sunday to 7 = Saturday (0 is refused, as
//! Cloudflare refuses it); in the day of month `L` (the last day), `LW`
//! (the last weekday) and `15W` (the weekday nearest the 15th, within the
//! month); in the day of week `6L` / `FRIL` (the last Friday) and `MON#2`
//! (the second Monday). When both the day of month and the day of week
//! are restricted, a day matches if either does (as in Vixie cron).
//!
//! What it does not do: read a clock or run anything. Every function takes
//! the time as milliseconds since the Unix epoch.

mod calendar;
mod parse;

#[cfg(test)]
mod tests;

pub use parse::CronError;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The expression as configured (what `controller.cron` gives back).
    source: String,
    minutes: u64,
    hours: u32,
    days: DaySpec,
    months: u16,
    weekdays: WeekdaySpec,
}

/// The day-of-month field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DaySpec {
    /// `*`: no restriction.
    any: bool,
    /// Days 1-31, bit per day.
    days: u32,
    /// `L`.
    last: bool,
    /// `LW`.
    last_weekday: bool,
    /// `nW`: the weekday nearest each of these days.
    nearest_weekday: u32,
}

/// The day-of-week field; weekdays 0 = Sunday .. 6 = Saturday inside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WeekdaySpec {
    /// `*`: no restriction.
    any: bool,
    /// Bit per weekday.
    weekdays: u8,
    /// `nL`: the last such weekday of the month, bit per weekday.
    last: u8,
    /// `n#k`: the k-th such weekday of the month.
    nth: Vec<(u8, u8)>,
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// How far ahead `next_after` looks: a schedule that matches no day in this
/// many years (`0 0 30 2 *`) never fires.
const HORIZON_DAYS: i64 = 366 * 30;

impl Schedule {
    /// Parses `expression`; the error names it and says what is wrong.
    pub fn parse(expression: &str) -> Result<Schedule, CronError> {
        parse::parse(expression)
    }

    /// The expression as it was written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the schedule fires in the minute that starts at `minute_ms`
    /// (any time within the minute counts).
    pub fn matches(&self, time_ms: i64) -> bool {
        let minute = time_ms.div_euclid(MINUTE_MS);
        let day = minute.div_euclid(24 * 60);
        let minute_of_day = minute.rem_euclid(24 * 60);
        self.day_matches(day)
            && self.hours & (1 << (minute_of_day / 60)) != 0
            && self.minutes & (1 << (minute_of_day % 60)) != 0
    }

    /// The first minute (its start, in ms) strictly after `time_ms` at which
    /// the schedule fires; `None` if it fires on no day within 30 years.
    pub fn next_after(&self, time_ms: i64) -> Option<i64> {
        let first_minute = time_ms.div_euclid(MINUTE_MS) + 1;
        let first_day = first_minute.div_euclid(24 * 60);
        for day in first_day..first_day + HORIZON_DAYS {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first_day { first_minute.rem_euclid(24 * 60) } else { 0 };
            for minute_of_day in from..24 * 60 {
                if self.hours & (1 << (minute_of_day / 60)) != 0 && self.minutes & (1 << (minute_of_day % 60)) != 0 {
                    return Some(day * DAY_MS + minute_of_day * MINUTE_MS);
                }
            }
        }
        None
    }

    /// The minutes (their starts, in ms) in `(after_ms, upto_ms]` at which
    /// the schedule fires, in order: what a scheduler that last looked at
    /// `after_ms` and looks again at `upto_ms` should run.
    pub fn fires_between(&self, after_ms: i64, upto_ms: i64) -> Vec<i64> {
        let mut fires = Vec::new();
        let mut at = after_ms;
        while let Some(next) = self.next_after(at) {
            if next > upto_ms {
                break;
            }
            fires.push(next);
            at = next;
        }
        fires
    }

    /// Whether the day `day` (days since the epoch) matches the day of
    /// month, month and day of week fields.
    fn day_matches(&self, day: i64) -> bool {
        let (year, month, day_of_month) = calendar::civil_from_days(day);
        if self.months & (1 << month) == 0 {
            return false;
        }
        let length = calendar::days_in_month(year, month);
        let weekday = calendar::weekday(day);
        let by_day_of_month = || self.days.matches(year, month, day_of_month, length);
        let by_weekday = || self.weekdays.matches(weekday, day_of_month, length);
        match (self.days.any, self.weekdays.any) {
            (true, true) => true,
            (true, false) => by_weekday(),
            (false, true) => by_day_of_month(),
            (false, false) => by_day_of_month() || by_weekday(),
        }
    }
}

impl DaySpec {
    fn matches(&self, year: i64, month: u32, day: u32, length: u32) -> bool {
        if self.days & (1 << day) != 0 || (self.last && day == length) {
            return true;
        }
        let weekday = |d: u32| calendar::weekday(calendar::days_from_civil(year, month, d));
        let is_weekday = |d: u32| (1..=5).contains(&weekday(d));
        if self.last_weekday {
            let last = (1..=length).rev().find(|&d| is_weekday(d)).expect("every month has a weekday");
            if day == last {
                return true;
            }
        }
        (1..=31u32).filter(|target| self.nearest_weekday & (1 << target) != 0).any(|target| {
            let target = target.min(length);
            nearest_weekday(target, length, weekday(target)) == day
        })
    }
}

/// The weekday (Monday to Friday) nearest `target`, without leaving the
/// month: a Saturday moves to Friday (or, on the 1st, to Monday the 3rd),
/// a Sunday to Monday (or, on the last day, to Friday).
fn nearest_weekday(target: u32, length: u32, weekday: u32) -> u32 {
    match weekday {
        6 if target == 1 => 3,
        6 => target - 1,
        0 if target == length => target - 2,
        0 => target + 1,
        _ => target,
    }
}

impl WeekdaySpec {
    fn matches(&self, weekday: u32, day: u32, length: u32) -> bool {
        let bit = 1u8 << weekday;
        if self.weekdays & bit != 0 {
            return true;
        }
        if self.last & bit != 0 && day + 7 > length {
            return true;
        }
        self.nth.iter().any(|&(w, k)| u32::from(w) == weekday && (day - 1) / 7 + 1 == u32::from(k))
    }
}

/// `time_ms` (milliseconds since the epoch) as RFC 3339 in UTC, to the
/// second: `2026-11-30T03:01:25Z`.
pub fn format_utc(time_ms: i64) -> String {
    let seconds = time_ms.div_euclid(1000);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = calendar::civil_from_days(days);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

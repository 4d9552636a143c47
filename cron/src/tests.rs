use crate::calendar::{civil_from_days, days_from_civil, days_in_month, weekday};
use crate::Schedule;

/// Milliseconds of `year-month-day hour:minute` UTC.
fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
    (days_from_civil(year, month, day) * 24 * 60 + hour * 60 + minute) * 60_000
}

fn next(expression: &str, after: i64) -> Option<i64> {
    Schedule::parse(expression).unwrap().next_after(after)
}

fn error(expression: &str) -> String {
    Schedule::parse(expression).unwrap_err().to_string()
}

#[test]
fn the_calendar_round_trips_and_knows_its_weekdays() {
    for days in [-800_000, -1, 0, 59, 10_957, 20_000, 2_932_896] {
        let (year, month, day) = civil_from_days(days);
        assert_eq!(days_from_civil(year, month, day), days);
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
    assert_eq!(weekday(days_from_civil(2026, 11, 29)), 0, "2026-11-29 is a Sunday");
    assert_eq!(days_in_month(2024, 2), 29);
    assert_eq!(days_in_month(2100, 2), 28);
    assert_eq!(days_in_month(2000, 2), 29);
}

#[test]
fn steps_lists_and_ranges() {
    assert_eq!(next("*/5 * * * *", at(2026, 11, 29, 12, 3)), Some(at(2026, 11, 29, 12, 5)));
    // Strictly after: a time on a firing minute gives the next one.
    assert_eq!(next("*/5 * * * *", at(2026, 11, 29, 12, 5)), Some(at(2026, 11, 29, 12, 10)));
    assert_eq!(next("0,30 9-10 * * *", at(2026, 11, 29, 10, 30)), Some(at(2026, 11, 30, 9, 0)));
    assert_eq!(next("10-20/5 * * * *", at(2026, 11, 29, 12, 16)), Some(at(2026, 11, 29, 12, 20)));
    // `a/step` runs to the end of the field.
    assert_eq!(next("50/4 * * * *", at(2026, 11, 29, 12, 55)), Some(at(2026, 11, 29, 12, 58)));
    assert_eq!(next("59 23 31 12 *", at(2026, 11, 29, 0, 0)), Some(at(2026, 12, 31, 23, 59)));
}

#[test]
fn names_are_case_insensitive_and_weekdays_start_on_sunday_as_one() {
    // 2026-11-28 is a Saturday: the next weekday run is Monday.
    assert_eq!(next("0 3 * * MON-FRI", at(2026, 11, 28, 4, 0)), Some(at(2026, 11, 30, 3, 0)));
    assert_eq!(next("0 3 * * 2-6", at(2026, 11, 28, 4, 0)), Some(at(2026, 11, 30, 3, 0)));
    assert_eq!(next("0 0 1 jan *", at(2026, 11, 29, 0, 0)), Some(at(2027, 1, 1, 0, 0)));
    assert_eq!(next("0 0 * * sun", at(2026, 11, 28, 0, 0)), Some(at(2026, 11, 29, 0, 0)));
    assert_eq!(next("0 0 * * 1", at(2026, 11, 28, 0, 0)), Some(at(2026, 11, 29, 0, 0)));
    assert_eq!(next("0 0 * * 7", at(2026, 11, 27, 0, 0)), Some(at(2026, 11, 28, 0, 0)));
}

#[test]
fn last_day_and_month_ends_with_leap_years() {
    assert_eq!(next("0 0 L * *", at(2024, 2, 1, 0, 0)), Some(at(2024, 2, 29, 0, 0)));
    assert_eq!(next("0 0 L * *", at(2023, 2, 1, 0, 0)), Some(at(2023, 2, 28, 0, 0)));
    assert_eq!(next("0 0 L * *", at(2026, 4, 1, 0, 0)), Some(at(2026, 4, 30, 0, 0)));
    assert_eq!(next("0 0 29 2 *", at(2025, 3, 1, 0, 0)), Some(at(2028, 2, 29, 0, 0)));
    assert_eq!(next("0 0 29 2 *", at(2096, 3, 1, 0, 0)), Some(at(2104, 2, 29, 0, 0)), "2100 is no leap year");
    assert_eq!(next("0 0 31 * *", at(2026, 4, 1, 0, 0)), Some(at(2026, 5, 31, 0, 0)));
    assert_eq!(next("0 0 30 2 *", at(2026, 1, 1, 0, 0)), None, "February has no 30th");
}

#[test]
fn weekday_forms_of_the_day_of_month() {
    // 2026-05-31 is a Sunday: the last weekday of May is Friday the 29th.
    assert_eq!(next("59 23 LW * *", at(2026, 5, 1, 0, 0)), Some(at(2026, 5, 29, 23, 59)));
    // 2026-08-31 is a Monday.
    assert_eq!(next("0 0 LW * *", at(2026, 8, 1, 0, 0)), Some(at(2026, 8, 31, 0, 0)));
    // 2026-08-15 is a Saturday: the nearest weekday is Friday the 14th.
    assert_eq!(next("0 0 15W * *", at(2026, 8, 1, 0, 0)), Some(at(2026, 8, 14, 0, 0)));
    // 2026-02-15 is a Sunday: Monday the 16th.
    assert_eq!(next("0 0 15W * *", at(2026, 2, 1, 0, 0)), Some(at(2026, 2, 16, 0, 0)));
    // 2026-08-01 is a Saturday: the month is not left, Monday the 3rd.
    assert_eq!(next("0 0 1W * *", at(2026, 7, 31, 0, 0)), Some(at(2026, 8, 3, 0, 0)));
    // 2026-05-31 is a Sunday and the last day: Friday the 29th.
    assert_eq!(next("0 0 31W * *", at(2026, 5, 1, 0, 0)), Some(at(2026, 5, 29, 0, 0)));
}

#[test]
fn last_and_nth_weekday_of_the_month() {
    // The last Friday of November 2026 is the 27th.
    assert_eq!(next("0 18 * * 6L", at(2026, 11, 1, 0, 0)), Some(at(2026, 11, 27, 18, 0)));
    assert_eq!(next("0 18 * * friL", at(2026, 11, 1, 0, 0)), Some(at(2026, 11, 27, 18, 0)));
    // December 2026 starts on a Tuesday: its second Monday is the 14th.
    assert_eq!(next("0 0 * * MON#2", at(2026, 12, 1, 0, 0)), Some(at(2026, 12, 14, 0, 0)));
    assert_eq!(next("0 0 * * 2#1", at(2026, 12, 1, 0, 0)), Some(at(2026, 12, 7, 0, 0)));
    // A fifth Monday exists only in some months: August 2026 has one (31st).
    assert_eq!(next("0 0 * * MON#5", at(2026, 8, 1, 0, 0)), Some(at(2026, 8, 31, 0, 0)));
}

#[test]
fn a_restricted_day_of_month_and_day_of_week_match_either() {
    // The 13th, or any Friday: 2026-03-13 is both, 2026-03-20 a Friday.
    let schedule = Schedule::parse("0 0 13 * FRI").unwrap();
    assert_eq!(schedule.next_after(at(2026, 3, 1, 0, 0)), Some(at(2026, 3, 6, 0, 0)));
    assert_eq!(schedule.next_after(at(2026, 3, 10, 0, 0)), Some(at(2026, 3, 13, 0, 0)));
    assert_eq!(schedule.next_after(at(2026, 4, 10, 0, 0)), Some(at(2026, 4, 13, 0, 0)));
}

#[test]
fn fires_between_gives_each_minute_once() {
    let every_minute = Schedule::parse("* * * * *").unwrap();
    let start = at(2026, 11, 29, 12, 0) + 30_000;
    assert_eq!(
        every_minute.fires_between(start, start + 3 * 60_000),
        vec![at(2026, 11, 29, 12, 1), at(2026, 11, 29, 12, 2), at(2026, 11, 29, 12, 3)]
    );
    assert!(every_minute.fires_between(start, start + 1_000).is_empty());
    assert!(every_minute.matches(at(2026, 11, 29, 12, 1) + 59_999));
    let hourly = Schedule::parse("0 * * * *").unwrap();
    assert!(hourly.matches(at(2026, 11, 29, 12, 0)));
    assert!(!hourly.matches(at(2026, 11, 29, 12, 1)));
    assert_eq!(hourly.source(), "0 * * * *");
}

#[test]
fn bad_expressions_are_named_with_the_reason() {
    let message = error("* * * *");
    assert!(message.contains("\"* * * *\"") && message.contains("expected 5 fields"), "{message}");
    assert!(error("0 0 * * 0").contains("1 = Sunday to 7 = Saturday"));
    assert!(error("60 * * * *").contains("outside the minute field's 0-59"));
    assert!(error("* 24 * * *").contains("hour"));
    assert!(error("*/0 * * * *").contains("not a positive number"));
    assert!(error("30-10 * * * *").contains("runs backwards"));
    assert!(error("* * * FOO *").contains("\"FOO\" is not a value of the month field"));
    assert!(error("* * * * MON#6").contains("1 to 5"));
    assert!(error("* * 32 * *").contains("day of month"));
    assert!(error("* * * 13 *").contains("month"));
    assert!(Schedule::parse("* * * * * *").is_err(), "six fields are refused");
    assert!(Schedule::parse("").is_err());
}

#[test]
fn times_format_as_rfc3339_utc() {
    assert_eq!(crate::format_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(crate::format_utc(1_796_007_685_999), "2026-11-30T03:01:25Z");
    assert_eq!(crate::format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
}

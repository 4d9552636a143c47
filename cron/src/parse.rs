//! The expression's grammar: five whitespace-separated fields, each a
//! comma-separated list of `*`, `a`, `a-b`, with an optional `/step`, and
//! the day fields' `L`, `W` and `#` forms.

use crate::{DaySpec, Schedule, WeekdaySpec};

/// Why an expression is not a Cron Trigger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason}")]
pub struct CronError {
    pub expression: String,
    pub reason: String,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
/// Cloudflare numbers weekdays 1 (Sunday) to 7 (Saturday).
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One field's range and the names it takes (name `i` is value `min + i`).
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DAY: Field = Field { name: "day of month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field { name: "month", min: 1, max: 12, names: &MONTHS };
const WEEKDAY: Field = Field { name: "day of week", min: 1, max: 7, names: &WEEKDAYS };

pub(crate) fn parse(expression: &str) -> Result<Schedule, CronError> {
    let error = |reason: String| CronError { expression: expression.to_string(), reason };
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let [minute, hour, day, month, weekday] = fields[..] else {
        return Err(error(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        )));
    };
    let minutes = bits(&MINUTE, minute).map_err(error)?;
    let hours = bits(&HOUR, hour).map_err(error)? as u32;
    let days = days(day).map_err(error)?;
    let months = bits(&MONTH, month).map_err(error)? as u16;
    let weekdays = weekdays(weekday).map_err(error)?;
    Ok(Schedule { source: expression.to_string(), minutes, hours, days, months, weekdays })
}

/// A plain field as a bit per value.
fn bits(field: &Field, text: &str) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        set |= item_bits(field, item)?;
    }
    Ok(set)
}

/// One list item: `*`, `a`, `a-b`, each with an optional `/step`.
fn item_bits(field: &Field, item: &str) -> Result<u64, String> {
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            let step: u32 = step
                .parse()
                .ok()
                .filter(|&step| step > 0)
                .ok_or_else(|| format!("the step {step:?} in the {} field is not a positive number", field.name))?;
            (range, Some(step))
        }
        None => (item, None),
    };
    let (low, high) = if range == "*" {
        (field.min, field.max)
    } else if let Some((low, high)) = range.split_once('-') {
        let (low, high) = (value(field, low)?, value(field, high)?);
        if low > high {
            return Err(format!("the range {range:?} in the {} field runs backwards", field.name));
        }
        (low, high)
    } else {
        let low = value(field, range)?;
        // `a/step` runs from `a` to the end of the field.
        (low, if step.is_some() { field.max } else { low })
    };
    let step = step.unwrap_or(1);
    Ok((low..=high).step_by(step as usize).fold(0u64, |set, value| set | 1 << value))
}

/// A number or (for months and weekdays) a name, within the field's range.
fn value(field: &Field, text: &str) -> Result<u32, String> {
    let upper = text.to_ascii_uppercase();
    if let Some(index) = field.names.iter().position(|name| *name == upper) {
        return Ok(field.min + index as u32);
    }
    let value: u32 = text.parse().map_err(|_| format!("{text:?} is not a value of the {} field", field.name))?;
    if !(field.min..=field.max).contains(&value) {
        let extra =
            if field.name == WEEKDAY.name && value == 0 { " (weekdays are 1 = Sunday to 7 = Saturday)" } else { "" };
        return Err(format!("{value} is outside the {} field's {}-{}{extra}", field.name, field.min, field.max));
    }
    Ok(value)
}

fn days(text: &str) -> Result<DaySpec, String> {
    let mut spec = DaySpec { any: text == "*", ..DaySpec::default() };
    if spec.any {
        return Ok(spec);
    }
    for item in text.split(',') {
        let upper = item.to_ascii_uppercase();
        if upper == "L" {
            spec.last = true;
        } else if upper == "LW" {
            spec.last_weekday = true;
        } else if let Some(day) = upper.strip_suffix('W') {
            spec.nearest_weekday |= 1 << value(&DAY, day)?;
        } else {
            spec.days |= item_bits(&DAY, item)? as u32;
        }
    }
    Ok(spec)
}

fn weekdays(text: &str) -> Result<WeekdaySpec, String> {
    let mut spec = WeekdaySpec { any: text == "*", ..WeekdaySpec::default() };
    if spec.any {
        return Ok(spec);
    }
    // Inside, weekdays are 0 = Sunday: one less than Cloudflare's numbers.
    let inside = |value: u32| (value - 1) as u8;
    for item in text.split(',') {
        let upper = item.to_ascii_uppercase();
        if let Some((weekday, nth)) = upper.split_once('#') {
            let nth: u8 = nth
                .parse()
                .ok()
                .filter(|nth| (1..=5).contains(nth))
                .ok_or_else(|| format!("{item:?}: after # comes which one in the month, 1 to 5"))?;
            spec.nth.push((inside(value(&WEEKDAY, weekday)?), nth));
        } else if let Some(weekday) = upper.strip_suffix('L').filter(|weekday| !weekday.is_empty()) {
            spec.last |= 1 << inside(value(&WEEKDAY, weekday)?);
        } else {
            // Bits 1..=7 in Cloudflare's numbering, shifted down to 0..=6.
            spec.weekdays |= (item_bits(&WEEKDAY, item)? >> 1) as u8;
        }
    }
    Ok(spec)
}

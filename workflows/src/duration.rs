//! Durations as workflows write them: milliseconds, or `"10 seconds"`.

/// Why a duration was refused; the message names what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {given:?}: expected milliseconds or \"<number> <unit>\" with unit second, minute, hour, day, week, month or year")]
pub struct DurationError {
    pub given: String,
}

/// A duration as JavaScript passes it: a number of milliseconds or a string.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum DurationInput {
    Millis(f64),
    Text(String),
}

const SECOND: f64 = 1000.0;

/// Milliseconds of a duration: a finite, non-negative number of
/// milliseconds, or `"<number> <unit>[s]"` (Cloudflare's units; a month is
/// 30 days, a year 365).
pub fn parse(input: &DurationInput) -> Result<u64, DurationError> {
    let refuse = || DurationError {
        given: match input {
            DurationInput::Millis(ms) => ms.to_string(),
            DurationInput::Text(text) => text.clone(),
        },
    };
    let ms = match input {
        DurationInput::Millis(ms) => *ms,
        DurationInput::Text(text) => {
            let mut words = text.split_whitespace();
            let (Some(number), Some(unit), None) = (words.next(), words.next(), words.next()) else {
                return Err(refuse());
            };
            let number: f64 = number.parse().map_err(|_| refuse())?;
            let unit = unit.strip_suffix('s').unwrap_or(unit);
            let scale = match unit {
                "millisecond" => 1.0,
                "second" => SECOND,
                "minute" => 60.0 * SECOND,
                "hour" => 3600.0 * SECOND,
                "day" => 86_400.0 * SECOND,
                "week" => 7.0 * 86_400.0 * SECOND,
                "month" => 30.0 * 86_400.0 * SECOND,
                "year" => 365.0 * 86_400.0 * SECOND,
                _ => return Err(refuse()),
            };
            number * scale
        }
    };
    if !ms.is_finite() || ms < 0.0 || ms > u64::MAX as f64 {
        return Err(refuse());
    }
    Ok(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<u64, DurationError> {
        parse(&DurationInput::Text(s.into()))
    }

    #[test]
    fn numbers_are_milliseconds_and_strings_take_cloudflare_units() {
        assert_eq!(parse(&DurationInput::Millis(1500.0)), Ok(1500));
        assert_eq!(text("10 seconds"), Ok(10_000));
        assert_eq!(text("1 second"), Ok(1000));
        assert_eq!(text("2 minutes"), Ok(120_000));
        assert_eq!(text("1 hour"), Ok(3_600_000));
        assert_eq!(text("24 hours"), Ok(86_400_000));
        assert_eq!(text("1 day"), Ok(86_400_000));
        assert_eq!(text("1 week"), Ok(604_800_000));
        assert_eq!(text("1 month"), Ok(2_592_000_000));
        assert_eq!(text("1 year"), Ok(31_536_000_000));
        assert_eq!(text("0.5 seconds"), Ok(500));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in ["", "10", "ten seconds", "10 fortnights", "10 seconds later", "-1 second"] {
            assert!(text(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&DurationInput::Millis(-1.0)).is_err());
        assert!(parse(&DurationInput::Millis(f64::NAN)).is_err());
        assert!(parse(&DurationInput::Millis(f64::INFINITY)).is_err());
    }
}

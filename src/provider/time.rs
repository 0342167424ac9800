//! The time formats the three clouds write, all turned into UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};

use super::raw::Scalar;

/// Tencent writes local `YYYY-MM-DD HH:MM:SS` times in China Standard Time (UTC+8).
const TENCENT_LOCAL_OFFSET_SECS: i64 = 8 * 3600;

/// The earliest event time accepted: 2006-01-01T00:00:00Z (the first cloud API; CloudTrail
/// itself began in 2013). Earlier times are damaged records, not history.
pub const MIN_EVENT_TIME: i64 = 1_136_073_600;

/// How far past the wall clock an event time may be by default: a log cannot come from the
/// future, but clocks drift.
pub const DEFAULT_MAX_SKEW_SECS: i64 = 3600;

/// At most this many characters of an input value are quoted in an error message.
const EXCERPT_CHARS: usize = 40;

/// A short, quoted excerpt of an input value for an error message (never the whole of a large
/// value).
pub fn excerpt(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(EXCERPT_CHARS) {
        None => format!("{s:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &s[..end], s.len()),
    }
}

/// Takes `TENCENT_LOCAL_OFFSET_SECS` off a naive local time, checked (a year of ±262143 is
/// valid to the parser and overflows the subtraction).
fn from_beijing(naive: &NaiveDateTime) -> Option<DateTime<Utc>> {
    Utc.from_utc_datetime(naive)
        .checked_sub_signed(TimeDelta::seconds(TENCENT_LOCAL_OFFSET_SECS))
}

/// Checks that an event time is within [2006, now + max_skew]: an event time outside it is a
/// damaged or forged record, and must not move any window.
pub fn check_event_time(
    t: DateTime<Utc>,
    now: DateTime<Utc>,
    max_skew_secs: i64,
) -> Result<DateTime<Utc>, String> {
    let ts = t.timestamp();
    if ts < MIN_EVENT_TIME {
        return Err(format!(
            "{} is before 2006-01-01",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if ts > now.timestamp().saturating_add(max_skew_secs) {
        return Err(format!(
            "{} is more than {max_skew_secs} s ahead of the clock ({})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    Ok(t)
}

/// Epoch values above this are milliseconds (year 5138 in seconds), below it seconds.
const EPOCH_MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Parses any event-time value the clouds use:
/// RFC 3339 / ISO 8601 with a zone (AWS, Alibaba, Logstash `@timestamp`);
/// epoch seconds or milliseconds as a number or a numeric string (Tencent, CloudEvents);
/// `YYYY-MM-DD HH:MM:SS` without a zone, taken as UTC+8 (Tencent's local time).
pub fn parse_event_time(value: &Scalar<'_>) -> Result<DateTime<Utc>, String> {
    match value {
        Scalar::Int(i) => from_epoch(*i),
        Scalar::UInt(u) => i64::try_from(*u)
            .map_err(|_| format!("epoch time {u} out of range"))
            .and_then(from_epoch),
        Scalar::Float(f) if f.is_finite() => from_epoch(*f as i64),
        Scalar::Str(s) => parse_time_text(s),
        Scalar::Null => Err("event time is null".into()),
        _ => Err("event time is not a string or a number".into()),
    }
}

/// Parses a textual time (see [`parse_event_time`]).
pub fn parse_time_text(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("event time is empty".into());
    }
    if let Some(dt) = fast_rfc3339_z(t) {
        return Ok(dt);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|e| format!("epoch time {}: {e}", excerpt(t)))
            .and_then(from_epoch);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    // `2024-07-10T16:48:26` without a zone: CloudTrail never writes it, Logstash may; UTC.
    if let Ok(naive) = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(Utc.from_utc_datetime(&naive));
    }
    if let Ok(naive) = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
        return from_beijing(&naive).ok_or_else(|| format!("time {} out of range", excerpt(t)));
    }
    Err(format!("unrecognised time format {}", excerpt(t)))
}

fn from_epoch(value: i64) -> Result<DateTime<Utc>, String> {
    let dt = if value.abs() >= EPOCH_MILLIS_THRESHOLD {
        DateTime::from_timestamp_millis(value)
    } else {
        DateTime::from_timestamp(value, 0)
    };
    match dt {
        Some(dt) if value > 0 => Ok(dt),
        _ => Err(format!("epoch time {value} out of range")),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the form CloudTrail and ActionTrail write, without the general
/// parser.
fn fast_rfc3339_z(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = NaiveDate::from_ymd_opt(i32::try_from(num(0..4)?).ok()?, num(5..7)?, num(8..10)?)?;
    let naive = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(Utc.from_utc_datetime(&naive))
}

/// Parses the times credential reports write: ISO 8601 (`2019-11-11T12:33:18Z`,
/// `2017-06-10T02:35:07+00:00`) and Tencent's `2019/8/16 9:25:56` (UTC+8, unpadded).
pub fn parse_report_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Some(dt) = fast_rfc3339_z(t) {
        return Ok(dt);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    let out_of_range = || format!("time {} out of range", excerpt(t));
    for fmt in ["%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return from_beijing(&naive).ok_or_else(out_of_range);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y/%m/%d") {
        let naive = date
            .and_hms_opt(0, 0, 0)
            .ok_or_else(|| format!("bad date {}", excerpt(t)))?;
        return from_beijing(&naive).ok_or_else(out_of_range);
    }
    Err(format!("not a time: {}", excerpt(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn check(v: Scalar<'_>, expected: &str) {
        let got = parse_event_time(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert_eq!(
            got.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            expected
        );
    }

    #[test]
    fn all_cloud_time_formats_become_utc() {
        check(
            Scalar::Str(Cow::Borrowed("2022-11-10T16:24:34Z")),
            "2022-11-10T16:24:34Z",
        );
        check(
            Scalar::Str(Cow::Borrowed("2024-01-01T08:00:00.123+08:00")),
            "2024-01-01T00:00:00.123Z",
        );
        check(Scalar::Int(1680513809), "2023-04-03T09:23:29Z");
        check(
            Scalar::Str(Cow::Borrowed("1680513809")),
            "2023-04-03T09:23:29Z",
        );
        check(Scalar::Int(1615430559146), "2021-03-11T02:42:39.146Z");
        // Tencent local time is UTC+8.
        check(
            Scalar::Str(Cow::Borrowed("2017-11-02 15:56:53")),
            "2017-11-02T07:56:53Z",
        );
    }

    #[test]
    fn bad_times_are_errors_not_panics() {
        for bad in [
            "",
            "yesterday",
            "0000-00-00 00:00:00",
            "2022-13-40T99:99:99Z",
            "99999999999999999999",
        ] {
            assert!(
                parse_event_time(&Scalar::Str(Cow::Borrowed(bad))).is_err(),
                "{bad}"
            );
        }
        assert!(parse_event_time(&Scalar::Null).is_err());
        assert!(parse_event_time(&Scalar::Int(-5)).is_err());
        assert!(parse_event_time(&Scalar::UInt(u64::MAX)).is_err());
    }

    #[test]
    fn extreme_years_are_errors_not_panics() {
        // chrono parses years of ±262143; the UTC+8 shift used to overflow and panic.
        for bad in [
            "-262143-01-01 00:00:00",
            "+262142-12-31 23:59:59",
            "-262143-01-01T00:00:00",
            "-262143-01-01T00:00:00Z",
        ] {
            let _ = parse_time_text(bad);
        }
        assert!(parse_time_text("-262143-01-01 00:00:00").is_err());
        for bad in [
            "-262143/1/1 0:00:00",
            "-262143/1/1 0:00",
            "-262143/1/1",
            "-262143-01-01 00:00:00",
        ] {
            assert!(parse_report_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_times_outside_the_sane_range_are_errors() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t = |s: &str| parse_time_text(s).unwrap();
        assert!(check_event_time(t("2025-12-31T23:00:00Z"), now, 3600).is_ok());
        assert!(check_event_time(t("2026-01-01T00:59:59Z"), now, 3600).is_ok());
        let e = check_event_time(t("2099-01-01T00:00:00Z"), now, 3600).unwrap_err();
        assert!(e.contains("ahead of the clock"), "{e}");
        let e = check_event_time(t("2005-12-31T23:59:59Z"), now, 3600).unwrap_err();
        assert!(e.contains("before 2006"), "{e}");
        // A skew of i64::MAX cannot overflow.
        assert!(check_event_time(t("2099-01-01T00:00:00Z"), now, i64::MAX).is_ok());
    }

    #[test]
    fn errors_quote_only_an_excerpt() {
        let huge = "9".repeat(1 << 20) + "x";
        let e = parse_time_text(&huge).unwrap_err();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert!(e.contains("1048577 bytes"), "{e}");
        // Excerpts end on a character boundary.
        let e = parse_time_text(&"时".repeat(100)).unwrap_err();
        assert!(e.contains('时'));
    }

    #[test]
    fn report_times() {
        let t = parse_report_time("2019/8/16 9:25:56").unwrap();
        assert_eq!(t.to_rfc3339(), "2019-08-16T01:25:56+00:00");
        let t = parse_report_time("2017-06-10T02:35:07+00:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2017-06-10T02:35:07+00:00");
        assert!(parse_report_time("N/A").is_err());
    }
}

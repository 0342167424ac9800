//! The time formats the three clouds write, all turned into UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::raw::Scalar;

/// Tencent writes local `YYYY-MM-DD HH:MM:SS` times in China Standard Time (UTC+8).
const TENCENT_LOCAL_OFFSET_SECS: i64 = 8 * 3600;

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
            .map_err(|e| format!("epoch time {t:?}: {e}"))
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
        return Ok(
            Utc.from_utc_datetime(&naive) - chrono::Duration::seconds(TENCENT_LOCAL_OFFSET_SECS)
        );
    }
    Err(format!("unrecognised time format {t:?}"))
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
    for fmt in ["%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(Utc.from_utc_datetime(&naive)
                - chrono::Duration::seconds(TENCENT_LOCAL_OFFSET_SECS));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y/%m/%d") {
        let naive = date
            .and_hms_opt(0, 0, 0)
            .ok_or_else(|| format!("bad date {t:?}"))?;
        return Ok(
            Utc.from_utc_datetime(&naive) - chrono::Duration::seconds(TENCENT_LOCAL_OFFSET_SECS)
        );
    }
    Err(format!("not a time: {t:?}"))
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
    fn report_times() {
        let t = parse_report_time("2019/8/16 9:25:56").unwrap();
        assert_eq!(t.to_rfc3339(), "2019-08-16T01:25:56+00:00");
        let t = parse_report_time("2017-06-10T02:35:07+00:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2017-06-10T02:35:07+00:00");
        assert!(parse_report_time("N/A").is_err());
    }
}

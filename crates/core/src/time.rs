//! Half-hour flooring and the `hour_start` wire format.

use jiff::Timestamp;

/// Seconds in a bucket.
pub const HALF_HOUR: i64 = 1800;

/// The UTC start of the half hour holding `unix_secs`.
pub fn floor_half_hour(unix_secs: i64) -> i64 {
    unix_secs - unix_secs.rem_euclid(HALF_HOUR)
}

/// Formats a bucket start as the wire string, e.g. `2025-12-01T00:30:00.000Z`.
pub fn format_hour_start(unix_secs: i64) -> String {
    match Timestamp::from_second(unix_secs) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
        Err(_) => unix_secs.to_string(),
    }
}

/// Errors of [`parse_hour_start`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HourStartError {
    #[error("not an RFC 3339 timestamp: {0:?}")]
    Invalid(String),
    #[error("not on a UTC :00 or :30 boundary: {0:?}")]
    NotBoundary(String),
}

/// Parses a wire `hour_start`, which must be an instant on a UTC `:00`/`:30` boundary.
pub fn parse_hour_start(s: &str) -> Result<i64, HourStartError> {
    let ts: Timestamp = s
        .parse()
        .map_err(|_| HourStartError::Invalid(s.to_string()))?;
    if ts.subsec_nanosecond() != 0 || ts.as_second().rem_euclid(HALF_HOUR) != 0 {
        return Err(HourStartError::NotBoundary(s.to_string()));
    }
    Ok(ts.as_second())
}

/// Parses an agent's timestamp (RFC 3339 with an offset, or a bare `Z`) to unix seconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_to_half_hours() {
        assert_eq!(floor_half_hour(0), 0);
        assert_eq!(floor_half_hour(1799), 0);
        assert_eq!(floor_half_hour(1800), 1800);
        assert_eq!(floor_half_hour(-1), -1800);
    }

    #[test]
    fn formats_and_parses() {
        let t = parse_timestamp("2025-12-01T00:47:12.345Z").unwrap();
        assert_eq!(
            format_hour_start(floor_half_hour(t)),
            "2025-12-01T00:30:00.000Z"
        );
        assert_eq!(
            parse_hour_start("2025-12-01T00:30:00.000Z").unwrap(),
            floor_half_hour(t)
        );
        assert!(matches!(
            parse_hour_start("2025-12-01T00:31:00Z"),
            Err(HourStartError::NotBoundary(_))
        ));
        assert!(matches!(
            parse_hour_start("yesterday"),
            Err(HourStartError::Invalid(_))
        ));
    }
}

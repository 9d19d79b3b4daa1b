//! Durations written the way Dapr and Kubernetes users write them: `5s`, `500ms`, `1m30s`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a Go-style duration (`250ms`, `5s`, `1m30s`, `2h`).
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); expected a number with a unit, like 500ms, 5s or 1m30s")
    })
}

/// Formats a duration so that [`parse`] reads it back.
pub fn format(duration: &Duration) -> String {
    humantime::format_duration(*duration)
        .to_string()
        .replace(' ', "")
}

/// `#[serde(with = "outrigger_config::duration")]` for a required duration.
pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(duration))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(with = "outrigger_config::duration::option")]` for an optional duration.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => s.serialize_str(&format(d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn rejects_a_number_without_unit_and_says_what_is_expected() {
        let err = parse("5").unwrap_err();
        assert!(err.contains("expected a number with a unit"), "{err}");
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(3600),
        ] {
            assert_eq!(parse(&format(&d)).unwrap(), d);
        }
    }
}

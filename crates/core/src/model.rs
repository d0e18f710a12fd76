//! Model normalisation: trim only, and `unknown` for missing, empty or blank names.

/// The model name used when an agent did not say which model answered.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Trims surrounding whitespace and keeps case and inner characters;
/// missing, empty or blank names become [`UNKNOWN_MODEL`].
pub fn normalize_model(raw: Option<&str>) -> String {
    match raw.map(str::trim) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => UNKNOWN_MODEL.to_string(),
    }
}

/// Whether a (normalised) model name is a known model.
pub fn is_known(model: &str) -> bool {
    model != UNKNOWN_MODEL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_keeps_case() {
        assert_eq!(
            normalize_model(Some("  MoonshotAI/Kimi-K2-Thinking  ")),
            "MoonshotAI/Kimi-K2-Thinking"
        );
    }

    #[test]
    fn blank_is_unknown() {
        assert_eq!(normalize_model(None), "unknown");
        assert_eq!(normalize_model(Some("")), "unknown");
        assert_eq!(normalize_model(Some(" \t\n")), "unknown");
    }
}

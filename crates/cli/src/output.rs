//! Table and number formatting shared by the commands.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// A table that fits the terminal (80 columns when stdout is not one).
pub fn new_table(header: &[&str]) -> Table {
    use std::io::IsTerminal;
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .apply_modifier(comfy_table::modifiers::UTF8_ROUND_CORNERS)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    let width = if std::io::stdout().is_terminal() {
        t.width().unwrap_or(80)
    } else {
        80
    };
    t.set_width(width);
    for i in 1..header.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// A token count in at most 7 characters: `999`, `12.3K`, `4.56M`, `1.20B`.
pub fn abbreviate(n: u64) -> String {
    let f = n as f64;
    if n < 1_000 {
        n.to_string()
    } else if n < 1_000_000 {
        trim(format!("{:.1}", f / 1e3)) + "K"
    } else if n < 1_000_000_000 {
        trim(format!("{:.2}", f / 1e6)) + "M"
    } else if n < 1_000_000_000_000 {
        trim(format!("{:.2}", f / 1e9)) + "B"
    } else {
        trim(format!("{:.2}", f / 1e12)) + "T"
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A cost in dollars with cents (`$12.34`), or `<$0.01` for a non-zero amount below a cent.
pub fn format_cost(c: f64) -> String {
    if c > 0.0 && c < 0.005 {
        "<$0.01".to_string()
    } else {
        format!("${c:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviations() {
        assert_eq!(abbreviate(999), "999");
        assert_eq!(abbreviate(12_345), "12.3K");
        assert_eq!(abbreviate(4_560_000), "4.56M");
        assert_eq!(abbreviate(1_200_000_000), "1.2B");
        assert_eq!(format_cost(0.001), "<$0.01");
        assert_eq!(format_cost(12.345), "$12.35");
    }
}

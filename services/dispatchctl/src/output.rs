//! Tables for people, JSON for scripts.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::Format;

/// Prints `rows` as a table with `headers`, or `json` as pretty JSON.
pub fn print<T: Serialize>(format: Format, headers: &[&str], rows: Vec<Vec<String>>, json: &T) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(json).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        ),
        Format::Table => println!("{}", table(headers, rows)),
    }
}

/// Renders a table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// A time as RFC 3339, `-` when absent (or not a valid time).
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(dispatch_core::time::from_proto)
        .map_or_else(|| "-".into(), |t| t.to_rfc3339())
}

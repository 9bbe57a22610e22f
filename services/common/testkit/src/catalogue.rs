//! The metric catalogue (docs/metrics.md) checked against what a service registers
//! ([`dispatch_runtime::metrics::families`]): every registered family is documented, in the
//! "All services" table or the service's own, with its type and label names; every family of the
//! service's table is registered once the service's metrics are initialised.

use std::collections::BTreeMap;

use dispatch_runtime::metrics::Family;

/// One catalogue row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The `## ...` section it is listed under.
    pub section: String,
    /// `counter`, `gauge`, ...
    pub kind: String,
    /// Label names, sorted.
    pub labels: Vec<String>,
}

/// The catalogue's rows by metric name (`process_*` and other non-`dispatch_` rows left out).
///
/// # Panics
/// When docs/metrics.md cannot be read.
pub fn read() -> BTreeMap<String, Entry> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse(&text)
}

/// Parses the catalogue's tables: `| `name` | type | labels | meaning |` rows under `## Section`.
pub fn parse(text: &str) -> BTreeMap<String, Entry> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("## ") {
            section = s.trim().to_owned();
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", "`name`", "type", "labels", "meaning", ""]
        let [_, name, kind, labels, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .filter(|n| n.starts_with("dispatch_"))
        else {
            continue;
        };
        out.insert(
            name.to_owned(),
            Entry {
                section: section.clone(),
                kind: (*kind).to_owned(),
                labels: label_names(labels),
            },
        );
    }
    out
}

/// `service, method` -> [method, service]; "`limit` (`instance`, `tenant`)" -> [limit]: what is
/// in parentheses describes the values.
fn label_names(cell: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '`' => {}
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut v: Vec<String> = plain
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// What is wrong between `registered` (a service's families) and the catalogue's `All services`
/// and `section` tables; empty when they agree.
pub fn mismatches(
    catalogue: &BTreeMap<String, Entry>,
    section: &str,
    registered: &[Family],
) -> Vec<String> {
    let mut out = Vec::new();
    for f in registered
        .iter()
        .filter(|f| f.name.starts_with("dispatch_"))
    {
        match catalogue.get(&f.name) {
            None => out.push(format!(
                "{} ({}, labels {:?}) is registered but not in docs/metrics.md",
                f.name, f.kind, f.labels
            )),
            Some(e) if e.section != "All services" && e.section != section => out.push(format!(
                "{} is registered by the {section} but listed under \"{}\"",
                f.name, e.section
            )),
            Some(e) if e.kind != f.kind || e.labels != f.labels => out.push(format!(
                "{}: registered as {} with labels {:?}, docs/metrics.md says {} with {:?}",
                f.name, f.kind, f.labels, e.kind, e.labels
            )),
            Some(_) => {}
        }
    }
    for (name, e) in catalogue.iter().filter(|(_, e)| e.section == section) {
        if !registered.iter().any(|f| &f.name == name) {
            out.push(format!(
                "{name} is listed under \"{}\" in docs/metrics.md but the {section} does not register it",
                e.section
            ));
        }
    }
    out
}

/// Panics with every drift between docs/metrics.md and what the process registered so far,
/// checked as the `section` service's (call it after the service's metrics `init`).
///
/// # Panics
/// When docs/metrics.md is out of date.
pub fn assert_matches(section: &str) {
    let wrong = mismatches(&read(), section, &dispatch_runtime::metrics::families());
    assert!(
        wrong.is_empty(),
        "docs/metrics.md is out of date:\n{}",
        wrong.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Metric catalogue\n\n## All services\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n| `dispatch_build_info` | gauge | service, version | always 1 |\n| `process_*` | | | |\n\n## Reader\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n| `dispatch_watch_streams_refused_total` | counter | `limit` (`instance`, `tenant`) | refused |\n| `dispatch_cache_entries` | gauge | | L1 entries |\n";

    fn fam(name: &str, kind: &'static str, labels: &[&str]) -> Family {
        Family {
            name: name.into(),
            kind,
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_catalogue_that_matches_has_no_mismatches() {
        let c = parse(DOC);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c["dispatch_watch_streams_refused_total"].labels, ["limit"]);
        let reg = [
            fam("dispatch_build_info", "gauge", &["service", "version"]),
            fam(
                "dispatch_watch_streams_refused_total",
                "counter",
                &["limit"],
            ),
            fam("dispatch_cache_entries", "gauge", &[]),
        ];
        assert_eq!(mismatches(&c, "Reader", &reg), Vec::<String>::new());
    }

    #[test]
    fn every_kind_of_drift_is_named() {
        let c = parse(DOC);
        let reg = [
            fam("dispatch_build_info", "counter", &["service", "version"]),
            fam(
                "dispatch_watch_streams_refused_total",
                "counter",
                &["limit", "tenant"],
            ),
            fam("dispatch_undocumented_total", "counter", &[]),
        ];
        let m = mismatches(&c, "Reader", &reg);
        assert_eq!(m.len(), 4, "{m:#?}");
        assert!(
            m[0].starts_with("dispatch_build_info: registered as counter"),
            "{m:#?}"
        );
        assert!(
            m.iter().any(|s| s.contains("dispatch_undocumented_total")),
            "{m:#?}"
        );
        assert!(
            m.iter()
                .any(|s| s.starts_with("dispatch_cache_entries is listed")),
            "{m:#?}"
        );
        assert_eq!(
            mismatches(
                &c,
                "Gateway",
                &[fam("dispatch_cache_entries", "gauge", &[])]
            ),
            ["dispatch_cache_entries is registered by the Gateway but listed under \"Reader\""]
        );
    }
}

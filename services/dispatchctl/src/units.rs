//! Numbers with a unit on the command line: timeouts and intervals (`500ms`, `30s`, `5m`, `1h`,
//! `1d`) and ages (`90s`, `2d`, `1w`). Each flag has its own units and bounds; the reading of
//! digits and a suffix is this one.

/// `s` as digits then one of `units`' suffixes (`""` for a bare number, when `units` lists it),
/// times that unit's scale. `None`: not of that form, or past `u64`.
pub fn scaled(s: &str, units: &[(&str, u64)]) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let (_, scale) = units.iter().find(|(u, _)| *u == unit)?;
    n.checked_mul(*scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_then_a_listed_unit() {
        let units = [("", 1), ("s", 1_000)];
        assert_eq!(scaled("7", &units), Some(7));
        assert_eq!(scaled("7s", &units), Some(7_000));
        for bad in ["", "s", "7m", "-7s", "7.5s", "99999999999999999999s"] {
            assert_eq!(scaled(bad, &units), None, "{bad}");
        }
        assert_eq!(
            scaled("7", &[("s", 1)]),
            None,
            "a bare number needs the unit \"\""
        );
    }
}

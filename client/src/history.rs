//! How `history` and `rollback` results look on a terminal.

use attune_packs_client::pb;

use crate::output::table;

/// `1700000000123` as `2023-11-14 22:13:20 UTC`.
fn when(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

pub fn print_history(r: &pb::PackHistoryResponse) {
    if r.entries.is_empty() {
        println!("no history");
    } else {
        let rows: Vec<Vec<String>> = r
            .entries
            .iter()
            .map(|e| {
                vec![
                    when(e.at_ms),
                    e.action.clone(),
                    or_dash(&e.from_version),
                    or_dash(&e.to_version),
                    e.outcome.clone(),
                    or_dash(&e.actor),
                    e.detail.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &["WHEN", "ACTION", "FROM", "TO", "OUTCOME", "BY", "DETAIL"],
                &rows
            )
        );
    }
    if !r.kept_versions.is_empty() {
        println!();
        println!("kept for rollback:");
        let rows: Vec<Vec<String>> = r
            .kept_versions
            .iter()
            .map(|k| {
                vec![
                    k.version.clone(),
                    when(k.kept_at_ms),
                    or_dash(&k.source),
                    k.checksum.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["VERSION", "KEPT AT", "SOURCE", "CHECKSUM"], &rows)
        );
    }
}

pub fn print_rollback(r: &pb::RollbackPackResult) {
    if r.success {
        println!(
            "✓ {} rolled back from {} to {}",
            r.r#ref, r.from_version, r.to_version
        );
        return;
    }
    for e in &r.errors {
        println!("refused: {e}");
    }
    if !r.dependents.is_empty() {
        println!("dependents: {}", r.dependents.join(", "));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(super::when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::when(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::when(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}

//! kubectl-style plain tables: upper-case headers, columns left-aligned and three spaces apart,
//! no borders, so `awk '{print $1}'` works on the output.

use std::time::{Duration, SystemTime};

const GAP: usize = 3;

#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print as empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        // An empty cell would shift `awk`'s fields; kubectl prints `<none>` the same way.
        let shown = |cell: &String| -> String {
            if cell.is_empty() {
                "<none>".to_string()
            } else {
                cell.clone()
            }
        };
        let lines: Vec<Vec<String>> = std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|line| line.iter().map(shown).collect())
            .collect();
        let mut widths = vec![0; self.headers.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str(&" ".repeat(GAP));
                }
                text.push_str(cell);
                text.push_str(&" ".repeat(width.saturating_sub(cell.chars().count())));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How long ago an RFC 3339 UTC timestamp was, kubectl-style (`45s`, `3m20s`, `5h`, `12d`), or
/// `<unknown>` when it is missing or unreadable.
pub fn age(timestamp: Option<&str>, now: SystemTime) -> String {
    let Some(then) = timestamp.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
        return "<unknown>".to_string();
    };
    // A clock a little behind the server's must not print a negative age.
    human_duration(now.duration_since(then).unwrap_or_default())
}

/// kubectl's `HumanDuration`: precise while recent, coarser as it grows.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, day, year) = (60, 3600, 86_400, 365 * 86_400);
    match s {
        _ if s < 2 * m => format!("{s}s"),
        _ if s < 10 * m => match s % m {
            0 => format!("{}m", s / m),
            rest => format!("{}m{rest}s", s / m),
        },
        _ if s < 3 * h => format!("{}m", s / m),
        _ if s < 8 * h => match (s % h) / m {
            0 => format!("{}h", s / h),
            rest => format!("{}h{rest}m", s / h),
        },
        _ if s < 2 * day => format!("{}h", s / h),
        _ if s < 8 * day => match (s % day) / h {
            0 => format!("{}d", s / day),
            rest => format!("{}d{rest}h", s / day),
        },
        _ if s < 2 * year => format!("{}d", s / day),
        _ if s < 8 * year => match (s % year) / day {
            0 => format!("{}y", s / year),
            rest => format!("{}y{rest}d", s / year),
        },
        _ => format!("{}y", s / year),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_table_aligns_columns_like_kubectl() {
        let mut t = Table::new(["NAMESPACE", "NAME", "AGE"]);
        t.row(vec!["production".into(), "api".into(), "5m".into()]);
        t.row(vec!["dev".into(), "checkout-split".into(), "12d".into()]);
        t.row(vec!["dev".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAMESPACE    NAME             AGE\n\
             production   api              5m\n\
             dev          checkout-split   12d\n\
             dev          <none>           <none>\n"
        );
        assert_eq!(Table::new(["NAME"]).render(), "NAME\n");
    }

    #[test]
    fn cli_table_ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (200, "3m20s"),
            (300, "5m"),
            (3599, "59m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 7200, "3d2h"),
            (40 * 86_400, "40d"),
            (3 * 365 * 86_400, "3y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}s");
        }
        let now = humantime::parse_rfc3339("2025-03-01T12:00:00Z").unwrap();
        assert_eq!(age(Some("2025-03-01T11:55:00Z"), now), "5m");
        assert_eq!(age(Some("2025-03-01T11:59:59.5Z"), now), "0s");
        assert_eq!(age(Some("2025-03-01T12:00:05Z"), now), "0s");
        assert_eq!(age(Some("yesterday"), now), "<unknown>");
        assert_eq!(age(None, now), "<unknown>");
    }
}

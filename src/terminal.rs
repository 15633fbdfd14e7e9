//! Text for a person's terminal: control characters from a record escaped, and rows of cells
//! aligned in columns (`--status`, `--history`). A leaf: it imports nothing of ours.

/// Control characters escaped, so a value quoting odd input cannot break a table.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Each row as one line: every cell but the last padded to its column's widest, two spaces
/// apart, trailing spaces trimmed.
pub fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell_and_control_characters_are_escaped() {
        let rows = vec![
            vec!["a".to_string(), "bb".into(), "c".into()],
            vec!["aaa".to_string(), "b".into(), "".into()],
        ];
        assert_eq!(aligned(&rows), ["a    bb  c", "aaa  b"]);
        assert_eq!(printable("x\ny\u{1b}"), "x\\ny\\u{1b}");
    }
}

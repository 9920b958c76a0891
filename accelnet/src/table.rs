//! Plain-text tables for human output: padded columns, two spaces apart.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table built row by row, then rendered at once.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a column at the right; call before adding rows.
    pub fn column(&mut self, header: &'static str, align: Align) {
        debug_assert!(self.rows.is_empty());
        self.columns.push((header, align));
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    /// The header and every row, each line ending in a newline, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(h, _)| (*h).to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let w = widths.get(i).copied().unwrap_or(0);
                match self.columns.get(i).map_or(Align::Left, |c| c.1) {
                    Align::Left => line.push_str(&format!("{cell:<w$}")),
                    Align::Right => line.push_str(&format!("{cell:>w$}")),
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_table_render_pads_columns_and_aligns_numbers() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("PKTS", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "12345".into(), "-".into()]);
        t.row(vec!["longer".into(), "7".into(), "x".into()]);

        let out = t.render();

        assert_eq!(
            out,
            "NAME     PKTS  NOTE\n\
             a       12345  -\n\
             longer      7  x\n"
        );
    }

    #[test]
    fn test_table_render_empty_prints_header_only() {
        let t = Table::new(&[("A", Align::Left), ("B", Align::Right)]);
        assert_eq!(t.render(), "A  B\n");
    }
}

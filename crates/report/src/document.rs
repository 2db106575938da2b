//! A small document model (headings, paragraphs, tables, images) rendered as terminal text and
//! as Markdown, so that `report.md` and the printed report hold the same tables.

/// A table: a header row and body rows of equal length. The first column is left-aligned (a
/// name), the others right-aligned (numbers) in the text rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column headers.
    pub header: Vec<String>,
    /// Body rows.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with `header` and no rows.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Appends a row.
    pub fn push<S: Into<String>>(&mut self, row: impl IntoIterator<Item = S>) {
        self.rows.push(row.into_iter().map(Into::into).collect());
    }

    /// Pipe-table Markdown, one line per row, cells separated by ` | ` (the form of
    /// docs/METHOD.md's tables).
    pub fn to_markdown(&self) -> String {
        let line = |cells: &[String]| {
            let escaped: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", escaped.join(" | "))
        };
        let mut out = line(&self.header);
        out += &format!("|{}\n", "---|".repeat(self.header.len()));
        for row in &self.rows {
            out += &line(row);
        }
        out
    }

    /// Column-aligned text with a rule under the header.
    pub fn to_text(&self) -> String {
        let ncols = self.header.len().max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut widths = vec![0usize; ncols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = (0..ncols)
                .map(|i| {
                    let c = cells.get(i).map_or("", String::as_str);
                    if i == 0 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            format!("{}\n", parts.join("  ").trim_end())
        };
        let mut out = line(&self.header);
        let total: usize = widths.iter().sum::<usize>() + 2 * ncols.saturating_sub(1);
        out += &format!("{}\n", "-".repeat(total));
        for row in &self.rows {
            out += &line(row);
        }
        out
    }
}

/// One piece of the document.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading of level 1..3.
    Heading(u8, String),
    /// A paragraph.
    Text(String),
    /// A table.
    Table(Table),
    /// A picture written beside `report.md` (Markdown only; the text rendering names the file).
    Image {
        /// Alternative text.
        alt: String,
        /// File name relative to the output folder.
        file: String,
    },
}

/// Renders `blocks` as Markdown.
pub fn to_markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                out += &format!("{} {t}\n\n", "#".repeat(usize::from((*level).clamp(1, 6))));
            }
            Block::Text(t) => out += &format!("{t}\n\n"),
            Block::Table(t) => out += &format!("{}\n", t.to_markdown()),
            Block::Image { alt, file } => out += &format!("![{alt}]({file})\n\n"),
        }
    }
    out
}

/// Renders `blocks` as terminal text (pictures are left out: they are files).
pub fn to_text(blocks: &[Block]) -> String {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                let rule = if *level <= 1 { '=' } else { '-' };
                out += &format!("{t}\n{}\n\n", rule.to_string().repeat(t.chars().count()));
            }
            Block::Text(t) => out += &format!("{t}\n\n"),
            Block::Table(t) => out += &format!("{}\n", t.to_text()),
            Block::Image { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_and_text() {
        let mut t = Table::new(["Method", "A", "Ave."]);
        t.push(["x", "1.0", "2.0"]);
        t.push(["longer name", "n/a (no samples)", "3.5"]);
        assert_eq!(
            t.to_markdown(),
            "| Method | A | Ave. |\n|---|---|---|\n| x | 1.0 | 2.0 |\n| longer name | n/a (no samples) | 3.5 |\n"
        );
        let text = t.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Method                      A  Ave.");
        assert_eq!(lines[2], "x                         1.0   2.0");
        assert_eq!(lines[3], "longer name  n/a (no samples)   3.5");
    }
}

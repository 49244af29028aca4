//! The benchmark page, `docs/benchmarks.md`: the bench rewrites only the
//! lines between `<!-- bench:begin -->` and `<!-- bench:end -->` with the
//! table it just measured; the prose around them is the page author's and
//! is kept byte for byte. A page that does not exist yet is created with a
//! heading and the markers; a page without markers gets them (and the
//! table) appended, so nothing written by hand is ever lost. Markers that
//! are there but malformed (one without the other, out of order, twice)
//! are an error that says which: guessing could overwrite prose.

use std::{fs, io::ErrorKind, path::Path};

use anyhow::{Context as _, Result, bail};

/// The line that opens the generated region.
pub const BEGIN: &str = "<!-- bench:begin -->";
/// The line that closes it.
pub const END: &str = "<!-- bench:end -->";

/// The heading of a page the bench has to create.
const HEADING: &str = "# Benchmarks";

/// The generated region as it stands between the markers: a blank line on
/// each side, so the markdown around it renders the same either way.
fn region_lines(region: &str) -> String {
    format!("{BEGIN}\n\n{}\n\n{END}\n", region.trim_matches('\n'))
}

/// `page` (`None`: there is no page) with the region between the markers
/// replaced by `region`.
pub fn rewrite(page: Option<&str>, region: &str) -> Result<String> {
    let Some(page) = page else {
        return Ok(format!("{HEADING}\n\n{}", region_lines(region)));
    };
    // Byte offsets of each line's start and end (end includes its newline).
    let mut begins = Vec::new();
    let mut ends = Vec::new();
    let mut at = 0;
    for line in page.split_inclusive('\n') {
        let text = line.trim();
        if text == BEGIN {
            begins.push((at, at + line.len()));
        } else if text == END {
            ends.push((at, at + line.len()));
        }
        at += line.len();
    }
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => {
            let mut out = page.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&region_lines(region));
            Ok(out)
        }
        ([(b_start, _)], [(e_start, e_end)]) if b_start < e_start => {
            let mut out = String::with_capacity(page.len() + region.len());
            out.push_str(&page[..*b_start]);
            out.push_str(&region_lines(region));
            out.push_str(&page[*e_end..]);
            Ok(out)
        }
        ([_], [_]) => bail!("{END} comes before {BEGIN}"),
        (b, e) if b.len() > 1 || e.len() > 1 => {
            bail!(
                "{} {BEGIN} and {} {END} lines; the page must have one of each",
                b.len(),
                e.len()
            )
        }
        ([], _) => bail!("{END} without {BEGIN}"),
        (_, _) => bail!("{BEGIN} without {END}"),
    }
}

/// Rewrites the page at `path` (creating it, and its directory, if needed).
pub fn update(path: &Path, region: &str) -> Result<()> {
    let page = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = rewrite(page.as_deref(), region)
        .with_context(|| format!("updating the generated region of {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "| a | b |\n|---|---|\n| 1 | 2 |\n";

    fn region_of(page: &str) -> &str {
        let start = page.find(BEGIN).expect("begin") + BEGIN.len();
        let end = page.find(END).expect("end");
        &page[start..end]
    }

    #[test]
    fn only_the_region_between_the_markers_changes() {
        let before = "# Benchmarks\n\nProse before, kept.\n\n";
        let after = "\nProse after, kept\nwithout a final newline";
        let page = format!("{before}{BEGIN}\nold table\nmore old\n{END}\n{after}");
        let out = rewrite(Some(&page), TABLE).expect("rewrite");
        assert_eq!(out, format!("{before}{BEGIN}\n\n{TABLE}\n{END}\n{after}"));
        assert_eq!(region_of(&out), format!("\n\n{TABLE}\n"));
        // And again: the same page, not a growing one.
        assert_eq!(rewrite(Some(&out), TABLE).expect("rewrite again"), out);
    }

    #[test]
    fn an_empty_region_and_markers_with_spaces_or_crlf_are_found() {
        let page = format!("x\r\n  {BEGIN}  \r\n{END}\r\ny\r\n");
        let out = rewrite(Some(&page), TABLE).expect("rewrite");
        assert_eq!(out, format!("x\r\n{BEGIN}\n\n{TABLE}\n{END}\ny\r\n"));
    }

    #[test]
    fn a_missing_page_is_created_with_a_heading_and_the_markers() {
        let out = rewrite(None, TABLE).expect("rewrite");
        assert_eq!(out, format!("{HEADING}\n\n{BEGIN}\n\n{TABLE}\n{END}\n"));
        assert_eq!(out.lines().filter(|l| l.starts_with("# ")).count(), 1);
    }

    #[test]
    fn a_page_without_markers_keeps_its_text_and_gets_them_appended() {
        let page = "# Our benchmarks\n\nWritten by hand.";
        let out = rewrite(Some(page), TABLE).expect("rewrite");
        assert_eq!(out, format!("{page}\n\n{BEGIN}\n\n{TABLE}\n{END}\n"));
        assert_eq!(
            rewrite(Some(""), TABLE).expect("empty page"),
            region_lines(TABLE)
        );
    }

    #[test]
    fn malformed_markers_are_an_error_and_say_which() {
        let cases = [
            (format!("{BEGIN}\nx\n"), "without"),
            (format!("x\n{END}\n"), "without"),
            (format!("{END}\n{BEGIN}\n"), "comes before"),
            (format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"), "one of each"),
            (format!("{BEGIN}\n{BEGIN}\n{END}\n"), "one of each"),
        ];
        for (page, says) in cases {
            let e = rewrite(Some(&page), TABLE).expect_err(&page);
            assert!(e.to_string().contains(says), "{page:?}: {e}");
        }
    }

    #[test]
    fn a_marker_inside_a_line_is_not_a_marker() {
        let page = format!("see `{BEGIN}` and `{END}` in the text\n");
        let out = rewrite(Some(&page), TABLE).expect("rewrite");
        assert!(out.starts_with(&page), "{out}");
        assert!(
            out.ends_with(&format!("{BEGIN}\n\n{TABLE}\n{END}\n")),
            "{out}"
        );
    }

    #[test]
    fn update_creates_then_rewrites_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docs").join("benchmarks.md");
        update(&path, "first").expect("create");
        let created = fs::read_to_string(&path).expect("read");
        assert!(created.starts_with(HEADING) && created.contains("first"));
        fs::write(&path, created.replace(HEADING, "# Mine\n\nProse.")).expect("edit");
        update(&path, "second").expect("rewrite");
        let page = fs::read_to_string(&path).expect("read");
        assert!(page.starts_with("# Mine\n\nProse."), "{page}");
        assert!(page.contains("second") && !page.contains("first"), "{page}");
    }
}

//! `enforcer generate`: man pages and shell completions, written from the
//! same clap definition the parser uses, so what the package ships cannot
//! drift from what the binary accepts. Hidden from `--help`: it serves the
//! packaging (`cargo xtask deb`), not operators.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{CommandFactory as _, ValueEnum};

use super::Cli;

/// The manual section: the agent is a system administration tool and
/// daemon (man-pages(7)), and lives in /usr/sbin.
const SECTION: &str = "8";

/// The manual the pages belong to (the centre of the `.TH` footer).
const MANUAL: &str = "egress-enforcer";

#[derive(Debug, clap::Subcommand)]
pub enum GenerateCommand {
    /// Write `enforcer.8` and one page per subcommand (`enforcer-run.8`,
    /// `enforcer-config-check.8`, ...) into DIR, creating it; prints each
    /// file written.
    Man {
        /// The directory the pages are written into.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// The shells the Debian package ships completions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

pub fn run(cmd: GenerateCommand) -> anyhow::Result<()> {
    match cmd {
        GenerateCommand::Man { dir } => {
            let mut stdout = io::stdout().lock();
            for path in write_man_pages(&dir)? {
                writeln!(stdout, "{}", path.display())?;
            }
            Ok(())
        }
        GenerateCommand::Completions { shell } => {
            let mut out = Vec::new();
            completions(shell, &mut out);
            io::stdout()
                .lock()
                .write_all(&out)
                .context("writing the completions to stdout")
        }
    }
}

/// Every page as (file name, roff text): the top-level page first, then
/// one per visible subcommand at every depth.
pub fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    // No `help` verb in the pages: there is no page to link it to.
    let mut root = Cli::command().disable_help_subcommand(true);
    // build() names each subcommand `enforcer-<verb>` (its display name)
    // and applies the global arguments to them, as the parser sees them.
    root.build();
    let mut commands = Vec::new();
    collect(&root, &mut commands);
    let names: Vec<String> = commands.iter().map(display_name).collect();
    let date = page_date();
    let mut pages = Vec::with_capacity(commands.len());
    for (i, cmd) in commands.into_iter().enumerate() {
        let name = display_name(&cmd);
        let see_also: Vec<&str> = if i == 0 {
            names[1..].iter().map(String::as_str).collect()
        } else {
            vec![names[0].as_str()]
        };
        let man = clap_mangen::Man::new(cmd)
            .section(SECTION)
            .date(&date)
            // The package and version; the full --version line (commit,
            // layout) is too long for the page footer.
            .source(format!("egress-enforcer {}", env!("CARGO_PKG_VERSION")))
            .manual(MANUAL);
        let mut page = Vec::new();
        man.render(&mut page)
            .with_context(|| format!("rendering the man page of {name}"))?;
        write_see_also(&mut page, &see_also);
        pages.push((format!("{name}.{SECTION}"), page));
    }
    Ok(pages)
}

/// The `.TH` date, `YYYY-MM-DD`: from `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention, which `cargo xtask deb` sets to the
/// commit's time), else today. Never empty: groff would drop an empty
/// field and shift the source and manual names into the wrong places.
fn page_date() -> String {
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap_or_else(std::time::SystemTime::now);
    let mut text = humantime::format_rfc3339_seconds(when).to_string();
    text.truncate("YYYY-MM-DD".len());
    text
}

/// `cmd` and its visible subcommands, depth first (the hidden `generate`
/// and clap's `help` are left out: neither is for operators).
fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        collect(sub, out);
    }
}

fn display_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned()
}

/// A SEE ALSO section (clap_mangen writes none): the top-level page
/// links every subcommand's page, each subcommand's page links back.
fn write_see_also(page: &mut Vec<u8>, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    let refs: Vec<String> = names
        .iter()
        .map(|n| format!("\\fB{}\\fR({SECTION})", n.replace('-', "\\-")))
        .collect();
    page.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", ")).as_bytes());
}

/// The completion script for `shell`, for the binary name `enforcer`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(
        clap_complete::Shell::from(shell),
        &mut Cli::command(),
        "enforcer",
        out,
    );
}

/// Writes every page into `dir`, creating it, and returns their paths.
fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, page) in man_pages()? {
        let path = dir.join(name);
        fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_mentions_every_top_level_verb() {
        let pages = man_pages().expect("man pages render");
        let (name, page) = &pages[0];
        assert_eq!(name, "enforcer.8");
        let page = String::from_utf8_lossy(page);
        for verb in Cli::command().get_subcommands() {
            if verb.is_hide_set() {
                assert_eq!(verb.get_name(), "generate");
                continue;
            }
            // roff escapes the hyphen in `enforcer-run(8)`.
            let reference = format!("enforcer\\-{}", verb.get_name());
            assert!(
                page.contains(&reference),
                "enforcer.8 does not mention {reference}"
            );
        }
        assert!(!page.contains("enforcer\\-generate"), "generate is hidden");
    }

    #[test]
    fn one_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_man_pages(dir.path()).expect("pages written");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        for expected in ["enforcer.8", "enforcer-run.8", "enforcer-config-check.8"] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("generate") || n.contains("help"))
        );
        let run = fs::read_to_string(dir.path().join("enforcer-run.8")).expect("read");
        assert!(run.contains("SEE ALSO") && run.contains("\\fBenforcer\\fR(8)"));
    }

    #[test]
    fn bash_completion_offers_uninstall() {
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        let script = String::from_utf8_lossy(&out);
        assert!(script.contains("uninstall"));
    }
}

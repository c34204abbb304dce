//! Writes the man page and the bash, zsh and fish completions of `profilo-gateway`, generated
//! from its clap definitions, into a directory:
//!
//!     cargo run --example gen_docs -- target/gen-docs
//!
//! An example, not part of the binary: clap_mangen and clap_complete are dev-dependencies, so
//! the daemon on the Pi does not carry them. `scripts/cross-build.sh --deb` runs it before
//! `cargo deb`, whose assets list installs the files (cargo-deb gzips the man page).
//! tests/gen_docs.rs includes this file to check what it writes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use profilo_gateway::cli::Cli;

const BIN: &str = "profilo-gateway";

/// The file names, as the .deb installs them (see [package.metadata.deb] assets in Cargo.toml).
pub const MAN_PAGE: &str = "profilo-gateway.1";
pub const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "profilo-gateway.bash"),
    (Shell::Zsh, "_profilo-gateway"),
    (Shell::Fish, "profilo-gateway.fish"),
];

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: cargo run --example gen_docs -- OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(&dir) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "cannot write the man page and completions into {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Writes the man page and one completion script per shell into `dir` (created if missing) and
/// returns their paths.
pub fn generate(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().bin_name(BIN).disable_help_subcommand(true);
    cmd.build();

    let man_path = dir.join(MAN_PAGE);
    fs::write(&man_path, man_page(&cmd)?)?;
    let mut written = vec![man_path];

    for (shell, name) in COMPLETIONS {
        let path = dir.join(name);
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut script);
        fs::write(&path, script)?;
        written.push(path);
    }
    Ok(written)
}

/// One page for the whole tool: clap_mangen's top-level sections, then every subcommand (nested
/// ones too) with its synopsis, description and own options. clap_mangen alone would write one
/// page per subcommand, and a reader of `man profilo-gateway` should not have to know the others.
fn man_page(cmd: &Command) -> io::Result<String> {
    let man = Man::new(cmd.clone())
        .source(concat!("profilo-gateway ", env!("CARGO_PKG_VERSION")))
        .manual("profilo-gateway manual");
    // The title keeps roff's preamble (the apostrophe string); every later part drops it.
    let mut page = rendered(|w| man.render_title(w))?;
    page += &part(|w| man.render_name_section(w), Heading::Keep)?;
    page += &part(|w| man.render_synopsis_section(w), Heading::Keep)?;
    page += &part(|w| man.render_description_section(w), Heading::Keep)?;
    page += &part(|w| man.render_options_section(w), Heading::Keep)?;
    page += &own_roff(|roff| {
        roff.control("SH", ["COMMANDS"]);
    })?;
    for sub in visible_subcommands(cmd) {
        command_entry(cmd, sub, &mut page)?;
    }
    page += &own_roff(|roff| {
        roff.control("SH", ["FILES"]);
        roff.control("TP", []);
        roff.text([bold("/etc/profilo-gateway/config.toml")]);
        roff.text([roman(
            "The configuration read when --config is not given. The example installed by the \
             package lists every key.",
        )]);
        roff.control("TP", []);
        roff.text([bold("/var/lib/profilo-gateway/")]);
        roff.text([roman(
            "The service's state directory: the reading queue (an SQLite file) lives here.",
        )]);
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(
            "systemctl(1), journalctl(1), and /usr/share/doc/profilo-gateway/README.md \
             (installation, configuration keys, sensors, troubleshooting).",
        )]);
    })?;
    page += &part(|w| man.render_version_section(w), Heading::Keep)?;
    Ok(page)
}

/// `.SS profilo-gateway queue stats`, then the subcommand's synopsis, description and options
/// (without the global ones and --help/--version, said once at the top), then its own
/// subcommands.
fn command_entry(root: &Command, sub: &Command, page: &mut String) -> io::Result<()> {
    let mut sub = sub.clone();
    for id in repeated_args(root, &sub) {
        sub = sub.mut_arg(id, |a| a.hide(true));
    }
    let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_owned();
    *page += &own_roff(|roff| {
        roff.control("SS", [name.as_str()]);
    })?;
    let man = Man::new(sub.clone());
    *page += &part(|w| man.render_synopsis_section(w), Heading::Drop)?;
    *page += &own_roff(|roff| {
        roff.control("PP", []);
    })?;
    *page += &part(|w| man.render_description_section(w), Heading::Drop)?;
    if sub.get_arguments().any(|a| !a.is_hide_set()) {
        *page += &part(|w| man.render_options_section(w), Heading::Drop)?;
    }
    for nested in visible_subcommands(&sub) {
        command_entry(root, nested, page)?;
    }
    Ok(())
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// The argument ids of `sub` that are said once for the whole page: the global ones (propagated
/// to every subcommand) and the generated --help and --version.
fn repeated_args(root: &Command, sub: &Command) -> Vec<String> {
    let global = |id: &clap::Id| {
        root.get_arguments()
            .any(|r| r.is_global_set() && r.get_id() == id)
    };
    sub.get_arguments()
        .filter(|a| {
            let id = a.get_id();
            global(id) || id == "help" || id == "version"
        })
        .map(|a| a.get_id().to_string())
        .collect()
}

#[derive(PartialEq)]
enum Heading {
    Keep,
    /// Inside COMMANDS a subcommand's synopsis, description and options are paragraphs under
    /// its `.SS` heading, not sections of their own.
    Drop,
}

/// One rendered part of the page, without roff's preamble (said once, before the title).
fn part(
    render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    heading: Heading,
) -> io::Result<String> {
    let text = rendered(render)?;
    let mut lines = text
        .lines()
        .skip_while(|l| l.starts_with(".ie \\n(.g .ds Aq") || l.starts_with(".el .ds Aq"))
        .peekable();
    if heading == Heading::Drop {
        lines.next_if(|l| l.starts_with(".SH"));
    }
    Ok(lines.map(|l| format!("{l}\n")).collect())
}

fn own_roff(build: impl FnOnce(&mut Roff)) -> io::Result<String> {
    let mut roff = Roff::new();
    build(&mut roff);
    part(|w| roff.to_writer(w), Heading::Keep)
}

fn rendered(render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<String> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

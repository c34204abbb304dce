//! The man page and the completions written by examples/gen_docs.rs (what the .deb installs):
//! the page documents every subcommand and every long option, and each shell gets a script
//! that names the subcommands. The generator is compiled in here as a module, so the test
//! checks the very code `scripts/cross-build.sh --deb` runs.

#[allow(dead_code)] // its main() is the example's entry point, not called here
#[path = "../examples/gen_docs.rs"]
mod gen_docs;

use std::path::Path;
use std::process::Command as Process;

use clap::{Command, CommandFactory};
use profilo_gateway::cli::Cli;

/// Every subcommand, nested ones included, as a user types it: "profilo-gateway queue stats".
fn command_paths(cmd: &Command, prefix: &str, out: &mut Vec<(String, Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = format!("{prefix} {}", sub.get_name());
        out.push((path.clone(), sub.clone()));
        command_paths(sub, &path, out);
    }
}

fn all_commands() -> Vec<(String, Command)> {
    let mut out = Vec::new();
    command_paths(&Cli::command(), "profilo-gateway", &mut out);
    out
}

/// The text under `.SS "profilo-gateway queue stats"` up to the next heading.
fn command_section<'a>(text: &'a str, path: &str) -> Option<&'a str> {
    let start = text.find(&format!(".SS \"{path}\"\n"))?;
    let body = &text[start..];
    let body = body.split_once('\n').map_or("", |(_, rest)| rest);
    let end = [body.find("\n.SS "), body.find("\n.SH ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(body.len());
    Some(&body[..end])
}

fn generate() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let files = gen_docs::generate(&dir.path().join("docs")).unwrap();
    (dir, files)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn writes_the_man_page_and_one_script_per_shell() {
    let (_dir, files) = generate();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut expected = vec![gen_docs::MAN_PAGE.to_owned()];
    expected.extend(gen_docs::COMPLETIONS.iter().map(|(_, n)| n.to_string()));
    assert_eq!(names, expected);
    for file in &files {
        assert!(
            std::fs::metadata(file).unwrap().len() > 0,
            "{} is empty",
            file.display()
        );
    }
}

#[test]
fn man_page_documents_every_subcommand_and_option() {
    let (_dir, files) = generate();
    let roff = read(&files[0]);
    // roff escapes hyphens; a reader sees plain ones.
    let text = roff.replace("\\-", "-");

    assert_eq!(
        roff.matches(".ie \\n(.g .ds Aq").count(),
        1,
        "roff's preamble must come once, before the title"
    );
    let first_macro = roff
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"));
    assert!(
        first_macro.is_some_and(|l| l.starts_with(".TH profilo-gateway 1 ")),
        "the page must start with its .TH title line, got {first_macro:?}"
    );

    let commands = all_commands();
    assert!(
        commands.len() >= 15,
        "expected the full command tree, got {}",
        commands.len()
    );
    for (path, sub) in &commands {
        let section = command_section(&text, path)
            .unwrap_or_else(|| panic!("the man page has no section for `{path}`"));
        // Unbuilt, the command holds only the arguments it defines (no --help, no globals).
        for long in sub.get_arguments().filter_map(|a| a.get_long()) {
            assert!(
                section.contains(&format!("\\fB--{long}\\fR")),
                "the man page does not document `{path} --{long}`:\n{section}"
            );
        }
    }
    assert!(
        text.contains("PROFILO_GATEWAY_CONFIG"),
        "--config's env var"
    );
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "FILES",
    ] {
        assert!(
            text.contains(&format!(".SH {section}")),
            "no {section} section"
        );
    }
}

#[test]
fn man_page_renders_without_groff_warnings() {
    let (_dir, files) = generate();
    let groff = Process::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&files[0])
        .output();
    match groff {
        Ok(out) => {
            assert!(out.status.success(), "groff failed: {out:?}");
            assert!(
                out.stderr.is_empty(),
                "groff warns: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Not a build dependency; lintian (the .deb check) renders the page with man as well.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("groff not installed: rendering not checked")
        }
        Err(e) => panic!("cannot run groff: {e}"),
    }
}

#[test]
fn each_completion_script_knows_the_subcommands() {
    let (_dir, files) = generate();
    let markers = [
        ("profilo-gateway.bash", "complete -F "),
        ("_profilo-gateway", "#compdef profilo-gateway"),
        ("profilo-gateway.fish", "complete -c profilo-gateway"),
    ];
    let top_level: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for (name, marker) in markers {
        let path = files
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == name))
            .unwrap_or_else(|| panic!("no {name} among {files:?}"));
        let script = read(path);
        assert!(script.contains(marker), "{name} lacks `{marker}`");
        for sub in &top_level {
            assert!(script.contains(sub.as_str()), "{name} never names `{sub}`");
        }
    }
}

/// What the bash script offers for the words typed so far (the last one being completed), as
/// bash calls it on TAB: the function registered with `complete -F`, given the command name, the
/// current word and the previous one.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let program = r#"
        set -e
        source "$1"
        shift
        spec=$(complete -p profilo-gateway)
        func=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        "$func" profilo-gateway "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Process::new("bash")
        .args(["--norc", "--noprofile", "-c", program, "bash"])
        .arg(script)
        .args(words)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "bash could not complete {words:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let (_dir, files) = generate();
    let bash = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "bash"))
        .unwrap();
    assert_eq!(bash_complete(bash, &["profilo-gateway", "qu"]), ["queue"]);
    assert_eq!(
        bash_complete(bash, &["profilo-gateway", "queue", "st"]),
        ["stats"]
    );
    // Past two levels of subcommands (what clap_complete 4.6.1 to 4.6.12 get wrong).
    let offered = bash_complete(bash, &["profilo-gateway", "queue", "export", "--"]);
    for flag in ["--format", "--output", "--dead"] {
        assert!(
            offered.iter().any(|o| o == flag),
            "`queue export --` offers {offered:?}, not {flag}"
        );
    }
    assert_eq!(
        bash_complete(
            bash,
            &["profilo-gateway", "queue", "export", "--format", ""]
        ),
        ["jsonl", "csv"]
    );
}

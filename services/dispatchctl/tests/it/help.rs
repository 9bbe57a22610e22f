//! Help text names only flags that exist: every `--flag` in a command's help is a flag (or a
//! visible alias) of that command, of a command under it (whose summaries the help lists) or of
//! a sibling (`outbox requeue` points at `outbox list --state dead`). A renamed or removed flag
//! fails here until the text that mentions it changes too.

use std::collections::BTreeSet;

use clap::CommandFactory;

/// The long flags and their visible aliases of `cmd` and of every command under it.
fn flags_within(cmd: &clap::Command) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long_and_visible_aliases())
        .flatten()
        .map(|l| format!("--{l}"))
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(flags_within(sub));
    }
    out
}

/// The `--flag` words of `text`.
fn flags_named(text: &str) -> BTreeSet<String> {
    text.match_indices("--")
        .filter(|(i, _)| *i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
        .filter_map(|(i, _)| {
            let name: String = text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let name = name.trim_end_matches('-');
            name.starts_with(|c: char| c.is_ascii_alphabetic())
                .then(|| format!("--{name}"))
        })
        .collect()
}

/// Checks `cmd` (reached by `path`, under a command whose subtree has `siblings`) and every
/// command under it except clap's generated `help` subcommands.
fn check(
    cmd: &mut clap::Command,
    path: &str,
    siblings: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let help = cmd.render_long_help().to_string();
    let own = flags_within(cmd);
    for flag in flags_named(&help) {
        if !own.contains(&flag) && !siblings.contains(&flag) {
            problems.push(format!(
                "`{path} --help` names {flag}, which `{path}` does not take"
            ));
        }
    }
    for sub in cmd.get_subcommands_mut().filter(|s| s.get_name() != "help") {
        let path = format!("{path} {}", sub.get_name());
        check(sub, &path, &own, problems);
    }
}

#[test]
fn help_names_only_flags_that_exist() {
    let mut cli = dispatchctl::Cli::command();
    // Propagates global flags (`--output`, the connection flags) and adds `--help`/`--version`.
    cli.build();
    let mut problems = Vec::new();
    check(&mut cli, "dispatchctl", &BTreeSet::new(), &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_check_sees_flags_in_help_text() {
    assert_eq!(
        flags_named("use --payload-file for bytes; see `--api-key`, not a--b or --"),
        BTreeSet::from(["--payload-file".to_owned(), "--api-key".to_owned()])
    );
}

//! Manual pages and shell completions, generated from the command line's
//! definition: `session-agent generate-docs --out DIR` (a hidden subcommand
//! that the package build runs) writes
//!
//! - `DIR/man8/session-agent.8` and `session-agent-<sub>[-<sub>].8`, one page per subcommand,
//! - `DIR/bash/session-agent`, `DIR/zsh/_session-agent`, `DIR/fish/session-agent.fish`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::{Arg, ArgMatches, Command};
use clap_complete::Shell;
use clap_mangen::{
    roff::{bold, italic, roman, Roff},
    Man,
};

/// The hidden subcommand's name.
pub const COMMAND: &str = "generate-docs";

/// Manual section of a program in `/usr/sbin`.
const SECTION: &str = "8";

/// `cli` with the hidden `generate-docs` subcommand added; the pages and
/// completions come from `cli` alone, so they never show it.
pub fn with_generate_command(cli: Command) -> Command {
    cli.subcommand(
        Command::new(COMMAND)
            .hide(true)
            .about("Write the manual pages and shell completions")
            .arg(
                Arg::new("out")
                    .long("out")
                    .value_name("DIR")
                    .required(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
}

/// Runs `generate-docs` with its matches.
pub fn run(cli: Command, m: &ArgMatches) -> Result<()> {
    let out = m.get_one::<PathBuf>("out").expect("required");
    for f in generate(cli, out)? {
        println!("{}", f.display());
    }
    Ok(())
}

/// Writes the pages and completions of `cli` under `out`; returns the files written.
pub fn generate(cli: Command, out: &Path) -> Result<Vec<PathBuf>> {
    // Built for the pages; the completions build their own with their name.
    let unbuilt = cli.clone();
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let mut written = Vec::new();
    let man = out.join(format!("man{SECTION}"));
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let source = format!(
        "{} {}",
        cli.get_name(),
        cli.get_version().unwrap_or_default()
    );
    pages(&cli, &man, &source, true, &mut written)?;

    // Completions offer `help` as clap's parser takes it.
    let name = unbuilt.get_name().to_string();
    for (shell, dir, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let dir = out.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(file);
        let text = if shell == Shell::Bash {
            // clap_complete's bash script for a name with '-' completes nothing
            // past a subcommand (clap-rs/clap#6421): it is made for `session_agent`
            // and then bound to the real name.
            let alias = name.replace('-', "_");
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut unbuilt.clone(), &alias, &mut text);
            String::from_utf8(text)?.replace(&format!(" {alias}\n"), &format!(" {name}\n"))
        } else {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut unbuilt.clone(), &name, &mut text);
            String::from_utf8(text)?
        };
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The page of `cmd` and, recursively, of each of its visible subcommands.
fn pages(
    cmd: &Command,
    dir: &Path,
    source: &str,
    top: bool,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, dir, source, false, written)?;
    }
    let man = Man::new(cmd.clone()).section(SECTION).source(source);
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    // Without a second preamble: the page has one.
    text.extend(see_also(cmd, top).to_roff().into_bytes());
    let mut f = fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&text)?;
    written.push(path);
    Ok(())
}

/// FILES and SEE ALSO: the top page names the files the agent uses and where
/// its full documentation is; every other page points back to it.
fn see_also(cmd: &Command, top: bool) -> Roff {
    let mut roff = Roff::new();
    let name = cmd.get_name();
    if top {
        roff.control("SH", ["FILES"]);
        for (file, what) in [
            (
                "/etc/session-agent/config.toml",
                "The configuration that the packaged unit runs with (run --config); \
                 check it with session-agent check-config.",
            ),
            (
                "/run/session-agent/api.sock",
                "The control API socket, the default of --api-socket.",
            ),
            (
                "/var/lib/session-agent/sessions.redb",
                "The devices, sessions and vouchers (the default store).",
            ),
            (
                session_agent::dataplane::DEFAULT_PIN_ROOT,
                "The pinned maps and programs, a directory per LAN interface (--pin-root).",
            ),
        ] {
            roff.control("TP", []);
            roff.text([italic(file)]);
            roff.text([roman(what)]);
        }
        roff.control("SH", ["SEE ALSO"]);
        roff.text([
            roman("The README, with the configuration, the control API and the unit: "),
            italic("/usr/share/doc/session-agent/README.md.gz"),
            roman("."),
        ]);
    } else {
        let top = cmd
            .get_bin_name()
            .and_then(|b| b.split_whitespace().next())
            .unwrap_or(name);
        roff.control("SH", ["SEE ALSO"]);
        roff.text([bold(top), roman(format!("({SECTION})"))]);
    }
    roff
}

#[cfg(test)]
mod tests;

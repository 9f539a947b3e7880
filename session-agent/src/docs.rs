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
mod tests {
    use std::process::Command as Process;

    use clap::CommandFactory;

    use super::*;

    /// A fresh directory under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("sa-docs-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            Self(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// What `session-agent generate-docs --out DIR` writes.
    fn generate_docs(dir: &Path) {
        let out = dir.to_str().unwrap();
        let m = with_generate_command(crate::Cli::command())
            .try_get_matches_from(["session-agent", COMMAND, "--out", out])
            .unwrap();
        run(
            crate::Cli::command(),
            m.subcommand_matches(COMMAND).unwrap(),
        )
        .unwrap();
    }

    /// Every command of the CLI with its page's name, the top one first.
    fn commands() -> Vec<(String, Command)> {
        fn walk(prefix: &str, cmd: &Command, out: &mut Vec<(String, Command)>) {
            let name = format!("{prefix}{}", cmd.get_name());
            out.push((name.clone(), cmd.clone()));
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(&format!("{name}-"), sub, out);
            }
        }
        let mut cli = crate::Cli::command().disable_help_subcommand(true);
        cli.build();
        let mut out = Vec::new();
        walk("", &cli, &mut out);
        out
    }

    fn tool(name: &str) -> bool {
        Process::new(name).arg("--version").output().is_ok()
    }

    #[test]
    fn every_subcommand_has_a_manual_page_with_its_options_that_man_renders_cleanly() {
        let dir = TempDir::new("man");
        generate_docs(&dir.0);
        let man = dir.0.join("man8");
        let mut pages: Vec<String> = fs::read_dir(&man)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let mut expected: Vec<String> = commands()
            .iter()
            .map(|(name, _)| format!("{name}.8"))
            .collect();
        expected.sort();
        assert!(expected.len() > 40, "{expected:?}");
        assert_eq!(
            pages, expected,
            "one page per command, no page for {COMMAND}"
        );

        for (name, cmd) in commands() {
            let text = fs::read_to_string(man.join(format!("{name}.8"))).unwrap();
            let esc = |s: &str| s.replace('-', "\\-").replace('\'', "\\*(Aq");
            assert!(text.contains(&format!(".TH {name} 8 ")), "{name}: {text}");
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(
                text.contains(&format!("{} \\- {}", esc(&name), esc(&about))),
                "{name}.8: no NAME line with {about:?}"
            );
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let Some(long) = arg.get_long() else { continue };
                assert!(
                    text.contains(&format!("\\fB\\-\\-{}\\fR", esc(long))),
                    "{name}.8 does not describe --{long}"
                );
            }
            let see_also = if name == "session-agent" {
                "/etc/session\\-agent/config.toml"
            } else {
                "\\fBsession\\-agent\\fR(8)"
            };
            assert!(text.contains(see_also), "{name}.8 lacks {see_also}");
        }

        // What lintian runs on a manual page (manpage-has-errors-from-man).
        if !tool("man") {
            eprintln!("man (man-db) is not installed: the pages are not rendered");
            return;
        }
        for page in &pages {
            let out = Process::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
                .arg(man.join(page))
                .env("LC_ALL", "C.UTF-8")
                .env("MANROFFSEQ", "")
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.is_empty(),
                "man -l {page}: {warnings}"
            );
        }
    }

    /// Bash's completion of `words`, the last one being completed.
    fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
        let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let out = Process::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; f=$(complete -p session-agent | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
                 COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; \
                 COMP_POINT=${{#COMP_LINE}}; \"$f\" session-agent \
                 \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display(),
                words.join(" "),
                words.len() - 1
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_completions_offer_every_subcommand_and_option_in_bash_zsh_and_fish() {
        let dir = TempDir::new("completions");
        generate_docs(&dir.0);
        let bash = dir.0.join("bash/session-agent");
        let zsh = dir.0.join("zsh/_session-agent");
        let fish = dir.0.join("fish/session-agent.fish");

        let top = commands()[0].1.clone();
        let subs: Vec<&str> = top.get_subcommands().map(|s| s.get_name()).collect();
        let offered = bash_completes(&bash, &["session-agent", ""]);
        for sub in &subs {
            assert!(
                offered.iter().any(|o| o == sub),
                "bash: {sub} not in {offered:?}"
            );
        }
        assert!(!offered.iter().any(|o| o == COMMAND), "{offered:?}");
        assert_eq!(
            bash_completes(&bash, &["session-agent", "run", "--poll-"]),
            ["--poll-ms"]
        );
        assert_eq!(
            bash_completes(&bash, &["session-agent", "vouchers", "re"]),
            ["revoke", "redeem"]
        );

        let zsh_text = fs::read_to_string(&zsh).unwrap();
        let fish_text = fs::read_to_string(&fish).unwrap();
        assert!(zsh_text.starts_with("#compdef session-agent"), "{zsh_text}");
        for sub in &subs {
            assert!(zsh_text.contains(&format!("'{sub}:")), "zsh: no {sub}");
            assert!(
                fish_text.contains(&format!(" -a \"{sub}\"")),
                "fish: no {sub}"
            );
        }
        for text in [&zsh_text, &fish_text] {
            assert!(text.contains("poll-ms") && !text.contains(COMMAND));
        }
        for (shell, args, file) in [
            ("zsh", &["-n"][..], &zsh),
            ("fish", &["--no-execute"][..], &fish),
        ] {
            if !tool(shell) {
                eprintln!("{shell} is not installed: its completions are not parsed");
                continue;
            }
            let out = Process::new(shell).args(args).arg(file).output().unwrap();
            assert!(
                out.status.success(),
                "{shell} {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if tool("fish") {
            let completes = |line: &str| -> Vec<String> {
                let out = Process::new("fish")
                    .arg("-c")
                    .arg(format!("source {}; complete -C '{line}'", fish.display()))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.split('\t').next().unwrap().to_string())
                    .collect()
            };
            assert_eq!(completes("session-agent run --poll-"), ["--poll-ms"]);
            assert_eq!(completes("session-agent vouchers re"), ["redeem", "revoke"]);
        }
    }
}

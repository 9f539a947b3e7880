//! The manual pages and completions, checked against the CLI they come from.

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
    let m = with_generate_command(crate::cli::Cli::command())
        .try_get_matches_from(["session-agent", COMMAND, "--out", out])
        .unwrap();
    run(
        crate::cli::Cli::command(),
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
    let mut cli = crate::cli::Cli::command().disable_help_subcommand(true);
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

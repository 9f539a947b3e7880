//! `session-agent admin passwd`: sets a password of the operator page in its
//! accounts file, read from standard input (asked twice, unseen, on a terminal).

use std::{
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
};

use anyhow::{bail, Context};
use session_agent::{
    admin::Accounts,
    options::{Options, DEFAULT_ADMIN_ACCOUNTS},
};

use crate::cli::AdminCmd;

pub(crate) fn run(cmd: AdminCmd) -> anyhow::Result<()> {
    let AdminCmd::Passwd {
        staff,
        remove,
        accounts,
        config,
    } = cmd;
    let path = match (accounts, config) {
        (Some(p), _) => p,
        (None, Some(c)) => Options::read(&c)?.admin.admin_accounts,
        (None, None) => PathBuf::from(DEFAULT_ADMIN_ACCOUNTS),
    };
    let accounts = Accounts::at(&path);
    let who = staff
        .as_deref()
        .map_or("the owner".to_string(), |s| format!("staff account {s}"));
    if remove {
        let name = staff.as_deref().unwrap_or_default();
        accounts.remove_staff(name)?;
        eprintln!("{who} removed from {}", path.display());
        return Ok(());
    }
    let password = read_password(&who)?;
    accounts.set_password(staff.as_deref(), &password)?;
    eprintln!(
        "password of {who} set in {}; log in at the operator page's /admin{}",
        path.display(),
        staff
            .as_deref()
            .map_or(" as owner".to_string(), |s| format!(" as {s}"))
    );
    Ok(())
}

fn read_password(who: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = ask(&format!("New password of {who}: "))?;
    let again = ask("Again: ")?;
    if first != again {
        bail!("the two passwords differ: nothing was changed");
    }
    Ok(first)
}

/// One line from the terminal, not shown as it is typed.
fn ask(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a valid termios for the call to fill.
    let have = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have {
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: `quiet` is a copy of the terminal's own settings.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

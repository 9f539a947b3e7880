//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.

mod cli;
mod ctl;
mod docs;
mod passwd;

use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Cmd};
use session_common::MacAddr;

use session_agent::{
    daemon,
    dataplane::{self, ClientRow, Maps, RateLimit},
    error::AgentError,
    options::Options,
};

/// Large tables in 2 MiB pages (see `memory`).
#[global_allocator]
static ALLOCATOR: session_agent::memory::Allocator = session_agent::memory::Allocator;

fn main() {
    let matches = docs::with_generate_command(Cli::command()).get_matches();
    if let Some(m) = matches.subcommand_matches(docs::COMMAND) {
        if let Err(e) = docs::run(Cli::command(), m) {
            eprintln!("session-agent: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| e.format(&mut Cli::command()))
        .unwrap_or_else(|e| e.exit());
    session_agent::logging::init();
    if let Err(e) = dispatch(cli.cmd) {
        // One line: what went wrong and how to fix it.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            // An error that shows its source already says it once.
            let cause = cause.to_string();
            if !msg.ends_with(&cause) {
                msg.push_str(": ");
                msg.push_str(&cause);
            }
        }
        eprintln!("session-agent: {msg}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => {
            let opts = Options::load(&a.0)?.resolve()?;
            session_agent::logging::set_filter(&opts.log_level);
            let matches = a.0.clone();
            // SIGHUP reads the file again, with the same flags over it.
            let reload: daemon::Reloader =
                Box::new(move || Ok(Options::load(&matches)?.resolve()?));
            session_agent::memory::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // The operator page writes its settings into the same file.
            let settings: daemon::Settings = opts.config.clone().map(|p| {
                std::sync::Arc::new(session_agent::config_file::ConfigFile::at(p))
                    as std::sync::Arc<dyn session_agent::admin::settings::SettingsFile>
            });
            rt.block_on(daemon::run(opts, Some(reload), settings))
        }
        Cmd::CheckConfig(a) => {
            let opts = Options::load(&a.0)?.resolve()?;
            println!(
                "configuration OK: LANs {}; store {} at {}",
                opts.lans.join(", "),
                opts.store.name(),
                opts.db.display()
            );
            Ok(())
        }
        Cmd::CloseLans(a) => {
            let lans = Options::load(&a.0)?.lan_names();
            if lans.is_empty() {
                println!("no LANs in the configuration: nothing to close");
                return Ok(());
            }
            session_agent::nftables::close_lans(&lans)?;
            println!(
                "LANs {} closed: nothing is forwarded from or to them until `session-agent run` has attached (nftables table inet {})",
                lans.join(", "),
                session_agent::nftables::CLOSED_LANS_TABLE
            );
            Ok(())
        }
        Cmd::OpenLans => {
            if session_agent::nftables::open_lans()? {
                println!(
                    "the LANs forward again (nftables table inet {} removed)",
                    session_agent::nftables::CLOSED_LANS_TABLE
                );
            } else {
                println!(
                    "the LANs were not closed (no nftables table inet {})",
                    session_agent::nftables::CLOSED_LANS_TABLE
                );
            }
            Ok(())
        }
        Cmd::Admin { cmd } => passwd::run(cmd),
        Cmd::Devices { cmd, api } => ctl::devices(&api, cmd),
        Cmd::Sessions { cmd, api } => ctl::sessions(&api, cmd),
        Cmd::Vouchers { cmd, api } => ctl::vouchers(&api, cmd),
        Cmd::Garden { cmd, api } => ctl::garden(&api, cmd),
        Cmd::Connect {
            device,
            notification,
            api,
        } => ctl::connect(&api, &device, &notification),
        Cmd::Login {
            device,
            username,
            api,
        } => ctl::login(&api, &device, &username),
        Cmd::Disconnect {
            device,
            notification,
            api,
        } => ctl::disconnect(&api, &device, &notification),
        Cmd::Status { api } => ctl::status(&api),
        Cmd::Providers { api } => ctl::providers(&api),
        Cmd::Events {
            device,
            count,
            idle_timeout_secs,
            api,
        } => ctl::events(&api, device, count, idle_timeout_secs),
        Cmd::Clients { lan, json, pins } => {
            // One client table serves every LAN: read it once.
            let ifaces = interfaces(&pins.pin_root, lan)?;
            let mut rows = Maps::open(&pins.pin_root, &ifaces[0])?.snapshot()?;
            for r in &mut rows {
                r.lan = ifaces.join(",");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
            }
            Ok(())
        }
        Cmd::Allow { mac, lan, pins } => set_allowed(&pins.pin_root, lan, &mac, true),
        Cmd::Block { mac, lan, pins } => set_allowed(&pins.pin_root, lan, &mac, false),
        Cmd::Limit {
            mac,
            down_mbits,
            up_mbits,
            burst_ms,
            lan,
            pins,
        } => {
            let limit = |m| RateLimit::mbits(m, burst_ms, dataplane::MIN_BURST_BYTES);
            // One client table serves every LAN; in HTB mode each LAN has its classes.
            let ifaces = interfaces(&pins.pin_root, lan.clone())?;
            let slot = Maps::open(&pins.pin_root, &ifaces[0])?.limit(
                &mac,
                limit(up_mbits),
                limit(down_mbits),
            )?;
            for iface in &ifaces[1..] {
                Maps::open(&pins.pin_root, iface)?.mirror_classes(slot)?;
            }
            eprintln!(
                "{mac} on {}: down {down_mbits} Mbit/s, up {up_mbits} Mbit/s (0 = unlimited)",
                ifaces.join(", ")
            );
            Ok(())
        }
        Cmd::Detach { lans, pins } => {
            for lan in lans {
                dataplane::attach::detach(&pins.pin_root, &lan)?;
                eprintln!("detached from {lan}");
            }
            Ok(())
        }
    }
}

/// The LANs a command is about (`lan`, or every attached one), each attached
/// and configured by the agent: before that its pins hold an empty table.
fn interfaces(pin_root: &Path, lan: Option<String>) -> Result<Vec<String>, AgentError> {
    let lans = match lan {
        Some(l) => vec![l],
        None => Maps::attached_interfaces(pin_root)?,
    };
    for l in &lans {
        if !Maps::open(pin_root, l)?.configured() {
            return Err(AgentError::NotAttachedYet(l.clone()));
        }
    }
    Ok(lans)
}

fn set_allowed(
    pin_root: &Path,
    lan: Option<String>,
    mac: &MacAddr,
    allowed: bool,
) -> anyhow::Result<()> {
    // One client table serves every LAN.
    let ifaces = interfaces(pin_root, lan)?;
    Maps::open(pin_root, &ifaces[0])?.set_allowed_by(mac, allowed, true)?;
    eprintln!(
        "{mac} {} on {}",
        if allowed { "allowed" } else { "blocked" },
        ifaces.join(", ")
    );
    Ok(())
}

fn print_table(rows: &[ClientRow]) {
    let mut t = ctl::table(
        &[
            "LAN",
            "MAC",
            "ALLOWED",
            "UP BYTES",
            "UP PKTS",
            "DOWN BYTES",
            "DOWN PKTS",
            "GARDEN",
            "BLOCKED",
        ],
        &[3, 4, 5, 6, 7, 8],
    );
    for r in rows {
        t.add_row([
            r.lan.clone(),
            r.mac.to_string(),
            if r.allowed { "yes" } else { "no" }.into(),
            r.up_bytes.to_string(),
            r.up_packets.to_string(),
            r.down_bytes.to_string(),
            r.down_packets.to_string(),
            r.garden_packets.to_string(),
            r.blocked_packets.to_string(),
        ]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use session_agent::options;

    /// The daemon's options from a command line and a config file's text.
    fn options(args: &[&str], file: &str) -> daemon::RunOptions {
        let path = std::env::temp_dir().join(format!("sa-opts-{}.toml", std::process::id()));
        std::fs::write(&path, file).unwrap();
        let mut argv = vec!["session-agent", "run", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let Cmd::Run(a) = Cli::try_parse_from(argv).unwrap().cmd else {
            panic!("not run");
        };
        let o = Options::load(&a.0).and_then(Options::resolve);
        let _ = std::fs::remove_file(&path);
        o.unwrap()
    }

    #[test]
    fn flags_override_the_config_file_both_ways() {
        let file = "lans = [\"lan0\"]\nauto_advance = false\nanti_spoof = false\n";
        assert!(!options(&[], file).gateway.auto_advance);
        assert!(options(&["--auto-advance"], file).gateway.auto_advance);
        assert!(
            !options(&["--no-auto-advance"], "lans = [\"lan0\"]\n")
                .gateway
                .auto_advance
        );
        assert!(
            !options(&["--auto-advance", "false"], "lans = [\"lan0\"]\n")
                .gateway
                .auto_advance
        );
        assert!(!options(&[], file).gate.anti_spoof);
        assert!(options(&["--anti-spoof", "true"], file).gate.anti_spoof);
        let o = options(&["--garden-rate-kbits", "0"], "lans = [\"lan0\"]\n");
        assert_eq!((o.gate.garden_rate_kbits, o.gate.garden_pps), (0, 50));
        assert!(o.gate.anti_spoof, "on by default");
        let o = options(
            &["--lan", "wlan9", "--poll-ms", "500"],
            "lans = [\"lan0\"]\npoll_ms = 100\ncommit_ms = 2000\n",
        );
        assert_eq!(o.lans, ["wlan9"], "a list flag replaces the file's list");
        assert_eq!(
            o.gateway.poll_interval,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            o.gateway.commit_interval,
            std::time::Duration::from_millis(2000),
            "the file's value stays where no flag is given"
        );
        // A switch left off the command line keeps the file's value.
        let file = "lans = [\"lan0\"]\n[captive]\nlisten = \"10.0.0.1:8908\"\nredirect = true\n[api]\ntcp = \"127.0.0.1:8480\"\ntoken = \"t\"\napi_tls = true\n[admin]\nadmin_listen = \"127.0.0.1:8443\"\nadmin_plain_http = true\n";
        let o = options(&[], file);
        assert!(o.redirect.is_some(), "captive.redirect");
        assert!(o.api.tls.is_some(), "api.api_tls");
        assert!(o.admin.tls.is_none(), "admin.admin_plain_http");
        let o = options(&["--admin-plain-http"], "lans = [\"lan0\"]\n");
        assert!(o.admin.tls.is_none(), "the switch on the command line");
    }

    #[test]
    fn a_flag_out_of_range_is_refused_with_the_range_the_file_gets() {
        let e = Cli::try_parse_from(["session-agent", "run", "--lan", "x", "--poll-ms", "5"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("--poll-ms") && e.contains("10..=10000"), "{e}");
    }

    #[test]
    fn the_help_shows_each_default_from_the_options_defaults() {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        for (id, shown) in options::default_values() {
            let arg = run
                .get_arguments()
                .find(|a| a.get_id() == id.as_str())
                .unwrap_or_else(|| panic!("{id} has a default but no flag"));
            let flag = arg.get_long().unwrap();
            assert!(
                arg.get_help()
                    .unwrap()
                    .to_string()
                    .ends_with(&format!("[default: {shown}]")),
                "--{flag}: help does not show [default: {shown}]"
            );
        }
        assert!(help.contains("[default: 250]"), "{help}");
    }

    /// README "Configuration": its example file reads as options, every key
    /// there is an option (the parse refuses others), every option with a
    /// default is there with that default unless marked "example", and every
    /// flag of `run` is in the list of matching flags.
    #[test]
    fn the_readme_configuration_matches_the_options() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").expect("section")..];
        let start = section.find("```toml\n").expect("toml block") + 8;
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let file =
            Options::parse(std::path::Path::new("README.md"), block).expect("README's file parses");
        let shown: serde_json::Value = serde_json::to_value(&file).unwrap();
        let mut documented = std::collections::BTreeMap::new();
        let mut table = "";
        for line in block.lines() {
            let l = line.trim();
            if let Some(t) = l.strip_prefix('[') {
                table = t.trim_end_matches(']');
                continue;
            }
            let Some((key, _)) = l.split_once('=') else {
                continue;
            };
            documented.insert(key.trim().to_string(), (table, line.contains("example")));
        }
        for (id, default) in options::default_values() {
            let (table, example) = documented
                .get(&id)
                .unwrap_or_else(|| panic!("option {id} is not in README's configuration file"));
            if *example {
                continue;
            }
            let v = if table.is_empty() {
                &shown[&id]
            } else {
                &shown[*table][&id]
            };
            let v = match v {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            assert_eq!(
                v, default,
                "README shows {id} = {v}, the default is {default}"
            );
        }
        let flags = &section[section.find("The matching flags:").expect("flag list")..];
        let flags = &flags[..flags.find("\n\n").unwrap()];
        let cmd = <Cli as clap::CommandFactory>::command();
        let run = cmd.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" || long == "help" {
                continue;
            }
            assert!(
                flags.contains(&format!("`--{long}")),
                "--{long} is not in README's list of matching flags"
            );
        }
    }
}

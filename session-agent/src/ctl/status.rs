//! `status`, `providers` and `events`: what the agent says of itself.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use session_api::StatusView;

use super::{args::ApiArgs, out::*};

pub fn status(api: &ApiArgs) -> Result<()> {
    let v = api.client().call("GET", "/v1/status", None)?;
    show(api, v, |v: StatusView| {
        println!("session-agent {} up {} s", v.version, v.uptime_secs);
        for l in &v.lans {
            println!("  lan {:<12} {} clients", l.name, l.clients);
        }
        println!(
            "  devices {}, connected {}, sessions {}",
            v.devices, v.connected, v.sessions
        );
        println!(
            "  poll every {} ms (last {} us), auto-advance {}",
            v.poll_interval_ms, v.last_poll_us, v.auto_advance
        );
    })
}

pub fn providers(api: &ApiArgs) -> Result<()> {
    let v = api.client().call("GET", "/v1/providers", None)?;
    show(api, v, |v: Vec<String>| {
        for p in v {
            println!("{p}");
        }
    })
}

pub fn events(
    api: &ApiArgs,
    device: Option<i64>,
    count: Option<u64>,
    idle_timeout_secs: Option<u64>,
) -> Result<()> {
    use std::io::Write;
    let path = match device {
        Some(d) => format!("/v1/events?device={d}"),
        None => "/v1/events".to_string(),
    };
    let mut n = 0u64;
    let r = api.client().follow(
        &path,
        idle_timeout_secs.map(Duration::from_secs),
        |name, data| {
            if name == "ready" {
                return true;
            }
            if api.json {
                println!("{data}");
            } else {
                let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                let mut rest = String::new();
                if let Value::Object(m) = &v {
                    for (k, val) in m {
                        if k != "event" {
                            rest.push_str(&format!(" {k}={val}"));
                        }
                    }
                }
                println!("{name}{rest}");
            }
            let _ = std::io::stdout().flush();
            n += 1;
            count.is_none_or(|c| n < c)
        },
    );
    match r {
        Err(session_api::ClientError::Io { err, .. })
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        r => Ok(r?),
    }
}

//! `session-agent run --config FILE`: every run option in a TOML file. Command-line
//! flags override the file; unknown keys and bad values are refused with the key
//! and the reason.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The whole file. Every key is optional; see README "Configuration".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing interfaces.
    pub lans: Option<Vec<String>>,
    /// Extra walled-garden destinations, `CIDR[:PORT]`.
    pub walled_garden: Option<Vec<String>>,
    /// Portal ports on the gateway's LAN addresses.
    pub portal_ports: Option<Vec<u16>>,
    /// `tc` or `xdp`.
    pub ingress: Option<session_agent::dataplane::attach::IngressHook>,
    /// `police` or `htb`.
    pub shaper: Option<session_agent::dataplane::shape::Shaper>,
    /// `auto`, `tcx` or `netlink`.
    pub tc_attach: Option<session_agent::dataplane::attach::TcAttach>,
    pub pin_root: Option<PathBuf>,
    pub poll_ms: Option<u64>,
    pub commit_ms: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub forget_idle_secs: Option<u64>,
    pub global_down_mbits: Option<u64>,
    pub global_up_mbits: Option<u64>,
    pub burst_ms: Option<u64>,
    pub auto_advance: Option<bool>,
    pub checkpoint_secs: Option<u64>,
    /// Bind client addresses to MACs and drop spoofed ones.
    pub anti_spoof: Option<bool>,
    /// An address binding unused this long is removed.
    pub bind_ttl_secs: Option<u64>,
    /// Walled-garden limit per client and direction before payment.
    pub garden_rate_kbits: Option<u64>,
    pub garden_pps: Option<u64>,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub captive: CaptiveSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `memory`, `redb` or `hybrid`.
    pub provider: Option<String>,
    pub path: Option<PathBuf>,
    /// Remove sessions that ended this many seconds ago (0 or absent: keep them).
    pub retention_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub metrics_top_clients: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptiveSection {
    pub listen: Option<SocketAddr>,
    pub portal_url: Option<String>,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries the line and a caret; keep its first line.
            let reason = inner.message().lines().next().unwrap_or("").to_string();
            let key = if key == "." {
                "(top level)".into()
            } else {
                key
            };
            invalid(key, reason)
        })?;
        cfg.check().map_err(|(k, r)| invalid(k.to_string(), r))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        fn range(
            key: &'static str,
            v: Option<u64>,
            lo: u64,
            hi: u64,
        ) -> Result<(), (&'static str, String)> {
            match v {
                Some(v) if !(lo..=hi).contains(&v) => {
                    Err((key, format!("{v} is out of range: must be {lo}..={hi}")))
                }
                _ => Ok(()),
            }
        }
        range("poll_ms", self.poll_ms, 10, 10_000)?;
        range("commit_ms", self.commit_ms, 10, 60_000)?;
        range("burst_ms", self.burst_ms, 1, 10_000)?;
        if let Some(p) = &self.portal_ports {
            if p.contains(&0) {
                return Err(("portal_ports", "port 0 is not a port".into()));
            }
        }
        range(
            "bind_ttl_secs",
            self.bind_ttl_secs,
            *crate::BIND_TTL_RANGE.start(),
            *crate::BIND_TTL_RANGE.end(),
        )?;
        range(
            "garden_rate_kbits",
            self.garden_rate_kbits,
            0,
            crate::GARDEN_KBITS_MAX,
        )?;
        range("garden_pps", self.garden_pps, 0, crate::GARDEN_PPS_MAX)?;
        range("checkpoint_secs", self.checkpoint_secs, 1, u64::MAX)?;
        range(
            "global_down_mbits",
            self.global_down_mbits,
            0,
            crate::GLOBAL_MBITS_MAX,
        )?;
        range(
            "global_up_mbits",
            self.global_up_mbits,
            0,
            crate::GLOBAL_MBITS_MAX,
        )?;
        if let Some(l) = &self.lans {
            if l.iter().any(|s| s.is_empty()) {
                return Err(("lans", "an interface name is empty".into()));
            }
        }
        if let Some(p) = &self.store.provider {
            let names = session_model::store_names();
            if !names.iter().any(|n| n == p) {
                return Err((
                    "store.provider",
                    format!("{p:?}: expected one of {}", names.join(", ")),
                ));
            }
        }
        if let Some(g) = &self.walled_garden {
            for e in g {
                if let Err(err) = e.parse::<session_agent::garden::GardenEntry>() {
                    return Err(("walled_garden", err.to_string()));
                }
            }
        }
        if self.api.token.is_some() && self.api.token_file.is_some() {
            return Err((
                "api.token_file",
                "give api.token or api.token_file, not both".into(),
            ));
        }
        if let Some(t) = &self.api.token {
            if t.is_empty() {
                return Err(("api.token", "the token is empty".into()));
            }
        }
        if let Some(u) = &self.captive.portal_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(("captive.portal_url", format!("{u:?} is not an http(s) URL")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), s)
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
lans = ["wlan0", "eth1"]
walled_garden = ["203.0.113.0/24:443"]
portal_ports = [80, 443]
ingress = "xdp"
shaper = "htb"
tc_attach = "netlink"
poll_ms = 200
auto_advance = false
anti_spoof = false
bind_ttl_secs = 600
garden_rate_kbits = 512
garden_pps = 100
[store]
provider = "redb"
path = "/tmp/x.redb"
retention_secs = 86400
[api]
socket = "/run/x.sock"
tcp = "127.0.0.1:8080"
token = "s3cret"
metrics_top_clients = 20
[captive]
listen = "10.0.0.1:8908"
portal_url = "https://portal.example/"
"#,
        )
        .unwrap();
        assert_eq!(c.lans.unwrap().len(), 2);
        assert_eq!(c.api.tcp.unwrap().port(), 8080);
        assert_eq!(c.store.retention_secs, Some(86400));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("poll_ms = 100\n[api]\nsockets = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api") && e.contains("sockets"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("poll_ms = \"fast\"\n").unwrap_err().to_string();
        assert!(e.contains("poll_ms"), "{e}");
        let e = parse("[api]\ntcp = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("api.tcp"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("shaper = \"tbf\"\n").unwrap_err().to_string();
        assert!(e.contains("shaper") && e.contains("htb"), "{e}");
        let e = parse("poll_ms = 5\n").unwrap_err().to_string();
        assert!(e.contains("poll_ms") && e.contains("10..=10000"), "{e}");
        let e = parse("[store]\nprovider = \"sqlite\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.provider"), "{e}");
        let e = parse("walled_garden = [\"nonsense\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("walled_garden"), "{e}");
        let e = parse("checkpoint_secs = 0\n").unwrap_err().to_string();
        assert!(e.contains("checkpoint_secs") && e.contains("1.."), "{e}");
        let e = parse("global_down_mbits = 1000000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("global_down_mbits"), "{e}");
        let e = parse("bind_ttl_secs = 1\n").unwrap_err().to_string();
        assert!(e.contains("bind_ttl_secs"), "{e}");
        let e = parse("garden_pps = 100000000\n").unwrap_err().to_string();
        assert!(e.contains("garden_pps"), "{e}");
        let e = parse("tc_attach = \"tc\"\n").unwrap_err().to_string();
        assert!(e.contains("tc_attach") && e.contains("netlink"), "{e}");
    }
}

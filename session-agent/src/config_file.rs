//! The operator page's settings written into the configuration file that
//! SIGHUP reads (`--config`), its comments and other keys kept
//! ([`toml_edit`]); the page then has the agent reload it.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use toml_edit::{value, Array, DocumentMut};

use crate::{
    admin::settings::{Settings, SettingsFile},
    options::Options,
};

/// The configuration file.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

fn strings(a: &[String]) -> Array {
    a.iter().map(String::as_str).collect()
}

/// `text` with `s` in it.
pub fn edit(text: &str, s: &Settings) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the configuration file does not read as TOML: {e}"))?;
    doc["walled_garden"] = value(strings(&s.walled_garden));
    doc["walled_garden_domains"] = value(strings(&s.walled_garden_domains));
    for (k, v) in [
        ("idle_timeout_secs", s.idle_timeout_secs),
        ("global_down_mbits", s.global_down_mbits),
        ("global_up_mbits", s.global_up_mbits),
    ] {
        let v = i64::try_from(v).map_err(|_| format!("{k} is too large"))?;
        doc[k] = value(v);
    }
    Ok(doc.to_string())
}

impl SettingsFile for ConfigFile {
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<Settings, String> {
        let o = Options::read(&self.path).map_err(|e| e.to_string())?;
        Ok(Settings {
            walled_garden: o.walled_garden.iter().map(|g| g.to_string()).collect(),
            walled_garden_domains: o
                .walled_garden_domains
                .iter()
                .map(|d| d.to_string())
                .collect(),
            idle_timeout_secs: o.idle_timeout_secs,
            global_down_mbits: o.global_down_mbits.get(),
            global_up_mbits: o.global_up_mbits.get(),
        })
    }

    fn write(&self, s: &Settings) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        let new = edit(&text, s)?;
        // The whole file must read, as a reload will read it.
        Options::parse(&self.path, &new).map_err(|e| e.to_string())?;
        replace(&self.path, &new).map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        tracing::info!(file = %self.path.display(), "the operator page changed the configuration");
        Ok(())
    }
}

/// Replaces `path` in one rename, with its mode.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_keeps_the_files_comments_and_other_keys() {
        let text = "# my hotspot\nlans = [\"wlan0\"]  # the Wi-Fi\nidle_timeout_secs = 600\n\n[api]\nsocket = \"/run/x.sock\"\n";
        let s = Settings {
            walled_garden: vec!["203.0.113.0/24:443".into()],
            walled_garden_domains: vec!["*.example.com".into()],
            idle_timeout_secs: 0,
            global_down_mbits: 50,
            global_up_mbits: 10,
        };
        let new = edit(text, &s).unwrap();
        assert!(
            new.contains("# my hotspot") && new.contains("# the Wi-Fi"),
            "{new}"
        );
        assert!(new.contains("socket = \"/run/x.sock\""), "{new}");
        let o = Options::parse(Path::new("x.toml"), &new).unwrap();
        assert_eq!(o.walled_garden[0].to_string(), "203.0.113.0/24:443");
        assert_eq!(o.idle_timeout_secs, 0);
        assert_eq!(o.global_down_mbits.get(), 50);
        // Twice the same edit changes nothing more.
        assert_eq!(edit(&new, &s).unwrap(), new);
    }

    #[test]
    fn a_change_that_does_not_read_writes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "lans = [\"wlan0\"]\n").unwrap();
        let f = ConfigFile::at(&path);
        let bad = Settings {
            walled_garden: vec!["not an address".into()],
            ..Settings::default()
        };
        let e = f.write(&bad).unwrap_err();
        assert!(e.contains("walled_garden"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "lans = [\"wlan0\"]\n"
        );
        let good = Settings {
            walled_garden: vec!["198.51.100.7/32".into()],
            ..bad
        };
        f.write(&good).unwrap();
        assert_eq!(
            f.read().unwrap().walled_garden,
            vec!["198.51.100.7/32".to_string()]
        );
    }
}

//! What the portal page says, and its colours: one TOML file over the
//! defaults (`portal/texts.toml`), and the hotspot's logo.

use std::{path::Path, sync::Arc};

use serde::Deserialize;
use session_model::RedeemRefusal;

/// The default texts (English), also the template an operator copies.
pub const DEFAULT_TEXTS: &str = include_str!("../../portal/texts.toml");

/// Everything the page says, and its colours.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalTexts {
    pub lang: String,
    pub name: String,
    pub welcome: String,
    pub code_label: String,
    pub code_placeholder: String,
    pub redeem_button: String,
    pub add_code: String,
    /// Heading of the operator's price plans.
    pub prices: String,
    pub connected: String,
    pub paused: String,
    pub paused_hint: String,
    pub remaining_time: String,
    pub remaining_data: String,
    pub used_data: String,
    pub speed: String,
    pub valid_until: String,
    pub unlimited: String,
    pub waiting_sessions: String,
    pub pause_button: String,
    pub resume_button: String,
    pub redeemed: String,
    pub queued: String,
    pub moved: String,
    pub error_unknown_voucher: String,
    pub error_voucher_used_up: String,
    pub error_voucher_expired: String,
    pub error_voucher_revoked: String,
    pub error_voucher_locked: String,
    pub error_voucher_already_redeemed: String,
    pub error_too_many_tries: String,
    pub error_no_session: String,
    pub error_not_a_client: String,
    pub error_other: String,
    pub error_blocked: String,
    pub error_try_again: String,
    pub error_already_online: String,
    pub error_code_missing: String,
    pub error_code_too_long: String,
    pub error_code_characters: String,
    pub error_form: String,
    pub color_accent: String,
    pub color_background: String,
    pub color_text: String,
    /// A PNG, JPEG or SVG file shown before the name (at most [`MAX_LOGO`]
    /// bytes); a relative path is taken from the texts file's folder. Empty: none.
    pub logo: String,
    /// The logo's bytes, read at start.
    #[serde(skip)]
    pub logo_image: Option<Logo>,
}

/// Largest logo the page serves.
pub const MAX_LOGO: usize = 256 * 1024;

/// An image the portal serves at `/portal/logo`.
#[derive(Clone)]
pub struct Logo {
    pub mime: &'static str,
    pub bytes: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Logo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Logo({}, {} bytes)", self.mime, self.bytes.len())
    }
}

/// A texts file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PortalTextsError {
    #[error("cannot read the portal texts {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("portal texts {path}: {source} (the keys and their defaults are in the README's portal section)")]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("portal texts {path}: {key} must be a colour like #0b6e4f, not {value:?}")]
    Colour {
        path: std::path::PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("portal logo {path}: {source}")]
    LogoRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("portal logo {path}: {reason}")]
    Logo {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Default for PortalTexts {
    fn default() -> Self {
        // Checked by the test `the_default_texts_parse_and_are_complete`.
        toml::from_str(DEFAULT_TEXTS).unwrap_or_else(|e| panic!("portal/texts.toml: {e}"))
    }
}

impl PortalTexts {
    /// The defaults with the keys of the file at `path` over them.
    pub fn load(path: &Path) -> Result<Self, PortalTextsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PortalTextsError::Read {
            path: path.into(),
            source,
        })?;
        let mut t = Self::from_overlay(&text, path)?;
        if !t.logo.is_empty() {
            let at = path.parent().unwrap_or(Path::new(".")).join(&t.logo);
            t.logo_image = Some(read_logo(&at)?);
        }
        Ok(t)
    }

    fn from_overlay(text: &str, path: &Path) -> Result<Self, PortalTextsError> {
        let parse = |source| PortalTextsError::Parse {
            path: path.into(),
            source,
        };
        let mut merged: toml::Table = toml::from_str(DEFAULT_TEXTS).map_err(parse)?;
        let given: toml::Table = toml::from_str(text).map_err(parse)?;
        merged.extend(given);
        let t: PortalTexts = toml::Value::Table(merged).try_into().map_err(parse)?;
        for (key, value) in [
            ("color_accent", &t.color_accent),
            ("color_background", &t.color_background),
            ("color_text", &t.color_text),
        ] {
            let ok = value.len() == 7
                && value.starts_with('#')
                && value[1..].bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(PortalTextsError::Colour {
                    path: path.into(),
                    key,
                    value: value.clone(),
                });
            }
        }
        Ok(t)
    }

    pub(super) fn refusal(&self, r: &RedeemRefusal) -> &str {
        match r {
            RedeemRefusal::Unknown => &self.error_unknown_voucher,
            RedeemRefusal::Revoked => &self.error_voucher_revoked,
            RedeemRefusal::Expired => &self.error_voucher_expired,
            RedeemRefusal::UsedUp => &self.error_voucher_used_up,
            RedeemRefusal::LockedToOtherDevice => &self.error_voucher_locked,
            RedeemRefusal::AlreadyRedeemed { .. } => &self.error_voucher_already_redeemed,
        }
    }
}

/// Reads a logo, by its file name's ending.
fn read_logo(path: &Path) -> Result<Logo, PortalTextsError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mime = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        _ => {
            return Err(PortalTextsError::Logo {
                path: path.into(),
                reason: "must be a .png, .jpg or .svg file".into(),
            })
        }
    };
    let bytes = std::fs::read(path).map_err(|source| PortalTextsError::LogoRead {
        path: path.into(),
        source,
    })?;
    if bytes.len() > MAX_LOGO {
        return Err(PortalTextsError::Logo {
            path: path.into(),
            reason: format!(
                "{} bytes, more than {MAX_LOGO}: a phone on a slow link loads it first",
                bytes.len()
            ),
        });
    }
    Ok(Logo {
        mime,
        bytes: Arc::new(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_texts_parse_and_are_complete() {
        let t = PortalTexts::from_overlay("", Path::new("defaults")).unwrap();
        assert_eq!(t.lang, "en");
        assert!(!t.error_voucher_locked.is_empty());
    }

    #[test]
    fn an_operator_file_overrides_some_texts_and_refuses_unknown_keys_and_bad_colours() {
        let p = Path::new("mine.toml");
        let t = PortalTexts::from_overlay("name = \"Café Luna\"\ncolor_accent = \"#aa0000\"\n", p)
            .unwrap();
        assert_eq!(t.name, "Café Luna");
        assert_eq!(t.color_accent, "#aa0000");
        assert_eq!(t.redeem_button, PortalTexts::default().redeem_button);
        let e = PortalTexts::from_overlay("nmae = \"x\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nmae") && e.contains("mine.toml"), "{e}");
        let e = PortalTexts::from_overlay("color_text = \"red;}body{display:none\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("color_text must be a colour"), "{e}");
    }
}

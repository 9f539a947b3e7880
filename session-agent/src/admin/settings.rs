//! What the operator page may change of the agent's configuration: the
//! walled garden (addresses and names) and settings a reload applies. The
//! page edits them through [`SettingsFile`], which the wiring implements over
//! the configuration file SIGHUP reads: a change is checked as a whole file
//! before it is written, and then applied as a reload applies it.

/// The settings the page edits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// `CIDR[:PORT]` each.
    pub walled_garden: Vec<String>,
    /// `name` or `*.name` each.
    pub walled_garden_domains: Vec<String>,
    /// 0: off.
    pub idle_timeout_secs: u64,
    pub global_down_mbits: u64,
    pub global_up_mbits: u64,
}

/// Where the settings are kept and how a change is applied.
pub trait SettingsFile: Send + Sync {
    /// The file, as the page names it.
    fn path(&self) -> String;
    /// The settings as the file has them now.
    fn read(&self) -> Result<Settings, String>;
    /// Writes `s` into the file, keeping everything else in it, if the file
    /// with them reads as a whole (the page then has the agent reload it).
    /// An error says what is wrong, and nothing was written.
    fn write(&self, s: &Settings) -> Result<(), String>;
}

//! What the subcommands share: paths, and the API's answers printed as
//! tables or as JSON.

use anyhow::{anyhow, Result};
use comfy_table::{CellAlignment, Table};
use serde::de::DeserializeOwned;
use serde_json::Value;
use session_api::SessionView;

use super::args::ApiArgs;

pub(super) fn parse_type(s: &str) -> Result<u8, String> {
    match s {
        "0" | "time" => Ok(0),
        "1" | "data" => Ok(1),
        "2" | "time_or_data" | "time-or-data" => Ok(2),
        _ => Err(format!(
            "'{s}' is not a session type: time (0), data (1) or time_or_data (2)"
        )),
    }
}

/// Keeps a path segment from changing the path.
/// The path of `DELETE /v1/{what}/{id}`, with `?force=true` when asked.
pub(super) fn remove_path(what: &str, id: &str, force: bool) -> String {
    let q = if force { "?force=true" } else { "" };
    format!("/v1/{what}/{}{q}", seg(id))
}

pub(super) fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A table with this header, its columns apart by spaces; columns in
/// `right` are aligned right (numbers).
pub fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(header);
    }
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// `-` for nothing.
pub(super) fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), T::to_string)
}

pub(super) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub(super) fn type_name(v: &SessionView) -> &'static str {
    match v.session_type {
        0 => "time",
        1 => "data",
        2 => "time_or_data",
        _ => "?",
    }
}

/// Each field of a view on a line of its own.
pub(super) fn print_kv<T: serde::Serialize>(view: &T) {
    match serde_json::to_value(view) {
        Ok(Value::Object(m)) => {
            let mut t = table(&[], &[]);
            for (k, val) in m {
                let shown = match val {
                    Value::String(s) => s,
                    Value::Null => "-".into(),
                    x => x.to_string(),
                };
                t.add_row([k, shown]);
            }
            println!("{t}");
        }
        Ok(v) => println!("{v}"),
        Err(e) => println!("{e}"),
    }
}

/// Prints the API's answer: as it came with `--json`, else read as the
/// server's own view type `T` and shown by `human`.
pub(super) fn show<T: DeserializeOwned>(
    api: &ApiArgs,
    v: Value,
    human: impl FnOnce(T),
) -> Result<()> {
    if api.json {
        return print_json(&v);
    }
    let view = serde_json::from_value(v).map_err(|e| {
        anyhow!(
            "the agent's answer is not a {} ({e}): are this session-agent and the running one the same version?",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("view")
        )
    })?;
    human(view);
    Ok(())
}

/// `?k=v&...` of the options given.
pub(super) fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

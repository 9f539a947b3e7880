//! Small pieces of HTML and plain text shared by the portal page and the printed
//! voucher sheet.

use session_model::{SessionType, VoucherTemplate};

/// `s` safe inside HTML text and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration for people: `2 d 3 h`, `1 h 05 min`, `4 min 09 s`, `12 s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

/// Time left as a countdown shows it, seconds always: `2 d 03 h 05 min 07 s`,
/// `1 h 05 min 07 s`, `4 min 09 s`, `12 s`.
pub fn time_left(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d} d {h:02} h {m:02} min {s:02} s")
    } else if h > 0 {
        format!("{h} h {m:02} min {s:02} s")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

/// An amount of data in decimal units (1 MB = 1,000,000 bytes, as sold), to
/// three significant figures without trailing zeros: `123 kB`, `1.5 MB`,
/// `200 MB`, `1.23 GB`.
pub fn bytes(n: u64) -> String {
    if n < 1000 {
        return format!("{n} B");
    }
    let mut div: u128 = 1;
    for unit in ["kB", "MB", "GB", "TB", "PB", "EB"] {
        div *= 1000;
        let whole = u128::from(n) / div;
        if whole >= 1000 && unit != "EB" {
            continue;
        }
        // Decimals that leave three significant figures, rounded half up.
        let decimals = match whole {
            0..=9 => 2,
            10..=99 => 1,
            _ => 0,
        };
        let scale = 10u128.pow(decimals);
        let v = (u128::from(n) * scale * 2 + div) / (div * 2);
        if v >= 1000 * scale && unit != "EB" {
            // 999.6 kB rounds to the next unit.
            continue;
        }
        let (int, frac) = (v / scale, v % scale);
        let mut out = int.to_string();
        if frac > 0 {
            let f = format!("{frac:0width$}", width = decimals as usize);
            out.push('.');
            out.push_str(f.trim_end_matches('0'));
        }
        return format!("{out} {unit}");
    }
    unreachable!("u64 bytes are below 1000 EB")
}

/// A speed pair in Mbit/s, 0 meaning no limit.
pub fn speed(down: i32, up: i32, unlimited: &str) -> String {
    let one = |v: i32| {
        if v <= 0 {
            unlimited.to_string()
        } else {
            format!("{v} Mbit/s")
        }
    };
    format!("↓ {} · ↑ {}", one(down), one(up))
}

/// Unix seconds as `2026-11-27 19:05 UTC` (as they are, beyond the calendar's years).
pub fn utc_minute(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => format!("{secs} s after 1970 (UTC)"),
    }
}

/// What a voucher buys, in a line: `1 h 00 min · 5 Mbit/s down`.
pub fn what_it_buys(t: &VoucherTemplate) -> String {
    let mut parts = Vec::new();
    match t.session_type {
        SessionType::Time => parts.push(duration(t.time_secs)),
        SessionType::Data => parts.push(bytes(t.data_bytes)),
        SessionType::TimeOrData => parts.push(format!(
            "{} or {}",
            duration(t.time_secs),
            bytes(t.data_bytes)
        )),
    }
    if !t.use_global_speed && (t.down_mbits > 0 || t.up_mbits > 0) {
        parts.push(speed(t.down_mbits, t.up_mbits, "no limit"));
    }
    if let Some(d) = t.exp_days {
        parts.push(format!("valid {d} d after first use"));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_shown_not_run() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn durations_and_amounts_read_as_people_say_them() {
        assert_eq!(duration(9), "9 s");
        assert_eq!(duration(249), "4 min 09 s");
        assert_eq!(duration(3_900), "1 h 05 min");
        assert_eq!(duration(2 * 86_400 + 3 * 3_600 + 59), "2 d 3 h");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(bytes(50_000_000), "50 MB");
        assert_eq!(bytes(500_000_000), "500 MB");
        assert_eq!(bytes(2_345_000_000), "2.35 GB");
        assert_eq!(speed(5, 0, "∞"), "↓ 5 Mbit/s · ↑ ∞");
        assert_eq!(duration(3_600), "1 h 00 min");
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(1_795_806_300), "2026-11-27 19:05 UTC");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn time_left_shows_its_seconds_at_every_length() {
        assert_eq!(time_left(9), "9 s");
        assert_eq!(time_left(249), "4 min 09 s");
        assert_eq!(time_left(3_907), "1 h 05 min 07 s");
        assert_eq!(time_left(2 * 3_600), "2 h 00 min 00 s");
        assert_eq!(
            time_left(2 * 86_400 + 3 * 3_600 + 5 * 60 + 7),
            "2 d 03 h 05 min 07 s"
        );
    }

    #[test]
    fn data_reads_to_three_significant_figures() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(123_000), "123 kB");
        assert_eq!(bytes(123_456), "123 kB");
        assert_eq!(bytes(12_345), "12.3 kB");
        assert_eq!(bytes(1_234), "1.23 kB");
        assert_eq!(bytes(999_600), "1 MB");
        assert_eq!(bytes(199_900_000), "200 MB");
        // 200 MB sold, 123 kB used: what is left is no longer a round number.
        assert_eq!(bytes(200_000_000 - 123_000), "200 MB");
        assert_eq!(bytes(10_000_000 - 123_000), "9.88 MB");
        assert_eq!(bytes(123_400_000), "123 MB");
        assert_eq!(bytes(12_340_000), "12.3 MB");
        assert_eq!(bytes(1_230_000_000), "1.23 GB");
        assert_eq!(bytes(1_235_000_000), "1.24 GB");
        assert_eq!(bytes(u64::MAX), "18.4 EB");
    }
}

//! Charts drawn on the server as inline SVG: no script draws them and no
//! outside service is asked; the colours and sizes are attributes, so the
//! page's content security policy allows no inline style.

use crate::{history::Moved, web::html::escape};

const W: f64 = 600.0;
const H: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 20.0;
const DOWN: &str = "#0b6bcb";
const UP: &str = "#e8590c";

/// Bits per second as people read them: `12.3 Mbit/s`, `850 kbit/s`.
pub fn rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.1} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} Mbit/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.0} kbit/s", bps / 1e3)
    } else {
        format!("{bps:.0} bit/s")
    }
}

/// The minutes a chart spans: `count` buckets of `bucket` minutes from
/// minute `from`, labelled at either end.
pub struct Span<'a> {
    pub from: u64,
    pub count: u64,
    pub bucket: u64,
    pub labels: (&'a str, &'a str),
}

/// Down and up rates over `span`; a bucket without a record is drawn as
/// nothing moved.
pub fn rates(id: &str, title: &str, points: &[(u64, Moved)], span: &Span<'_>) -> String {
    let Span {
        from,
        count,
        bucket,
        labels: (start_label, end_label),
    } = *span;
    let mut down = vec![0u64; count as usize];
    let mut up = vec![0u64; count as usize];
    for (m, x) in points {
        if *m < from {
            continue;
        }
        let i = ((m - from) / bucket) as usize;
        if i < down.len() {
            down[i] = down[i].saturating_add(x.down);
            up[i] = up[i].saturating_add(x.up);
        }
    }
    let secs = (bucket * 60) as f64;
    let to_bps = |b: u64| b as f64 * 8.0 / secs;
    let peak = down
        .iter()
        .chain(up.iter())
        .map(|b| to_bps(*b))
        .fold(0.0f64, f64::max);
    let top = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    let line = |v: &[u64]| -> String {
        let n = v.len().max(2) as f64 - 1.0;
        v.iter()
            .enumerate()
            .map(|(i, b)| {
                let x = LEFT + (W - LEFT) * i as f64 / n;
                let y = (H - BOTTOM) - (H - BOTTOM - 4.0) * to_bps(*b) / top;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<figure class=\"chart\" id=\"{id}\"><figcaption>{title} <span class=\"key down\">down</span> <span class=\"key up\">up</span> · peak {peak}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\">\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\" stroke=\"#c9ced6\"/>\
         <text x=\"{lx}\" y=\"12\" font-size=\"11\" text-anchor=\"end\" fill=\"#5c6670\">{top_label}</text>\
         <text x=\"{lx}\" y=\"{base}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5c6670\">0</text>\
         <text x=\"{LEFT}\" y=\"{H}\" font-size=\"11\" fill=\"#5c6670\">{start}</text>\
         <text x=\"{W}\" y=\"{H}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5c6670\">{end}</text>\
         <polyline class=\"down\" fill=\"none\" stroke=\"{DOWN}\" stroke-width=\"2\" points=\"{d}\"/>\
         <polyline class=\"up\" fill=\"none\" stroke=\"{UP}\" stroke-width=\"2\" points=\"{u}\"/></svg></figure>",
        id = escape(id),
        title = escape(title),
        peak = escape(&rate(peak)),
        base = H - BOTTOM,
        lx = LEFT - 4.0,
        top_label = escape(&rate(top)),
        start = escape(start_label),
        end = escape(end_label),
        d = line(&down),
        u = line(&up),
    )
}

/// Bars of `values` (a label and an amount each), with `unit` after the peak.
pub fn bars(id: &str, title: &str, values: &[(String, u64)], unit: &str) -> String {
    let peak = values.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let top = peak.max(1) as f64;
    let n = values.len().max(1) as f64;
    let slot = (W - LEFT) / n;
    let mut rects = String::new();
    for (i, (label, v)) in values.iter().enumerate() {
        let h = (H - BOTTOM - 4.0) * *v as f64 / top;
        rects.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{DOWN}\"><title>{}: {v}</title></rect>",
            LEFT + slot * i as f64 + 1.0,
            H - BOTTOM - h,
            (slot - 2.0).max(1.0),
            escape(label),
        ));
    }
    let first = values.first().map(|(l, _)| l.as_str()).unwrap_or("");
    let last = values.last().map(|(l, _)| l.as_str()).unwrap_or("");
    format!(
        "<figure class=\"chart\" id=\"{id}\"><figcaption>{title} · peak {peak} {unit}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\">\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\" stroke=\"#c9ced6\"/>{rects}\
         <text x=\"{LEFT}\" y=\"{H}\" font-size=\"11\" fill=\"#5c6670\">{first}</text>\
         <text x=\"{W}\" y=\"{H}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5c6670\">{last}</text></svg></figure>",
        id = escape(id),
        title = escape(title),
        unit = escape(unit),
        base = H - BOTTOM,
        first = escape(first),
        last = escape(last),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_chart_puts_the_busiest_bucket_at_the_top_and_empty_ones_at_zero() {
        let pts = [(
            10,
            Moved {
                up: 0,
                down: 750_000,
            },
        )];
        let span = Span {
            from: 9,
            count: 3,
            bucket: 1,
            labels: ("a", "b"),
        };
        let svg = rates("c", "Last hour", &pts, &span);
        // 750 kB in a minute: 100 kbit/s down.
        assert!(svg.contains("peak 100 kbit/s"), "{svg}");
        let down = svg.split("class=\"down\"").nth(1).unwrap();
        let points: Vec<&str> = down
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .collect();
        assert_eq!(points.len(), 3);
        let y = |p: &str| p.split(',').nth(1).unwrap().parse::<f64>().unwrap();
        assert_eq!(y(points[0]), H - BOTTOM, "nothing before");
        assert!(y(points[1]) < 20.0, "the peak near the top: {}", points[1]);
        assert!(!svg.contains("style="), "no inline style");
    }

    #[test]
    fn labels_are_escaped() {
        let svg = bars("b", "<t>", &[("<d>".into(), 5)], "PHP");
        assert!(!svg.contains("<t>") && !svg.contains("<d>"), "{svg}");
    }
}

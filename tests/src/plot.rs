//! Line charts as PNG for the reports (the soak's memory, CPU and poll time):
//! panels stacked one above the other over one time axis, each with its
//! title and its largest value written in a small bitmap font. The `png`
//! crate encodes the image; the drawing is a few lines and a font of 3x5
//! glyphs, as no plotting crate is needed for lines and labels.

use std::io;
use std::path::Path;

/// One panel: a series of `(seconds, value)` points; NaN leaves a gap.
pub struct Series<'a> {
    pub title: &'a str,
    pub points: &'a [(f64, f64)],
}

const WIDTH: usize = 960;
const PANEL: usize = 180;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 26;
const BOTTOM: usize = 22;
const SCALE: usize = 2;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        self.px[i..i + 3].copy_from_slice(&rgb);
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, rgb);
            self.set(x, y + 1, rgb);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, rgb: [u8; 3]) {
        for (k, c) in s.chars().enumerate() {
            let g = glyph(c.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) == 0 {
                        continue;
                    }
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            self.set(
                                (x + k * 4 * SCALE + col * SCALE + dx) as i64,
                                (y + row * SCALE + dy) as i64,
                                rgb,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Writes `panels` over `0..=secs` seconds to `path` as a PNG.
pub fn line_charts(path: &Path, secs: f64, panels: &[Series]) -> io::Result<()> {
    let h = panels.len() * PANEL;
    let mut c = Canvas {
        w: WIDTH,
        h,
        px: vec![255; WIDTH * h * 3],
    };
    let (grey, ink, blue) = ([200, 200, 200], [30, 30, 30], [20, 90, 200]);
    let plot_w = (WIDTH - LEFT - RIGHT) as f64;
    let plot_h = (PANEL - TOP - BOTTOM) as f64;
    let secs = secs.max(1.0);
    for (n, s) in panels.iter().enumerate() {
        let top = n * PANEL + TOP;
        let bottom = top + PANEL - TOP - BOTTOM;
        let max = s
            .points
            .iter()
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let ceil = if max > 0.0 { max * 1.1 } else { 1.0 };
        for x in LEFT..WIDTH - RIGHT {
            c.set(x as i64, top as i64, grey);
            c.set(x as i64, bottom as i64, grey);
        }
        for y in top..=bottom {
            c.set(LEFT as i64, y as i64, grey);
            c.set((WIDTH - RIGHT) as i64, y as i64, grey);
        }
        c.text(LEFT, n * PANEL + 6, s.title, ink);
        c.text(4, top, &short(ceil), ink);
        c.text(4, bottom - 5 * SCALE, "0", ink);
        c.text(LEFT, bottom + 6, "0 S", ink);
        let end = format!("{} S", secs.round());
        c.text(WIDTH - RIGHT - end.len() * 4 * SCALE, bottom + 6, &end, ink);
        let mut last: Option<(i64, i64)> = None;
        for &(t, v) in s.points {
            if !v.is_finite() {
                last = None;
                continue;
            }
            let x = LEFT as f64 + (t / secs).clamp(0.0, 1.0) * plot_w;
            let y = bottom as f64 - (v / ceil).clamp(0.0, 1.0) * plot_h;
            let p = (x.round() as i64, y.round() as i64);
            match last {
                Some(q) => c.line(q, p, blue),
                None => c.set(p.0, p.1, blue),
            }
            last = Some(p);
        }
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(io::BufWriter::new(file), WIDTH as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(io::Error::other)?;
    w.write_image_data(&c.px).map_err(io::Error::other)?;
    w.finish().map_err(io::Error::other)
}

/// A value in at most 6 characters.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A 3x5 glyph, a row a byte (the left column the highest of three bits).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_a_png_of_its_panels_with_the_line_drawn() {
        let dir = std::env::temp_dir().join(format!("sa-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        let pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (i % 7) as f64)).collect();
        let gap = [(0.0, 1.0), (10.0, f64::NAN), (20.0, 2.0)];
        line_charts(
            &path,
            49.0,
            &[
                Series {
                    title: "RSS (MiB)",
                    points: &pts,
                },
                Series {
                    title: "CPU",
                    points: &gap,
                },
            ],
        )
        .unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (WIDTH, 2 * PANEL)
        );
        let blue = buf[..info.buffer_size()]
            .chunks(3)
            .filter(|p| p == &[20, 90, 200])
            .count();
        // The first panel's line crosses the plot from left to right.
        assert!(blue > WIDTH - LEFT - RIGHT, "{blue} pixels of the line");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

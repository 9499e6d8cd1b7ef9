//! Training-run report: loss-curve SVG, sample-image grids and a single
//! self-contained HTML page for a `trainer fit` run folder.
//!
//! Everything produced here is offline-viewable: no scripts, no web fonts,
//! images inlined as base64, so the page can be mailed or archived as is.

use anyhow::{bail, Context, Result};
use base64::Engine;
use image::{Rgb, RgbImage};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// TensorBoard's default-ish smoothing weight for the bold EMA line.
const SMOOTHING: f64 = 0.9;
const PANEL_W: f64 = 320.0;
const PANEL_H: f64 = 200.0;
const MARGIN_L: f64 = 54.0;
const MARGIN_R: f64 = 12.0;
const MARGIN_T: f64 = 26.0;
const MARGIN_B: f64 = 24.0;
/// Upper bound on tick count; 1/2/5 steps give 3..=6 ticks with this.
const MAX_TICKS: f64 = 6.0;
const NONFINITE_COLOR: &str = "#d62728";
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
];

/// A vertical dashed line drawn in every panel, e.g. "echo stage starts".
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Training iteration (x position) of the event.
    pub iteration: f64,
    /// Short text shown next to the line.
    pub label: String,
}

/// Renders one small loss panel per series name as a standalone SVG string.
pub fn loss_curves_svg(records: &[Value], series: &[&str]) -> String {
    loss_curves_svg_with_markers(records, series, &[])
}

/// Like [`loss_curves_svg`], plus vertical dashed event markers in every panel.
pub fn loss_curves_svg_with_markers(
    records: &[Value],
    series: &[&str],
    markers: &[Marker],
) -> String {
    let n = series.len();
    // 2 columns keeps panels readable for few series, 3 avoids a tall page for many.
    let cols = if n <= 4 { 2 } else { 3 }.min(n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let (w, h) = (cols as f64 * PANEL_W, rows as f64 * PANEL_H);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = write!(out, r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
    if n == 0 {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#888">no data</text>"##,
            w / 2.0,
            h / 2.0
        );
    }
    for (i, name) in series.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * PANEL_W, (i / cols) as f64 * PANEL_H);
        let (finite, nonfinite) = extract_series(records, name);
        let _ = write!(out, r#"<g transform="translate({ox},{oy})">"#);
        render_panel(
            &mut out,
            name,
            PALETTE[i % PALETTE.len()],
            &finite,
            &nonfinite,
            markers,
        );
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// Returns (finite points sorted by iteration, iterations of non-finite values).
fn extract_series(records: &[Value], name: &str) -> (Vec<(f64, f64)>, Vec<f64>) {
    let mut finite = Vec::new();
    let mut nonfinite = Vec::new();
    for r in records {
        let Some(x) = r
            .get("iteration")
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite())
        else {
            continue; // without an x position the point cannot be placed
        };
        match r.get(name).and_then(sample_value) {
            Some(y) if y.is_finite() => finite.push((x, y)),
            Some(_) => nonfinite.push(x),
            None => {}
        }
    }
    // Stable sort: resumed runs may log iterations out of order.
    finite.sort_by(|a, b| a.0.total_cmp(&b.0));
    (finite, nonfinite)
}

/// `None` = missing; null counts as NaN because serde_json writes NaN as null.
fn sample_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Null => Some(f64::NAN),
        Value::String(s) => s.trim().parse().ok(), // "NaN"/"inf" from other writers
        _ => None,
    }
}

fn render_panel(
    out: &mut String,
    name: &str,
    color: &str,
    finite: &[(f64, f64)],
    nonfinite: &[f64],
    markers: &[Marker],
) {
    let (x0, x1, y0, y1) = (MARGIN_L, PANEL_W - MARGIN_R, MARGIN_T, PANEL_H - MARGIN_B);
    let _ = write!(
        out,
        r#"<text x="{x0}" y="16" font-size="12" font-weight="bold">{}</text>"#,
        xml_escape(name)
    );
    let _ = write!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#ccc"/>"##,
        x1 - x0,
        y1 - y0
    );
    let xs = finite.iter().map(|p| p.0).chain(nonfinite.iter().copied());
    let Some((xlo, xhi)) = min_max(xs) else {
        no_data(out, 0);
        return;
    };
    let (xlo, xhi) = if xhi > xlo {
        (xlo, xhi)
    } else {
        pad_range(xlo, xhi)
    };
    let px = |x: f64| x0 + (x - xlo) / (xhi - xlo) * (x1 - x0);

    for t in nice_ticks(xlo, xhi) {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="9" text-anchor="middle" fill="#444">{}</text>"##,
            coord(px(t)),
            y1 + 12.0,
            xml_escape(&fmt_tick(t, tick_step(xlo, xhi)))
        );
    }

    if let Some((ylo, yhi)) = min_max(finite.iter().map(|p| p.1)) {
        let (ylo, yhi) = if yhi > ylo {
            let pad = (yhi - ylo) * 0.05;
            (ylo - pad, yhi + pad)
        } else {
            pad_range(ylo, yhi)
        };
        let py = |y: f64| y1 - (y - ylo) / (yhi - ylo) * (y1 - y0);
        let step = tick_step(ylo, yhi);
        for t in nice_ticks(ylo, yhi) {
            let y = coord(py(t));
            let _ = write!(
                out,
                r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="9" text-anchor="end" fill="#444">{}</text>"##,
                x0 - 4.0,
                coord(py(t) + 3.0),
                xml_escape(&fmt_tick(t, step))
            );
        }
        let raw: Vec<(f64, f64)> = finite.iter().map(|&(x, y)| (px(x), py(y))).collect();
        let ys: Vec<f64> = finite.iter().map(|p| p.1).collect();
        let smooth: Vec<(f64, f64)> = finite
            .iter()
            .zip(ema(&ys, SMOOTHING))
            .map(|(&(x, _), s)| (px(x), py(s)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="raw" points="{}" fill="none" stroke="{color}" stroke-opacity="0.3" stroke-width="1"/>"#,
            points_attr(&decimate(&raw))
        );
        let _ = write!(
            out,
            r#"<polyline class="ema" points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points_attr(&decimate(&smooth))
        );
        if let [(x, y)] = raw[..] {
            // A one-point polyline is invisible, so show the point itself.
            let _ = write!(
                out,
                r#"<circle cx="{}" cy="{}" r="2.5" fill="{color}"/>"#,
                coord(x),
                coord(y)
            );
        }
        if let Some(&(_, last)) = finite.last() {
            let _ = write!(
                out,
                r##"<text x="{x1}" y="16" font-size="10" text-anchor="end" fill="#666">last {}</text>"##,
                xml_escape(&fmt_compact(last))
            );
        }
    } else {
        no_data(out, nonfinite.len());
    }

    // Non-finite values: red ticks along the top edge, one per pixel column.
    let mut cols: Vec<String> = nonfinite.iter().map(|&x| coord(px(x))).collect();
    cols.dedup();
    for x in cols {
        let _ = write!(
            out,
            r#"<line class="nonfinite" x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="{NONFINITE_COLOR}" stroke-width="1.5"/>"#,
            y0 + 7.0
        );
    }

    for (k, m) in markers.iter().enumerate() {
        if !(m.iteration.is_finite() && m.iteration >= xlo && m.iteration <= xhi) {
            continue; // outside this panel's data range: clamping would mislead
        }
        let x = px(m.iteration);
        let (tx, anchor) = if x > (x0 + x1) / 2.0 {
            (x - 2.0, "end")
        } else {
            (x + 2.0, "start")
        };
        let label = xml_escape(&m.label);
        let _ = write!(
            out,
            r##"<g class="marker"><title>{label}</title><line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#666" stroke-dasharray="4 3"/><text x="{}" y="{}" font-size="8" text-anchor="{anchor}" fill="#444">{label}</text></g>"##,
            coord(tx),
            // Stagger label rows so nearby events don't overprint each other.
            y0 + 17.0 + 10.0 * (k % 3) as f64,
            x = coord(x)
        );
    }
}

fn no_data(out: &mut String, nonfinite: usize) {
    let extra = if nonfinite > 0 {
        format!(" ({nonfinite} non-finite)")
    } else {
        String::new()
    };
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#888">no data{extra}</text>"##,
        (MARGIN_L + PANEL_W - MARGIN_R) / 2.0,
        (MARGIN_T + PANEL_H - MARGIN_B) / 2.0
    );
}

fn min_max(it: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    it.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Widens a degenerate (single-value) range so scaling never divides by zero.
fn pad_range(lo: f64, hi: f64) -> (f64, f64) {
    let pad = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
    (lo - pad, hi + pad)
}

/// Debiased EMA as in TensorBoard: early points are not dragged towards 0.
fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut last = 0.0;
    let mut w_pow = 1.0;
    values
        .iter()
        .map(|&v| {
            last = last * weight + (1.0 - weight) * v;
            w_pow *= weight;
            let debias = 1.0 - w_pow;
            if debias > 0.0 {
                last / debias
            } else {
                v
            }
        })
        .collect()
}

/// Min/max decimation per pixel column: keeps spikes visible while bounding
/// SVG size for long runs (100k+ log lines).
fn decimate(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if pts.len() <= 4 * (PANEL_W as usize) {
        return pts.to_vec();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < pts.len() {
        let col = pts[i].0.round();
        let (mut lo, mut hi, mut j) = (i, i, i + 1);
        while j < pts.len() && pts[j].0.round() == col {
            if pts[j].1 < pts[lo].1 {
                lo = j;
            }
            if pts[j].1 > pts[hi].1 {
                hi = j;
            }
            j += 1;
        }
        let mut idx = [i, lo, hi, j - 1];
        idx.sort_unstable();
        let mut prev = usize::MAX;
        for k in idx {
            if k != prev {
                out.push(pts[k]);
                prev = k;
            }
        }
        i = j;
    }
    out
}

fn points_attr(pts: &[(f64, f64)]) -> String {
    let mut s = String::with_capacity(pts.len() * 12);
    for (k, &(x, y)) in pts.iter().enumerate() {
        if k > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{},{}", coord(x), coord(y));
    }
    s
}

/// Formats an SVG coordinate; never emits NaN/inf even on overflowed ranges.
fn coord(v: f64) -> String {
    let v = if v.is_finite() {
        v.clamp(-1e6, 1e6)
    } else {
        0.0
    };
    format!("{v:.1}")
}

/// Step that [`nice_ticks`] picks for this range (for label precision).
fn tick_step(lo: f64, hi: f64) -> f64 {
    match nice_ticks(lo, hi)[..] {
        [a, b, ..] => b - a,
        _ => (hi - lo).abs() / 4.0,
    }
}

/// Tick values at multiples of 1/2/5 × 10^k inside [lo, hi]: the smallest
/// such step giving at most `MAX_TICKS` ticks (3 to 6 in practice).
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let range = hi - lo;
    if !(range.is_finite() && lo.is_finite()) || range < 0.0 {
        return Vec::new();
    }
    if range == 0.0 {
        return vec![lo];
    }
    let mut mag = 10f64.powf(range.log10().floor() - 1.0);
    for _ in 0..4 {
        for m in [1.0, 2.0, 5.0] {
            let step = m * mag;
            // Epsilon so 0.3/0.1 = 2.9999… still includes the end tick.
            let first = (lo / step - 1e-9).ceil();
            let last = (hi / step + 1e-9).floor();
            let count = last - first + 1.0;
            if count <= MAX_TICKS {
                return (0..count.max(0.0) as usize)
                    .map(|i| (first + i as f64) * step)
                    .collect();
            }
        }
        mag *= 10.0;
    }
    Vec::new()
}

/// Compact label with enough digits to tell ticks `step` apart
/// (0.012, 1.5e-4, 250).
fn fmt_tick(v: f64, step: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a == 0.0 || (step > 0.0 && a < step * 1e-6) {
        return "0".into();
    }
    let mag = a.log10().floor() as i32;
    let step_mag = if step > 0.0 && step.is_finite() {
        step.log10().floor() as i32
    } else {
        mag - 2
    };
    if !(1e-3..1e5).contains(&a) {
        let digits = (mag - step_mag).clamp(0, 6) as usize;
        let s = format!("{v:.digits$e}");
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m)),
            None => s,
        }
    } else {
        let decimals = (-step_mag).clamp(0, 12) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

/// Three significant digits, same notation rules as tick labels.
fn fmt_compact(v: f64) -> String {
    fmt_tick(v, v.abs() / 100.0)
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Lays equal-size tiles row-major, `columns` per row, with `pad` white
/// pixels between and around them. Fewer tiles than `columns` narrows the grid.
pub fn compose_grid(tiles: &[RgbImage], columns: usize, pad: u32) -> Result<RgbImage> {
    let Some(first) = tiles.first() else {
        bail!("compose_grid: no tiles given");
    };
    if columns == 0 {
        bail!("compose_grid: columns must be at least 1");
    }
    let (tw, th) = first.dimensions();
    for (i, t) in tiles.iter().enumerate() {
        if t.dimensions() != (tw, th) {
            bail!(
                "compose_grid: tile {i} is {}x{}, expected {tw}x{th} (size of tile 0)",
                t.width(),
                t.height()
            );
        }
    }
    let cols = columns.min(tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let span = |n: usize, t: u32| -> Option<u32> {
        let n = u32::try_from(n).ok()?;
        n.checked_mul(t)?
            .checked_add(n.checked_add(1)?.checked_mul(pad)?)
    };
    let (w, h) = match (span(cols, tw), span(rows, th)) {
        (Some(w), Some(h)) if (w as u64) * (h as u64) * 3 <= isize::MAX as u64 => (w, h),
        _ => bail!("compose_grid: {cols}x{rows} grid of {tw}x{th} tiles is too large"),
    };
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (i, t) in tiles.iter().enumerate() {
        // Fits: (cols, rows) bound these and the totals were overflow-checked.
        let x = pad + (i % cols) as u32 * (tw + pad);
        let y = pad + (i / cols) as u32 * (th + pad);
        image::imageops::replace(&mut canvas, t, i64::from(x), i64::from(y));
    }
    Ok(canvas)
}

/// One embedded picture (sample grid, comparison strip, ...).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportImage {
    /// Heading shown above the image.
    pub title: String,
    /// Free text shown below the image.
    pub caption: String,
    /// Image file (PNG, JPEG, GIF or WebP) read at render time.
    pub path: PathBuf,
}

/// Everything shown on the run's HTML report page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// Page title and top heading.
    pub title: String,
    /// Key/value rows for the summary table (run id, steps, final losses...).
    pub summary: Vec<(String, String)>,
    /// SVG from [`loss_curves_svg`]; inserted verbatim, so it must be trusted.
    pub curves_svg: String,
    /// Images embedded as base64 data URIs.
    pub images: Vec<ReportImage>,
    /// Notable events (stage switches, NaN recoveries), one list item each.
    pub events: Vec<String>,
    /// The run's config, shown verbatim in a `<pre>` block.
    pub config_yaml: String,
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table.summary{border-collapse:collapse}\
table.summary th,table.summary td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
table.summary th{background:#f6f8fa}\
.curves svg{max-width:100%;height:auto}\
figure{margin:1.5em 0}\
figure img{max-width:100%;height:auto;display:block}\
img.px{image-rendering:pixelated}\
figcaption{color:#555;margin-top:.4em;white-space:pre-wrap}\
pre{background:#f6f8fa;padding:1em;overflow:auto}";

/// Images narrower than this are upscaled (pixelated) so details stay visible.
const SMALL_IMAGE: u32 = 256;

impl Report {
    /// Builds one self-contained HTML5 page; errors name any unreadable image.
    pub fn render_html(&self) -> Result<String> {
        let title = html_escape(&self.title);
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
        );
        if !self.summary.is_empty() {
            h.push_str("<table class=\"summary\">\n");
            for (k, v) in &self.summary {
                let _ = writeln!(
                    h,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    html_escape(k),
                    html_escape(v)
                );
            }
            h.push_str("</table>\n");
        }
        if !self.curves_svg.is_empty() {
            let _ = write!(
                h,
                "<h2>Training curves</h2>\n<div class=\"curves\">{}</div>\n",
                self.curves_svg
            );
        }
        if !self.images.is_empty() {
            h.push_str("<h2>Samples</h2>\n");
            for img in &self.images {
                h.push_str(&image_figure(img)?);
            }
        }
        if !self.events.is_empty() {
            h.push_str("<h2>Events</h2>\n<ul>\n");
            for e in &self.events {
                let _ = writeln!(h, "<li>{}</li>", html_escape(e));
            }
            h.push_str("</ul>\n");
        }
        let _ = write!(
            h,
            "<h2>Config</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
            html_escape(&self.config_yaml)
        );
        Ok(h)
    }
}

fn image_figure(img: &ReportImage) -> Result<String> {
    let path = &img.path;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading report image {}", path.display()))?;
    let mime = sniff_mime(&bytes).with_context(|| {
        format!(
            "report image {} is not PNG, JPEG, GIF or WebP",
            path.display()
        )
    })?;
    let mut attrs = String::new();
    if let Some((w, _)) = png_size(&bytes).filter(|&(w, _)| w > 0 && w < SMALL_IMAGE) {
        // Integer upscale keeps pixels square; max-width still caps it.
        let k = (2 * SMALL_IMAGE / w).max(1);
        let _ = write!(attrs, " class=\"px\" width=\"{}\"", w * k);
    }
    let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let title = html_escape(&img.title);
    Ok(format!(
        "<figure>\n<h3>{title}</h3>\n<img src=\"data:{mime};base64,{data}\" alt=\"{title}\"{attrs}>\n<figcaption>{}</figcaption>\n</figure>\n",
        html_escape(&img.caption)
    ))
}

/// Content sniffing so the data URI's MIME type matches the actual bytes.
fn sniff_mime(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF8") {
        Some("image/gif")
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Width/height from the PNG IHDR chunk, without decoding the image.
fn png_size(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < 24 || &b[12..16] != b"IHDR" || sniff_mime(b) != Some("image/png") {
        return None;
    }
    let w = u32::from_be_bytes(b[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(b[20..24].try_into().ok()?);
    Some((w, h))
}

fn html_escape(s: &str) -> String {
    xml_escape(s)
}

/// Reads a JSON-lines log; blank lines are skipped, a bad line is an error
/// naming the file and 1-based line number.
pub fn read_log(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading log {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: malformed JSON", path.display(), i + 1))?;
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn approx_eq(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() < 1e-9 * (1.0 + y.abs()))
    }

    fn is_nice_step(step: f64) -> bool {
        let m = step / 10f64.powf(step.log10().floor());
        [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6)
    }

    #[test]
    fn nice_ticks_unit_range() {
        let t = nice_ticks(0.0, 1.0);
        assert!(approx_eq(&t, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), "{t:?}");
    }

    #[test]
    fn nice_ticks_small_range() {
        let t = nice_ticks(0.0013, 0.0071);
        assert!(
            approx_eq(&t, &[0.002, 0.003, 0.004, 0.005, 0.006, 0.007]),
            "{t:?}"
        );
    }

    #[test]
    fn nice_ticks_are_nice_and_in_range() {
        for &(lo, hi) in &[
            (0.0, 0.3),
            (-3.7, 12.2),
            (250.0, 5000.0),
            (1e-5, 3e-4),
            (0.31, 0.32),
            (-1.0, -0.5),
        ] {
            let t = nice_ticks(lo, hi);
            assert!((3..=6).contains(&t.len()), "{lo}..{hi}: {t:?}");
            let step = t[1] - t[0];
            assert!(is_nice_step(step), "{lo}..{hi}: step {step}");
            for w in t.windows(2) {
                assert!(((w[1] - w[0]) - step).abs() < step * 1e-6);
            }
            assert!(
                t.iter()
                    .all(|&v| v >= lo - step * 1e-6 && v <= hi + step * 1e-6),
                "{t:?}"
            );
            assert!(t
                .iter()
                .all(|&v| ((v / step) - (v / step).round()).abs() < 1e-6));
        }
        // End ticks must survive float error (0.3 / 0.1 = 2.9999…).
        assert!(approx_eq(&nice_ticks(0.0, 0.3), &[0.0, 0.1, 0.2, 0.3]));
        assert_eq!(nice_ticks(2.0, 2.0), vec![2.0]);
        assert!(nice_ticks(f64::NAN, 1.0).is_empty());
        assert!(nice_ticks(-f64::MAX, f64::MAX).is_empty());
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(fmt_tick(0.012, 0.002), "0.012");
        assert_eq!(fmt_tick(1.5e-4, 5e-5), "1.5e-4");
        assert_eq!(fmt_tick(250.0, 50.0), "250");
        assert_eq!(fmt_tick(0.1 * 3.0, 0.1), "0.3");
        assert_eq!(fmt_tick(0.0, 0.2), "0");
        assert_eq!(fmt_tick(-1.2e-17, 0.2), "0");
        assert_eq!(fmt_tick(250_000.0, 50_000.0), "2.5e5");
        assert_eq!(fmt_compact(0.0123456), "0.0123");
    }

    #[test]
    fn ema_is_debiased_like_tensorboard() {
        let e = ema(&[2.0, 2.0, 2.0], 0.9);
        assert!(approx_eq(&e, &[2.0, 2.0, 2.0]), "{e:?}");
        // Second value: (0.9*0.1*1 + 0.1*3) / (1 - 0.81) = 0.39/0.19.
        let e = ema(&[1.0, 3.0], 0.9);
        assert!(approx_eq(&e, &[1.0, 0.39 / 0.19]), "{e:?}");
    }

    fn all_points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("points=\"")
            .skip(1)
            .map(|rest| {
                let attr = &rest[..rest.find('"').unwrap()];
                attr.split(' ')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    fn records() -> Vec<Value> {
        (0..20)
            .map(|i| {
                let student = match i {
                    7 => json!(null),
                    11 => json!("NaN"),
                    _ => json!(0.5 / (i as f64 + 1.0)),
                };
                json!({"iteration": i * 10, "teacher_loss": 1.0 - i as f64 * 0.01, "student_loss": student})
            })
            .collect()
    }

    #[test]
    fn svg_has_polylines_and_finite_coordinates_with_nan_inputs() {
        let mut recs = records();
        recs.push(json!({"iteration": 200, "student_loss": "inf"}));
        recs.push(json!({"iteration": null, "student_loss": 1.0})); // unplaceable: skipped
        let svg = loss_curves_svg(&recs, &["teacher_loss", "student_loss", "swd"]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline class=\"raw\"").count(), 2);
        assert_eq!(svg.matches("<polyline class=\"ema\"").count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let polys = all_points(&svg);
        assert_eq!(polys.len(), 4);
        assert!(polys
            .iter()
            .flatten()
            .all(|(x, y)| x.is_finite() && y.is_finite()));
        // 20 teacher points; student has 18 finite (null, "NaN", "inf" excluded).
        assert_eq!(polys[0].len(), 20);
        assert_eq!(polys[2].len(), 18);
        assert_eq!(svg.matches("class=\"nonfinite\"").count(), 3);
        assert!(svg.contains(&format!("stroke=\"{NONFINITE_COLOR}\"")));
        // The non-finite ticks sit at the top edge of the plot area.
        assert!(svg.contains(&format!(
            "class=\"nonfinite\" x1=\"{}\" y1=\"{MARGIN_T}\"",
            coord(PANEL_W - MARGIN_R)
        )));
        assert!(svg.contains("no data"), "swd panel has no points");
        // 3 series -> 2 columns, 2 rows.
        assert!(svg.contains(&format!(
            "width=\"{}\" height=\"{}\"",
            2.0 * PANEL_W,
            2.0 * PANEL_H
        )));
    }

    #[test]
    fn svg_handles_single_point_and_constant_series() {
        let recs: Vec<Value> = (0..5)
            .map(|i| json!({"iteration": i, "c_t": 0.25}))
            .collect();
        let one = vec![json!({"iteration": 3, "mse": 0.0})];
        for svg in [
            loss_curves_svg(&recs, &["c_t"]),
            loss_curves_svg(&one, &["mse"]),
        ] {
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
            let polys = all_points(&svg);
            assert!(!polys.is_empty());
            assert!(polys
                .iter()
                .flatten()
                .all(|(x, y)| x.is_finite() && y.is_finite()));
            // Constant values sit strictly inside the plot, not on an edge.
            let y = polys[0][0].1;
            assert!(y > MARGIN_T && y < PANEL_H - MARGIN_B, "{y}");
        }
        assert!(loss_curves_svg(&one, &["mse"]).contains("<circle"));
        assert!(loss_curves_svg(&[], &[]).contains("no data"));
    }

    #[test]
    fn svg_markers_and_escaping() {
        let markers = [
            Marker {
                iteration: 50.0,
                label: "recovered from NaN, lr ×0.5 <&>".into(),
            },
            Marker {
                iteration: 1e9,
                label: "out of range".into(),
            },
        ];
        let mut recs = records();
        for r in &mut recs {
            r["a<b"] = json!(1.0);
        }
        let svg = loss_curves_svg_with_markers(&recs, &["teacher_loss", "a<b"], &markers);
        assert_eq!(
            svg.matches("stroke-dasharray=\"4 3\"").count(),
            2,
            "one per panel, out-of-range skipped"
        );
        assert!(svg.contains("lr ×0.5 &lt;&amp;&gt;"));
        assert!(!svg.contains("out of range"));
        assert!(svg.contains(">a&lt;b</text>"));
        assert!(!svg.contains("a<b"));
    }

    #[test]
    fn long_series_is_decimated_but_keeps_spike() {
        let recs: Vec<Value> = (0..50_000)
            .map(|i| json!({"iteration": i, "mse": if i == 31_337 { 100.0 } else { 1.0 }}))
            .collect();
        let svg = loss_curves_svg(&recs, &["mse"]);
        let raw = &all_points(&svg)[0];
        assert!(raw.len() < 2_000, "{}", raw.len());
        let top = raw.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        assert!(top < MARGIN_T + 10.0, "spike must reach the top: {top}");
    }

    fn tile(v: u8) -> RgbImage {
        RgbImage::from_fn(8, 6, |x, y| Rgb([v, x as u8, y as u8]))
    }

    #[test]
    fn grid_dimensions_and_placement() {
        let tiles: Vec<RgbImage> = (0..5).map(|i| tile(10 * (i + 1))).collect();
        let g = compose_grid(&tiles, 3, 2).unwrap();
        assert_eq!(g.dimensions(), (32, 18));
        // Tile 4 is row 1, column 1: origin (2 + 10, 2 + 8).
        assert_eq!(*g.get_pixel(12, 10), Rgb([50, 0, 0]));
        assert_eq!(*g.get_pixel(19, 15), Rgb([50, 7, 5]));
        assert_eq!(*g.get_pixel(2, 2), Rgb([10, 0, 0]));
        let white = Rgb([255, 255, 255]);
        assert_eq!(*g.get_pixel(0, 0), white);
        assert_eq!(*g.get_pixel(11, 10), white, "gap between tiles");
        assert_eq!(*g.get_pixel(25, 12), white, "empty sixth slot");
        assert_eq!(*g.get_pixel(31, 17), white);
        // Fewer tiles than columns: grid narrows instead of padding blanks.
        assert_eq!(
            compose_grid(&tiles[..2], 3, 1).unwrap().dimensions(),
            (19, 8)
        );
    }

    #[test]
    fn grid_errors() {
        let e = compose_grid(&[tile(1), tile(2), RgbImage::new(8, 5)], 2, 0).unwrap_err();
        assert!(e.to_string().contains("tile 2"), "{e}");
        assert!(compose_grid(&[], 2, 0).is_err());
        assert!(compose_grid(&[tile(1)], 0, 0).is_err());
        assert!(compose_grid(&[RgbImage::new(1, 1)], 1, u32::MAX).is_err());
    }

    #[test]
    fn html_embeds_png_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        tile(7).save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let report = Report {
            title: "run <1>".into(),
            summary: vec![("steps".into(), "1000".into())],
            curves_svg: loss_curves_svg(&records(), &["teacher_loss"]),
            images: vec![ReportImage {
                title: "samples".into(),
                caption: "<script>alert(1)</script>".into(),
                path: path.clone(),
            }],
            events: vec!["echo stage starts @ 500".into()],
            config_yaml: "lr: 1e-4\nname: \"a&b\"\n".into(),
        };
        let html = report.render_html().unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        let start = html.find("data:image/png;base64,").unwrap() + "data:image/png;base64,".len();
        let b64 = &html[start..start + html[start..].find('"').unwrap()];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, bytes);
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<title>run &lt;1&gt;</title>"));
        assert!(
            html.contains("class=\"px\" width=\"512\""),
            "8 px wide image is upscaled"
        );
        assert!(html.contains("<svg") && html.contains("<li>echo stage starts @ 500</li>"));
        assert!(html.contains("<pre>lr: 1e-4\nname: &quot;a&amp;b&quot;\n</pre>"));
        assert!(html.contains("image-rendering:pixelated") && html.contains("max-width:100%"));
    }

    #[test]
    fn html_errors_name_missing_image() {
        let report = Report {
            images: vec![ReportImage {
                path: PathBuf::from("/nonexistent/x.png"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = format!("{:#}", report.render_html().unwrap_err());
        assert!(e.contains("/nonexistent/x.png"), "{e}");
    }

    #[test]
    fn read_log_skips_blanks_and_reports_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("log.jsonl");
        std::fs::write(
            &ok,
            "{\"iteration\":1,\"mse\":0.5}\n\n  \n{\"iteration\":2,\"mse\":null}\r\n",
        )
        .unwrap();
        let recs = read_log(&ok).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            sample_value(&recs[1]["mse"]).map(f64::is_nan),
            Some(true),
            "null is NaN, not missing"
        );
        assert_eq!(recs[1].get("absent").and_then(sample_value), None);

        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"iteration\":1}\n\n{\"iteration\": 2,\n").unwrap();
        let e = format!("{:#}", read_log(&bad).unwrap_err());
        assert!(e.contains("bad.jsonl") && e.contains("line 3"), "{e}");
        let e = format!(
            "{:#}",
            read_log(&dir.path().join("missing.jsonl")).unwrap_err()
        );
        assert!(e.contains("missing.jsonl"), "{e}");
    }
}

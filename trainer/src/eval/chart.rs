//! Grouped bar chart with error bars, rendered straight into an `image::RgbImage`.
//!
//! Self-contained: text uses a built-in 5×7 bitmap font, so no font files or
//! font crates are needed and output is identical on every machine.

use image::{Rgb, RgbImage};

/// One bar per group for this series (e.g. one method).
pub struct Series {
    /// Name shown in the legend.
    pub label: String,
    /// (mean, standard error) per group, in the same order as `BarChart::groups`; `None` = no bar.
    pub values: Vec<Option<(f64, f64)>>,
}

/// A grouped bar chart: one cluster of bars per group, one bar per series inside a cluster.
pub struct BarChart<'a> {
    /// Title drawn at double size above the plot.
    pub title: &'a str,
    /// Group names (x axis categories), e.g. metric names.
    pub groups: &'a [String],
    /// Series, each with one value per group.
    pub series: &'a [Series],
    /// Top of the y axis; `None` picks a nice value above the largest mean + se (at least 0.1).
    pub y_max: Option<f64>,
    /// Values may be negative (differences): the axis then reaches down past the lowest
    /// mean − se, bars hang from a zero line. When false, the axis starts at 0 and negative
    /// values sit on it.
    pub signed: bool,
}

// Tableau-10 style palette, then ten more from Tableau-20 not already in it: the toy table has
// 14 rows, and with 10 colours rows 11-14 repeated rows 1-4.
const PALETTE: [[u8; 3]; 20] = [
    [78, 121, 167],
    [242, 142, 43],
    [225, 87, 89],
    [118, 183, 178],
    [89, 161, 79],
    [237, 201, 72],
    [176, 122, 161],
    [255, 157, 167],
    [156, 117, 95],
    [186, 176, 172],
    [160, 203, 232],
    [255, 190, 125],
    [140, 209, 125],
    [182, 153, 45],
    [73, 152, 148],
    [121, 112, 110],
    [211, 114, 149],
    [212, 166, 200],
    [250, 191, 210],
    [215, 181, 166],
];
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const TEXT: Rgb<u8> = Rgb([50, 50, 50]);
const AXIS: Rgb<u8> = Rgb([90, 90, 90]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const ERR: Rgb<u8> = Rgb([35, 35, 35]);

// Layout constants in pixels; the height is fixed apart from the legend so charts line up.
const MIN_WIDTH: u32 = 480;
const PLOT_TOP: i64 = 44; // leaves room for the title and value labels above the tallest bar
const PLOT_H: i64 = 260;
const RIGHT: i64 = 16;
const BAR_W: i64 = 38; // natural width: 36px inside the 1px gaps fits a 6-char label like "-0.052"
const GROUP_GAP: i64 = 24;
const LEGEND_GAP: i64 = 28; // axis to legend box; group labels live in between
const LEGEND_MARGIN: i64 = 12;
const LEGEND_PAD: i64 = 6;
const LINE_H: i64 = 14;
const SWATCH: i64 = 10;
const ITEM_GAP: i64 = 16;
const BOTTOM: i64 = 10;

/// Width in pixels of `text` drawn with the built-in font at `scale` (no trailing spacing).
pub fn text_width(text: &str, scale: u32) -> u32 {
    // Each glyph is 5 columns plus 1 column of spacing; the last glyph has no spacing.
    let n = text.chars().count() as u32;
    if n == 0 {
        0
    } else {
        (n * 6 - 1) * scale
    }
}

fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    // Half-open rectangle, clipped so callers never have to worry about bounds.
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draws `text` with its top-left corner at (x, y); chars outside ASCII 32..=126 draw as '?'.
fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, c: Rgb<u8>) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let glyph = FONT[if (' '..='~').contains(&ch) { ch } else { '?' } as usize - 32];
        let gx = x + i as i64 * 6 * s;
        for r in 0..7i64 {
            let bits = glyph >> (8 * (6 - r));
            for col in 0..5 {
                if bits >> (4 - col) & 1 == 1 {
                    let (px, py) = (gx + col * s, y + r * s);
                    fill(img, px, py, px + s, py + s, c);
                }
            }
        }
    }
}

/// Picks a tick step of the form m·10^k (preferring m = 1, 2, 5) for which `ok` holds.
fn pick_step(approx: f64, ok: impl Fn(f64) -> bool) -> f64 {
    let k0 = approx.log10().floor() as i32;
    for m in [1.0, 2.0, 5.0, 2.5, 4.0, 3.0, 1.5, 6.0, 8.0] {
        for k in k0 - 1..=k0 + 1 {
            let s = m * 10f64.powi(k);
            if ok(s) {
                return s;
            }
        }
    }
    approx // unreachable in practice: the mantissas are at most 1.5 apart
}

/// Decimals needed to print multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let v = step * 10f64.powi(d as i32);
            (v - v.round()).abs() < 1e-6
        })
        .unwrap_or(6)
}

/// Roughly three significant digits, e.g. 0.783, 1.23, 12.3, 123.
fn fmt_value(v: f64) -> String {
    let d = match v.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        _ => 3,
    };
    format!("{v:.d$}")
}

/// Pixel geometry shared by `render` and the tests.
struct Layout {
    width: u32,
    height: u32,
    left: i64,
    group_w: f64,
    bar_w: i64,
    y_top: f64,
    /// Bottom of the y axis: 0, or a negative multiple of `step` for a signed chart.
    y_bottom: f64,
    step: f64,
    ticks: usize,
    legend: Vec<Vec<usize>>, // series indices per legend line
    legend_w: i64,
}

impl Layout {
    fn new(chart: &BarChart) -> Result<Layout, String> {
        let (ng, ns) = (chart.groups.len(), chart.series.len());
        if ng == 0 {
            return Err("bar chart has no groups".into());
        }
        if ns == 0 {
            return Err("bar chart has no series".into());
        }
        let (mut data_max, mut data_min) = (f64::NEG_INFINITY, f64::INFINITY);
        for s in chart.series {
            if s.values.len() != ng {
                return Err(format!(
                    "series '{}' has {} values but there are {} groups",
                    s.label,
                    s.values.len(),
                    ng
                ));
            }
            for (g, &(mean, se)) in s
                .values
                .iter()
                .enumerate()
                .filter_map(|(g, v)| Some((g, v.as_ref()?)))
            {
                if !mean.is_finite() || !se.is_finite() {
                    return Err(format!(
                        "series '{}', group '{}': non-finite mean or se ({mean}, {se})",
                        s.label, chart.groups[g]
                    ));
                }
                if se < 0.0 {
                    return Err(format!(
                        "series '{}', group '{}': negative se {se}",
                        s.label, chart.groups[g]
                    ));
                }
                data_max = data_max.max(mean + se);
                data_min = data_min.min(mean - se);
            }
        }
        // How far below zero a signed axis must reach; unsigned charts keep their 0 bottom.
        let below = if chart.signed {
            (-data_min).max(0.0)
        } else {
            0.0
        };
        // Beyond the bars' ends a signed axis keeps 6% of the span free for the value labels
        // above and below them.
        let pad = 0.06 * (data_max.max(0.0) + below);
        let below = if below > 0.0 { below + pad } else { 0.0 };
        // Ticks: 5–6 of them from 0. An explicit top is kept as is; an automatic one is
        // rounded up to the last tick so the axis ends on a labelled value.
        let (y_top, step, mut intervals) = match chart.y_max {
            Some(y) if !(y.is_finite() && y > 0.0) => {
                return Err(format!("y_max must be finite and > 0, got {y}"));
            }
            Some(y) => {
                let step = pick_step(y / 5.0, |s| (4.0..6.0).contains(&(y / s + 1e-9).floor()));
                (y, step, (y / step + 1e-9).floor() as usize)
            }
            None if below > 0.0 => {
                // Ticks on both sides of zero, 4–6 intervals in all.
                let top = data_max.max(0.0) + pad;
                let count = |s: f64| (top / s - 1e-9).ceil() + (below / s - 1e-9).ceil();
                let step = pick_step((top + below) / 5.0, |s| (4.0..=6.0).contains(&count(s)));
                let n = (top / step - 1e-9).ceil().max(0.0);
                (n * step, step, n as usize)
            }
            None => {
                let m = data_max.max(0.1);
                let step = pick_step(m / 5.0, |s| (4.0..=5.0).contains(&(m / s - 1e-9).ceil()));
                let n = (m / step - 1e-9).ceil();
                (n * step, step, n as usize)
            }
        };
        let n_below = (below / step - 1e-9).ceil().max(0.0) as usize;
        let y_bottom = -(n_below as f64) * step;
        intervals += n_below;
        let d = decimals(step);
        let tick_w = (0..=intervals)
            .map(|i| text_width(&format!("{:.d$}", y_bottom + i as f64 * step), 1))
            .max();
        let left = 12 + tick_w.unwrap_or(0) as i64 + 8;
        // Grow the width so bars, group labels, the title and every legend item fit.
        let label_w = chart
            .groups
            .iter()
            .map(|g| text_width(g, 1) as i64)
            .max()
            .unwrap_or(0);
        let group_min = (ns as i64 * BAR_W + GROUP_GAP).max(label_w + 12);
        let items: Vec<i64> = chart
            .series
            .iter()
            .map(|s| SWATCH + 4 + text_width(&s.label, 1) as i64)
            .collect();
        let widest_item = items.iter().copied().max().unwrap_or(0);
        let width = (MIN_WIDTH as i64)
            .max(left + ng as i64 * group_min + RIGHT)
            .max(text_width(chart.title, 2) as i64 + 20)
            .max(widest_item + 2 * (LEGEND_MARGIN + LEGEND_PAD));
        let group_w = (width - left - RIGHT) as f64 / ng as f64;
        let bar_w = ((group_w as i64 - GROUP_GAP) / ns as i64).clamp(1, 60);
        // Greedy legend wrapping within the available width.
        let avail = width - 2 * (LEGEND_MARGIN + LEGEND_PAD);
        let (mut legend, mut line_w, mut legend_w) = (vec![Vec::new()], 0, 0);
        for (i, &w) in items.iter().enumerate() {
            let needed = if line_w == 0 {
                w
            } else {
                line_w + ITEM_GAP + w
            };
            if needed > avail && line_w > 0 {
                legend.push(Vec::new());
                line_w = w;
            } else {
                line_w = needed;
            }
            legend.last_mut().unwrap().push(i);
            legend_w = legend_w.max(line_w);
        }
        let height = PLOT_TOP + PLOT_H + LEGEND_GAP + legend.len() as i64 * LINE_H + 2 * LEGEND_PAD
            - 4
            + BOTTOM;
        let (width, height) = (width as u32, height as u32);
        Ok(Layout {
            width,
            height,
            left,
            group_w,
            bar_w,
            y_top,
            y_bottom,
            step,
            ticks: intervals + 1,
            legend,
            legend_w,
        })
    }

    /// y pixel of value `v`, clamped to the plot area (so, unsigned, negative values sit on the
    /// axis).
    fn y_px(&self, v: f64) -> i64 {
        let f = ((v - self.y_bottom) / (self.y_top - self.y_bottom)).clamp(0.0, 1.0);
        PLOT_TOP + PLOT_H - (f * PLOT_H as f64).round() as i64
    }

    /// Left x pixel of the bar for group `g`, series `s` (bars of a group are centred together).
    fn bar_x(&self, g: usize, s: usize, ns: usize) -> i64 {
        let centre = self.left as f64 + (g as f64 + 0.5) * self.group_w;
        (centre - (ns as i64 * self.bar_w) as f64 / 2.0).round() as i64 + s as i64 * self.bar_w
    }
}

impl BarChart<'_> {
    /// Renders the chart; errors on empty groups/series, length mismatches, or non-finite,
    /// negative-se values, and on a `y_max` that is not a positive finite number.
    pub fn render(&self) -> Result<RgbImage, String> {
        let l = Layout::new(self)?;
        let ns = self.series.len();
        let mut img = RgbImage::from_pixel(l.width, l.height, WHITE);
        let (w, right) = (l.width as i64, l.width as i64 - RIGHT);
        let axis_y = PLOT_TOP + PLOT_H;
        // Bars stand on (or, signed, hang from) the zero line; it is the plot's bottom unsigned.
        let zero_y = l.y_px(0.0);
        draw_text(
            &mut img,
            (w - text_width(self.title, 2) as i64) / 2,
            10,
            self.title,
            2,
            TEXT,
        );

        let d = decimals(l.step);
        for i in 0..l.ticks {
            let v = l.y_bottom + i as f64 * l.step;
            let y = l.y_px(v);
            fill(&mut img, l.left, y, right, y + 1, GRID);
            fill(&mut img, l.left - 4, y, l.left, y + 1, AXIS);
            let s = format!("{v:.d$}");
            draw_text(
                &mut img,
                l.left - 7 - text_width(&s, 1) as i64,
                y - 3,
                &s,
                1,
                TEXT,
            );
        }
        fill(&mut img, l.left, PLOT_TOP, l.left + 1, axis_y + 1, AXIS);

        for (g, name) in self.groups.iter().enumerate() {
            let centre = l.left + ((g as f64 + 0.5) * l.group_w) as i64;
            draw_text(
                &mut img,
                centre - text_width(name, 1) as i64 / 2,
                axis_y + 8,
                name,
                1,
                TEXT,
            );
            for (s, series) in self.series.iter().enumerate() {
                let Some((mean, se)) = series.values[g] else {
                    continue;
                };
                let x0 = l.bar_x(g, s, ns);
                let (bx0, bx1) = (x0 + 1, x0 + l.bar_w - 1); // 1px gap between neighbouring bars
                let end = l.y_px(mean);
                fill(
                    &mut img,
                    bx0,
                    end.min(zero_y),
                    bx1,
                    end.max(zero_y),
                    Rgb(PALETTE[s % PALETTE.len()]),
                );
                // Error bar clamped to the plot; skipped when it lies entirely below the axis.
                let (e_hi, e_lo) = (l.y_px(mean + se), l.y_px(mean - se));
                let cx = (bx0 + bx1) / 2;
                if se > 0.0 && mean + se > l.y_bottom {
                    let cap = (l.bar_w / 4).clamp(1, 6);
                    fill(&mut img, cx, e_hi, cx + 1, e_lo + 1, ERR);
                    fill(&mut img, cx - cap, e_hi, cx + cap + 1, e_hi + 1, ERR);
                    fill(&mut img, cx - cap, e_lo, cx + cap + 1, e_lo + 1, ERR);
                }
                let label = fmt_value(mean);
                let tw = text_width(&label, 1) as i64;
                if bx1 - bx0 >= tw {
                    let ty = if mean < 0.0 && self.signed {
                        // Under a hanging bar and its error bar, above the group labels.
                        (end.max(e_lo) + 4).min(axis_y - 8)
                    } else {
                        (end.min(e_hi) - 10).max(28) // never into the title
                    };
                    draw_text(&mut img, cx - tw / 2, ty, &label, 1, TEXT);
                }
            }
        }
        fill(&mut img, l.left, zero_y, right, zero_y + 1, AXIS);

        // Legend box centred below the plot, one row of items per wrapped line.
        let (box_w, box_h) = (
            l.legend_w + 2 * LEGEND_PAD,
            l.legend.len() as i64 * LINE_H + 2 * LEGEND_PAD - 4,
        );
        let (bx, by) = ((w - box_w) / 2, axis_y + LEGEND_GAP);
        fill(&mut img, bx, by, bx + box_w, by + 1, AXIS);
        fill(&mut img, bx, by + box_h - 1, bx + box_w, by + box_h, AXIS);
        fill(&mut img, bx, by, bx + 1, by + box_h, AXIS);
        fill(&mut img, bx + box_w - 1, by, bx + box_w, by + box_h, AXIS);
        for (li, line) in l.legend.iter().enumerate() {
            let (mut x, y) = (bx + LEGEND_PAD, by + LEGEND_PAD + li as i64 * LINE_H);
            for &s in line {
                fill(
                    &mut img,
                    x,
                    y,
                    x + SWATCH,
                    y + SWATCH,
                    Rgb(PALETTE[s % PALETTE.len()]),
                );
                let label = &self.series[s].label;
                draw_text(&mut img, x + SWATCH + 4, y + 2, label, 1, TEXT);
                x += SWATCH + 4 + text_width(label, 1) as i64 + ITEM_GAP;
            }
        }
        Ok(img)
    }
}

// 5×7 glyphs for ASCII 32..=126: one byte per row (top row first), bit 4 = leftmost column.
#[rustfmt::skip]
const FONT: [u64; 95] = [
    0x00_00_00_00_00_00_00, 0x04_04_04_04_04_00_04, 0x0A_0A_0A_00_00_00_00, 0x0A_0A_1F_0A_1F_0A_0A, // ' ' ! " #
    0x04_0F_14_0E_05_1E_04, 0x18_19_02_04_08_13_03, 0x0C_12_14_08_15_12_0D, 0x04_04_08_00_00_00_00, // $ % & '
    0x02_04_08_08_08_04_02, 0x08_04_02_02_02_04_08, 0x00_04_15_0E_15_04_00, 0x00_04_04_1F_04_04_00, // ( ) * +
    0x00_00_00_00_0C_04_08, 0x00_00_00_1F_00_00_00, 0x00_00_00_00_00_0C_0C, 0x00_01_02_04_08_10_00, // , - . /
    0x0E_11_13_15_19_11_0E, 0x04_0C_04_04_04_04_0E, 0x0E_11_01_02_04_08_1F, 0x1F_02_04_02_01_11_0E, // 0 1 2 3
    0x02_06_0A_12_1F_02_02, 0x1F_10_1E_01_01_11_0E, 0x06_08_10_1E_11_11_0E, 0x1F_01_02_04_08_08_08, // 4 5 6 7
    0x0E_11_11_0E_11_11_0E, 0x0E_11_11_0F_01_02_0C, 0x00_0C_0C_00_0C_0C_00, 0x00_0C_0C_00_0C_04_08, // 8 9 : ;
    0x02_04_08_10_08_04_02, 0x00_00_1F_00_1F_00_00, 0x08_04_02_01_02_04_08, 0x0E_11_01_02_04_00_04, // < = > ?
    0x0E_11_01_0D_15_15_0E, 0x0E_11_11_1F_11_11_11, 0x1E_11_11_1E_11_11_1E, 0x0E_11_10_10_10_11_0E, // @ A B C
    0x1C_12_11_11_11_12_1C, 0x1F_10_10_1E_10_10_1F, 0x1F_10_10_1E_10_10_10, 0x0E_11_10_17_11_11_0F, // D E F G
    0x11_11_11_1F_11_11_11, 0x0E_04_04_04_04_04_0E, 0x07_02_02_02_02_12_0C, 0x11_12_14_18_14_12_11, // H I J K
    0x10_10_10_10_10_10_1F, 0x11_1B_15_15_11_11_11, 0x11_11_19_15_13_11_11, 0x0E_11_11_11_11_11_0E, // L M N O
    0x1E_11_11_1E_10_10_10, 0x0E_11_11_11_15_12_0D, 0x1E_11_11_1E_14_12_11, 0x0F_10_10_0E_01_01_1E, // P Q R S
    0x1F_04_04_04_04_04_04, 0x11_11_11_11_11_11_0E, 0x11_11_11_11_11_0A_04, 0x11_11_11_15_15_15_0A, // T U V W
    0x11_11_0A_04_0A_11_11, 0x11_11_0A_04_04_04_04, 0x1F_01_02_04_08_10_1F, 0x0E_08_08_08_08_08_0E, // X Y Z [
    0x00_10_08_04_02_01_00, 0x0E_02_02_02_02_02_0E, 0x04_0A_11_00_00_00_00, 0x00_00_00_00_00_00_1F, // \ ] ^ _
    0x08_04_02_00_00_00_00, 0x00_00_0E_01_0F_11_0F, 0x10_10_16_19_11_11_1E, 0x00_00_0E_10_10_11_0E, // ` a b c
    0x01_01_0D_13_11_11_0F, 0x00_00_0E_11_1F_10_0E, 0x06_09_08_1C_08_08_08, 0x00_0F_11_11_0F_01_0E, // d e f g
    0x10_10_16_19_11_11_11, 0x04_00_0C_04_04_04_0E, 0x02_00_06_02_02_12_0C, 0x10_10_12_14_18_14_12, // h i j k
    0x0C_04_04_04_04_04_0E, 0x00_00_1A_15_15_11_11, 0x00_00_16_19_11_11_11, 0x00_00_0E_11_11_11_0E, // l m n o
    0x00_00_1E_11_1E_10_10, 0x00_00_0D_13_0F_01_01, 0x00_00_16_19_10_10_10, 0x00_00_0E_10_0E_01_1E, // p q r s
    0x08_08_1C_08_08_09_06, 0x00_00_11_11_11_13_0D, 0x00_00_11_11_11_0A_04, 0x00_00_11_11_15_15_0A, // t u v w
    0x00_00_11_0A_04_0A_11, 0x00_00_11_11_0F_01_0E, 0x00_00_1F_02_04_08_1F, 0x02_04_04_08_04_04_02, // x y z {
    0x04_04_04_04_04_04_04, 0x08_04_04_02_04_04_08, 0x00_00_08_15_02_00_00, // | } ~
];

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<String> {
        ["CLIP-T", "CLIP-I", "DINO"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn series() -> Vec<Series> {
        let mk = |label: &str, v: [Option<(f64, f64)>; 3]| Series {
            label: label.into(),
            values: v.to_vec(),
        };
        vec![
            mk(
                "EchoDistill (1 step)",
                [Some((0.31, 0.01)), Some((0.78, 0.02)), Some((0.61, 0.03))],
            ),
            mk(
                "Custom Diffusion",
                [Some((0.29, 0.01)), Some((0.75, 0.02)), Some((0.0, 0.0))],
            ),
            mk(
                "DreamBooth",
                [Some((0.30, 0.02)), None, Some((-0.05, 0.02))],
            ),
        ]
    }

    fn colour_at(img: &RgbImage, x: i64, y: i64) -> [u8; 3] {
        img.get_pixel(x as u32, y as u32).0
    }

    /// `n` series with the same (mean, se) in every group, labelled `"{label} {i}"`.
    fn uniform_series(n: usize, label: &str, value: (f64, f64)) -> Vec<Series> {
        (0..n)
            .map(|i| Series {
                label: format!("{label} {i}"),
                values: vec![Some(value); 3],
            })
            .collect()
    }

    /// A chart titled "Scores" with an automatic y axis.
    fn scores<'a>(groups: &'a [String], series: &'a [Series]) -> BarChart<'a> {
        BarChart {
            title: "Scores",
            groups,
            series,
            y_max: None,
            signed: false,
        }
    }

    #[test]
    fn size_and_bar_colours() {
        let (g, s) = (groups(), series());
        let chart = scores(&g, &s);
        let img = chart.render().unwrap();
        let l = Layout::new(&chart).unwrap();
        assert_eq!((img.width(), img.height()), (480, 364));
        assert_eq!((l.y_top, l.ticks), (0.8, 5)); // max mean+se = 0.80 -> ticks 0, 0.2, .., 0.8
                                                  // Middle of the tall CLIP-I bar of series 0 is series-0 blue.
        let (x, y) = (
            l.bar_x(1, 0, 3) + l.bar_w / 2 - 4,
            (l.y_px(0.78) + l.y_px(0.0)) / 2,
        );
        assert_eq!(colour_at(&img, x, y), PALETTE[0]);
        // Mean-0 and negative bars leave the whole plot column above the axis without bar colour.
        for (gi, si) in [(2, 1), (2, 2)] {
            let x0 = l.bar_x(gi, si, 3);
            for x in x0..x0 + l.bar_w {
                for y in PLOT_TOP..PLOT_TOP + PLOT_H {
                    assert_ne!(
                        colour_at(&img, x, y),
                        PALETTE[si],
                        "bar ({gi},{si}) at {x},{y}"
                    );
                }
            }
        }
    }

    /// A signed chart reaches below zero: negative bars hang from the zero line (their colour
    /// below it, none above), positive ones stand on it, and the ticks cover both sides.
    #[test]
    fn signed_bars_hang_below_the_zero_line() {
        let g = groups();
        let s = [
            Series {
                label: "up".into(),
                values: vec![Some((0.12, 0.03)), Some((0.05, 0.0)), None],
            },
            Series {
                label: "down".into(),
                values: vec![Some((-0.07, 0.02)), Some((-0.01, 0.0)), None],
            },
        ];
        let chart = BarChart {
            title: "Differences",
            groups: &g,
            series: &s,
            y_max: None,
            signed: true,
        };
        let img = chart.render().unwrap();
        let l = Layout::new(&chart).unwrap();
        assert!(
            l.y_bottom < -0.089 && l.y_top > 0.149,
            "{} {}",
            l.y_bottom,
            l.y_top
        );
        assert!((4..=7).contains(&l.ticks), "{}", l.ticks);
        // Ticks fall on zero: the zero line is one of them.
        assert!((l.y_bottom / l.step - (l.y_bottom / l.step).round()).abs() < 1e-9);
        let zero = l.y_px(0.0);
        assert!(zero > PLOT_TOP && zero < PLOT_TOP + PLOT_H);
        let x_up = l.bar_x(0, 0, 2) + l.bar_w / 2 - 4;
        let x_down = l.bar_x(0, 1, 2) + l.bar_w / 2 - 4;
        assert_eq!(colour_at(&img, x_up, (zero + l.y_px(0.12)) / 2), PALETTE[0]);
        assert_eq!(
            colour_at(&img, x_down, (zero + l.y_px(-0.07)) / 2),
            PALETTE[1]
        );
        for y in PLOT_TOP..zero {
            assert_ne!(colour_at(&img, x_down, y), PALETTE[1], "above zero at {y}");
        }
        for y in zero + 1..PLOT_TOP + PLOT_H {
            assert_ne!(colour_at(&img, x_up, y), PALETTE[0], "below zero at {y}");
        }
        assert_eq!(colour_at(&img, l.left + 2, zero), [90, 90, 90]);
        // The same values unsigned: the axis starts at 0 and the negative bars are flat.
        let flat = BarChart {
            signed: false,
            ..chart
        };
        let l = Layout::new(&flat).unwrap();
        assert_eq!(l.y_bottom, 0.0);
        let img = flat.render().unwrap();
        for y in PLOT_TOP..PLOT_TOP + PLOT_H {
            assert_ne!(colour_at(&img, x_down, y), PALETTE[1]);
        }
    }

    /// Up to 20 series (the toy table has 14 rows) each get their own bar colour.
    #[test]
    fn fourteen_series_get_fourteen_colours() {
        let (g, s) = (groups(), uniform_series(14, "row", (0.5, 0.0)));
        let chart = scores(&g, &s);
        let img = chart.render().unwrap();
        let l = Layout::new(&chart).unwrap();
        let y = (l.y_px(0.5) + l.y_px(0.0)) / 2;
        let colours: std::collections::BTreeSet<[u8; 3]> = (0..14)
            .map(|si| colour_at(&img, l.bar_x(0, si, 14) + 1, y))
            .collect();
        assert_eq!(colours.len(), 14, "{colours:?}");
        let all: std::collections::BTreeSet<[u8; 3]> = PALETTE.into_iter().collect();
        assert_eq!(all.len(), PALETTE.len());
    }

    #[test]
    fn legend_wraps_and_fits() {
        let (g, s) = (
            groups(),
            uniform_series(12, "A rather long method name", (0.5, 0.1)),
        );
        let chart = BarChart {
            title: "T",
            groups: &g,
            series: &s,
            y_max: Some(1.0),
            signed: false,
        };
        let l = Layout::new(&chart).unwrap();
        assert!(l.legend.len() > 1);
        assert!(l.legend_w + 2 * (LEGEND_MARGIN + LEGEND_PAD) <= l.width as i64);
        assert_eq!(l.ticks, 6);
        chart.render().unwrap();
    }

    #[test]
    fn errors_name_the_problem() {
        let (g, s) = (groups(), series());
        let err = |groups: &[String], series: &[Series], y_max| {
            BarChart {
                title: "t",
                groups,
                series,
                y_max,
                signed: false,
            }
            .render()
            .unwrap_err()
        };
        assert!(err(&[], &s, None).contains("no groups"));
        assert!(err(&g, &[], None).contains("no series"));
        let short = [Series {
            label: "short".into(),
            values: vec![None],
        }];
        let e = err(&g, &short, None);
        assert!(
            e.contains("'short'") && e.contains("1 values") && e.contains("3 groups"),
            "{e}"
        );
        for bad in [(f64::NAN, 0.1), (0.5, f64::INFINITY)] {
            let s = [Series {
                label: "nan".into(),
                values: vec![Some(bad), None, None],
            }];
            assert!(err(&g, &s, None).contains("non-finite"));
        }
        assert!(err(&g, &s, Some(0.0)).contains("y_max"));
    }

    #[test]
    fn every_printable_char_has_pixels_and_matches_width() {
        for c in ' '..='~' {
            let mut img = RgbImage::from_pixel(8, 9, WHITE);
            draw_text(&mut img, 1, 1, &c.to_string(), 1, TEXT);
            let inked = img.pixels().filter(|p| **p == TEXT).count();
            assert_eq!(inked == 0, c == ' ', "char {c:?}");
        }
        for scale in [1, 2] {
            let text = "M0|W";
            let mut img = RgbImage::from_pixel(100, 20, WHITE);
            draw_text(&mut img, 3, 2, text, scale, TEXT);
            let xs: Vec<u32> = img
                .enumerate_pixels()
                .filter(|(_, _, p)| **p == TEXT)
                .map(|(x, _, _)| x)
                .collect();
            let drawn = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
            assert_eq!(drawn, text_width(text, scale));
        }
        assert_eq!(text_width("", 1), 0);
    }

    #[test]
    fn non_ascii_draws_question_marks_without_panicking() {
        let (mut a, mut b) = (RgbImage::new(40, 9), RgbImage::new(40, 9));
        draw_text(&mut a, 0, 0, "é→✓", 1, TEXT);
        draw_text(&mut b, 0, 0, "???", 1, TEXT);
        assert_eq!(a, b);
        assert_eq!(text_width("é→✓", 1), text_width("???", 1));
        let g = vec!["Größe".to_string(), "日本".to_string(), "x".to_string()];
        let s = [Series {
            label: "Ünïcødé".into(),
            values: vec![Some((1.0, 0.5)); 3],
        }];
        BarChart {
            title: "Ωmega – ✓",
            groups: &g,
            series: &s,
            y_max: None,
            signed: false,
        }
        .render()
        .unwrap();
    }
}

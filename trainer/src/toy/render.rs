//! Draws a toy scene: every pixel averages 4×4 samples (smooth edges), shapes are exact
//! inside-tests in the object's own turned frame, and all arithmetic is IEEE f64 with the
//! pure-Rust `libm`, so the same scene gives the same bytes on every machine.

use std::sync::OnceLock;

use image::RgbImage;

use super::scene::{Backdrop, Noun, Object, Scene};
use super::vocab::{Class, Colour, Finish, Pattern, Shape};

/// Samples per pixel side.
const SUPERSAMPLE: u32 = 4;

/// One drawn part of an object, in the object's frame (radius 1).
#[derive(Debug, Clone, Copy)]
struct Part {
    shape: Shape,
    colour: Colour,
    pattern: Pattern,
    scale: f64,
    offset: (f64, f64),
}

/// The parts of an object, back to front.
fn parts(object: &Object) -> Vec<Part> {
    let base = |shape, scale, offset| Part {
        shape,
        colour: object.colour,
        pattern: object.pattern,
        scale,
        offset,
    };
    let part = |shape, colour, pattern, scale, offset| Part {
        shape,
        colour,
        pattern,
        scale,
        offset,
    };
    match object.noun {
        Noun::Shape(shape) => vec![base(shape, 1.0, (0.0, 0.0))],
        Noun::Composite(c) => {
            let [s0, s1, s2] = c.shapes;
            let [c1, c2] = c.colours;
            match c.class {
                // Nested: base, then a middle and an inner shape.
                Class::Medal => vec![
                    base(s0, 1.0, (0.0, 0.0)),
                    part(s1, c1, Pattern::Solid, 0.62, (0.0, 0.0)),
                    part(s2, c2, Pattern::Solid, 0.3, (0.0, 0.0)),
                ],
                // Bordered: base, a rim of the same shape, a centre shape.
                Class::Badge => vec![
                    base(s0, 1.0, (0.0, 0.0)),
                    part(s0, c1, Pattern::Outlined, 1.0, (0.0, 0.0)),
                    part(s1, c2, Pattern::Solid, 0.42, (0.0, 0.0)),
                ],
                // Stacked: a top and a bottom shape around the base.
                Class::Totem => vec![
                    part(s1, c1, Pattern::Solid, 0.38, (0.0, -0.62)),
                    base(s0, 0.42, (0.0, 0.0)),
                    part(s2, c2, Pattern::Solid, 0.38, (0.0, 0.62)),
                ],
            }
        }
    }
}

/// Regular polygon vertices, the first pointing up (y grows downward), radii alternating
/// through `radii`.
fn polygon(points: usize, radii: &[f64]) -> Vec<(f64, f64)> {
    (0..points)
        .map(|i| {
            let angle = -std::f64::consts::FRAC_PI_2
                + 2.0 * std::f64::consts::PI * i as f64 / points as f64;
            let r = radii[i % radii.len()];
            (r * libm::cos(angle), r * libm::sin(angle))
        })
        .collect()
}

/// Crossing-number test of a point against a closed polygon.
fn inside_polygon(vertices: &[(f64, f64)], u: f64, v: f64) -> bool {
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for i in 0..vertices.len() {
        let (xi, yi) = vertices[i];
        let (xj, yj) = vertices[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Whether (u, v) lies in the shape of radius about 1 centred at the origin.
pub fn inside(shape: Shape, u: f64, v: f64) -> bool {
    static STAR: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    static PENTAGON: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    static TRIANGLE: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    let r2 = u * u + v * v;
    match shape {
        Shape::Circle => r2 <= 1.0,
        Shape::Square => u.abs() <= 0.8 && v.abs() <= 0.8,
        Shape::Triangle => {
            // Centred on its bounding box rather than its centroid, so it fills the radius.
            inside_polygon(TRIANGLE.get_or_init(|| polygon(3, &[1.0])), u, v - 0.2)
        }
        Shape::Star => inside_polygon(STAR.get_or_init(|| polygon(10, &[1.0, 0.42])), u, v),
        Shape::Ring => (0.36..=1.0).contains(&r2),
        Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 0.9) || (v.abs() <= 0.3 && u.abs() <= 0.9),
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Hexagon => v.abs() <= 0.866 && 0.866 * u.abs() + 0.5 * v.abs() <= 0.866,
        Shape::Heart => {
            let x = u * 1.15;
            let y = -v * 1.15 + 0.12;
            let a = x * x + y * y - 1.0;
            a * a * a - x * x * y * y * y <= 0.0
        }
        Shape::Crescent => r2 <= 1.0 && (u - 0.4) * (u - 0.4) + v * v > 0.72,
        Shape::Pentagon => inside_polygon(PENTAGON.get_or_init(|| polygon(5, &[1.0])), u, v + 0.05),
    }
}

/// Whether an integer cell index is even.
fn even(x: f64) -> bool {
    (x.floor() as i64).rem_euclid(2) == 0
}

/// The colour a part puts at (u, v) of its own frame, if any.
fn fill(part: &Part, u: f64, v: f64) -> Option<[f64; 3]> {
    if !inside(part.shape, u, v) {
        return None;
    }
    let (main, shade) = (part.colour.rgb(), part.colour.shade());
    Some(match part.pattern {
        Pattern::Solid => main,
        Pattern::Outlined => {
            if inside(part.shape, u / 0.7, v / 0.7) {
                return None;
            }
            main
        }
        Pattern::Striped => {
            if even((u + v) * 2.5) {
                main
            } else {
                shade
            }
        }
        Pattern::Checkered => {
            if even(u * 2.5) == even(v * 2.5) {
                main
            } else {
                shade
            }
        }
        Pattern::Dotted => {
            let fu = u / 0.45 - (u / 0.45).round();
            let fv = v / 0.45 - (v / 0.45).round();
            if fu * fu + fv * fv < 0.09 {
                shade
            } else {
                main
            }
        }
    })
}

/// The backdrop's colour at (x, y), fractions of the image.
fn backdrop(b: &Backdrop, x: f64, y: f64) -> [f64; 3] {
    match *b {
        Backdrop::Plain(c) => c.rgb(),
        Backdrop::Gradient(top, bottom) => {
            let (a, b) = (top.rgb(), bottom.rgb());
            [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * y)
        }
        Backdrop::Checkered(a, b) => {
            if even(x * 8.0) == even(y * 8.0) {
                a.rgb()
            } else {
                b.rgb()
            }
        }
        Backdrop::Striped(a, b) => {
            if even(y * 8.0) {
                a.rgb()
            } else {
                b.rgb()
            }
        }
        Backdrop::Floor { floor, sky } => {
            if y >= 0.6 {
                floor.rgb()
            } else {
                sky.rgb()
            }
        }
    }
}

/// An object ready to draw: its parts and frame.
struct Placed {
    parts: Vec<Part>,
    centre: (f64, f64),
    radius: f64,
    cos: f64,
    sin: f64,
    shiny: bool,
}

impl Placed {
    fn new(object: &Object, centre: (f64, f64)) -> Self {
        let angle = object.rotation.degrees().to_radians();
        Self {
            parts: parts(object),
            centre,
            radius: object.size.radius(),
            cos: libm::cos(angle),
            sin: libm::sin(angle),
            shiny: object.finish == Finish::Shiny,
        }
    }

    /// Paints the object over `colour` at (x, y).
    fn paint(&self, x: f64, y: f64, colour: &mut [f64; 3]) {
        let dx = (x - self.centre.0) / self.radius;
        let dy = (y - self.centre.1) / self.radius;
        if dx * dx + dy * dy > 2.0 {
            return;
        }
        // Turning the point back by the object's clockwise angle puts it in the object's frame.
        let u = dx * self.cos + dy * self.sin;
        let v = -dx * self.sin + dy * self.cos;
        let mut covered = false;
        for part in &self.parts {
            let pu = (u - part.offset.0) / part.scale;
            let pv = (v - part.offset.1) / part.scale;
            if let Some(c) = fill(part, pu, pv) {
                *colour = c;
                covered = true;
            }
        }
        if covered && self.shiny {
            // A highlight lit from the top left of the image, whatever the object's turn.
            let d = (dx + 0.35) * (dx + 0.35) + (dy + 0.35) * (dy + 0.35);
            let h = (1.0 - d / 0.15).max(0.0) * 0.85;
            *colour = colour.map(|c| c + (255.0 - c) * h);
        }
    }
}

/// Draws the scene as a `side`×`side` RGB image.
pub fn render(scene: &Scene, side: u32) -> RgbImage {
    let placed: Vec<Placed> = scene
        .placed_objects()
        .iter()
        .map(|(o, c)| Placed::new(o, *c))
        .collect();
    let n = f64::from(side * SUPERSAMPLE);
    let samples = f64::from(SUPERSAMPLE * SUPERSAMPLE);
    RgbImage::from_fn(side, side, |px, py| {
        let mut sum = [0.0f64; 3];
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let x = (f64::from(px * SUPERSAMPLE + sx) + 0.5) / n;
                let y = (f64::from(py * SUPERSAMPLE + sy) + 0.5) / n;
                let mut colour = backdrop(&scene.backdrop, x, y);
                for p in &placed {
                    p.paint(x, y, &mut colour);
                }
                for i in 0..3 {
                    sum[i] += colour[i];
                }
            }
        }
        image::Rgb(sum.map(|s| (s / samples).round().clamp(0.0, 255.0) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::scene::{Placement, Scene};
    use crate::toy::vocab::{Position, Relation, Rotation, Size};

    fn base() -> Scene {
        Scene {
            backdrop: Backdrop::Plain(Colour::Gray),
            object: Object {
                noun: Noun::Shape(Shape::Star),
                colour: Colour::Red,
                pattern: Pattern::Solid,
                size: Size::Large,
                rotation: Rotation::Upright,
                finish: Finish::Matte,
            },
            placement: Placement::Alone(Position::Center),
        }
    }

    /// Every value of an attribute must draw differently from every other: a caption word the
    /// picture does not show could not be learned.
    fn all_distinct(label: &str, scenes: Vec<(String, Scene)>) {
        let images: Vec<(String, RgbImage)> = scenes
            .into_iter()
            .map(|(n, s)| (n, render(&s, 64)))
            .collect();
        for (i, (a, ia)) in images.iter().enumerate() {
            for (b, ib) in &images[i + 1..] {
                let differing = ia.pixels().zip(ib.pixels()).filter(|(p, q)| p != q).count();
                assert!(
                    differing >= 20,
                    "{label}: {a} and {b} differ in only {differing} pixels"
                );
            }
        }
    }

    #[test]
    fn every_word_changes_the_picture() {
        let with = |name: &str, f: &dyn Fn(&mut Scene)| {
            let mut s = base();
            f(&mut s);
            (name.to_string(), s)
        };
        all_distinct(
            "shapes",
            Shape::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.object.noun = Noun::Shape(*v)))
                .collect(),
        );
        all_distinct(
            "colours",
            Colour::ALL
                .iter()
                .filter(|c| **c != Colour::Gray)
                .map(|v| with(v.word(), &|s| s.object.colour = *v))
                .collect(),
        );
        all_distinct(
            "patterns",
            Pattern::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.object.pattern = *v))
                .collect(),
        );
        all_distinct(
            "sizes",
            Size::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.object.size = *v))
                .collect(),
        );
        all_distinct(
            "turns",
            Rotation::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.object.rotation = *v))
                .collect(),
        );
        all_distinct(
            "finishes",
            Finish::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.object.finish = *v))
                .collect(),
        );
        all_distinct(
            "positions",
            Position::ALL
                .iter()
                .map(|v| {
                    with(v.word(), &|s| {
                        s.object.size = Size::Small;
                        s.placement = Placement::Alone(*v)
                    })
                })
                .collect(),
        );
        let second = Object {
            noun: Noun::Shape(Shape::Circle),
            colour: Colour::Blue,
            ..base().object
        };
        all_distinct(
            "relations",
            Relation::ALL
                .iter()
                .map(|v| with(v.word(), &|s| s.placement = Placement::With(*v, second)))
                .collect(),
        );
        let (a, b) = (Colour::Yellow, Colour::Blue);
        all_distinct(
            "backdrops",
            [
                Backdrop::Plain(a),
                Backdrop::Gradient(a, b),
                Backdrop::Checkered(a, b),
                Backdrop::Striped(a, b),
                Backdrop::Floor { floor: a, sky: b },
                Backdrop::Gradient(b, a),
                Backdrop::Floor { floor: b, sky: a },
            ]
            .iter()
            .enumerate()
            .map(|(i, v)| with(&format!("backdrop {i}"), &|s| s.backdrop = *v))
            .collect(),
        );
    }

    #[test]
    fn shapes_fill_about_their_radius() {
        // Area inside the unit square [-1, 1]^2, sampled on a grid: every shape is a blob of
        // comparable size (not a sliver, not the whole square).
        for shape in Shape::ALL {
            let n = 200;
            let inside_count = (0..n * n)
                .filter(|i| {
                    let u = -1.0 + 2.0 * ((i % n) as f64 + 0.5) / n as f64;
                    let v = -1.0 + 2.0 * ((i / n) as f64 + 0.5) / n as f64;
                    inside(*shape, u, v)
                })
                .count();
            let share = inside_count as f64 / (n * n) as f64;
            assert!((0.15..0.8).contains(&share), "{}: {share}", shape.word());
        }
    }
}

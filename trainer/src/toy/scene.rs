//! A toy scene: a background and one object somewhere, or two objects in a relation. Every
//! attribute is discrete, so a caption that names them all pins the picture down exactly.

use super::rng::ToyRng;
use super::vocab::{Class, Colour, Finish, Pattern, Position, Relation, Rotation, Shape, Size};

/// What fills the image behind the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backdrop {
    /// One flat colour.
    Plain(Colour),
    /// A vertical blend, top colour to bottom colour.
    Gradient(Colour, Colour),
    /// An 8×8 checkerboard of two colours.
    Checkered(Colour, Colour),
    /// Eight horizontal bands of two colours.
    Striped(Colour, Colour),
    /// A floor below the horizon and a sky above it.
    Floor {
        /// The floor's colour.
        floor: Colour,
        /// The sky's colour.
        sky: Colour,
    },
}

impl Backdrop {
    /// Every colour the backdrop shows.
    pub fn colours(&self) -> Vec<Colour> {
        match *self {
            Backdrop::Plain(c) => vec![c],
            Backdrop::Gradient(a, b) | Backdrop::Checkered(a, b) | Backdrop::Striped(a, b) => {
                vec![a, b]
            }
            Backdrop::Floor { floor, sky } => vec![floor, sky],
        }
    }
}

/// A composite object's hidden parts: what makes one medal differ from another, which no
/// caption can say. Its base part takes the object's colour and pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Composite {
    /// The family, the caption's noun.
    pub class: Class,
    /// The base shape and the shapes of the other parts.
    pub shapes: [Shape; 3],
    /// The other parts' colours.
    pub colours: [Colour; 2],
}

impl Composite {
    /// Whether two composites are built alike (class and shapes), whatever their colours: the
    /// resemblance that keeps a pre-training object away from a held-out subject.
    pub fn same_structure(&self, other: &Composite) -> bool {
        self.class == other.class && self.shapes == other.shapes
    }
}

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noun {
    /// A simple shape, fully named by the caption.
    Shape(Shape),
    /// A composite, named only by its class.
    Composite(Composite),
}

/// One object with every attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Object {
    /// The shape or composite.
    pub noun: Noun,
    /// Its colour (a composite's base part).
    pub colour: Colour,
    /// Its fill (a composite's base part).
    pub pattern: Pattern,
    /// Its size.
    pub size: Size,
    /// Its turn.
    pub rotation: Rotation,
    /// Its surface.
    pub finish: Finish,
}

/// Where the objects stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The first object alone, at a named position.
    Alone(Position),
    /// A second object, in a relation to the first.
    With(Relation, Object),
}

/// A whole scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scene {
    /// The background.
    pub backdrop: Backdrop,
    /// The first (or only) object.
    pub object: Object,
    /// The position, or the second object and the relation.
    pub placement: Placement,
}

impl Scene {
    /// The objects with their centres (fractions of the image), in drawing order.
    pub fn placed_objects(&self) -> Vec<(Object, (f64, f64))> {
        match self.placement {
            Placement::Alone(p) => vec![(self.object, p.centre())],
            Placement::With(r, second) => {
                let (a, b) = r.centres();
                vec![(self.object, a), (second, b)]
            }
        }
    }
}

/// A colour not in `avoid` (the backdrop's, so the object stands out).
pub fn colour_except(rng: &mut ToyRng, avoid: &[Colour]) -> Colour {
    let allowed: Vec<Colour> = Colour::ALL
        .iter()
        .copied()
        .filter(|c| !avoid.contains(c))
        .collect();
    rng.pick(&allowed)
}

/// A random backdrop of two (or one) distinct colours.
pub fn sample_backdrop(rng: &mut ToyRng) -> Backdrop {
    let a = rng.pick(Colour::ALL);
    let b = colour_except(rng, &[a]);
    match rng.below(5) {
        0 => Backdrop::Plain(a),
        1 => Backdrop::Gradient(a, b),
        2 => Backdrop::Checkered(a, b),
        3 => Backdrop::Striped(a, b),
        _ => Backdrop::Floor { floor: a, sky: b },
    }
}

/// A random composite's hidden parts, with three distinct colours counting `base`.
pub fn sample_composite(rng: &mut ToyRng, class: Class, base: Colour) -> Composite {
    let shapes = [
        rng.pick(Shape::ALL),
        rng.pick(Shape::ALL),
        rng.pick(Shape::ALL),
    ];
    let first = colour_except(rng, &[base]);
    let second = colour_except(rng, &[base, first]);
    let mut composite = Composite {
        class,
        shapes,
        colours: [first, second],
    };
    // A badge draws two shapes; fixing the unused one keeps equal-looking badges equal.
    if class == Class::Badge {
        composite.shapes[2] = composite.shapes[1];
    }
    composite
}

/// The chances of the attributes a random object takes.
fn sample_look(rng: &mut ToyRng) -> (Pattern, Size, Rotation, Finish) {
    let pattern = if rng.chance(0.4) {
        Pattern::Solid
    } else {
        rng.pick(&Pattern::ALL[1..])
    };
    let size = rng.pick(Size::ALL);
    let rotation = match rng.below(5) {
        0 => Rotation::Tilted,
        1 => Rotation::UpsideDown,
        _ => Rotation::Upright,
    };
    let finish = if rng.chance(0.2) {
        Finish::Shiny
    } else {
        Finish::Matte
    };
    (pattern, size, rotation, finish)
}

/// A random object whose colour avoids `avoid`; composites (30%) for which `held_out` is true
/// are drawn again, so the held-out subjects never appear.
pub fn sample_object(
    rng: &mut ToyRng,
    avoid: &[Colour],
    held_out: &dyn Fn(&Object) -> bool,
) -> Object {
    loop {
        let colour = colour_except(rng, avoid);
        let (pattern, size, rotation, finish) = sample_look(rng);
        let noun = if rng.chance(0.3) {
            let class = rng.pick(Class::ALL);
            Noun::Composite(sample_composite(rng, class, colour))
        } else {
            Noun::Shape(rng.pick(Shape::ALL))
        };
        let object = Object {
            noun,
            colour,
            pattern,
            size,
            rotation,
            finish,
        };
        if !held_out(&object) {
            return object;
        }
    }
}

/// A random scene (one object 60% of the time, else two).
pub fn sample_scene(rng: &mut ToyRng, held_out: &dyn Fn(&Object) -> bool) -> Scene {
    let backdrop = sample_backdrop(rng);
    let avoid = backdrop.colours();
    let object = sample_object(rng, &avoid, held_out);
    let placement = if rng.chance(0.6) {
        Placement::Alone(rng.pick(Position::ALL))
    } else {
        let relation = rng.pick(Relation::ALL);
        Placement::With(relation, sample_object(rng, &avoid, held_out))
    };
    Scene {
        backdrop,
        object,
        placement,
    }
}

//! The toy world's words: every attribute a caption can name, with the word that names it.
//! One table per attribute keeps the renderer, the caption writer and the parser in step.

/// Defines a closed set of named values: the enum, `ALL` in caption order, the caption word and
/// its inverse.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in the table's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The caption word (or hyphenated phrase).
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// The value a caption word names.
            pub fn from_word(word: &str) -> Option<Self> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

named!(
    /// The named colours.
    Colour {
        Red => "red",
        Orange => "orange",
        Yellow => "yellow",
        Green => "green",
        Blue => "blue",
        Purple => "purple",
        Pink => "pink",
        Brown => "brown",
        Black => "black",
        White => "white",
        Gray => "gray",
        Cyan => "cyan",
    }
);

impl Colour {
    /// The colour's sRGB value.
    pub fn rgb(self) -> [f64; 3] {
        match self {
            Colour::Red => [220.0, 40.0, 40.0],
            Colour::Orange => [245.0, 140.0, 30.0],
            Colour::Yellow => [240.0, 220.0, 40.0],
            Colour::Green => [50.0, 170.0, 60.0],
            Colour::Blue => [40.0, 80.0, 220.0],
            Colour::Purple => [140.0, 60.0, 190.0],
            Colour::Pink => [240.0, 130.0, 180.0],
            Colour::Brown => [130.0, 80.0, 40.0],
            Colour::Black => [20.0, 20.0, 20.0],
            Colour::White => [245.0, 245.0, 245.0],
            Colour::Gray => [128.0, 128.0, 128.0],
            Colour::Cyan => [40.0, 200.0, 210.0],
        }
    }

    /// The second tone of a fill pattern: darker, or lighter for the darkest colours.
    pub fn shade(self) -> [f64; 3] {
        let c = self.rgb();
        if c[0] + c[1] + c[2] < 200.0 {
            c.map(|v| v + (255.0 - v) * 0.55)
        } else {
            c.map(|v| v * 0.5)
        }
    }
}

named!(
    /// The simple shapes captions name.
    Shape {
        Circle => "circle",
        Square => "square",
        Triangle => "triangle",
        Star => "star",
        Ring => "ring",
        Cross => "cross",
        Diamond => "diamond",
        Hexagon => "hexagon",
        Heart => "heart",
        Crescent => "crescent",
        Pentagon => "pentagon",
    }
);

named!(
    /// How a shape is filled; `Solid` goes unsaid.
    Pattern {
        Solid => "solid",
        Striped => "striped",
        Dotted => "dotted",
        Checkered => "checkered",
        Outlined => "outlined",
    }
);

named!(
    /// An object's size; `Medium` goes unsaid.
    Size {
        Small => "small",
        Medium => "medium",
        Large => "large",
    }
);

impl Size {
    /// The object's radius as a fraction of the image side.
    pub fn radius(self) -> f64 {
        match self {
            Size::Small => 0.12,
            Size::Medium => 0.18,
            Size::Large => 0.25,
        }
    }
}

named!(
    /// An object's turn; `Upright` goes unsaid.
    Rotation {
        Upright => "upright",
        Tilted => "tilted",
        UpsideDown => "upside-down",
    }
);

impl Rotation {
    /// The clockwise turn in degrees.
    pub fn degrees(self) -> f64 {
        match self {
            Rotation::Upright => 0.0,
            Rotation::Tilted => 30.0,
            Rotation::UpsideDown => 180.0,
        }
    }
}

named!(
    /// An object's surface; `Matte` goes unsaid, `Shiny` adds a highlight.
    Finish {
        Matte => "matte",
        Shiny => "shiny",
    }
);

named!(
    /// Where a lone object stands; `Center` goes unsaid.
    Position {
        TopLeft => "in the top left",
        Top => "at the top",
        TopRight => "in the top right",
        Left => "on the left",
        Center => "in the center",
        Right => "on the right",
        BottomLeft => "in the bottom left",
        Bottom => "at the bottom",
        BottomRight => "in the bottom right",
    }
);

impl Position {
    /// The object's centre, as fractions of the image (x right, y down).
    pub fn centre(self) -> (f64, f64) {
        let (column, row) = match self {
            Position::TopLeft => (0, 0),
            Position::Top => (1, 0),
            Position::TopRight => (2, 0),
            Position::Left => (0, 1),
            Position::Center => (1, 1),
            Position::Right => (2, 1),
            Position::BottomLeft => (0, 2),
            Position::Bottom => (1, 2),
            Position::BottomRight => (2, 2),
        };
        let at = [0.3, 0.5, 0.7];
        (at[column], at[row])
    }
}

named!(
    /// How the second of two objects stands to the first.
    Relation {
        NextTo => "next to",
        Above => "above",
        Below => "below",
    }
);

impl Relation {
    /// The two objects' centres (first, second), as fractions of the image.
    pub fn centres(self) -> ((f64, f64), (f64, f64)) {
        match self {
            Relation::NextTo => ((0.26, 0.5), (0.74, 0.5)),
            Relation::Above => ((0.5, 0.26), (0.5, 0.74)),
            Relation::Below => ((0.5, 0.74), (0.5, 0.26)),
        }
    }
}

named!(
    /// The composite families: objects of several parts and colours that a caption names only
    /// by class. The held-out subjects are members of these families.
    Class {
        Medal => "medal",
        Badge => "badge",
        Totem => "totem",
    }
);

/// The article a word takes ("an orange", "a red").
pub fn article(next_word: &str) -> &'static str {
    match next_word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_name_values_one_to_one() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            word: fn(T) -> &'static str,
            from: fn(&str) -> Option<T>,
        ) {
            for &v in all {
                assert_eq!(from(word(v)), Some(v));
            }
        }
        check(Colour::ALL, Colour::word, Colour::from_word);
        check(Shape::ALL, Shape::word, Shape::from_word);
        check(Pattern::ALL, Pattern::word, Pattern::from_word);
        check(Size::ALL, Size::word, Size::from_word);
        check(Rotation::ALL, Rotation::word, Rotation::from_word);
        check(Finish::ALL, Finish::word, Finish::from_word);
        check(Position::ALL, Position::word, Position::from_word);
        check(Relation::ALL, Relation::word, Relation::from_word);
        check(Class::ALL, Class::word, Class::from_word);
        assert_eq!(Position::TopLeft.centre(), (0.3, 0.3));
        assert_eq!(Position::BottomRight.centre(), (0.7, 0.7));
        assert_eq!(article("orange"), "an");
        assert_eq!(article("red"), "a");
    }
}

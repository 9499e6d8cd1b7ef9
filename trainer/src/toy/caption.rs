//! The toy world's captions: a small grammar, its writer and its parser.
//!
//! ```text
//! caption  := object [position] [relation object] [backdrop]
//! object   := ("a" | "an") modifier* noun          modifiers: size, finish, turn, colour, pattern
//! backdrop := "on a" colour "background"           | "on a plain background"
//!           | "on a" colour "to" colour "gradient" | "on a gradient"
//!           | "on a" colour "and" colour ("checkered" | "striped") "background"
//!           | "on a" ("checkered" | "striped") "background"
//!           | "on a" colour "floor under a" colour "sky" | "on a floor under a sky"
//! ```
//!
//! A *full* caption names every attribute that is not its default (medium, upright, matte,
//! solid, centred), so parsing it and filling the defaults gives back the scene. A *partial*
//! caption leaves some out; what it does say still matches the scene. A `<token>` word before
//! the noun (as in "a <new1> medal") is kept, so evaluation prompts parse too.

use std::fmt;

use anyhow::{bail, Context, Result};

use super::rng::ToyRng;
use super::scene::{Backdrop, Noun, Object, Placement, Scene};
use super::vocab::{
    article, Class, Colour, Finish, Pattern, Position, Relation, Rotation, Shape, Size,
};

/// What a caption calls an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NounText {
    /// A simple shape.
    Shape(Shape),
    /// A composite's class.
    Class(Class),
}

/// What a caption says of one object; `None` is left unsaid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectText {
    /// Its size.
    pub size: Option<Size>,
    /// Its surface.
    pub finish: Option<Finish>,
    /// Its turn.
    pub rotation: Option<Rotation>,
    /// Its colour.
    pub colour: Option<Colour>,
    /// Its fill.
    pub pattern: Option<Pattern>,
    /// A learned token placed before the noun (`<new1>`).
    pub token: Option<String>,
    /// What it is.
    pub noun: NounText,
}

/// What a caption says of the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackdropText {
    /// Flat, with or without its colour.
    Plain(Option<Colour>),
    /// A gradient, with or without its colours.
    Gradient(Option<(Colour, Colour)>),
    /// A checkerboard, with or without its colours.
    Checkered(Option<(Colour, Colour)>),
    /// Stripes, with or without their colours.
    Striped(Option<(Colour, Colour)>),
    /// Floor and sky, with or without their colours (floor, sky).
    Floor(Option<(Colour, Colour)>),
}

/// What a caption says of where things stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementText {
    /// One object, with or without its position.
    Alone(Option<Position>),
    /// A second object in a relation to the first.
    With(Relation, ObjectText),
}

/// A parsed (or to-be-written) caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The first object.
    pub object: ObjectText,
    /// The position or the second object.
    pub placement: PlacementText,
    /// The background, if said.
    pub backdrop: Option<BackdropText>,
}

/// `Some(v)` unless `v` is the default that goes unsaid.
fn unless<T: PartialEq>(v: T, default: T) -> Option<T> {
    (v != default).then_some(v)
}

impl ObjectText {
    /// Every non-default attribute of `object`.
    pub fn full(object: &Object) -> Self {
        Self {
            size: unless(object.size, Size::Medium),
            finish: unless(object.finish, Finish::Matte),
            rotation: unless(object.rotation, Rotation::Upright),
            colour: Some(object.colour),
            pattern: unless(object.pattern, Pattern::Solid),
            token: None,
            noun: match object.noun {
                Noun::Shape(s) => NounText::Shape(s),
                Noun::Composite(c) => NounText::Class(c.class),
            },
        }
    }

    /// Whether everything said holds for `object`.
    pub fn matches(&self, object: &Object) -> bool {
        let noun = match (self.noun, object.noun) {
            (NounText::Shape(a), Noun::Shape(b)) => a == b,
            (NounText::Class(a), Noun::Composite(b)) => a == b.class,
            _ => false,
        };
        noun && self.size.is_none_or(|v| v == object.size)
            && self.finish.is_none_or(|v| v == object.finish)
            && self.rotation.is_none_or(|v| v == object.rotation)
            && self.colour.is_none_or(|v| v == object.colour)
            && self.pattern.is_none_or(|v| v == object.pattern)
    }

    /// The object this text pins down, defaults filled in; composites and missing colours
    /// cannot be drawn from words alone.
    pub fn to_object(&self) -> Result<Object> {
        let NounText::Shape(shape) = self.noun else {
            bail!(
                "a caption names a composite only by class; its parts cannot be drawn from words"
            );
        };
        Ok(Object {
            noun: Noun::Shape(shape),
            colour: self
                .colour
                .context("the caption gives an object no colour")?,
            pattern: self.pattern.unwrap_or(Pattern::Solid),
            size: self.size.unwrap_or(Size::Medium),
            rotation: self.rotation.unwrap_or(Rotation::Upright),
            finish: self.finish.unwrap_or(Finish::Matte),
        })
    }

    /// Forgets each attribute with probability `p` (the colour less often: captions mostly
    /// say it).
    fn drop_some(&mut self, rng: &mut ToyRng, p: f64) {
        if rng.chance(p) {
            self.size = None;
        }
        if rng.chance(p) {
            self.finish = None;
        }
        if rng.chance(p) {
            self.rotation = None;
        }
        if rng.chance(p / 2.0) {
            self.colour = None;
        }
        if rng.chance(p) {
            self.pattern = None;
        }
    }
}

impl BackdropText {
    /// The backdrop with its colours.
    pub fn full(b: &Backdrop) -> Self {
        match *b {
            Backdrop::Plain(c) => Self::Plain(Some(c)),
            Backdrop::Gradient(a, c) => Self::Gradient(Some((a, c))),
            Backdrop::Checkered(a, c) => Self::Checkered(Some((a, c))),
            Backdrop::Striped(a, c) => Self::Striped(Some((a, c))),
            Backdrop::Floor { floor, sky } => Self::Floor(Some((floor, sky))),
        }
    }

    /// The same kind without colours.
    fn colourless(self) -> Self {
        match self {
            Self::Plain(_) => Self::Plain(None),
            Self::Gradient(_) => Self::Gradient(None),
            Self::Checkered(_) => Self::Checkered(None),
            Self::Striped(_) => Self::Striped(None),
            Self::Floor(_) => Self::Floor(None),
        }
    }

    /// Whether everything said holds for `b`.
    pub fn matches(&self, b: &Backdrop) -> bool {
        let said = BackdropText::full(b);
        *self == said || *self == said.colourless()
    }

    /// The backdrop this text pins down.
    pub fn to_backdrop(&self) -> Result<Backdrop> {
        let none = || anyhow::anyhow!("the caption names the background without its colours");
        Ok(match *self {
            Self::Plain(c) => Backdrop::Plain(c.ok_or_else(none)?),
            Self::Gradient(c) => c.map(|(a, b)| Backdrop::Gradient(a, b)).ok_or_else(none)?,
            Self::Checkered(c) => c.map(|(a, b)| Backdrop::Checkered(a, b)).ok_or_else(none)?,
            Self::Striped(c) => c.map(|(a, b)| Backdrop::Striped(a, b)).ok_or_else(none)?,
            Self::Floor(c) => c
                .map(|(floor, sky)| Backdrop::Floor { floor, sky })
                .ok_or_else(none)?,
        })
    }
}

impl Description {
    /// The full caption of a scene: every non-default attribute.
    pub fn full(scene: &Scene) -> Self {
        Self {
            object: ObjectText::full(&scene.object),
            placement: match scene.placement {
                Placement::Alone(p) => PlacementText::Alone(unless(p, Position::Center)),
                Placement::With(r, o) => PlacementText::With(r, ObjectText::full(&o)),
            },
            backdrop: Some(BackdropText::full(&scene.backdrop)),
        }
    }

    /// A partial caption: the full one with attributes forgotten at random (the background's
    /// colours or the whole background, the position, any object attribute).
    pub fn partial(scene: &Scene, rng: &mut ToyRng) -> Self {
        let mut d = Self::full(scene);
        d.object.drop_some(rng, 0.35);
        match &mut d.placement {
            PlacementText::Alone(p) => {
                if rng.chance(0.35) {
                    *p = None;
                }
            }
            PlacementText::With(_, o) => o.drop_some(rng, 0.35),
        }
        d.backdrop = match rng.below(4) {
            0 => None,
            1 => d.backdrop.map(BackdropText::colourless),
            _ => d.backdrop,
        };
        d
    }

    /// Whether everything said holds for `scene`.
    pub fn matches(&self, scene: &Scene) -> bool {
        let placement = match (&self.placement, &scene.placement) {
            (PlacementText::Alone(p), Placement::Alone(q)) => p.is_none_or(|p| p == *q),
            (PlacementText::With(r, o), Placement::With(s, q)) => r == s && o.matches(q),
            _ => false,
        };
        self.object.matches(&scene.object)
            && placement
            && self.backdrop.is_none_or(|b| b.matches(&scene.backdrop))
    }

    /// The scene this caption pins down, defaults filled in (for full captions of simple
    /// shapes).
    pub fn to_scene(&self) -> Result<Scene> {
        Ok(Scene {
            backdrop: self
                .backdrop
                .context("the caption names no background")?
                .to_backdrop()?,
            object: self.object.to_object()?,
            placement: match &self.placement {
                PlacementText::Alone(p) => Placement::Alone(p.unwrap_or(Position::Center)),
                PlacementText::With(r, o) => Placement::With(*r, o.to_object()?),
            },
        })
    }
}

impl fmt::Display for ObjectText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<&str> = Vec::new();
        words.extend(self.size.map(Size::word));
        words.extend(self.finish.map(Finish::word));
        words.extend(self.rotation.map(Rotation::word));
        words.extend(self.colour.map(Colour::word));
        words.extend(self.pattern.map(Pattern::word));
        words.extend(self.token.as_deref());
        words.push(match self.noun {
            NounText::Shape(s) => s.word(),
            NounText::Class(c) => c.word(),
        });
        write!(f, "{} {}", article(words[0]), words.join(" "))
    }
}

impl fmt::Display for BackdropText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on =
            |f: &mut fmt::Formatter<'_>, rest: String| write!(f, "on {} {rest}", article(&rest));
        match *self {
            Self::Plain(Some(c)) => on(f, format!("{} background", c.word())),
            Self::Plain(None) => on(f, "plain background".into()),
            Self::Gradient(Some((a, b))) => on(f, format!("{} to {} gradient", a.word(), b.word())),
            Self::Gradient(None) => on(f, "gradient".into()),
            Self::Checkered(Some((a, b))) => on(
                f,
                format!("{} and {} checkered background", a.word(), b.word()),
            ),
            Self::Checkered(None) => on(f, "checkered background".into()),
            Self::Striped(Some((a, b))) => on(
                f,
                format!("{} and {} striped background", a.word(), b.word()),
            ),
            Self::Striped(None) => on(f, "striped background".into()),
            Self::Floor(Some((floor, sky))) => on(
                f,
                format!(
                    "{} floor under {} {} sky",
                    floor.word(),
                    article(sky.word()),
                    sky.word()
                ),
            ),
            Self::Floor(None) => on(f, "floor under a sky".into()),
        }
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object)?;
        match &self.placement {
            PlacementText::Alone(Some(p)) => write!(f, " {}", p.word())?,
            PlacementText::Alone(None) => {}
            PlacementText::With(r, o) => write!(f, " {} {o}", r.word())?,
        }
        if let Some(b) = &self.backdrop {
            write!(f, " {b}")?;
        }
        Ok(())
    }
}

/// Fills an attribute a caption may say once; `what` names the attribute in the plural.
fn set_once<T>(slot: &mut Option<T>, value: T, what: &str, caption: &str) -> Result<()> {
    if slot.replace(value).is_some() {
        bail!("caption {caption:?} gives one object two {what}");
    }
    Ok(())
}

/// A cursor over a caption's words.
struct Words<'a> {
    words: Vec<&'a str>,
    at: usize,
    text: &'a str,
}

impl<'a> Words<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    /// Takes the phrase if the next words spell it.
    fn take(&mut self, phrase: &str) -> bool {
        let n = phrase.split(' ').count();
        let next = self.words.get(self.at..self.at + n);
        if next.is_some_and(|w| w.join(" ") == phrase) {
            self.at += n;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, phrase: &str) -> Result<()> {
        if !self.take(phrase) {
            bail!(
                "caption {:?}: expected {phrase:?} at word {}, found {:?}",
                self.text,
                self.at + 1,
                self.peek().unwrap_or("the end")
            );
        }
        Ok(())
    }

    fn colour(&mut self) -> Result<Colour> {
        let word = self.peek().unwrap_or("the end");
        let colour = Colour::from_word(word).with_context(|| {
            format!(
                "caption {:?}: {word:?} at word {} is not a colour",
                self.text,
                self.at + 1
            )
        })?;
        self.at += 1;
        Ok(colour)
    }

    fn article(&mut self) -> Result<()> {
        if !(self.take("a") || self.take("an")) {
            self.expect("a")?;
        }
        Ok(())
    }

    fn object(&mut self) -> Result<ObjectText> {
        self.article()?;
        let mut text = ObjectText {
            size: None,
            finish: None,
            rotation: None,
            colour: None,
            pattern: None,
            token: None,
            noun: NounText::Shape(Shape::Circle),
        };
        loop {
            let word = self
                .peek()
                .with_context(|| format!("caption {:?} ends before naming a shape", self.text))?;
            self.at += 1;
            if let Some(s) = Shape::from_word(word) {
                text.noun = NounText::Shape(s);
                return Ok(text);
            } else if let Some(c) = Class::from_word(word) {
                text.noun = NounText::Class(c);
                return Ok(text);
            } else if let Some(v) = Size::from_word(word) {
                set_once(&mut text.size, v, "sizes", self.text)?;
            } else if let Some(v) = Finish::from_word(word) {
                set_once(&mut text.finish, v, "finishes", self.text)?;
            } else if let Some(v) = Rotation::from_word(word) {
                set_once(&mut text.rotation, v, "turns", self.text)?;
            } else if let Some(v) = Colour::from_word(word) {
                set_once(&mut text.colour, v, "colours", self.text)?;
            } else if let Some(v) = Pattern::from_word(word) {
                set_once(&mut text.pattern, v, "patterns", self.text)?;
            } else if word.starts_with('<') && word.ends_with('>') && text.token.is_none() {
                text.token = Some(word.to_string());
            } else {
                bail!(
                    "caption {:?}: {word:?} at word {} is not a size, finish, turn, colour, pattern, shape or class",
                    self.text,
                    self.at
                );
            }
        }
    }

    fn backdrop(&mut self) -> Result<BackdropText> {
        self.article()?;
        if self.take("plain background") {
            return Ok(BackdropText::Plain(None));
        }
        if self.take("gradient") {
            return Ok(BackdropText::Gradient(None));
        }
        if self.take("checkered background") {
            return Ok(BackdropText::Checkered(None));
        }
        if self.take("striped background") {
            return Ok(BackdropText::Striped(None));
        }
        if self.take("floor under a sky") {
            return Ok(BackdropText::Floor(None));
        }
        let a = self.colour()?;
        if self.take("background") {
            return Ok(BackdropText::Plain(Some(a)));
        }
        if self.take("to") {
            let b = self.colour()?;
            self.expect("gradient")?;
            return Ok(BackdropText::Gradient(Some((a, b))));
        }
        if self.take("and") {
            let b = self.colour()?;
            if self.take("checkered background") {
                return Ok(BackdropText::Checkered(Some((a, b))));
            }
            self.expect("striped background")?;
            return Ok(BackdropText::Striped(Some((a, b))));
        }
        self.expect("floor under")?;
        self.article()?;
        let sky = self.colour()?;
        self.expect("sky")?;
        Ok(BackdropText::Floor(Some((a, sky))))
    }
}

/// Parses a caption of the grammar above (case and spacing do not matter).
pub fn parse(caption: &str) -> Result<Description> {
    let lower = caption.to_lowercase();
    let mut w = Words {
        words: lower.split_whitespace().collect(),
        at: 0,
        text: caption,
    };
    let object = w.object()?;
    let mut placement = PlacementText::Alone(None);
    if let Some(p) = Position::ALL.iter().find(|p| w.take(p.word())) {
        placement = PlacementText::Alone(Some(*p));
    } else if let Some(r) = Relation::ALL.iter().find(|r| w.take(r.word())) {
        placement = PlacementText::With(*r, w.object()?);
    }
    let backdrop = if w.take("on") {
        Some(w.backdrop()?)
    } else {
        None
    };
    if let Some(extra) = w.peek() {
        bail!(
            "caption {caption:?}: unexpected {extra:?} at word {} (the grammar ends with the background)",
            w.at + 1
        );
    }
    Ok(Description {
        object,
        placement,
        backdrop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::render::render;
    use crate::toy::{ToyWorld, ToyWorldConfig, TOY_PROMPTS};

    fn world() -> ToyWorld {
        ToyWorld::new(ToyWorldConfig::default()).unwrap()
    }

    #[test]
    fn full_captions_parse_back_to_the_scene_they_describe() {
        let world = world();
        let mut drawn = 0;
        for i in 0..3000 {
            let scene = world.scene(i);
            let description = Description::full(&scene);
            let text = description.to_string();
            let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
            assert_eq!(parsed, description, "{text}");
            assert!(parsed.matches(&scene), "{text}");
            let simple = scene
                .placed_objects()
                .iter()
                .all(|(o, _)| matches!(o.noun, Noun::Shape(_)));
            match parsed.to_scene() {
                Ok(back) => {
                    assert!(simple, "{text}: a composite cannot be drawn from words");
                    assert_eq!(back, scene, "{text}");
                    // Drawing from the parse gives the very pixels of the original.
                    if drawn < 300 {
                        assert_eq!(render(&back, 64), render(&scene, 64), "{text}");
                        drawn += 1;
                    }
                }
                Err(e) => {
                    assert!(!simple, "{text}: {e:#}");
                    assert!(e.to_string().contains("composite"), "{e:#}");
                }
            }
        }
        assert_eq!(drawn, 300);
    }

    #[test]
    fn partial_captions_parse_and_hold_for_their_scene() {
        let world = world();
        let mut shorter = 0;
        for i in 0..3000 {
            let scene = world.scene(i);
            let mut rng = ToyRng::keyed(9, 9, i);
            let description = Description::partial(&scene, &mut rng);
            let text = description.to_string();
            let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
            assert_eq!(parsed, description, "{text}");
            assert!(parsed.matches(&scene), "{text}");
            if text.len() < Description::full(&scene).to_string().len() {
                shorter += 1;
            }
        }
        // Most partial captions leave something out.
        assert!(shorter > 2000, "{shorter}");
    }

    #[test]
    fn a_caption_does_not_match_a_scene_that_differs_in_what_it_says() {
        let world = world();
        let scene = (0..)
            .map(|i| world.scene(i))
            .find(|s| {
                matches!(s.placement, Placement::Alone(_))
                    && matches!(s.object.noun, Noun::Shape(_))
            })
            .unwrap();
        let text = Description::full(&scene);
        let mut other = scene;
        other.object.colour =
            crate::toy::scene::colour_except(&mut ToyRng::keyed(0, 0, 0), &[scene.object.colour]);
        assert!(!text.matches(&other));
        let mut other = scene;
        other.object.size = if scene.object.size == Size::Small {
            Size::Large
        } else {
            Size::Small
        };
        assert!(!text.matches(&other));
        let mut other = scene;
        other.backdrop = match scene.backdrop {
            Backdrop::Plain(c) => Backdrop::Striped(c, c),
            _ => Backdrop::Plain(scene.object.colour),
        };
        assert!(!text.matches(&other));
    }

    #[test]
    fn the_toy_prompts_are_captions_of_the_grammar() {
        for template in TOY_PROMPTS {
            for class in Class::ALL {
                let with = template
                    .replace("{0}", "<new1>")
                    .replace("{1}", class.word());
                let parsed = parse(&with).unwrap_or_else(|e| panic!("{with}: {e:#}"));
                assert_eq!(parsed.object.token.as_deref(), Some("<new1>"), "{with}");
                assert_eq!(parsed.object.noun, NounText::Class(*class), "{with}");
                assert_eq!(
                    parsed.to_string(),
                    with,
                    "the writer spells it the same way"
                );
                let without = crate::eval::dreambench::fill(template, "", class.word());
                let parsed = parse(&without).unwrap_or_else(|e| panic!("{without}: {e:#}"));
                assert_eq!(parsed.object.token, None);
            }
        }
    }

    #[test]
    fn bad_captions_get_errors_naming_the_word() {
        let cases = [
            ("a red dragon on a blue background", "\"dragon\" at word 3"),
            ("a red red star", "two colours"),
            ("a big star", "\"big\" at word 2"),
            (
                "a red star on a blue background please",
                "unexpected \"please\"",
            ),
            ("a red", "ends before naming a shape"),
            ("red star", "expected \"a\""),
            (
                "a star on a mauve background",
                "\"mauve\" at word 5 is not a colour",
            ),
            ("a star on a red to blue sky", "expected \"gradient\""),
        ];
        for (text, message) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(message), "{text}: {err}");
        }
        let err = parse("a red star on a checkered background")
            .unwrap()
            .to_scene()
            .unwrap_err();
        assert!(err.to_string().contains("without its colours"), "{err}");
        let err = parse("a star on a red background")
            .unwrap()
            .to_scene()
            .unwrap_err();
        assert!(err.to_string().contains("no colour"), "{err}");
    }
}

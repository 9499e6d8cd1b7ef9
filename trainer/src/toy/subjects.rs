//! The held-out subjects and their DreamBench-shaped folder: one folder of reference renders per
//! subject and `prompts_and_classes.txt` with the 25 toy prompts, so `trainer eval` and
//! `trainer bench-table` read it as they read google/dreambooth's `dataset/`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use image::RgbImage;
use serde::Serialize;

use super::scene::{Composite, Noun, Object};
use super::vocab::{Class, Colour, Finish, Pattern, Rotation, Size};
use super::world::ToyWorld;
use crate::checkpoint::create_folder_beside;
use crate::eval::dreambench::CLASS_FILE;

/// One held-out subject: a composite whose parts no caption names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToySubject {
    /// Folder name, e.g. `medal_03`.
    pub name: String,
    /// Place in the world's list; keys the subject's reference scenes.
    pub index: usize,
    /// The hidden parts (class, shapes, part colours).
    pub composite: Composite,
    /// The base part's colour.
    pub colour: Colour,
    /// The base part's pattern.
    pub pattern: Pattern,
}

impl ToySubject {
    /// The class noun prompts use.
    pub fn class(&self) -> Class {
        self.composite.class
    }

    /// The subject as an object of the given size, turn and finish.
    pub fn object(&self, size: Size, rotation: Rotation, finish: Finish) -> Object {
        Object {
            noun: Noun::Composite(self.composite),
            colour: self.colour,
            pattern: self.pattern,
            size,
            rotation,
            finish,
        }
    }
}

/// The 25 evaluation prompts (`{0}` the token, `{1}` the class), as DreamBench's lists: scene
/// changes, placements, companions, recolourings, finishes and patterns. Every one is a caption
/// of the toy grammar.
pub const TOY_PROMPTS: [&str; 25] = [
    "a {0} {1} on a blue background",
    "a {0} {1} on a white background",
    "a {0} {1} on a black background",
    "a {0} {1} on a yellow to green gradient",
    "a {0} {1} on a checkered background",
    "a {0} {1} on a gray and white checkered background",
    "a {0} {1} on a striped background",
    "a {0} {1} on a green floor under a cyan sky",
    "a {0} {1} on a brown floor under a blue sky",
    "a {0} {1} in the top left",
    "a {0} {1} in the bottom right",
    "a small {0} {1}",
    "a large {0} {1} on a pink background",
    "a tilted {0} {1}",
    "an upside-down {0} {1}",
    "a {0} {1} next to a red circle",
    "a {0} {1} above a blue square",
    "a {0} {1} below a small yellow star",
    "a red {0} {1}",
    "a blue {0} {1}",
    "a green {0} {1} on a white background",
    "a shiny {0} {1}",
    "a striped {0} {1}",
    "a dotted {0} {1}",
    "a shiny {0} {1} on a purple background",
];

/// What `subjects.yaml` records of a subject (the answer key a reader may want).
#[derive(Serialize)]
struct SubjectRecord<'a> {
    name: &'a str,
    class: &'static str,
    colour: &'static str,
    pattern: &'static str,
    shapes: [&'static str; 3],
    part_colours: [&'static str; 2],
    references: usize,
}

/// The class file's text, in google/dreambooth's layout. The toy classes are not live, so
/// both prompt lists are the toy list (the reader wants both).
pub fn class_file(world: &ToyWorld) -> String {
    let mut text = String::from("Classes\n\nsubject_name,class\n");
    for s in world.subjects() {
        let _ = writeln!(text, "{},{}", s.name, s.class().word());
    }
    text.push_str("\nPrompts\n");
    for heading in ["Object Prompts", "Live Subject Prompts"] {
        let _ = write!(text, "\n{heading}\n\nprompt_list = [\n");
        for (i, p) in TOY_PROMPTS.iter().enumerate() {
            let comma = if i + 1 < TOY_PROMPTS.len() { "," } else { "" };
            let _ = writeln!(text, "'{p}'.format(unique_token, class_token){comma}");
        }
        text.push_str("]\n");
    }
    text
}

/// Writes the world's DreamBench folder to `dir` (which must not exist): the class file, one
/// folder of PNG reference renders per subject, and `subjects.yaml` with each subject's parts.
/// The folder is assembled beside `dir` and renamed into place. Returns the renders, subject by
/// subject in the world's order.
pub fn write_dreambench(world: &ToyWorld, dir: &Path) -> Result<Vec<Vec<RgbImage>>> {
    create_folder_beside(dir, "folder", |tmp| {
        std::fs::write(tmp.join(CLASS_FILE), class_file(world))
            .with_context(|| format!("cannot write {}", tmp.join(CLASS_FILE).display()))?;
        let mut records = Vec::new();
        let mut renders = Vec::new();
        for subject in world.subjects() {
            let folder = tmp.join(&subject.name);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
            let images: Vec<RgbImage> = world
                .reference_scenes(subject)
                .iter()
                .map(|scene| world.render(scene))
                .collect();
            for (i, image) in images.iter().enumerate() {
                let path = folder.join(format!("{i:02}.png"));
                image
                    .save_with_format(&path, image::ImageFormat::Png)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let c = &subject.composite;
            records.push(SubjectRecord {
                name: &subject.name,
                class: c.class.word(),
                colour: subject.colour.word(),
                pattern: subject.pattern.word(),
                shapes: c.shapes.map(|s| s.word()),
                part_colours: c.colours.map(|c| c.word()),
                references: images.len(),
            });
            renders.push(images);
        }
        let yaml = serde_yaml::to_string(&records)?;
        std::fs::write(
            tmp.join("subjects.yaml"),
            format!(
                "# The toy world's held-out subjects (seed {}, {} px), written by `trainer toy-data`.\n{yaml}",
                world.config().seed,
                world.config().resolution
            ),
        )?;
        Ok(renders)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dreambench::DreamBench;
    use crate::toy::{ToyWorld, ToyWorldConfig};

    #[test]
    fn the_folder_reads_as_dreambench() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("toy");
        let renders = write_dreambench(&world, &dir).unwrap();
        let bench = DreamBench::open(&dir).unwrap();
        assert_eq!(bench.subjects.len(), 30);
        assert_eq!(bench.object_prompts.len(), 25);
        let mut total = 0;
        for (s, toy) in bench.subjects.iter().zip(world.subjects()) {
            assert_eq!(s.name, toy.name);
            assert_eq!(s.class, toy.class().word());
            assert!(!s.live);
            let prompts = bench.prompts(s, "<new1>");
            assert_eq!(prompts.len(), 25);
            assert_eq!(prompts[18].text, format!("a red <new1> {}", s.class));
            let photos = bench.references(s).unwrap();
            assert_eq!(photos.len(), world.reference_scenes(toy).len());
            for (photo, scene) in photos.iter().zip(world.reference_scenes(toy)) {
                assert_eq!(
                    photo.image,
                    world.render(&scene),
                    "{}",
                    photo.path.display()
                );
            }
            total += photos.len();
        }
        assert_eq!(total, renders.iter().map(Vec::len).sum::<usize>());
        let yaml = std::fs::read_to_string(dir.join("subjects.yaml")).unwrap();
        assert!(yaml.contains("name: medal_01"), "{yaml}");

        let err = write_dreambench(&world, &dir).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        // Nothing half-written is left beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}

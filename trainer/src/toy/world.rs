//! The toy world: its settings, the held-out subjects, and the infinite captioned dataset the
//! toy models pre-train on (item `i` is drawn from its own key, so any item costs the same).

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::caption::Description;
use super::render::render;
use super::rng::ToyRng;
use super::scene::{
    sample_backdrop, sample_composite, sample_scene, Noun, Object, Placement, Scene,
};
use super::subjects::ToySubject;
use super::vocab::{Class, Colour, Finish, Pattern, Position, Rotation, Size};

/// Keys of the independent random streams.
const SCENES: u64 = 1;
const CAPTIONS: u64 = 2;
const SUBJECTS: u64 = 3;
const NOVEL_SCENES: u64 = 4;

/// The toy world's settings (what `pretrain-toy` records in its manifest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyWorldConfig {
    /// Seed of everything: subjects, scenes, captions.
    pub seed: u64,
    /// Image side in pixels.
    pub resolution: u32,
    /// Held-out subjects per composite class (three classes).
    pub subjects_per_class: usize,
    /// Share of captions that name every non-default attribute; the rest leave some out.
    pub full_caption_share: f64,
}

impl Default for ToyWorldConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            resolution: 64,
            subjects_per_class: 10,
            full_caption_share: 0.5,
        }
    }
}

/// One captioned training image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What is drawn.
    pub scene: Scene,
    /// Its caption (full or partial).
    pub caption: String,
    /// The drawing.
    pub image: RgbImage,
}

/// The world: settings and the held-out subjects they give.
#[derive(Debug, Clone)]
pub struct ToyWorld {
    config: ToyWorldConfig,
    subjects: Vec<ToySubject>,
}

impl ToyWorld {
    /// The world of `config`; its subjects follow from the seed.
    pub fn new(config: ToyWorldConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (16..=1024).contains(&config.resolution),
            "toy world resolution {} is out of range (16..=1024 pixels)",
            config.resolution
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&config.full_caption_share),
            "full_caption_share {} is not a share in [0, 1]",
            config.full_caption_share
        );
        let mut rng = ToyRng::keyed(config.seed, SUBJECTS, 0);
        let mut subjects: Vec<ToySubject> = Vec::new();
        for class in Class::ALL {
            let mut number = 1;
            while number <= config.subjects_per_class {
                // Subjects carry a pattern, like the emblems the issue describes, and differ
                // from each other in structure, not only in colour.
                let colour = rng.pick(Colour::ALL);
                let pattern = rng.pick(&[Pattern::Striped, Pattern::Dotted, Pattern::Checkered]);
                let composite = sample_composite(&mut rng, *class, colour);
                if subjects
                    .iter()
                    .any(|s| s.composite.same_structure(&composite))
                {
                    continue;
                }
                subjects.push(ToySubject {
                    name: format!("{}_{number:02}", class.word()),
                    index: subjects.len(),
                    composite,
                    colour,
                    pattern,
                });
                number += 1;
            }
        }
        Ok(Self { config, subjects })
    }

    /// The settings.
    pub fn config(&self) -> &ToyWorldConfig {
        &self.config
    }

    /// The held-out subjects, class by class.
    pub fn subjects(&self) -> &[ToySubject] {
        &self.subjects
    }

    /// Whether an object shares a held-out subject's structure (class and shapes); such
    /// objects never appear in the pre-training data.
    pub fn is_held_out(&self, object: &Object) -> bool {
        let Noun::Composite(c) = object.noun else {
            return false;
        };
        self.subjects.iter().any(|s| s.composite.same_structure(&c))
    }

    /// Scene `index` of the pre-training data.
    pub fn scene(&self, index: u64) -> Scene {
        let mut rng = ToyRng::keyed(self.config.seed, SCENES, index);
        sample_scene(&mut rng, &|o| self.is_held_out(o))
    }

    /// The caption of scene `index`: full or partial, as the world's share says.
    pub fn caption(&self, index: u64, scene: &Scene) -> String {
        let mut rng = ToyRng::keyed(self.config.seed, CAPTIONS, index);
        if rng.chance(self.config.full_caption_share) {
            Description::full(scene).to_string()
        } else {
            Description::partial(scene, &mut rng).to_string()
        }
    }

    /// Item `index` of the pre-training data: scene, caption and image.
    pub fn sample(&self, index: u64) -> Sample {
        let scene = self.scene(index);
        Sample {
            caption: self.caption(index, &scene),
            image: self.render(&scene),
            scene,
        }
    }

    /// Draws a scene at the world's resolution.
    pub fn render(&self, scene: &Scene) -> RgbImage {
        render(scene, self.config.resolution)
    }

    /// The subject's reference scenes (4 to 6): the subject upright and matte, medium or
    /// large, alone somewhere on varied backgrounds.
    pub fn reference_scenes(&self, subject: &ToySubject) -> Vec<Scene> {
        let mut rng = ToyRng::keyed(self.config.seed, SUBJECTS, 1 + subject.index as u64);
        let count = 4 + rng.below(3);
        (0..count)
            .map(|_| subject_scene(subject, &mut rng))
            .collect()
    }

    /// `count` more scenes of the subject, drawn as its references are from a stream of their
    /// own, none a reference's scene or another's: how the subject truly looks in scenes no fit
    /// saw (to probe what a model or a discriminator learned of it).
    pub fn novel_scenes(&self, subject: &ToySubject, count: usize) -> Vec<Scene> {
        let mut rng = ToyRng::keyed(self.config.seed, NOVEL_SCENES, 1 + subject.index as u64);
        let mut seen = self.reference_scenes(subject);
        let mut novel = Vec::with_capacity(count);
        while novel.len() < count {
            let scene = subject_scene(subject, &mut rng);
            if !seen.contains(&scene) {
                seen.push(scene);
                novel.push(scene);
            }
        }
        novel
    }
}

/// A scene of `subject` upright and matte, medium or large, alone somewhere on a backdrop
/// without its base colour.
fn subject_scene(subject: &ToySubject, rng: &mut ToyRng) -> Scene {
    let mut backdrop;
    loop {
        backdrop = sample_backdrop(rng);
        if !backdrop.colours().contains(&subject.colour) {
            break;
        }
    }
    let size = rng.pick(&[Size::Medium, Size::Large]);
    let position = rng.pick(Position::ALL);
    Scene {
        backdrop,
        object: subject.object(size, Rotation::Upright, Finish::Matte),
        placement: Placement::Alone(position),
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::toy::subjects::class_file;

    fn digest(world: &ToyWorld) -> String {
        let mut h = Sha256::new();
        for i in 0..32 {
            let s = world.sample(i);
            h.update(s.caption.as_bytes());
            h.update(s.image.as_raw());
        }
        h.update(class_file(world).as_bytes());
        for subject in world.subjects() {
            for scene in world.reference_scenes(subject) {
                h.update(world.render(&scene).as_raw());
            }
        }
        runtime::model_files::hex(&h.finalize())
    }

    /// The committed toy weights were trained on exactly this world: if this digest changes,
    /// the world changed, and every toy model must be pre-trained again. Platform maths
    /// differences would show here too.
    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        let again = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        let d = digest(&world);
        assert_eq!(d, digest(&again));
        assert_eq!(
            d,
            "d79f779ec2ae30bdf0a22b1e62a32eb26b916c447cd2383f59023a9dd20979b4"
        );
        let other = ToyWorld::new(ToyWorldConfig {
            seed: 1,
            ..ToyWorldConfig::default()
        })
        .unwrap();
        assert_ne!(d, digest(&other));
        // Item i does not depend on the items before it being drawn.
        assert_eq!(world.sample(1000).image, again.sample(1000).image);
    }

    /// Novel scenes show the same subject as the references, on backdrops without its colour,
    /// in none of the references' scenes and no scene twice; the same seed draws the same ones.
    #[test]
    fn novel_scenes_show_the_subject_in_scenes_of_their_own() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        for s in world.subjects() {
            let references = world.reference_scenes(s);
            let novel = world.novel_scenes(s, 8);
            assert_eq!(novel.len(), 8);
            assert_eq!(novel, world.novel_scenes(s, 8), "{}", s.name);
            for n in &novel {
                assert_eq!(n.object.noun, references[0].object.noun, "{}", s.name);
                assert!(!n.backdrop.colours().contains(&s.colour), "{}", s.name);
                assert!(!references.contains(n), "{}: a reference scene", s.name);
                assert_eq!(novel.iter().filter(|m| *m == n).count(), 1, "{}", s.name);
            }
        }
    }

    #[test]
    fn held_out_subjects_never_appear_in_pre_training_data() {
        let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
        assert_eq!(world.subjects().len(), 30);
        let mut composites = 0;
        for i in 0..5000 {
            let scene = world.scene(i);
            for (o, _) in scene.placed_objects() {
                assert!(!world.is_held_out(&o), "item {i}");
                if let Noun::Composite(c) = o.noun {
                    composites += 1;
                    assert!(world
                        .subjects()
                        .iter()
                        .all(|s| !s.composite.same_structure(&c)));
                }
            }
        }
        // The classes themselves are well represented, as "dog" is for DreamBench's dogs.
        assert!(composites > 1500, "{composites}");
        for (i, s) in world.subjects().iter().enumerate() {
            let references = world.reference_scenes(s);
            assert!((4..=6).contains(&references.len()), "{}", s.name);
            for r in &references {
                assert!(world.is_held_out(&r.object));
                assert!(!r.backdrop.colours().contains(&s.colour));
            }
            for t in &world.subjects()[i + 1..] {
                assert!(s.name != t.name && !s.composite.same_structure(&t.composite));
            }
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let err = ToyWorld::new(ToyWorldConfig {
            resolution: 8,
            ..ToyWorldConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("resolution 8"), "{err}");
        let err = ToyWorld::new(ToyWorldConfig {
            full_caption_share: 1.5,
            ..ToyWorldConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("full_caption_share 1.5"), "{err}");
    }
}

//! The DreamBench dataset (google/dreambooth's `dataset/`): one folder of reference photos per
//! subject, and `prompts_and_classes.txt` with each subject's class and the two prompt lists
//! (25 object prompts, 25 live-subject prompts) as Python `format` templates, `{0}` the unique
//! token and `{1}` the class.
//!
//! The file does not mark which subjects are "live": DreamBooth's protocol gives the live list to
//! its cats and dogs, so a subject is live when its class is `cat` or `dog`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::fit::data::{load_photos, Photo};

/// Classes whose subjects take the live-subject prompt list.
pub const LIVE_CLASSES: [&str; 2] = ["cat", "dog"];

/// The class file's name.
pub const CLASS_FILE: &str = "prompts_and_classes.txt";

/// One subject: its folder name, class noun and prompt list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The folder name, e.g. `dog2`.
    pub name: String,
    /// The class noun, e.g. `dog`.
    pub class: String,
    /// Whether the live-subject prompts apply (cats and dogs).
    pub live: bool,
}

/// One evaluation prompt, with and without the modifier token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalPrompt {
    /// What the model is given, e.g. "a <new1> dog in the jungle".
    pub text: String,
    /// What CLIP-T compares with: the same prompt without the modifier token ("a dog in the
    /// jungle").
    pub clip_text: String,
}

/// A DreamBench folder, parsed and checked.
#[derive(Debug, Clone)]
pub struct DreamBench {
    /// The folder holding the subject folders and the class file.
    pub dir: PathBuf,
    /// Every subject of the class file, in its order.
    pub subjects: Vec<Subject>,
    /// The object prompt templates.
    pub object_prompts: Vec<String>,
    /// The live-subject prompt templates.
    pub live_prompts: Vec<String>,
}

/// Fills a `{0} {1}` template; an empty token leaves no double space behind.
pub fn fill(template: &str, token: &str, class: &str) -> String {
    let text = template.replace("{0}", token).replace("{1}", class);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The quoted template of a prompt-list line such as `'a {0} {1} in the snow'.format(...)`.
fn quoted(line: &str) -> Option<String> {
    let quote = line.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &line[1..];
    rest.find(quote).map(|end| rest[..end].to_string())
}

/// Parses the class file's text (`what` names it in errors).
fn parse(text: &str, what: &str) -> Result<(Vec<Subject>, Vec<String>, Vec<String>)> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Classes,
        Object,
        Live,
    }
    let mut section = Section::None;
    let (mut subjects, mut object, mut live) = (Vec::new(), Vec::new(), Vec::new());
    for raw in text.lines() {
        let line = raw.trim();
        let lower = line.to_ascii_lowercase();
        if lower == "classes" {
            section = Section::Classes;
        } else if lower.starts_with("object prompts") {
            section = Section::Object;
        } else if lower.starts_with("live subject prompts") {
            section = Section::Live;
        } else if lower == "prompts" {
            section = Section::None;
        } else if line.is_empty() || lower == "subject_name,class" {
            continue;
        } else if section == Section::Classes {
            let (name, class) = line
                .split_once(',')
                .with_context(|| format!("{what}: class line {line:?} is not `subject,class`"))?;
            let class = class.trim().to_string();
            subjects.push(Subject {
                name: name.trim().to_string(),
                live: LIVE_CLASSES.contains(&class.as_str()),
                class,
            });
        } else if let Some(template) = quoted(line) {
            match section {
                Section::Object => object.push(template),
                Section::Live => live.push(template),
                _ => {}
            }
        }
    }
    ensure!(
        !subjects.is_empty(),
        "{what} lists no subjects (expected a `Classes` section of `subject_name,class` lines)"
    );
    ensure!(
        !object.is_empty() && !live.is_empty(),
        "{what} lacks the object or live-subject prompt list"
    );
    for t in object.iter().chain(&live) {
        ensure!(
            t.contains("{0}") && t.contains("{1}"),
            "{what}: prompt {t:?} lacks the {{0}} (token) or {{1}} (class) placeholder"
        );
    }
    Ok((subjects, object, live))
}

impl DreamBench {
    /// Opens a DreamBench folder: the one holding `prompts_and_classes.txt` and the subject
    /// folders, or its parent with `dataset/` inside (a clone of google/dreambooth). Every
    /// subject of the class file must have a folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let dir =
            if !dir.join(CLASS_FILE).is_file() && dir.join("dataset").join(CLASS_FILE).is_file() {
                dir.join("dataset")
            } else {
                dir.to_path_buf()
            };
        let file = dir.join(CLASS_FILE);
        if !dir.is_dir() {
            bail!("DreamBench folder {} not found", dir.display());
        }
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "{} has no readable {CLASS_FILE}: expected a folder laid out like google/dreambooth's dataset/ (one folder per subject and {CLASS_FILE})",
                dir.display()
            )
        })?;
        let (subjects, object_prompts, live_prompts) = parse(&text, &file.display().to_string())?;
        for s in &subjects {
            let folder = dir.join(&s.name);
            ensure!(
                folder.is_dir(),
                "subject {:?} of {} has no folder {}",
                s.name,
                file.display(),
                folder.display()
            );
        }
        Ok(Self {
            dir,
            subjects,
            object_prompts,
            live_prompts,
        })
    }

    /// The subject called `name`, or an error listing the known ones.
    pub fn subject(&self, name: &str) -> Result<&Subject> {
        self.subjects
            .iter()
            .find(|s| s.name == name)
            .with_context(|| {
                format!(
                    "no subject {name:?} in {} (known: {})",
                    self.dir.join(CLASS_FILE).display(),
                    self.subjects
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// The subject's prompt templates: the live list for cats and dogs, else the object list.
    pub fn templates(&self, subject: &Subject) -> &[String] {
        if subject.live {
            &self.live_prompts
        } else {
            &self.object_prompts
        }
    }

    /// The subject's prompts with `token` as the modifier.
    pub fn prompts(&self, subject: &Subject, token: &str) -> Vec<EvalPrompt> {
        self.templates(subject)
            .iter()
            .map(|t| EvalPrompt {
                text: fill(t, token, &subject.class),
                clip_text: fill(t, "", &subject.class),
            })
            .collect()
    }

    /// The subject's folder.
    pub fn folder(&self, subject: &Subject) -> PathBuf {
        self.dir.join(&subject.name)
    }

    /// The subject's reference photos, loaded (EXIF applied, RGB); an empty or unreadable
    /// folder is an error naming it.
    pub fn references(&self, subject: &Subject) -> Result<Vec<Photo>> {
        load_photos(&self.folder(subject))
            .with_context(|| format!("DreamBench subject {:?}", subject.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Classes\n\nsubject_name,class\nbackpack,backpack\ndog2,dog\n\nPrompts\n\nObject Prompts\n\nprompt_list = [\n'a {0} {1} in the jungle'.format(unique_token, class_token),\n'a red {0} {1}'.format(unique_token, class_token)\n]\n\nLive Subject Prompts\n\nprompt_list = [\n'a {0} {1} wearing a red hat'.format(unique_token, class_token),\n]\n";

    #[test]
    fn parses_classes_and_both_lists() {
        let (subjects, object, live) = parse(SAMPLE, "x").unwrap();
        assert_eq!(subjects.len(), 2);
        assert!(!subjects[0].live && subjects[1].live);
        assert_eq!(object, ["a {0} {1} in the jungle", "a red {0} {1}"]);
        assert_eq!(live, ["a {0} {1} wearing a red hat"]);
    }

    #[test]
    fn filling_without_the_token_leaves_single_spaces() {
        assert_eq!(
            fill("a {0} {1} in the snow", "<new1>", "dog"),
            "a <new1> dog in the snow"
        );
        assert_eq!(
            fill("a {0} {1} in the snow", "", "dog"),
            "a dog in the snow"
        );
        assert_eq!(
            fill("a red {0} {1}", "", "stuffed animal"),
            "a red stuffed animal"
        );
    }

    #[test]
    fn malformed_files_are_refused() {
        assert!(parse("Classes\nbad line\n", "f")
            .unwrap_err()
            .to_string()
            .contains("subject,class"));
        assert!(parse("Classes\na,b\n", "f")
            .unwrap_err()
            .to_string()
            .contains("prompt list"));
    }
}

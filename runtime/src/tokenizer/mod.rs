//! The CLIP tokenizer of Stable Diffusion, in pure Rust.
//!
//! Reference: transformers 5.17 `CLIPTokenizer` (backed by the tokenizers library), loaded from a
//! diffusers checkpoint's `tokenizer/` folder and called as the pipelines call it:
//! `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`. Ids are identical
//! on the project's golden prompts (see `tests/scripts/make_tokenizer_goldens.py`).
//!
//! The steps, each in its own module:
//! 1. [`added`]: split out added tokens (special tokens, `<new1>`) so they stay whole;
//! 2. [`pretokenize`]: NFC, whitespace runs to one space, lowercase, CLIP's word pattern;
//! 3. [`bpe`]: byte-level BPE with the `</w>` end-of-word mark;
//! 4. [`ClipTokenizer::encode`]: BOS, content truncated to fit, EOS, padding with the pad token
//!    (`"!"`, id 0, for SD 2.x; the end token for SD 1.x).
//!
//! transformers 4's slow (Python) `CLIPTokenizer` differs from this on rare inputs: it puts
//! spaces around CJK characters and, with `ftfy` installed, repairs mojibake.
//!
//! ```no_run
//! # fn main() -> Result<(), runtime::TokenizerError> {
//! use runtime::ClipTokenizer;
//! let mut tokenizer = ClipTokenizer::from_dir("sd-turbo/tokenizer".as_ref())?;
//! let new1 = tokenizer.add_token("<new1>")?;
//! let encoding = tokenizer.encode("a <new1> dog on the beach");
//! assert_eq!(encoding.ids.len(), 77);
//! assert_eq!(encoding.ids[2], new1);
//! # Ok(())
//! # }
//! ```

pub mod added;
pub mod bpe;
pub mod files;
pub mod pretokenize;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use added::{AddedToken, Piece};
use bpe::Bpe;
pub use files::TokenizerFiles;
use files::{ParsedFiles, SpecialSpec, SPECIAL_ROLES};
use pretokenize::{normalize, WordSplitter};

/// What can go wrong loading, extending or saving a tokenizer. Every variant names the file or
/// token at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer folder does not exist.
    #[error("tokenizer folder {} not found: pass a diffusers tokenizer/ folder (vocab.json, merges.txt, ...) or a model folder that contains one", .dir.display())]
    MissingDir {
        /// The folder asked for.
        dir: PathBuf,
    },
    /// The folder has neither vocab.json + merges.txt nor tokenizer.json.
    #[error("{}: no vocabulary found: expected vocab.json and merges.txt, or tokenizer.json", .dir.display())]
    MissingVocabulary {
        /// The folder searched.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is malformed or inconsistent.
    #[error("{file}: {message}")]
    Invalid {
        /// The file, with its folder when read from disk.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A token cannot be added.
    #[error("cannot add token {token:?}: {reason}")]
    BadToken {
        /// The token asked for.
        token: String,
        /// Why not, and what to do instead.
        reason: String,
    },
}

/// The result of [`ClipTokenizer::encode`]: fixed-length ids ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// BOS, the prompt's tokens, EOS, then pad ids up to the maximum length.
    pub ids: Vec<u32>,
    /// 1 for BOS, prompt tokens and EOS; 0 for padding.
    pub attention_mask: Vec<u32>,
    /// How many prompt tokens were cut to fit (the pipelines warn about these).
    pub truncated: usize,
}

/// The CLIP byte-level BPE tokenizer with its added tokens.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    bpe: Bpe,
    splitter: WordSplitter,
    /// Special tokens and user-added tokens, by ascending id.
    added: Vec<AddedToken>,
    specials: [SpecialSpec; 4],
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
    config: Map<String, Value>,
    id_to_token: HashMap<u32, String>,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder, or the `tokenizer/` folder of a diffusers model folder.
    pub fn from_dir(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_files(&TokenizerFiles::read_dir(path)?)
    }

    /// Builds the tokenizer from the files' text (for callers without a file system).
    pub fn from_files(files: &TokenizerFiles) -> Result<Self, TokenizerError> {
        let parsed = ParsedFiles::parse(files)?;
        let ParsedFiles {
            vocab,
            merges,
            added: explicit,
            specials,
            max_length,
            config,
        } = parsed;

        let mut id_to_token: HashMap<u32, String> =
            vocab.iter().map(|(t, &id)| (id, t.clone())).collect();
        let mut added: Vec<AddedToken> = Vec::new();
        for token in explicit {
            match id_to_token.get(&token.id) {
                Some(existing) if *existing != token.content => {
                    return Err(files.invalid(
                        files::ADDED_TOKENS_JSON,
                        format!(
                            "added token {:?} claims id {}, which belongs to {existing:?}",
                            token.content, token.id
                        ),
                    ))
                }
                _ => {}
            }
            if let Some(prev) = added.iter().find(|t| t.content == token.content) {
                if prev.id != token.id {
                    return Err(files.invalid(
                        files::ADDED_TOKENS_JSON,
                        format!(
                            "added token {:?} has two ids, {} and {}",
                            token.content, prev.id, token.id
                        ),
                    ));
                }
                continue;
            }
            id_to_token.insert(token.id, token.content.clone());
            added.push(token);
        }
        // Special tokens become added tokens too, as transformers registers them: a file's
        // explicit entry keeps its flags; otherwise roles are applied in order and the last role
        // naming a token sets its flags (SD 1.x's pad string makes "<|endoftext|>" raw-matched).
        let explicit = added.len();
        let mut special_ids = [0u32; 4];
        for (slot, (role, spec)) in special_ids
            .iter_mut()
            .zip(SPECIAL_ROLES.iter().zip(&specials))
        {
            let id = vocab
                .get(&spec.content)
                .copied()
                .or_else(|| {
                    added
                        .iter()
                        .find(|t| t.content == spec.content)
                        .map(|t| t.id)
                })
                .ok_or_else(|| {
                    files.invalid(
                        files::TOKENIZER_CONFIG_JSON,
                        format!("{role} {:?} is not in the vocabulary", spec.content),
                    )
                })?;
            *slot = id;
            match added.iter().position(|t| t.content == spec.content) {
                Some(i) if i < explicit => {}
                Some(i) => added[i].normalized = spec.normalized,
                None => added.push(AddedToken {
                    content: spec.content.clone(),
                    id,
                    normalized: spec.normalized,
                    special: true,
                }),
            }
        }
        added.sort_by_key(|t| t.id);
        let unk_id = Some(special_ids[2]);
        let bpe = Bpe::new(&vocab, &merges, unk_id).map_err(|(rank, message)| {
            files.invalid(
                files::MERGES_TXT,
                format!("merge {} ({:?}): {message}", rank + 1, merges[rank]),
            )
        })?;
        Ok(Self {
            vocab,
            merges,
            bpe,
            splitter: WordSplitter::new(),
            added,
            specials,
            bos_id: special_ids[0],
            eos_id: special_ids[1],
            pad_id: special_ids[3],
            max_length,
            config,
            id_to_token,
        })
    }

    /// Adds a modifier token such as `<new1>` with the next free id and returns that id. The
    /// token is matched case-insensitively (on normalized text) and never split.
    pub fn add_token(&mut self, token: &str) -> Result<u32, TokenizerError> {
        let bad = |reason: String| TokenizerError::BadToken {
            token: token.to_string(),
            reason,
        };
        if token.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(bad(
                "it contains whitespace; use one word such as <new1>".into()
            ));
        }
        if normalize(token) != token {
            return Err(bad(format!(
                "prompts are lowercased before added tokens are matched, so add it as {:?}",
                normalize(token)
            )));
        }
        if let Some(&id) = self.vocab.get(token) {
            return Err(bad(format!(
                "it is already in the vocabulary (id {id}); pick a token that is not, such as <new1>"
            )));
        }
        if let Some(t) = self.added.iter().find(|t| t.content == token) {
            return Err(bad(format!("it was already added (id {})", t.id)));
        }
        let id = self.next_id();
        self.added.push(AddedToken {
            content: token.to_string(),
            id,
            normalized: true,
            special: false,
        });
        self.id_to_token.insert(id, token.to_string());
        Ok(id)
    }

    fn next_id(&self) -> u32 {
        self.id_to_token.keys().max().map_or(0, |m| m + 1)
    }

    /// The prompt's token ids, without BOS/EOS, padding or truncation.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in added::split(text, &self.added, false) {
            let raw = match piece {
                Piece::Token(id) => {
                    ids.push(id);
                    continue;
                }
                Piece::Text(raw) => raw,
            };
            let normalized = normalize(raw);
            for piece in added::split(&normalized, &self.added, true) {
                match piece {
                    Piece::Token(id) => ids.push(id),
                    Piece::Text(text) => {
                        for word in self.splitter.words(text) {
                            self.bpe.encode_word(word, &mut ids);
                        }
                    }
                }
            }
        }
        ids
    }

    /// Encodes a prompt as the Stable Diffusion pipelines do: BOS, the tokens (truncated to fit),
    /// EOS, then pad ids up to [`max_length`](Self::max_length).
    pub fn encode(&self, text: &str) -> Encoding {
        let content = self.tokenize(text);
        let room = self.max_length - 2;
        let kept = content.len().min(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.eos_id);
        let used = ids.len();
        ids.resize(self.max_length, self.pad_id);
        let mut attention_mask = vec![1; used];
        attention_mask.resize(self.max_length, 0);
        Encoding {
            ids,
            attention_mask,
            truncated: content.len() - kept,
        }
    }

    /// The id of a vocabulary entry or added token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab
            .get(token)
            .copied()
            .or_else(|| self.added.iter().find(|t| t.content == token).map(|t| t.id))
    }

    /// The text of an id (`</w>` marks included, bytes in GPT-2's printable map).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(&id).map(String::as_str)
    }

    /// Tokens added after the vocabulary (not the special tokens), by ascending id.
    pub fn added_tokens(&self) -> impl Iterator<Item = &AddedToken> {
        self.added.iter().filter(|t| !t.special)
    }

    /// Number of ids: the vocabulary plus added tokens (49408 + n for CLIP).
    pub fn len(&self) -> usize {
        self.id_to_token.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.id_to_token.is_empty()
    }

    /// The fixed length of [`encode`](Self::encode)'s output (77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The begin-of-text id.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The end-of-text id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id (0, `"!"`, for SD 2.x; the end-of-text id for SD 1.x).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Writes the tokenizer folder (transformers 4 layout, which transformers 5 also loads) with
    /// the added tokens. Each file goes to a temporary name beside its target first.
    pub fn save_dir(&self, dir: &Path) -> Result<(), TokenizerError> {
        std::fs::create_dir_all(dir).map_err(|source| TokenizerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut base: Vec<(&String, &u32)> = self.vocab.iter().collect();
        base.sort_by_key(|&(_, id)| *id);
        // vocab.json in id order, as Hugging Face writes it.
        let mut vocab = String::with_capacity(base.len() * 16);
        vocab.push('{');
        for (i, (token, id)) in base.iter().enumerate() {
            if i > 0 {
                vocab.push_str(", ");
            }
            vocab.push_str(&Value::String((*token).clone()).to_string());
            vocab.push_str(": ");
            vocab.push_str(&id.to_string());
        }
        vocab.push('}');
        files::write_atomic(&dir.join(files::VOCAB_JSON), vocab.as_bytes())?;

        let mut merges = String::from("#version: 0.2\n");
        for (a, b) in &self.merges {
            merges.push_str(a);
            merges.push(' ');
            merges.push_str(b);
            merges.push('\n');
        }
        files::write_atomic(&dir.join(files::MERGES_TXT), merges.as_bytes())?;

        let mut special_map = Map::new();
        let mut config = self.config.clone();
        for (role, spec) in SPECIAL_ROLES.iter().zip(&self.specials) {
            let token = files::special_token_json(spec);
            special_map.insert(role.to_string(), token.clone());
            config.insert(role.to_string(), token);
        }
        let decoder: Map<String, Value> = self
            .added
            .iter()
            .map(|t| {
                (
                    t.id.to_string(),
                    files::added_token_json(&t.content, t.normalized, t.special),
                )
            })
            .collect();
        config.insert("added_tokens_decoder".into(), Value::Object(decoder));
        config.insert("model_max_length".into(), Value::from(self.max_length));
        config.insert("tokenizer_class".into(), Value::from("CLIPTokenizer"));
        // Keys that describe where a file came from would be wrong in the copy.
        for stale in ["name_or_path", "special_tokens_map_file", "tokenizer_file"] {
            config.remove(stale);
        }
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
        files::write_atomic(
            &dir.join(files::SPECIAL_TOKENS_MAP_JSON),
            pretty(&Value::Object(special_map)).as_bytes(),
        )?;
        files::write_atomic(
            &dir.join(files::TOKENIZER_CONFIG_JSON),
            pretty(&Value::Object(config)).as_bytes(),
        )?;
        let added: Map<String, Value> = self
            .added_tokens()
            .map(|t| (t.content.clone(), Value::from(t.id)))
            .collect();
        let added_path = dir.join(files::ADDED_TOKENS_JSON);
        if added.is_empty() {
            // A stale file from an earlier save would bring back tokens this one does not have.
            match std::fs::remove_file(&added_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(TokenizerError::Io {
                        path: added_path,
                        source: e,
                    })
                }
                _ => {}
            }
        } else {
            files::write_atomic(&added_path, pretty(&Value::Object(added)).as_bytes())?;
        }
        // A tokenizer.json left from the source would shadow these files and lack new tokens.
        let stale = dir.join(files::TOKENIZER_JSON);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|source| TokenizerError::Io {
                path: stale,
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

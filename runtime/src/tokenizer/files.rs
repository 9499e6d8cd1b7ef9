//! Reading and writing the Hugging Face `tokenizer/` folder of a diffusers checkpoint.
//!
//! Read: `vocab.json` + `merges.txt` (what Stable Diffusion checkpoints ship), or `tokenizer.json`
//! (what transformers 5 writes), plus `special_tokens_map.json`, `tokenizer_config.json` (its
//! `added_tokens_decoder`) and `added_tokens.json` when present. Written: the transformers 4
//! layout, which both transformers 4 and 5 load, with the added tokens in `added_tokens.json` and
//! `added_tokens_decoder`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::added::AddedToken;
use super::TokenizerError;

/// File names inside a tokenizer folder.
pub const VOCAB_JSON: &str = "vocab.json";
/// BPE merges, one pair a line after a `#version` header.
pub const MERGES_TXT: &str = "merges.txt";
/// The single-file tokenizer of the tokenizers library.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// BOS/EOS/pad/unknown tokens.
pub const SPECIAL_TOKENS_MAP_JSON: &str = "special_tokens_map.json";
/// transformers' tokenizer settings.
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// Tokens added after the vocabulary, by id.
pub const ADDED_TOKENS_JSON: &str = "added_tokens.json";

/// The text of a tokenizer folder's files, read from disk or handed over from memory (a web page
/// fetches them). `origin` is used only to name files in errors.
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles {
    /// Where the files came from, for error messages.
    pub origin: Option<PathBuf>,
    /// `vocab.json`.
    pub vocab_json: Option<String>,
    /// `merges.txt`.
    pub merges_txt: Option<String>,
    /// `tokenizer.json`; when present it supplies the vocabulary, merges and added tokens.
    pub tokenizer_json: Option<String>,
    /// `special_tokens_map.json`.
    pub special_tokens_map_json: Option<String>,
    /// `tokenizer_config.json`.
    pub tokenizer_config_json: Option<String>,
    /// `added_tokens.json`.
    pub added_tokens_json: Option<String>,
}

impl TokenizerFiles {
    /// Reads a tokenizer folder, or the `tokenizer/` folder inside a diffusers model folder.
    pub fn read_dir(path: &Path) -> Result<Self, TokenizerError> {
        if !path.is_dir() {
            return Err(TokenizerError::MissingDir {
                dir: path.to_path_buf(),
            });
        }
        let has_vocab = |d: &Path| d.join(VOCAB_JSON).is_file() || d.join(TOKENIZER_JSON).is_file();
        let dir = if !has_vocab(path) && has_vocab(&path.join("tokenizer")) {
            path.join("tokenizer")
        } else {
            path.to_path_buf()
        };
        let read = |name: &str| -> Result<Option<String>, TokenizerError> {
            let file = dir.join(name);
            match fs::read_to_string(&file) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenizerError::Io { path: file, source }),
            }
        };
        let files = Self {
            vocab_json: read(VOCAB_JSON)?,
            merges_txt: read(MERGES_TXT)?,
            tokenizer_json: read(TOKENIZER_JSON)?,
            special_tokens_map_json: read(SPECIAL_TOKENS_MAP_JSON)?,
            tokenizer_config_json: read(TOKENIZER_CONFIG_JSON)?,
            added_tokens_json: read(ADDED_TOKENS_JSON)?,
            origin: Some(dir.clone()),
        };
        if files.tokenizer_json.is_none()
            && (files.vocab_json.is_none() || files.merges_txt.is_none())
        {
            return Err(TokenizerError::MissingVocabulary { dir });
        }
        Ok(files)
    }

    /// The display name of file `name`: its full path when the files came from disk.
    pub(crate) fn name(&self, name: &str) -> String {
        match &self.origin {
            Some(dir) => dir.join(name).display().to_string(),
            None => name.to_string(),
        }
    }

    pub(crate) fn invalid(&self, name: &str, message: impl Into<String>) -> TokenizerError {
        TokenizerError::Invalid {
            file: self.name(name),
            message: message.into(),
        }
    }

    fn parse_json(&self, name: &str, text: &str) -> Result<Value, TokenizerError> {
        serde_json::from_str(text).map_err(|e| self.invalid(name, format!("malformed JSON: {e}")))
    }
}

/// How a special token is given in the config: its text and whether it matches normalized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialSpec {
    /// The token's text.
    pub content: String,
    /// `normalized` flag; a plain string in the config means `false`.
    pub normalized: bool,
}

/// The four special-token roles, in the order transformers registers them.
pub const SPECIAL_ROLES: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// Defaults of transformers' `CLIPTokenizer` for the roles above (SD 1.x pads with EOS).
const SPECIAL_DEFAULTS: [&str; 4] = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|endoftext|>",
    "<|endoftext|>",
];

/// Everything parsed from a tokenizer folder, before the tokenizer is assembled.
#[derive(Debug, Clone)]
pub struct ParsedFiles {
    /// The base vocabulary.
    pub vocab: HashMap<String, u32>,
    /// BPE merges in rank order.
    pub merges: Vec<(String, String)>,
    /// Added tokens with explicit flags (tokenizer.json, added_tokens_decoder, added_tokens.json).
    pub added: Vec<AddedToken>,
    /// Special tokens by role, in [`SPECIAL_ROLES`] order.
    pub specials: [SpecialSpec; 4],
    /// `model_max_length`.
    pub max_length: usize,
    /// `tokenizer_config.json` as read, so that unknown keys survive a rewrite.
    pub config: Map<String, Value>,
}

/// The longest sequence a CLIP text encoder takes; used when the config gives no sane length.
pub const CLIP_MAX_LENGTH: usize = 77;

impl ParsedFiles {
    /// Parses the files; every error names the file and what is wrong.
    pub fn parse(files: &TokenizerFiles) -> Result<Self, TokenizerError> {
        let config = match &files.tokenizer_config_json {
            Some(text) => match files.parse_json(TOKENIZER_CONFIG_JSON, text)? {
                Value::Object(map) => map,
                _ => return Err(files.invalid(TOKENIZER_CONFIG_JSON, "expected a JSON object")),
            },
            None => Map::new(),
        };
        let special_map = match &files.special_tokens_map_json {
            Some(text) => files.parse_json(SPECIAL_TOKENS_MAP_JSON, text)?,
            None => Value::Null,
        };

        let (vocab, merges, mut added) = match &files.tokenizer_json {
            Some(text) => parse_tokenizer_json(files, &files.parse_json(TOKENIZER_JSON, text)?)?,
            None => {
                // read_dir guarantees both; a caller building TokenizerFiles by hand may not.
                let missing = |name| files.invalid(name, "missing (needed without tokenizer.json)");
                let vocab_text = files
                    .vocab_json
                    .as_deref()
                    .ok_or_else(|| missing(VOCAB_JSON))?;
                let merges_text = files
                    .merges_txt
                    .as_deref()
                    .ok_or_else(|| missing(MERGES_TXT))?;
                let vocab = parse_vocab(
                    files,
                    VOCAB_JSON,
                    &files.parse_json(VOCAB_JSON, vocab_text)?,
                )?;
                (vocab, parse_merges(files, merges_text)?, Vec::new())
            }
        };

        if let Some(decoder) = config.get("added_tokens_decoder") {
            added.extend(parse_added_decoder(files, decoder)?);
        }
        if let Some(text) = &files.added_tokens_json {
            let value = files.parse_json(ADDED_TOKENS_JSON, text)?;
            for (content, id) in parse_vocab(files, ADDED_TOKENS_JSON, &value)? {
                added.push(AddedToken {
                    content,
                    id,
                    normalized: true,
                    special: false,
                });
            }
        }

        let specials = SPECIAL_ROLES.map(|role| special_spec(files, role, &config, &special_map));
        let specials = {
            let [a, b, c, d] = specials;
            [a?, b?, c?, d?]
        };
        let max_length = match config.get("model_max_length").and_then(Value::as_f64) {
            // transformers stores "no limit" as a huge float; CLIP encoders take 77 positions.
            Some(n) if (2.0..=1.0e6).contains(&n) => n as usize,
            Some(n) if n < 2.0 => {
                return Err(files.invalid(
                    TOKENIZER_CONFIG_JSON,
                    format!("model_max_length {n} leaves no room for the start and end tokens"),
                ))
            }
            _ => CLIP_MAX_LENGTH,
        };
        Ok(Self {
            vocab,
            merges,
            added,
            specials,
            max_length,
            config,
        })
    }
}

fn parse_vocab(
    files: &TokenizerFiles,
    name: &str,
    value: &Value,
) -> Result<HashMap<String, u32>, TokenizerError> {
    let map = value
        .as_object()
        .ok_or_else(|| files.invalid(name, "expected an object mapping tokens to ids"))?;
    let mut vocab = HashMap::with_capacity(map.len());
    let mut seen = HashMap::with_capacity(map.len());
    for (token, id) in map {
        let id = id
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                files.invalid(name, format!("token {token:?} has id {id}, not a u32"))
            })?;
        if let Some(other) = seen.insert(id, token) {
            return Err(files.invalid(
                name,
                format!("tokens {other:?} and {token:?} share id {id}"),
            ));
        }
        vocab.insert(token.clone(), id);
    }
    Ok(vocab)
}

fn parse_merges(
    files: &TokenizerFiles,
    text: &str,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(files.invalid(
                    MERGES_TXT,
                    format!(
                        "line {}: expected two symbols separated by one space, got {line:?}",
                        i + 1
                    ),
                ))
            }
        }
    }
    Ok(merges)
}

type TokenizerJsonParts = (HashMap<String, u32>, Vec<(String, String)>, Vec<AddedToken>);

fn parse_tokenizer_json(
    files: &TokenizerFiles,
    root: &Value,
) -> Result<TokenizerJsonParts, TokenizerError> {
    let model = root
        .get("model")
        .ok_or_else(|| files.invalid(TOKENIZER_JSON, "no \"model\" entry"))?;
    if let Some(kind) = model.get("type").and_then(Value::as_str) {
        if kind != "BPE" {
            return Err(files.invalid(TOKENIZER_JSON, format!("model type {kind:?} is not BPE")));
        }
    }
    let vocab = parse_vocab(
        files,
        TOKENIZER_JSON,
        model.get("vocab").unwrap_or(&Value::Null),
    )?;
    let mut merges = Vec::new();
    for (i, merge) in model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| files.invalid(TOKENIZER_JSON, "model.merges is not a list"))?
        .iter()
        .enumerate()
    {
        // Two layouts exist: "a b" strings (tokenizers < 0.20) and ["a", "b"] pairs.
        let pair = match merge {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(parts) => match parts.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            files.invalid(
                TOKENIZER_JSON,
                format!("model.merges[{i}] is not a pair: {merge}"),
            )
        })?);
    }
    let mut added = Vec::new();
    if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
        for entry in list {
            let id = entry
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok());
            let Some(id) = id else {
                return Err(files.invalid(
                    TOKENIZER_JSON,
                    format!("added token without a valid id: {entry}"),
                ));
            };
            added.push(added_token_entry(files, TOKENIZER_JSON, id, entry)?);
        }
    }
    Ok((vocab, merges, added))
}

fn parse_added_decoder(
    files: &TokenizerFiles,
    decoder: &Value,
) -> Result<Vec<AddedToken>, TokenizerError> {
    let map = decoder.as_object().ok_or_else(|| {
        files.invalid(
            TOKENIZER_CONFIG_JSON,
            "added_tokens_decoder is not an object",
        )
    })?;
    map.iter()
        .map(|(id, entry)| {
            let id = id.parse::<u32>().map_err(|_| {
                files.invalid(
                    TOKENIZER_CONFIG_JSON,
                    format!("added_tokens_decoder key {id:?} is not an id"),
                )
            })?;
            added_token_entry(files, TOKENIZER_CONFIG_JSON, id, entry)
        })
        .collect()
}

/// Reads one `{content, normalized, special, lstrip, rstrip, single_word}` entry.
fn added_token_entry(
    files: &TokenizerFiles,
    name: &str,
    id: u32,
    entry: &Value,
) -> Result<AddedToken, TokenizerError> {
    let content = entry
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| files.invalid(name, format!("added token {id} has no content")))?;
    let flag = |key: &str| entry.get(key).and_then(Value::as_bool);
    for key in ["lstrip", "rstrip", "single_word"] {
        if flag(key) == Some(true) {
            return Err(files.invalid(
                name,
                format!(
                    "added token {content:?} sets {key}, which this tokenizer does not support"
                ),
            ));
        }
    }
    let special = flag("special").unwrap_or(false);
    Ok(AddedToken {
        content: content.to_string(),
        id,
        normalized: flag("normalized").unwrap_or(!special),
        special,
    })
}

/// A special token's spec from special_tokens_map.json, else tokenizer_config.json, else the
/// CLIPTokenizer default. transformers 5 lets the map win when the two disagree.
fn special_spec(
    files: &TokenizerFiles,
    role: &str,
    config: &Map<String, Value>,
    special_map: &Value,
) -> Result<SpecialSpec, TokenizerError> {
    let index = SPECIAL_ROLES.iter().position(|r| *r == role).unwrap_or(0);
    let (value, name) = match (special_map.get(role), config.get(role)) {
        (Some(v), _) if !v.is_null() => (v, SPECIAL_TOKENS_MAP_JSON),
        (_, Some(v)) if !v.is_null() => (v, TOKENIZER_CONFIG_JSON),
        _ => {
            return Ok(SpecialSpec {
                content: SPECIAL_DEFAULTS[index].to_string(),
                normalized: false,
            })
        }
    };
    match value {
        Value::String(s) => Ok(SpecialSpec {
            content: s.clone(),
            normalized: false,
        }),
        Value::Object(o) => match o.get("content").and_then(Value::as_str) {
            Some(content) => Ok(SpecialSpec {
                content: content.to_string(),
                normalized: o.get("normalized").and_then(Value::as_bool).unwrap_or(true),
            }),
            None => Err(files.invalid(name, format!("{role} has no \"content\""))),
        },
        other => Err(files.invalid(
            name,
            format!("{role} is neither a string nor a token: {other}"),
        )),
    }
}

/// The JSON form transformers writes for a token with flags.
pub fn added_token_json(content: &str, normalized: bool, special: bool) -> Value {
    json!({
        "content": content,
        "lstrip": false,
        "normalized": normalized,
        "rstrip": false,
        "single_word": false,
        "special": special,
    })
}

/// A special token as transformers 4 writes it in `special_tokens_map.json` and
/// `tokenizer_config.json`: the `__type` tag is what makes transformers read the dict as a token.
pub fn special_token_json(spec: &SpecialSpec) -> Value {
    json!({
        "__type": "AddedToken",
        "content": spec.content,
        "lstrip": false,
        "normalized": spec.normalized,
        "rstrip": false,
        "single_word": false,
    })
}

/// Writes `bytes` to `path` through a temporary file beside it, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let io = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    fs::write(&tmp, bytes).map_err(io)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(e)
    })
}

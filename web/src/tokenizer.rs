//! The CLIP tokenizer, for JavaScript.

use runtime::{ClipTokenizer, TokenizerFiles};
use wasm_bindgen::prelude::*;

/// The CLIP tokenizer of a model folder, with its learned tokens.
#[wasm_bindgen]
pub struct Tokenizer {
    pub(crate) inner: ClipTokenizer,
}

/// A prompt's ids and how many of its tokens did not fit.
#[wasm_bindgen]
pub struct EncodedPrompt {
    ids: Vec<i64>,
    truncated: usize,
}

#[wasm_bindgen]
impl EncodedPrompt {
    /// The padded ids, as the text encoder's int64 `input_ids`.
    #[wasm_bindgen(getter)]
    pub fn ids(&self) -> Vec<i64> {
        self.ids.clone()
    }

    /// Prompt tokens cut to fit the encoder's length (the page warns about these).
    #[wasm_bindgen(getter)]
    pub fn truncated(&self) -> usize {
        self.truncated
    }
}

#[wasm_bindgen]
impl Tokenizer {
    /// Builds the tokenizer from the text of `vocab.json`, `merges.txt` and, when the bundle has
    /// them, `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        vocab_json: String,
        merges_txt: String,
        tokenizer_config_json: Option<String>,
        special_tokens_map_json: Option<String>,
        added_tokens_json: Option<String>,
    ) -> Result<Tokenizer, JsError> {
        let files = TokenizerFiles {
            vocab_json: Some(vocab_json),
            merges_txt: Some(merges_txt),
            tokenizer_config_json,
            special_tokens_map_json,
            added_tokens_json,
            ..TokenizerFiles::default()
        };
        let inner = ClipTokenizer::from_files(&files).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Self { inner })
    }

    /// The padded ids the text encoder takes for `prompt` (as `Uint32Array`).
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        self.inner.encode(prompt).ids
    }

    /// The padded ids as int64 (`BigInt64Array`, the encoder's input type) and the number of
    /// prompt tokens that did not fit.
    #[wasm_bindgen(js_name = encodePrompt)]
    pub fn encode_prompt(&self, prompt: &str) -> EncodedPrompt {
        let e = self.inner.encode(prompt);
        EncodedPrompt {
            ids: e.ids.iter().map(|&i| i64::from(i)).collect(),
            truncated: e.truncated,
        }
    }

    /// The id of a token, if the vocabulary or the added tokens have it.
    #[wasm_bindgen(js_name = tokenId)]
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text encoder's sequence length (77).
    #[wasm_bindgen(getter, js_name = maxLength)]
    pub fn max_length(&self) -> usize {
        self.inner.max_length()
    }
}

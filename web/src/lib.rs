//! The browser side of one-step generation: wasm-bindgen bindings over the runtime core.
//!
//! The page fetches a bundle's tokenizer files and hands their text to [`Tokenizer::new`]; no
//! file system is needed. Errors cross into JavaScript as `Error` objects only at this boundary.

use runtime::{ClipTokenizer, TokenizerFiles};
use wasm_bindgen::prelude::*;

/// The CLIP tokenizer, for JavaScript.
#[wasm_bindgen]
pub struct Tokenizer {
    inner: ClipTokenizer,
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

    /// The 77 padded ids the text encoder takes for `prompt`.
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        self.inner.encode(prompt).ids
    }

    /// The id of a token, if the vocabulary or the added tokens have it.
    #[wasm_bindgen(js_name = tokenId)]
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

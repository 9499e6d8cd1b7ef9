//! Text cleanup and word splitting, as transformers' `CLIPTokenizer` (5.x) configures them.
//!
//! Normalizer: Unicode NFC, every run of whitespace replaced by one space, then each character
//! lowercased on its own (no context rules such as Greek final sigma, matching the tokenizers
//! library). Pre-tokenizer: the words are the matches of CLIP's pattern, everything between
//! matches (whitespace) dropped; then the byte-level pre-tokenizer splits each word again with
//! GPT-2's pattern. That second split changes only words that mix letters and punctuation, which
//! CLIP's pattern produces for one thing: `<|startoftext|>` and `<|endoftext|>` written in a
//! prompt when they are not matched as special tokens (they become `<|`, `endoftext`, `|>`).

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// CLIP's word pattern (from OpenAI's `simple_tokenizer.py`), applied to lowercased text.
pub const CLIP_WORD_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's pattern as the byte-level pre-tokenizer applies it, restricted to text without
/// whitespace (CLIP words have none, so the optional leading space and the whitespace
/// alternatives of the full pattern never match).
pub const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// Applies the normalizer: NFC, whitespace runs to one space, per-character lowercase.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Splits normalized text into CLIP words.
#[derive(Debug, Clone)]
pub struct WordSplitter {
    pattern: Regex,
    byte_level: Regex,
}

impl Default for WordSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl WordSplitter {
    /// Compiles CLIP's word pattern.
    pub fn new() -> Self {
        // The pattern is a constant checked by the unit tests below, so compiling cannot fail.
        let pattern = Regex::new(CLIP_WORD_PATTERN).expect("CLIP word pattern compiles");
        let byte_level = Regex::new(BYTE_LEVEL_PATTERN).expect("byte-level pattern compiles");
        Self {
            pattern,
            byte_level,
        }
    }

    /// Iterates over the words of `normalized`.
    pub fn words<'t>(&'t self, normalized: &'t str) -> impl Iterator<Item = &'t str> + 't {
        self.pattern
            .find_iter(normalized)
            .flat_map(|word| self.byte_level.find_iter(word.as_str()))
            .map(|m| m.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_runs_collapse_and_case_folds_per_character() {
        assert_eq!(normalize("A\t\n  Dog\u{3000}X"), "a dog x");
        // Per-character lowercase: a final capital sigma becomes σ, not ς.
        assert_eq!(normalize("ΣΑΣ"), "σασ");
        // NFC composes e + combining acute into é.
        assert_eq!(normalize("e\u{301}"), "\u{e9}");
    }

    #[test]
    fn words_follow_clip_pattern() {
        let s = WordSplitter::new();
        let words: Vec<_> = s.words("it's 42 dogs!! <|endoftext|>").collect();
        assert_eq!(
            words,
            ["it", "'s", "4", "2", "dogs", "!!", "<|", "endoftext", "|>"]
        );
    }
}

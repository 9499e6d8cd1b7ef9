//! Added tokens: special tokens and new modifier tokens such as `<new1>`, kept whole.
//!
//! As in the tokenizers library's `AddedVocabulary`, tokens marked `normalized: false` are found
//! first in the raw text; the rest of the text is normalized and then searched for the tokens
//! marked `normalized: true` (so `<NEW1>` finds `<new1>`). Each search takes the leftmost match,
//! and the longest one among matches that start at the same place.

use serde::{Deserialize, Serialize};

/// One added token, with the flags Hugging Face tokenizer files store for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedToken {
    /// The token's text.
    pub content: String,
    /// Its id.
    pub id: u32,
    /// Matched on normalized text (lowercased, NFC) rather than on the raw prompt.
    pub normalized: bool,
    /// A special token (BOS, EOS, pad, unknown) rather than a user-added one.
    pub special: bool,
}

/// A piece of a prompt after the added-token split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'t> {
    /// Text still to be tokenized by BPE.
    Text(&'t str),
    /// An added token, by id.
    Token(u32),
}

/// Splits `text` around the added tokens whose `normalized` flag equals `normalized`.
pub fn split<'t>(text: &'t str, tokens: &[AddedToken], normalized: bool) -> Vec<Piece<'t>> {
    let candidates: Vec<&AddedToken> = tokens
        .iter()
        .filter(|t| t.normalized == normalized && !t.content.is_empty())
        .collect();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let found = candidates
            .iter()
            .filter(|t| rest.starts_with(t.content.as_str()))
            .max_by_key(|t| t.content.len());
        match found {
            Some(token) => {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Token(token.id));
                pos += token.content.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(content: &str, id: u32, normalized: bool) -> AddedToken {
        AddedToken {
            content: content.into(),
            id,
            normalized,
            special: false,
        }
    }

    #[test]
    fn longest_match_wins_at_the_same_start() {
        let tokens = [token("<new1>", 10, true), token("<new1>x", 11, true)];
        assert_eq!(
            split("a<new1>xb<new1>", &tokens, true),
            [
                Piece::Text("a"),
                Piece::Token(11),
                Piece::Text("b"),
                Piece::Token(10)
            ]
        );
    }

    #[test]
    fn only_tokens_of_the_requested_kind_match() {
        let tokens = [token("!", 0, false), token("<new1>", 10, true)];
        assert_eq!(
            split("hi!<new1>", &tokens, false),
            [Piece::Text("hi"), Piece::Token(0), Piece::Text("<new1>")]
        );
    }
}

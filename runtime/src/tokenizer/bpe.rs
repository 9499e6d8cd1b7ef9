//! Byte-level BPE with CLIP's `</w>` end-of-word mark.
//!
//! Mirrors the `BPE` model that transformers' `CLIPTokenizer` configures in the tokenizers
//! library (`end_of_word_suffix = "</w>"`, no continuing-subword prefix, no dropout, unknown
//! symbols mapped one by one to the unknown token). Merges are applied lowest rank first; at
//! equal rank the leftmost pair wins, which is the order both CLIP's Python reference and the
//! tokenizers library use.

use std::collections::HashMap;

/// The end-of-word mark CLIP appends to the last symbol of every word.
pub const END_OF_WORD: &str = "</w>";

/// GPT-2/CLIP's reversible map from the 256 byte values to printable characters.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        // Every value is below 0x200, so it is always a valid scalar.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// One merge rule: the rank decides the order, `merged` is the id of the joined symbol.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// The BPE model: the symbol vocabulary and the ranked merge rules over symbol ids.
#[derive(Debug, Clone)]
pub struct Bpe {
    merges: HashMap<(u32, u32), Merge>,
    /// Symbol ids of each byte, without and with the end-of-word mark.
    byte_ids: [Option<u32>; 256],
    byte_ids_end: [Option<u32>; 256],
    unk_id: Option<u32>,
}

impl Bpe {
    /// Builds the model. `merges` are pairs of symbol strings in rank order; an `Err` carries
    /// the index of the first merge whose parts or result are missing from `vocab`.
    pub fn new(
        vocab: &HashMap<String, u32>,
        merges: &[(String, String)],
        unk_id: Option<u32>,
    ) -> Result<Self, (usize, String)> {
        let byte_chars = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        let mut byte_ids_end = [None; 256];
        for (b, c) in byte_chars.iter().enumerate() {
            byte_ids[b] = vocab.get(&c.to_string()).copied();
            byte_ids_end[b] = vocab.get(&format!("{c}{END_OF_WORD}")).copied();
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let id = |s: &str| {
                vocab
                    .get(s)
                    .copied()
                    .ok_or_else(|| (rank, format!("symbol {s:?} is not in the vocabulary")))
            };
            let pair = (id(left)?, id(right)?);
            let merged = id(&format!("{left}{right}"))?;
            // A repeated pair keeps its first (lowest) rank, as the tokenizers library does.
            table.entry(pair).or_insert(Merge {
                rank: rank as u32,
                merged,
            });
        }
        Ok(Self {
            merges: table,
            byte_ids,
            byte_ids_end,
            unk_id,
        })
    }

    /// Appends the ids of one pre-tokenized word (raw UTF-8, not yet byte-mapped) to `out`.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let Some(last) = bytes.len().checked_sub(1) else {
            return;
        };
        // Symbols missing from the vocabulary become the unknown token; without one they are
        // dropped, as the tokenizers library does for a BPE model without `unk_token`.
        let mut symbols: Vec<u32> = bytes
            .iter()
            .enumerate()
            .filter_map(|(i, &b)| {
                let id = if i == last {
                    self.byte_ids_end[b as usize]
                } else {
                    self.byte_ids[b as usize]
                };
                id.or(self.unk_id)
            })
            .collect();
        self.apply_merges(&mut symbols);
        out.extend_from_slice(&symbols);
    }

    fn apply_merges(&self, symbols: &mut Vec<u32>) {
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|m| (m.rank, w[0], w[1])))
                .min_by_key(|&(rank, _, _)| rank);
            let Some((rank, left, right)) = best else {
                break;
            };
            let merged = self.merges[&(left, right)].merged;
            debug_assert_eq!(self.merges[&(left, right)].rank, rank);
            // Merge every occurrence of the best pair in one left-to-right pass.
            let mut write = 0;
            let mut read = 0;
            while read < symbols.len() {
                if read + 1 < symbols.len() && symbols[read] == left && symbols[read + 1] == right {
                    symbols[write] = merged;
                    read += 2;
                } else {
                    symbols[write] = symbols[read];
                    read += 1;
                }
                write += 1;
            }
            symbols.truncate(write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_clip_symbols() {
        let table = bytes_to_unicode();
        let mut seen: Vec<char> = table.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(table[b'a' as usize], 'a');
        // Space is not printable in GPT-2's map: it becomes U+0120 'Ġ'.
        assert_eq!(table[b' ' as usize], '\u{120}');
        assert_eq!(table[0], '\u{100}');
    }

    fn toy() -> Bpe {
        let mut vocab = HashMap::new();
        for (i, s) in ["a", "b", "a</w>", "b</w>", "ab", "ab</w>", "aa", "aab</w>"]
            .iter()
            .enumerate()
        {
            vocab.insert(s.to_string(), i as u32);
        }
        let merges = [("a", "b"), ("a", "b</w>"), ("a", "a"), ("aa", "b</w>")]
            .map(|(l, r)| (l.to_string(), r.to_string()));
        Bpe::new(&vocab, &merges, None).unwrap()
    }

    #[test]
    fn merges_follow_rank_then_position() {
        let bpe = toy();
        let mut out = vec![];
        bpe.encode_word("ab", &mut out);
        assert_eq!(out, vec![5]); // "ab</w>"
        out.clear();
        // "a a a b</w>": rank 1 (a, b</w>) beats rank 2 (a, a) → a a ab</w>, then a a → aa.
        bpe.encode_word("aaab", &mut out);
        assert_eq!(out, vec![6, 5]);
    }

    #[test]
    fn missing_merge_symbol_is_reported_with_its_rank() {
        let vocab: HashMap<String, u32> = [("a".to_string(), 0)].into_iter().collect();
        let err = Bpe::new(&vocab, &[("a".into(), "z".into())], None).unwrap_err();
        assert_eq!(err.0, 0);
        assert!(err.1.contains("\"z\""));
    }
}

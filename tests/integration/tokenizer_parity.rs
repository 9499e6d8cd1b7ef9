//! The Rust CLIP tokenizer gives transformers' ids on every golden prompt.
//!
//! Goldens: `tests/fixtures/tokenizer_goldens.json`, made by
//! `tests/scripts/make_tokenizer_goldens.py` from transformers' CLIPTokenizer over the same real
//! vocabulary that setup extracts from the open-clip-torch wheel.

use std::collections::BTreeMap;

use runtime::{ClipTokenizer, TokenizerFiles};
use serde::Deserialize;
use tests::{clip_tokenizer_dir, fixture};

#[derive(Deserialize)]
struct Goldens {
    max_length: usize,
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    pad_token: String,
    pad_id: u32,
    added_tokens: BTreeMap<String, u32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    /// Input ids up to and including the end token; the rest is padding.
    ids: Vec<u32>,
    /// Prompt tokens before truncation.
    tokens: usize,
}

fn goldens() -> Goldens {
    let path = fixture("tokenizer_goldens.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The real tokenizer with the group's pad token written into both config files, as the script
/// does.
fn tokenizer_for(group: &Group) -> ClipTokenizer {
    let mut files = TokenizerFiles::read_dir(&clip_tokenizer_dir()).expect("real CLIP tokenizer");
    for text in [
        &mut files.tokenizer_config_json,
        &mut files.special_tokens_map_json,
    ] {
        let mut config: serde_json::Value =
            serde_json::from_str(text.as_deref().unwrap_or("{}")).unwrap();
        config["pad_token"] = serde_json::Value::from(group.pad_token.as_str());
        *text = Some(config.to_string());
    }
    let mut tokenizer = ClipTokenizer::from_files(&files).expect("tokenizer builds");
    // BTreeMap order is by name; add in id order, as the script did.
    let mut added: Vec<(&String, &u32)> = group.added_tokens.iter().collect();
    added.sort_by_key(|&(_, id)| *id);
    for (token, &id) in added {
        assert_eq!(
            tokenizer.add_token(token).unwrap(),
            id,
            "{}: id of {token}",
            group.name
        );
    }
    tokenizer
}

#[test]
fn ids_match_transformers_on_every_golden_prompt() {
    let goldens = goldens();
    let mut checked = 0;
    let mut failures = Vec::new();
    for group in &goldens.groups {
        let tokenizer = tokenizer_for(group);
        assert_eq!(tokenizer.pad_id(), group.pad_id, "{}: pad id", group.name);
        assert_eq!(tokenizer.max_length(), goldens.max_length);
        for case in &group.cases {
            let mut expected = case.ids.clone();
            expected.resize(goldens.max_length, group.pad_id);
            let encoding = tokenizer.encode(&case.prompt);
            let expected_mask: Vec<u32> = (0..goldens.max_length)
                .map(|i| u32::from(i < case.ids.len()))
                .collect();
            let truncated = case.tokens.saturating_sub(goldens.max_length - 2);
            if encoding.ids != expected
                || encoding.attention_mask != expected_mask
                || encoding.truncated != truncated
            {
                failures.push(format!(
                    "[{}] {:?}\n  expected {:?} (truncated {truncated})\n  got      {:?} (truncated {})",
                    group.name, case.prompt, case.ids, encoding.ids, encoding.truncated
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 300, "only {checked} golden prompts");
    assert!(
        failures.is_empty(),
        "{} of {checked} prompts differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

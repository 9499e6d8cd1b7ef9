//! Unit tests on a toy vocabulary built in memory. Parity with transformers on the real CLIP
//! vocabulary lives in the workspace's `tests/` crate.

use super::bpe::{bytes_to_unicode, END_OF_WORD};
use super::*;

/// A CLIP-shaped vocabulary: byte symbols, the same with `</w>`, a few merges, special tokens.
fn toy_files(pad: &str) -> TokenizerFiles {
    let symbols = bytes_to_unicode();
    let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    vocab.extend(symbols.iter().map(|c| format!("{c}{END_OF_WORD}")));
    let merges = [("d", "o"), ("do", "g</w>")];
    for (a, b) in merges {
        let joined = format!("{a}{b}");
        if !vocab.contains(&joined) {
            vocab.push(joined);
        }
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let vocab_json: Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), Value::from(i)))
        .collect();
    let merges_txt = std::iter::once("#version: 0.2".to_string())
        .chain(merges.iter().map(|(a, b)| format!("{a} {b}")))
        .collect::<Vec<_>>()
        .join("\n");
    let config = serde_json::json!({
        "bos_token": {"content": "<|startoftext|>", "normalized": true},
        "eos_token": {"content": "<|endoftext|>", "normalized": true},
        "unk_token": {"content": "<|endoftext|>", "normalized": true},
        "pad_token": pad,
        "model_max_length": 8,
        "name_or_path": "somewhere/else",
    });
    TokenizerFiles {
        vocab_json: Some(Value::Object(vocab_json).to_string()),
        merges_txt: Some(merges_txt),
        tokenizer_config_json: Some(config.to_string()),
        ..Default::default()
    }
}

fn toy(pad: &str) -> ClipTokenizer {
    ClipTokenizer::from_files(&toy_files(pad)).unwrap()
}

#[test]
fn encode_pads_with_the_configured_pad_token() {
    let t = toy("!");
    let dog = t.token_to_id("dog</w>").unwrap();
    let bang = t.token_to_id("!").unwrap();
    assert_eq!(t.pad_id(), bang);
    let e = t.encode("Dog");
    assert_eq!(
        e.ids,
        vec![t.bos_id(), dog, t.eos_id(), bang, bang, bang, bang, bang]
    );
    assert_eq!(e.attention_mask, vec![1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(e.truncated, 0);
    // SD 1.x pads with the end token.
    let t = toy("<|endoftext|>");
    assert_eq!(t.pad_id(), t.eos_id());
    assert_eq!(t.encode("dog").ids[3..], [t.eos_id(); 5]);
}

#[test]
fn special_tokens_map_wins_over_tokenizer_config() {
    // transformers 5 reads the pad token from special_tokens_map.json when both files give one.
    let mut files = toy_files("!");
    files.special_tokens_map_json = Some(r#"{"pad_token": "<|endoftext|>"}"#.into());
    let t = ClipTokenizer::from_files(&files).unwrap();
    assert_eq!(t.pad_id(), t.eos_id());
}

#[test]
fn flags_of_shared_special_tokens_follow_transformers() {
    // SD 1.x: EOS is a normalized dict, pad the same text as a plain string; the last role wins,
    // so "<|ENDOFTEXT|>" is no longer the end token but ordinary text.
    let t = toy("<|endoftext|>");
    assert_ne!(t.tokenize("<|ENDOFTEXT|>"), vec![t.eos_id()]);
    assert_eq!(t.tokenize("<|endoftext|>"), vec![t.eos_id()]);
    // An explicit added_tokens_decoder entry keeps its own flags.
    let mut files = toy_files("<|endoftext|>");
    let mut config: Value =
        serde_json::from_str(files.tokenizer_config_json.as_deref().unwrap()).unwrap();
    let eos = t.eos_id().to_string();
    config["added_tokens_decoder"] = serde_json::json!({
        eos: {"content": "<|endoftext|>", "normalized": true, "special": true}
    });
    files.tokenizer_config_json = Some(config.to_string());
    let t = ClipTokenizer::from_files(&files).unwrap();
    assert_eq!(t.tokenize("<|ENDOFTEXT|>"), vec![t.eos_id()]);
}

#[test]
fn long_prompts_keep_the_end_token() {
    let t = toy("!");
    let e = t.encode("dog dog dog dog dog dog dog dog");
    assert_eq!(e.ids.len(), 8);
    assert_eq!(e.ids[7], t.eos_id());
    assert_eq!(e.truncated, 2);
}

#[test]
fn pad_token_is_split_out_whole() {
    // "!" is a special token in SD 2's config, so "!!" is two pad ids, not the BPE of "!!".
    let t = toy("!");
    let bang = t.token_to_id("!").unwrap();
    assert_eq!(t.tokenize("!!"), vec![bang, bang]);
    // Other punctuation runs are one BPE word: "?" then "?</w>".
    let q = [t.token_to_id("?").unwrap(), t.token_to_id("?</w>").unwrap()];
    assert_eq!(t.tokenize("??"), q);
}

#[test]
fn added_tokens_stay_whole_and_match_case_insensitively() {
    let mut t = toy("!");
    let n1 = t.add_token("<new1>").unwrap();
    let n2 = t.add_token("<new2>").unwrap();
    assert_eq!((n1, n2), (t.len() as u32 - 2, t.len() as u32 - 1));
    let dog = t.token_to_id("dog</w>").unwrap();
    assert_eq!(t.tokenize("<NEW1>dog <new2>"), vec![n1, dog, n2]);
}

#[test]
fn colliding_or_malformed_added_tokens_are_refused() {
    let mut t = toy("!");
    let err = t.add_token("dog</w>").unwrap_err().to_string();
    assert!(err.contains("already in the vocabulary"), "{err}");
    t.add_token("<new1>").unwrap();
    let err = t.add_token("<new1>").unwrap_err().to_string();
    assert!(err.contains("already added"), "{err}");
    assert!(t.add_token("two words").is_err());
    assert!(t.add_token("").is_err());
    let err = t.add_token("<NEW9>").unwrap_err().to_string();
    assert!(err.contains("\"<new9>\""), "{err}");
}

#[test]
fn malformed_files_name_the_file() {
    let mut files = toy_files("!");
    files.vocab_json = Some("{\"a\": ".into());
    let err = ClipTokenizer::from_files(&files).unwrap_err().to_string();
    assert!(err.starts_with("vocab.json: malformed JSON"), "{err}");

    let mut files = toy_files("!");
    files.merges_txt = Some("#version: 0.2\nd o\nbroken-line".into());
    let err = ClipTokenizer::from_files(&files).unwrap_err().to_string();
    assert!(err.contains("merges.txt: line 3"), "{err}");

    let mut files = toy_files("!");
    files.merges_txt = Some("#version: 0.2\nq z".into());
    let err = ClipTokenizer::from_files(&files).unwrap_err().to_string();
    assert!(err.contains("merge 1"), "{err}");

    let mut files = toy_files("<|missing|>");
    files.special_tokens_map_json = None;
    let err = ClipTokenizer::from_files(&files).unwrap_err().to_string();
    assert!(
        err.contains("pad_token \"<|missing|>\" is not in the vocabulary"),
        "{err}"
    );
}

#[test]
fn missing_folder_is_a_clear_error() {
    let err = ClipTokenizer::from_dir(Path::new("/nonexistent/tokenizer"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tokenizer not found"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(empty.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no vocabulary found"), "{err}");
}

#[test]
fn saved_folder_round_trips_with_added_tokens() {
    let mut t = toy("!");
    let n1 = t.add_token("<new1>").unwrap();
    let dir = tempfile::tempdir().unwrap();
    t.save_dir(dir.path()).unwrap();
    // A model folder with tokenizer/ inside is accepted too.
    let model = tempfile::tempdir().unwrap();
    t.save_dir(&model.path().join("tokenizer")).unwrap();
    for path in [dir.path(), model.path()] {
        let back = ClipTokenizer::from_dir(path).unwrap();
        assert_eq!(back.token_to_id("<new1>"), Some(n1));
        assert_eq!(back.encode("a <new1> dog!"), t.encode("a <new1> dog!"));
        assert_eq!(back.max_length(), 8);
    }
    let config = std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
    assert!(!config.contains("somewhere/else"));
    // Saving without added tokens removes a stale added_tokens.json.
    toy("!").save_dir(dir.path()).unwrap();
    assert!(!dir.path().join("added_tokens.json").exists());
    assert_eq!(
        ClipTokenizer::from_dir(dir.path())
            .unwrap()
            .token_to_id("<new1>"),
        None
    );
}

#[test]
fn tokenizer_json_layout_is_read() {
    let files = toy_files("!");
    let vocab: Value = serde_json::from_str(files.vocab_json.as_deref().unwrap()).unwrap();
    let merges: Vec<Value> = files
        .merges_txt
        .as_deref()
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            serde_json::json!([a, b])
        })
        .collect();
    let new_id = vocab.as_object().unwrap().len();
    let tokenizer_json = serde_json::json!({
        "model": {"type": "BPE", "vocab": vocab, "merges": merges},
        "added_tokens": [{"id": new_id, "content": "<new1>", "normalized": true, "special": false}],
    });
    let files = TokenizerFiles {
        tokenizer_json: Some(tokenizer_json.to_string()),
        vocab_json: None,
        merges_txt: None,
        ..files
    };
    let t = ClipTokenizer::from_files(&files).unwrap();
    assert_eq!(t.token_to_id("<new1>"), Some(new_id as u32));
    assert_eq!(t.tokenize("dog"), vec![t.token_to_id("dog</w>").unwrap()]);
}

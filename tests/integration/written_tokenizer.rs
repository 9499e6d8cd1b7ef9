//! A tokenizer folder written with added tokens loads in transformers' CLIPTokenizer and gives
//! the same ids as the Rust tokenizer (checked by `tests/scripts/check_written_tokenizer.py`).

use runtime::ClipTokenizer;
use tests::{clip_tokenizer_dir, run_binary, run_reference_script};

const PROMPTS: [&str; 6] = [
    "a <new1> dog on the beach",
    "a <NEW2> cat next to a <new1> dog!",
    "<new1><new2> in the snow, 4k",
    "hello!! \u{72d7} caf\u{e9} \u{1f436}",
    "",
    "no added tokens here at all",
];

#[test]
fn written_folder_loads_in_transformers_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("tokenizer");
    let src = clip_tokenizer_dir();
    let out = run_binary(
        "exporter",
        &[
            "tokenizer",
            "--from",
            src.to_str().unwrap(),
            "--add-token",
            "<new1>",
            "--add-token",
            "<new2>",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tokenizer = ClipTokenizer::from_dir(&out_dir).unwrap();
    assert_eq!(tokenizer.token_to_id("<new1>"), Some(49408));
    assert_eq!(tokenizer.token_to_id("<new2>"), Some(49409));
    let cases: Vec<serde_json::Value> = PROMPTS
        .iter()
        .map(|p| serde_json::json!({"prompt": p, "ids": tokenizer.encode(p).ids}))
        .collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&cases).unwrap()).unwrap();

    // A failure means transformers disagrees with the written folder.
    let stdout = run_reference_script("check_written_tokenizer.py", &[&out_dir, &cases_path]);
    assert!(String::from_utf8_lossy(&stdout).contains("6 prompts match"));
}

//! Bad input to the binaries gives a clear error and a non-zero exit, never a panic.

use std::fs;
use std::process::Output;

use tests::{clip_tokenizer_dir, run_binary};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails unless the command exited non-zero, without a panic, saying each of `expected`.
fn assert_clean_failure(output: &Output, expected: &[&str]) {
    let err = stderr(output);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_ne!(
        output.status.code(),
        Some(101),
        "exit code 101 is a panic: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    for text in expected {
        assert!(err.contains(text), "stderr lacks {text:?}: {err}");
    }
}

/// A copy of the real tokenizer folder, to break on purpose.
fn tokenizer_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(clip_tokenizer_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn tokenize_with_missing_tokenizer_folder() {
    let out = run_binary(
        "trainer",
        &[
            "tokenize",
            "--tokenizer",
            "/nonexistent/tok",
            "--prompt",
            "a dog",
        ],
    );
    assert_clean_failure(&out, &["/nonexistent/tok not found", "tokenizer/ folder"]);
}

#[test]
fn tokenize_with_malformed_vocab_json() {
    let dir = tokenizer_copy();
    fs::write(dir.path().join("vocab.json"), "{\"a\": 1, ").unwrap();
    let tok = dir.path().to_str().unwrap();
    let out = run_binary(
        "trainer",
        &["tokenize", "--tokenizer", tok, "--prompt", "a dog"],
    );
    assert_clean_failure(&out, &["vocab.json", "malformed JSON"]);
}

#[test]
fn tokenize_with_vocab_missing_merge_symbols() {
    let dir = tokenizer_copy();
    let vocab = r#"{"a": 0, "b": 1, "!": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}"#;
    fs::write(dir.path().join("vocab.json"), vocab).unwrap();
    let tok = dir.path().to_str().unwrap();
    let out = run_binary(
        "trainer",
        &["tokenize", "--tokenizer", tok, "--prompt", "a dog"],
    );
    assert_clean_failure(&out, &["merges.txt", "merge 1", "not in the vocabulary"]);
}

#[test]
fn added_token_colliding_with_the_vocabulary() {
    let tok = clip_tokenizer_dir();
    let tok = tok.to_str().unwrap();
    let out = run_binary(
        "trainer",
        &[
            "tokenize",
            "--tokenizer",
            tok,
            "--add-token",
            "dog</w>",
            "--prompt",
            "a dog",
        ],
    );
    assert_clean_failure(
        &out,
        &["cannot add token \"dog</w>\"", "already in the vocabulary"],
    );
    let out = run_binary(
        "trainer",
        &[
            "tokenize",
            "--tokenizer",
            tok,
            "--add-token",
            "<new1>",
            "--add-token",
            "<new1>",
            "--prompt",
            "x",
        ],
    );
    assert_clean_failure(&out, &["\"<new1>\"", "already added"]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("bundle");
    let out = run_binary(
        "exporter",
        &[
            "tokenizer",
            "--from",
            tok,
            "--add-token",
            "<|endoftext|>",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_clean_failure(&out, &["\"<|endoftext|>\"", "already in the vocabulary"]);
    assert!(
        !out_dir.exists(),
        "nothing is written when a token is refused"
    );
}

#[test]
fn exporter_with_missing_source_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(
        "exporter",
        &[
            "tokenizer",
            "--from",
            "/nonexistent/model",
            "--out",
            dir.path().to_str().unwrap(),
        ],
    );
    assert_clean_failure(&out, &["/nonexistent/model not found"]);
}

#[test]
fn closed_stdout_ends_quietly() {
    // `trainer tokenize ... | head -c 1`: the reader goes away while the trainer still writes.
    let tok = clip_tokenizer_dir();
    let mut args = vec![
        "tokenize".to_string(),
        "--tokenizer".into(),
        tok.display().to_string(),
        "--json".into(),
    ];
    for i in 0..20_000 {
        args.push("--prompt".into());
        args.push(format!("prompt number {i}"));
    }
    let mut child = std::process::Command::new(tests::binary("trainer"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn tokenize_prints_ids_for_a_prompt() {
    let tok = clip_tokenizer_dir();
    let out = run_binary(
        "trainer",
        &[
            "tokenize",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--add-token",
            "<new1>",
            "--json",
            "--prompt",
            "a <new1> dog on the beach",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = serde_json::from_value(line["input_ids"].clone()).unwrap();
    // Ids from transformers' CLIPTokenizer for the same prompt (see the parity goldens).
    assert_eq!(ids[..8], [49406, 320, 49408, 1929, 525, 518, 2117, 49407]);
    assert_eq!(ids.len(), 77);
    assert!(ids[8..].iter().all(|&i| i == 0));
    assert_eq!(line["tokens"][2], "<new1>");
}

#[test]
fn help_lists_the_commands() {
    let out = run_binary("trainer", &["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for command in ["tokenize", "bench-tokenize", "env"] {
        assert!(
            text.contains(command),
            "trainer --help lacks {command}: {text}"
        );
    }
    let out = run_binary("exporter", &["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("tokenizer"));
}

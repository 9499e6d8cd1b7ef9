//! `trainer tokenize`: show what the text encoder will see.

use anyhow::Result;
use serde_json::json;

use super::load_tokenizer;
use crate::cli::TokenizeArgs;

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let tokenizer = load_tokenizer(&args.tokenizer)?;
    if !args.json {
        for token in tokenizer.added_tokens() {
            println!("added token {:?} has id {}", token.content, token.id);
        }
    }
    for prompt in &args.prompt {
        let encoding = tokenizer.encode(prompt);
        let used = encoding.attention_mask.iter().filter(|&&m| m == 1).count();
        let token_text = |id: u32| tokenizer.id_to_token(id).unwrap_or("?").to_string();
        if args.json {
            let tokens: Vec<String> = encoding.ids[..used]
                .iter()
                .map(|&id| token_text(id))
                .collect();
            let line = json!({
                "prompt": prompt,
                "input_ids": encoding.ids,
                "attention_mask": encoding.attention_mask,
                "tokens": tokens,
                "truncated": encoding.truncated,
            });
            println!("{line}");
            continue;
        }
        println!("prompt: {prompt:?}");
        println!("  {:>3}  {:>6}  token", "pos", "id");
        for (pos, &id) in encoding.ids[..used].iter().enumerate() {
            println!("  {pos:>3}  {id:>6}  {}", token_text(id));
        }
        println!(
            "{used} of {} positions used, {} prompt tokens truncated, padded with id {} ({:?})",
            tokenizer.max_length(),
            encoding.truncated,
            tokenizer.pad_id(),
            token_text(tokenizer.pad_id()),
        );
        println!("input_ids: {:?}", encoding.ids);
    }
    Ok(())
}

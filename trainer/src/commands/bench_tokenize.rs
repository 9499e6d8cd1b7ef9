//! `trainer bench-tokenize`: tokenizer throughput on DreamBench-style prompts.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::load_tokenizer;
use crate::cli::BenchTokenizeArgs;

/// Prompt shapes of the kind training and evaluation feed the tokenizer.
const TEMPLATES: [&str; 8] = [
    "a {} in the jungle",
    "a {} on top of a purple rug in a forest",
    "a {} with the Eiffel Tower in the background",
    "a photo of a {}, highly detailed, 4k, trending on artstation",
    "a cube shaped {}",
    "a {} floating in an ocean of milk",
    "an oil painting of a {} by Claude Monet, impressionism, soft light",
    "A close-up photo of the {} wearing a red hat; shallow depth of field!",
];
const SUBJECTS: [&str; 6] = [
    "<new1> dog",
    "<new1> backpack",
    "<new1> stuffed animal",
    "dog",
    "teapot",
    "<new1> sneaker",
];

pub fn run(args: &BenchTokenizeArgs) -> Result<()> {
    ensure!(
        args.seconds > 0.0 && args.seconds.is_finite(),
        "--seconds must be a positive number, got {}",
        args.seconds
    );
    let mut tokenizer = load_tokenizer(&args.tokenizer)?;
    if tokenizer.token_to_id("<new1>").is_none() {
        tokenizer.add_token("<new1>")?;
    }
    let prompts: Vec<String> = TEMPLATES
        .iter()
        .flat_map(|t| SUBJECTS.iter().map(move |s| t.replace("{}", s)))
        .collect();
    // Warm up caches and the allocator before timing.
    for p in &prompts {
        std::hint::black_box(tokenizer.encode(p));
    }
    let budget = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let (mut encoded, mut tokens) = (0usize, 0usize);
    while start.elapsed() < budget {
        for p in &prompts {
            let e = std::hint::black_box(tokenizer.encode(p));
            tokens += e.attention_mask.iter().filter(|&&m| m == 1).count();
            encoded += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "tokenizer: {encoded} prompts, {tokens} tokens in {secs:.2} s on one thread: \
         {:.0} prompts/s, {:.0} tokens/s, {:.1} us/prompt",
        encoded as f64 / secs,
        tokens as f64 / secs,
        secs * 1e6 / encoded as f64
    );
    Ok(())
}

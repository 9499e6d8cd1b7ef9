"""Loads a tokenizer folder written by the Rust exporter in transformers' CLIPTokenizer and checks
that it gives the ids the Rust tokenizer gave.

usage: python check_written_tokenizer.py TOKENIZER_DIR CASES_JSON
CASES_JSON: [{"prompt": str, "ids": [77 ints]}, ...]. Exits 1 and prints each difference.
"""

import json
import sys

from transformers import CLIPTokenizer


def main(tokenizer_dir, cases_path):
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    cases = json.load(open(cases_path, encoding="utf-8"))
    bad = 0
    for case in cases:
        ids = tokenizer(case["prompt"], padding="max_length", max_length=77, truncation=True).input_ids
        if ids != case["ids"]:
            bad += 1
            print(f"MISMATCH {case['prompt']!r}\n  transformers {ids}\n  rust         {case['ids']}")
    if bad:
        sys.exit(f"{bad} of {len(cases)} prompts differ")
    print(f"{len(cases)} prompts match (vocabulary size {len(tokenizer)})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

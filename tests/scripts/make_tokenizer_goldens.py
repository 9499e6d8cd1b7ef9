"""Golden token ids from transformers' CLIPTokenizer, for the Rust tokenizer's parity test.

The prompts: every DreamBench prompt with `<new1>` and its subject's class (30 subjects x 25),
hand-written edge cases (punctuation, digits, accents, emoji, CJK, whitespace runs, newlines,
prompts past 77 tokens, added and special tokens in odd places), every Unicode whitespace-like
character, and seeded random strings. Three tokenizer setups: SD 2.x (pads with "!") with
`<new1>`; SD 2.x with three added tokens; SD 1.x (pads with the end token) with none.

Run with setup's reference environment (ECHODISTILL_PYTHON, transformers 5.17):
    $ECHODISTILL_PYTHON tests/scripts/make_tokenizer_goldens.py \
        --tokenizer "$ECHODISTILL_CLIP_TOKENIZER" --dreambench ../shared/datasets/dreambooth \
        --out tests/fixtures/tokenizer_goldens.json
"""

import argparse
import json
import os
import random
import re
import shutil
import tempfile

import transformers
from transformers import CLIPTokenizer

MAX_LENGTH = 77


def dreambench_prompts(root):
    """The 25 evaluation prompts of each subject, with `<new1>` as the unique token."""
    text = open(os.path.join(root, "dataset", "prompts_and_classes.txt"), encoding="utf-8").read()
    classes = re.findall(r"^([a-z0-9_]+),([a-z ]+)$", text, flags=re.M)
    classes = [(s, c) for s, c in classes if s != "subject_name"]
    object_part, live_part = text.split("Live Subject Prompts")
    templates = lambda part: re.findall(r"^'(.*?)'\.format", part, flags=re.M)
    object_prompts, live_prompts = templates(object_part), templates(live_part)
    assert len(classes) == 30 and len(object_prompts) == 25 and len(live_prompts) == 25
    prompts = []
    for _, cls in classes:
        # DreamBench uses the live list for the pets, the object list for everything else.
        templates_for = live_prompts if cls in ("dog", "cat") else object_prompts
        prompts += [t.format("<new1>", cls) for t in templates_for]
    return prompts


EDGE_CASES = [
    "",
    "   ",
    "\n\n",
    "a photo of a <new1> dog",
    "A PHOTO OF A <NEW1> DOG",
    "a<new1>dog",
    "<new1><new1><new1>",
    "a <new1>, a <new1>! a <new1>?",
    "(<new1>) [<new1>] {<new1>}",
    "it's a dog's life, isn't it? we'll see. they're here; you've won, I'm done, he'd go",
    "IT'S DON'T WE'LL",
    "rock'n'roll o'clock 'quoted' \"double\" `back`",
    "curly \u2019s apostrophe \u201cquotes\u201d",
    "hello!",
    "!!",
    "hi !! there !!! ! ! !",
    "wow!!!??? ...--- ***",
    "dog.cat,bird;fish:ant",
    "e-mail me@example.com or visit https://example.com/a_b?c=d&e=f#g",
    "C++ and C# and F#, 50% off, $9.99, #1, @user, ^_^, ~~~, |||, \\\\ //",
    "<|startoftext|>a dog<|endoftext|>",
    "<|ENDOFTEXT|> shouting special tokens <|StartOfText|>",
    "<|endoftext|><|endoftext|>x",
    "<|endoftext",
    "123 4567 89.01 1,000,000 3.14159 007 2nd 3rd 4th 1920x1080 8k 4K 60fps",
    "\u0661\u0662\u0663 \u0967\u0968 \u2460\u2461 \u00bd \u00b2 \u2167",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 cr\u00e8me br\u00fbl\u00e9e se\u00f1or Z\u00fcrich \u00e5ngstr\u00f6m",
    "cafe\u0301 decomposed e\u0301 and n\u0303",
    "Stra\u00dfe \u1e9e \u0130stanbul I\u0307 \u0131",
    "\u03a3\u03c3\u03c2 \u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u0391\u0398\u0397\u039d\u0391",
    "\ufb01 ligature \ufb00 \u2126 ohm \u212b angstrom \u1e9b\u0323",
    "\u0414\u041e\u0411\u0420\u041e\u0415 \u0443\u0442\u0440\u043e \u0431\u0435\u043b\u0430\u044f \u0441\u043e\u0431\u0430\u043a\u0430",
    "\u4e00\u53ea\u72d7\u5728\u6d77\u6ee9\u4e0a",
    "\u72d7 <new1> \u732b",
    "\u65e5\u672c\u8a9e\u306e\u30d7\u30ed\u30f3\u30d7\u30c8\u3001\u30c6\u30b9\u30c8\u3002",
    "\ud55c\uad6d\uc5b4 \uac15\uc544\uc9c0 \u1100\u1161 \u1112\u1161\u11ab",
    "\u0627\u0644\u0643\u0644\u0628 \u0639\u0644\u0649 \u0627\u0644\u0634\u0627\u0637\u0626",
    "\u0915\u0941\u0924\u094d\u0924\u093e \u0938\u092e\u0941\u0926\u094d\u0930 \u0924\u091f \u092a\u0930",
    "\u0e2a\u0e38\u0e19\u0e31\u0e02\u0e1a\u0e19\u0e0a\u0e32\u0e22\u0e2b\u0e32\u0e14",
    "\u05db\u05dc\u05d1 \u05e2\u05dc \u05d4\u05d7\u05d5\u05e3",
    "emoji \U0001f436\U0001f3d6\ufe0f \U0001f525\U0001f525 \u2764\ufe0f",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1eb\U0001f1f7 skin \U0001f44d\U0001f3fd",
    "a dog\U0001f436on the beach\U0001f30a<new1>\U0001f3a8",
    "math \u2211 \u222b \u221e \u2248 \u2260 \u2264 \u03c0r\u00b2 \u2202x/\u2202t",
    "arrows \u2192 \u21d2 \u2190 boxes \u2588\u2591 \u2022 bullet \u00a7 \u00b6 \u2020",
    "zero\u200bwidth\u200cjoin\u200dmark \ufeffbom",
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\rline four",
    "many     spaces   between\t\t\twords \n\n\n end",
    "  leading and trailing spaces  ",
    "control\x00chars\x01here\x07and\x1bescape\x7fdel",
    "html &amp; entities &lt;b&gt; &quot;x&quot; &#39;",
    "mojibake caf\u00c3\u00a9 \u00e2\u0080\u0099",
    "snake_case_word and CamelCaseWord and kebab-case-word",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    " ".join(["dog"] * 80),
    " ".join(["<new1>"] * 90),
    ", ".join(["a <new1> dog on the beach with a red hat and sunglasses"] * 8),
    "highly detailed, 8k, trending on artstation, by greg rutkowski and alphonse mucha, " * 6,
    "<new1> " + "very " * 74 + "good dog",
    "<new1> " + "very " * 75 + "good dog",
    "photo of <new1> dog</w> with </w> marks",
    "<new1>'s toy and the <new1>'s bone",
    "<new11> <new> new1 <new1 new1> <<new1>>",
    "\u00a0non\u00a0breaking\u3000ideographic\u2003em\u2009thin\u202fnarrow",
]

# Whitespace-like code points: Unicode White_Space, Python's isspace extras, and look-alikes.
WHITESPACE_PROBES = [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x180E,
    0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
    0x200B, 0x2028, 0x2029, 0x202F, 0x205F, 0x2060, 0x3000, 0xFEFF,
]

MULTI_TOKEN_CASES = [
    "a <new1> dog and a <new2> cat",
    "<new2> <new1> <new3>",
    "a <new1> <new2> <new3> in the jungle",
    "<new1><new2><new3>",
    "the <NEW2> backpack next to the <new3> teapot",
    "photo of <new3>, <new2>! and <new1>?",
    "a <new1> dog, a <new2> cat and a <new3> teapot on a wooden floor",
    "<new22> <new2>2 <new2><new22>",
]


def random_prompts(n, seed):
    """Seeded strings over a mixed alphabet: ASCII, punctuation, accents, CJK, emoji, spaces."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n  ",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "\u00e9\u00e8\u00fc\u00f1\u00e7\u00df\u00f8\u00e5\u0301\u0308",
        "\u72d7\u732b\u6d77\u5c71\u65e5\u672c\u3042\u30a2\ud55c",
        "\U0001f436\U0001f431\U0001f525\u2764\ufe0f\u200d",
        "\u0391\u03b2\u03a3\u03c2\u0414\u0436\u0627\u05d0\u0915",
    ]
    words = ["<new1>", "dog", "'s", "'ll", "<|endoftext|>", "!"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.1:
                parts.append(rng.choice(words))
            else:
                parts.append(rng.choice(rng.choice(pools)))
        out.append("".join(parts))
    return out


def load(base_dir, pad_token, added):
    """The tokenizer of `base_dir` with `pad_token` in both config files and `added` tokens added."""
    tmp = tempfile.mkdtemp()
    shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(tmp, name)
        config = json.load(open(path))
        config["pad_token"] = pad_token
        json.dump(config, open(path, "w"))
    tokenizer = CLIPTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    for token in added:
        assert tokenizer.add_tokens(token) == 1, token
    return tokenizer


def case(tokenizer, prompt):
    enc = tokenizer(prompt, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    used = sum(enc.attention_mask)
    assert len(enc.input_ids) == MAX_LENGTH
    assert all(i == tokenizer.pad_token_id for i in enc.input_ids[used:])
    untruncated = tokenizer(prompt, add_special_tokens=False).input_ids
    return {"prompt": prompt, "ids": enc.input_ids[:used], "tokens": len(untruncated)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="the CLIP tokenizer folder setup built")
    parser.add_argument("--dreambench", required=True, help="the DreamBench dataset folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    whitespace = [f"a{chr(c)}b{chr(c)}{chr(c)}c {chr(c)}" for c in WHITESPACE_PROBES]
    single = dreambench_prompts(args.dreambench) + EDGE_CASES + whitespace + random_prompts(150, 0)
    setups = [
        ("sd2-new1", "!", ["<new1>"], single),
        ("sd2-three-tokens", "!", ["<new1>", "<new2>", "<new3>"], MULTI_TOKEN_CASES + EDGE_CASES),
        ("sd1-no-added", "<|endoftext|>", [], EDGE_CASES + random_prompts(50, 1)),
    ]
    groups = []
    for name, pad, added, prompts in setups:
        tokenizer = load(args.tokenizer, pad, added)
        groups.append({
            "name": name,
            "pad_token": pad,
            "pad_id": tokenizer.pad_token_id,
            "added_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in added},
            "cases": [case(tokenizer, p) for p in prompts],
        })
    golden = {
        "generator": "tests/scripts/make_tokenizer_goldens.py",
        "reference": f"transformers {transformers.__version__} CLIPTokenizer",
        "max_length": MAX_LENGTH,
        "groups": groups,
    }
    # One case a line keeps the fixture small and its diffs readable.
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key in ("generator", "reference", "max_length"):
            f.write(f"  {json.dumps(key)}: {json.dumps(golden[key])},\n")
        f.write('  "groups": [\n')
        for gi, group in enumerate(groups):
            head = {k: v for k, v in group.items() if k != "cases"}
            f.write("    " + json.dumps(head)[:-1] + ', "cases": [\n')
            lines = [json.dumps(c, ensure_ascii=True) for c in group["cases"]]
            f.write(",\n".join("      " + line for line in lines))
            f.write("\n    ]}" + ("," if gi + 1 < len(groups) else "") + "\n")
        f.write("  ]\n}\n")
    total = sum(len(g["cases"]) for g in groups)
    print(f"wrote {args.out}: {total} cases in {len(groups)} groups ({golden['reference']})")


if __name__ == "__main__":
    main()

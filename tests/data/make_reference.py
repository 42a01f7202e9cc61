"""Build the reward-model parity data: tiny random-weight *ForSequenceClassification checkpoints and
the scores Hugging Face transformers gives them (tests/test_reward_parity.py checks against these).

Needs torch and transformers (not test dependencies; the suite only reads what this writes):

    python tests/data/make_reference.py            # rewrites tests/data/reward_parity/

Each checkpoint has a real byte-level BPE tokenizer (trained here on a small corpus, with the
family's pre-tokenizer split and normalizer), a chat template written after its family's (faithful
where templates rewrite an answer: Llama 3 trims, Qwen3 moves think blocks and strips newlines,
Qwen2 adds a default system turn), tiny hidden sizes, and is saved in bf16 or f32 with RoPE either
as transformers >= 5 writes it (`rope_parameters`) or as older versions did (top-level
`rope_theta` / `rope_scaling`). The reference ids come from the transformers tokenizer's
`apply_chat_template`, the scores from the model's logits at the last token, computed in float32.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tiny_reward_models import (LLAMA3_SPLIT, LLAMA3_TEMPLATE, QWEN2_TEMPLATE, QWEN3_TEMPLATE,  # noqa: E402
                               QWEN_SPLIT, byte_level_bpe)

OUT = Path(__file__).parent / "reward_parity"
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
FAMILIES = {
    "qwen3": dict(config=transformers.Qwen3Config, model=transformers.Qwen3ForSequenceClassification,
                  split=QWEN_SPLIT, specials=QWEN_SPECIALS, bos=None, eos="<|im_end|>",
                  template=QWEN3_TEMPLATE, head_dim=32, rope={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen2": dict(config=transformers.Qwen2Config, model=transformers.Qwen2ForSequenceClassification,
                  split=QWEN_SPLIT, specials=QWEN_SPECIALS, bos=None, eos="<|im_end|>",
                  template=QWEN2_TEMPLATE, head_dim=16, rope={"rope_type": "default", "rope_theta": 1000000.0}),
    "llama": dict(config=transformers.LlamaConfig, model=transformers.LlamaForSequenceClassification,
                  split=LLAMA3_SPLIT, specials=LLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>",
                  template=LLAMA3_TEMPLATE, head_dim=16,
                  rope={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
}
# name -> (family, stored dtype, config style)
CHECKPOINTS = {
    "qwen3-bf16-v5": ("qwen3", torch.bfloat16, "rope_parameters"),
    "qwen3-f32-v4": ("qwen3", torch.float32, "top-level"),
    "qwen2-f32-v5": ("qwen2", torch.float32, "rope_parameters"),
    "qwen2-bf16-v4": ("qwen2", torch.bfloat16, "top-level"),
    "llama-bf16-v5": ("llama", torch.bfloat16, "rope_parameters"),
    "llama-f32-v4": ("llama", torch.float32, "top-level"),
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Paris is the capital of France; Berlin is the capital of Germany; Rome is the capital of Italy.",
    "It's 12345 degrees, isn't it? We'll see: they've said 3.14 and 2.71 are numbers worth knowing.",
    "Answer: the sum of 17 and 25 is 42, because 17 + 25 = 42. Let me think step by step.",
    "Rewards are read from the final hidden state of the last token of the conversation.",
    "  Indented text,\n\nnew lines\tand tabs... café, naïve, Åland, 東京, 🙂!",
    "Write a short poem about the sea. The waves roll in, the gulls cry out, the tide turns.",
]
LONG_ANSWER = " ".join([
    "Here is a detailed answer. First, Paris has been the capital of France for centuries, and the",
    "government, the parliament and most ministries sit there. Second, the city is the largest in the",
    "country, with about 2.1 million people inside its limits and 12 million in the region. Third, it",
    "is the centre of rail and road networks: the quick brown fox could take a train from Paris to",
    "almost any other city. Berlin, by contrast, is the capital of Germany, and Rome that of Italy.",
] * 3)
PROMPT = "What is the capital of France, and why?"
CASES = {  # name -> whole conversation, the last turn being the answer scored
    "ordinary": [{"role": "user", "content": PROMPT},
                 {"role": "assistant", "content": "Paris is the capital of France: the government sits there."}],
    "wrong": [{"role": "user", "content": PROMPT},
              {"role": "assistant", "content": "Lyon, because the lazy dog said so 42 times."}],
    "long": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": LONG_ANSWER}],
    "whitespace": [{"role": "user", "content": "  " + PROMPT + "\n"},
                   {"role": "assistant", "content": "\n\n  Paris is the capital of France.  \n\n"}],
    "think": [{"role": "user", "content": PROMPT},
              {"role": "assistant", "content": "<think>\nThe user asks about France. Let me think: Paris, not Lyon.\n"
                                               "</think>\n\nParis is the capital of France."}],
    "nfd": [{"role": "user", "content": "Cafe\u0301 or the\u0301 in Paris?"},
            {"role": "assistant", "content": "Cafe\u0301 au lait, nai\u0308ve as it is; A\u030aland is elsewhere."}],
    "multi-turn": [{"role": "system", "content": "You answer geography questions briefly."},
                   {"role": "user", "content": "What is the capital of Germany?"},
                   {"role": "assistant", "content": "<think>easy</think>Berlin."},
                   {"role": "user", "content": PROMPT},
                   {"role": "assistant", "content": "Paris, since the government sits there."}],
}
# Speculative Rejection scores answers as they grow: each answer is cut at these fractions of its text.
PARTIAL_PROMPT = [{"role": "user", "content": PROMPT}]
PARTIAL_ANSWERS = [
    "Paris is the capital of France. It's the largest city, and the government sits there; 12345 reasons say so.",
    "  \nThe capital of France is Berlin, isn't it? No: Berlin is the capital of Germany, and Paris of France.  ",
    "<think>\nFrance... its capital is Paris, not Lyon.\n</think>\n\nParis, where the government sits.",
    "Lyon. The lazy dog said so while the cat sleeps, 42 times in a row, and the sum of 17 and 25 agrees.",
]
CUTS = (0.1, 0.3, 0.55, 0.8, 1.0)


def randomize(model, seed: int):
    """Weights with a useful spread of scores (transformers' 0.02-std init gives near-equal ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                scale = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def to_top_level(folder: Path):
    """Rewrite config.json with RoPE as transformers < 5 wrote it."""
    path = folder / "config.json"
    c = json.loads(path.read_text())
    rope = c.pop("rope_parameters")
    c["rope_theta"] = rope.pop("rope_theta")
    c["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    path.write_text(json.dumps(c, indent=2))


def build(name: str, family: str, dtype, style: str, seed: int) -> dict:
    fam = FAMILIES[family]
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok = byte_level_bpe(fam["split"], CORPUS, 480, fam["specials"])
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=fam["bos"], eos_token=fam["eos"], pad_token=fam["specials"][0],
        add_bos_token=False)
    hf_tok.chat_template = fam["template"]
    hf_tok.save_pretrained(folder)
    config = fam["config"](hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=fam["head_dim"], vocab_size=len(hf_tok),
                           max_position_embeddings=2048, num_labels=1, rope_parameters=dict(fam["rope"]),
                           pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id,
                           bos_token_id=hf_tok.convert_tokens_to_ids(fam["bos"] or fam["specials"][0]))
    torch.manual_seed(seed)
    model = fam["model"](config)
    randomize(model, seed)
    model.to(dtype).save_pretrained(folder)
    if style == "top-level":
        to_top_level(folder)

    # the reference: everything read back from the folder, as a user of the checkpoint would
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()

    def reference(messages) -> dict:
        text = tok.apply_chat_template(messages, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            score = model(torch.tensor([ids])).logits[0, 0].item()
        return {"ids": ids, "score": score}

    cases = [dict(name=case, messages=m, **reference(m)) for case, m in CASES.items()]
    partials = []
    for answer in PARTIAL_ANSWERS:
        cuts = []
        for f in CUTS:
            text = answer[:round(f * len(answer))]
            cuts.append(dict(text=text, **reference(PARTIAL_PROMPT + [{"role": "assistant", "content": text}])))
        partials.append(cuts)
    return dict(family=family, dtype=str(dtype).split(".")[-1], config_style=style, cases=cases,
                partial_prompt=PARTIAL_PROMPT, partials=partials)


def main():
    OUT.mkdir(exist_ok=True)
    refs = {name: build(name, *spec, seed) for seed, (name, spec) in enumerate(CHECKPOINTS.items())}
    refs = dict(made_with=dict(transformers=transformers.__version__, torch=torch.__version__.split("+")[0]),
                checkpoints=refs)
    (OUT / "reference.json").write_text(json.dumps(refs, indent=1, ensure_ascii=True) + "\n")
    for name, r in refs["checkpoints"].items():
        scores = [c["score"] for c in r["cases"]]
        print(f"{name}: {len(r['cases'])} cases, longest {max(len(c['ids']) for c in r['cases'])} tokens, "
              f"scores {min(scores):.3f} .. {max(scores):.3f}")


if __name__ == "__main__":
    main()

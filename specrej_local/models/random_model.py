"""Random-weight GGUF models of realistic shape, for throughput figures without real weights.

Speed depends on shapes, not values, so a model of a real layout (Llama-3.2-1B, Qwen2.5-7B)
filled with random quantized weights measures what the real one would. Its answers are noise:
it is never used for quality.
"""
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .gguf_file import read_header


LAYOUTS = {
    # arch, blocks, embedding, feed-forward, heads, KV heads, vocabulary (None = the tokenizer's),
    # output tied to the embedding, q/k/v biases, RoPE base
    "tiny": dict(arch="llama", blocks=2, embd=64, ff=128, heads=4, kv=2, vocab=None, tied=True, bias=False,
                 rope=10000.0),
    "smollm2-135m": dict(arch="llama", blocks=30, embd=576, ff=1536, heads=9, kv=3, vocab=None, tied=True,
                         bias=False, rope=100000.0),
    "llama-1b": dict(arch="llama", blocks=16, embd=2048, ff=8192, heads=32, kv=8, vocab=128256, tied=True,
                     bias=False, rope=500000.0),
    "qwen2.5-7b": dict(arch="qwen2", blocks=28, embd=3584, ff=18944, heads=28, kv=4, vocab=152064, tied=False,
                       bias=True, rope=1000000.0),
}
QTYPES = ("q8_0", "q4_0", "f16")


def _random_weight(rng, rows: int, cols: int, qtype: str, std: float = 0.02):
    """A (rows x cols) matrix of random weights, as raw GGUF data: random quant bytes with one
    fixed block scale, so the values have about `std` spread without quantizing anything."""
    import gguf

    if qtype == "f16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16), None
    t = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]
    block, size = gguf.GGML_QUANT_SIZES[t]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    spread = 74.0 if qtype == "q8_0" else 4.6  # std of a uniform int8 / int4 quant
    data[:, :, :2] = np.frombuffer(np.float16(std / spread).tobytes(), dtype=np.uint8)
    return data.reshape(rows, -1), t


def write_tokenizer_gguf(path, source) -> Path:
    """Write a GGUF file holding only `source`'s tokenizer and chat template (no tensors): a small
    `tokenizer_from` for write_random_gguf where the real model is too big to carry."""
    import gguf

    src = read_header(source, lambda key: key.startswith("tokenizer."))
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tokenizer only")
    for key, value in src.values.items():
        vtype, etype = src.types[key]
        value = value.tolist() if isinstance(value, np.ndarray) else value
        w.add_key_value(key, value, gguf.GGUFValueType(vtype), None if etype is None else gguf.GGUFValueType(etype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def write_random_gguf(path, tokenizer_from, layout: str = "llama-1b", qtype: str = "q8_0", seed: int = 0) -> Path:
    """Write a GGUF model of `layout`'s shape with random weights, for throughput figures where
    real weights are not at hand. The tokenizer and chat template are copied from the GGUF file
    `tokenizer_from`, its vocabulary padded with unused tokens up to the layout's size.
    Layers of one shape share one random matrix (speed does not depend on the values)."""
    import gguf

    if layout not in LAYOUTS:
        raise BadInput(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if qtype not in QTYPES:
        raise BadInput(f"unknown qtype {qtype!r}; choose one of {', '.join(QTYPES)}")
    L = LAYOUTS[layout]
    src = read_header(tokenizer_from, lambda key: key.startswith("tokenizer."))
    tok = {key: value.tolist() if isinstance(value, np.ndarray) else value for key, value in src.values.items()}
    tokens = list(tok["tokenizer.ggml.tokens"])
    types = list(tok["tokenizer.ggml.token_type"])
    vocab = L["vocab"] or len(tokens)
    if vocab < len(tokens):
        raise BadInput(f"the tokenizer of {tokenizer_from} has {len(tokens)} tokens, more than {layout}'s {vocab}")
    tokens += [f"<|unused_{i}|>" for i in range(len(tokens), vocab)]
    types += [int(gguf.TokenType.UNUSED)] * (vocab - len(types))

    arch, E, F, H, K = L["arch"], L["embd"], L["ff"], L["heads"], L["kv"]
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(f"random {layout} {qtype}")
    w.add_block_count(L["blocks"])
    w.add_context_length(8192)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_freq_base(L["rope"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    for key, value in tok.items():
        if key == "tokenizer.ggml.tokens":
            w.add_token_list(tokens)
        elif key == "tokenizer.ggml.token_type":
            w.add_token_types(types)
        elif key == "tokenizer.ggml.scores":
            w.add_token_scores(value + [0.0] * (vocab - len(value)))
        else:
            vtype, etype = src.types[key]
            w.add_key_value(key, value, gguf.GGUFValueType(vtype), None if etype is None else gguf.GGUFValueType(etype))

    rng = np.random.default_rng(seed)
    made = {}

    def add(name, rows, cols):
        if (rows, cols) not in made:
            made[rows, cols] = _random_weight(rng, rows, cols, qtype)
        data, raw = made[rows, cols]
        w.add_tensor(name, data, raw_dtype=raw)

    ones = np.ones(E, dtype=np.float32)
    kv_dim = E // H * K
    add("token_embd.weight", vocab, E)
    w.add_tensor("output_norm.weight", ones)
    if not L["tied"]:
        add("output.weight", vocab, E)
    for b in range(L["blocks"]):
        w.add_tensor(f"blk.{b}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{b}.ffn_norm.weight", ones)
        for part, rows in (("q", E), ("k", kv_dim), ("v", kv_dim), ("output", E)):
            add(f"blk.{b}.attn_{part}.weight", rows, E)
            if L["bias"] and part != "output":
                w.add_tensor(f"blk.{b}.attn_{part}.bias", np.zeros(rows, dtype=np.float32))
        add(f"blk.{b}.ffn_gate.weight", F, E)
        add(f"blk.{b}.ffn_up.weight", F, E)
        add(f"blk.{b}.ffn_down.weight", E, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)

"""convert-reward and GGUF reward models, on tiny random HF checkpoints written here (offline, fast).

Each supported architecture gets a 2-layer checkpoint with a real byte-level BPE tokenizer trained
on a few sentences (split by the regex of the llama.cpp pre-tokenizer the converter must choose).
Scores read through llama.cpp (`load_reward_model`, the real AnswerScorer) are compared with an
independent numpy forward pass written from the HF modelling code's definitions.
"""
import hashlib
import json
import os
import shutil
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors.numpy import save_file
from tokenizers import Tokenizer, processors

from specrej_local.models import convert as conv
from specrej_local.models import registry
from specrej_local.frontends.cli import cli
from specrej_local.errors import BadInput, OutputFileError, RewardError
from specrej_local.llama.context import Context, Model
from specrej_local.llama.reward_model import load_reward_model
from specrej_local.llama.scorers import AnswerScorer, yes_no_readout
from specrej_local.models.score_head import read_score_head
from tiny_reward_models import LLAMA3_SPLIT, LLAMA3_TEMPLATE, QWEN3_TEMPLATE, QWEN_SPLIT, byte_level_bpe
from test_registry import FakeHub, FakeHubHandler, add_user_models, assert_one_line_error, run_cli_process

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "It's 12345 degrees, isn't it? We'll see: they've said 3.14 and 2.71.",
    "Answer: the sum of 17 and 25 is 42, because 17 + 25 = 42.",
    "Rewards are read from the final hidden state of the last token.",
    "  Indented text,\n\nnew lines\tand tabs... café, naïve, 東京!",
]
# (prompt, four answers): long enough that incremental cuts fall inside words and numbers
PROMPT = "What is the capital of France, and why?"
ANSWERS = [
    "Paris is the capital of France. It's the largest city, and the government sits there since 987; "
    "the quick brown fox agrees that 12345 reasons say so. Berlin is the capital of Germany, which is "
    "another country, and the lazy dog sleeps in neither of them while the cat jumps over the fox.",
    "The capital of France is Berlin, isn't it? No: Berlin is the capital of Germany, and Paris of France, "
    "we'll see 3.14 more reasons tomorrow. They've said the sum of 17 and 25 is 42, because 17 + 25 = 42, "
    "and that the final hidden state of the last token is where rewards are read from.",
    "Lyon. The lazy dog said so while the cat sleeps, 42 times in a row, and the sum of 17 and 25 agrees. "
    "It's 12345 degrees in Lyon, isn't it? We'll see: the quick brown fox jumps over the lazy dog, and "
    "the capital of France stays where it is, whatever the dog says.",
    "I don't know.  Maybe Paris?\n\nIt's a hard question: rewards are read from the final hidden state. "
    "Indented text,\n\nnew lines\tand tabs... caf\u00e9, na\u00efve, \u6771\u4eac! The capital of Germany is Berlin, "
    "and the capital of France is Paris, they've said 2.71 times.",
]

# name -> what the tiny checkpoint looks like; hidden sizes are multiples of 32 so q8_0 applies
ARCHS = {
    "qwen2": dict(arch="Qwen2ForSequenceClassification", split=QWEN_SPLIT, template=CHATML, dtype="F32",
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                  config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6), extra_rows=3,
                  qkv_bias=True, qk_norm=False, num_labels=1, score_bias=False),
    "qwen3": dict(arch="Qwen3ForSequenceClassification", split=QWEN_SPLIT, template=QWEN3_TEMPLATE, dtype="BF16",
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                  config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6),
                  extra_rows=0, qkv_bias=False, qk_norm=True, num_labels=1, score_bias=False),
    "llama": dict(arch="LlamaForSequenceClassification", split=LLAMA3_SPLIT, template=LLAMA3_TEMPLATE, dtype="F16",
                  specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>",
                  config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, rope_theta=10000.0, rms_norm_eps=1e-5,
                              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=256)),
                  extra_rows=0, qkv_bias=False, qk_norm=False, num_labels=2, score_bias=True),
}
# Tolerances on max|llama.cpp - reference| / max|reference score|. llama.cpp keeps K and V in
# float16, so even an f32 file differs from the float64 reference: measured 1.6e-4 to 3.5e-3 (f32),
# 3.8e-4 (f16), 0.65e-2 to 1.2e-2 (q8_0). The bounds leave a margin of at least 3x.
TOL_F32 = 1e-2
TOL_F16 = 1e-2
TOL_Q8_0 = 5e-2


# --- a tiny HF checkpoint -------------------------------------------------------------------------
def train_tokenizer(spec: dict) -> Tokenizer:
    tok = byte_level_bpe(spec["split"], CORPUS, 420, spec["specials"])
    if spec["bos"]:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B",
            special_tokens=[(spec["bos"], tok.token_to_id(spec["bos"]))])
    return tok


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), still as float32."""
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def save_bf16(path: Path, tensors: dict):
    """A safetensors file in bfloat16, written by hand (numpy has no bfloat16)."""
    header, blobs, at = {}, [], 0
    for name, x in tensors.items():
        blob = (bf16_round(x).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(x.shape), "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def write_checkpoint(folder: Path, name: str, seed: int = 0):
    """Write a random checkpoint of ARCHS[name]; returns (weights as stored, as float32; config; tokenizer)."""
    spec = ARCHS[name]
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(spec)
    tok.save(str(folder / "tokenizer.json"))
    n_vocab = tok.get_vocab_size() + spec["extra_rows"]
    c = dict(spec["config"], architectures=[spec["arch"]], vocab_size=n_vocab, max_position_embeddings=2048,
             num_labels=spec["num_labels"], eos_token_id=tok.token_to_id(spec["eos"]),
             bos_token_id=tok.token_to_id(spec["bos"] or spec["specials"][0]), torch_dtype="float32")
    (folder / "config.json").write_text(json.dumps(c))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": spec["bos"], "eos_token": spec["eos"], "pad_token": spec["specials"][0],
         "chat_template": spec["template"]}))

    rng = np.random.default_rng(seed)
    E, F, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim", E // H)

    def mat(rows, cols):
        return rng.normal(0, 1 / np.sqrt(cols), (rows, cols)).astype(np.float32)

    def vec(n, mean=0.0, sd=0.1):
        return (mean + rng.normal(0, sd, n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0, 1, (n_vocab, E)).astype(np.float32),
         "model.norm.weight": vec(E, 1.0), "score.weight": mat(spec["num_labels"], E)}
    if spec["score_bias"]:
        w["score.bias"] = vec(spec["num_labels"], 0.0, 1.0)
    for i in range(L):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": vec(E, 1.0), p + "post_attention_layernorm.weight": vec(E, 1.0),
                  p + "self_attn.q_proj.weight": mat(H * D, E) * 2, p + "self_attn.k_proj.weight": mat(KV * D, E) * 2,
                  p + "self_attn.v_proj.weight": mat(KV * D, E), p + "self_attn.o_proj.weight": mat(E, H * D),
                  p + "mlp.gate_proj.weight": mat(F, E), p + "mlp.up_proj.weight": mat(F, E),
                  p + "mlp.down_proj.weight": mat(E, F)})
        if spec["qkv_bias"]:
            w.update({p + "self_attn.q_proj.bias": vec(H * D, 0, 0.5),
                      p + "self_attn.k_proj.bias": vec(KV * D, 0, 0.5),
                      p + "self_attn.v_proj.bias": vec(KV * D, 0, 0.5)})
        if spec["qk_norm"]:
            w.update({p + "self_attn.q_norm.weight": vec(D, 1.0), p + "self_attn.k_norm.weight": vec(D, 1.0)})
    if spec["dtype"] == "BF16":
        save_bf16(folder / "model.safetensors", w)
        w = {k: bf16_round(v) for k, v in w.items()}
    elif spec["dtype"] == "F16":
        w = {k: v.astype(np.float16) for k, v in w.items()}
        save_file(w, str(folder / "model.safetensors"))
        w = {k: v.astype(np.float32) for k, v in w.items()}
    else:
        save_file(w, str(folder / "model.safetensors"))
    return w, c, tok


# --- the reference forward pass (float64, HF's definitions) --------------------------------------
def rms_norm(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def inverse_frequencies(c, D):
    inv = 1.0 / c["rope_theta"] ** (np.arange(0, D, 2, dtype=np.float64) / D)
    s = c.get("rope_scaling")
    if s:  # Llama 3: long wavelengths are slowed down by `factor`, with a smooth band in between
        wavelen = 2 * np.pi / inv
        low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
        high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
        slow = np.where(wavelen > low_wl, inv / s["factor"], inv)
        t = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
            s["high_freq_factor"] - s["low_freq_factor"])
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = np.where(medium, (1 - t) * inv / s["factor"] + t * inv, slow)
    return inv


def rotate(x, inv):
    """HF RoPE: x is [T, heads, D]; the pairs are (i, i + D/2)."""
    ang = np.arange(len(x))[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def reference_scores(w, c, ids) -> np.ndarray:
    """All labels' logits at the last token of `ids`."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    H, KV, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
    D = c.get("head_dim", c["hidden_size"] // H)
    inv = inverse_frequencies(c, D)
    T = len(ids)
    h = w["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q, k, v = (x @ w[p + f"self_attn.{n}_proj.weight"].T + w.get(p + f"self_attn.{n}_proj.bias", 0)
                   for n in "qkv")
        q, k, v = q.reshape(T, H, D), k.reshape(T, KV, D), v.reshape(T, KV, D)
        if p + "self_attn.q_norm.weight" in w:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rotate(q, inv), rotate(k, inv)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        a = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + causal
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        h = h + np.einsum("hts,shd->thd", a, v).reshape(T, H * D) @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        g = x @ w[p + "mlp.gate_proj.weight"].T
        h = h + (g / (1 + np.exp(-g)) * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    last = rms_norm(h, w["model.norm.weight"], eps)[-1]
    return w["score.weight"] @ last + w.get("score.bias", 0)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> (checkpoint folder, weights, config, tokenizer, converted f32 GGUF)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for seed, name in enumerate(ARCHS):
        w, c, tok = write_checkpoint(root / name, name, seed)
        out[name] = (root / name, w, c, tok, conv.convert(root / name, root / f"{name}-f32.gguf", "f32"))
    return out


def scorer_for(path, **opts):
    return load_reward_model(path, n_threads=1, **opts)  # tiny models; 2 threads crawl on a loaded 2-core box


def fed_ids(scorer, text):
    return scorer.tokens_for(text)


def hf_render(template: str, messages, **context) -> str:
    """A chat template rendered as transformers' apply_chat_template renders it (jinja2's
    sandbox with trim_blocks and lstrip_blocks)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, **context)


def relative_error(got, want) -> float:
    """Largest difference, relative to the largest score (scores near zero would make a per-score
    ratio meaningless)."""
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


# --- scores -------------------------------------------------------------------------------------
def test_embeddings_mode_returns_the_rows_asked_for(tiny):
    """llama.cpp computes every token's row in embeddings mode whatever the output flags say;
    Context.decode must still hand back the rows that were asked for, in order."""
    model = Model(tiny["qwen2"][4])
    ctx = Context(model, 128, 1, n_threads=1, embeddings=True)
    try:
        tokens = model.tokenize(CORPUS[0])
        n = len(tokens)
        every = ctx.decode(tokens, range(n), [0] * n, [True] * n)
        ctx.clear()
        asked = ctx.decode(tokens, range(n), [0] * n, [i in (3, n - 1) for i in range(n)])
    finally:
        ctx.close()
        model.close()
    np.testing.assert_allclose(asked, every[[3, n - 1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(ARCHS))
def test_scores_match_a_numpy_forward_pass(tiny, name):
    folder, w, c, tok, path = tiny[name]
    scorer = scorer_for(path)
    try:
        scorer.begin(PROMPT, None, len(ANSWERS))
        got = scorer.score(list(range(len(ANSWERS))), ANSWERS)
        want = []
        for text in ANSWERS:
            ids = fed_ids(scorer, text)
            # the ids llama.cpp was fed are the HF tokenizer's ids for the whole rendered conversation
            rendered = hf_render(ARCHS[name]["template"], [{"role": "user", "content": PROMPT},
                                                            {"role": "assistant", "content": text}],
                                 bos_token=ARCHS[name]["bos"] or "", add_generation_prompt=False)
            assert ids == tok.encode(rendered, add_special_tokens=False).ids
            want.append(reference_scores(w, c, ids)[0])  # label 0 is the reward
    finally:
        scorer.close()
    err = relative_error(got, np.array(want))
    print(f"{name} f32: |llama.cpp - numpy| / max|score| = {err:.2e}")
    assert err < TOL_F32, (got, want)
    assert np.ptp(want) > 0.1  # the answers really get different scores


@pytest.mark.parametrize("out_type, tol", [("f16", TOL_F16), ("q8_0", TOL_Q8_0)])
def test_f16_and_q8_0_files_stay_close_to_the_reference(tiny, tmp_path, out_type, tol):
    folder, w, c, tok, _ = tiny["qwen3"]
    path = conv.convert(folder, tmp_path / f"rm-{out_type}.gguf", out_type)
    scorer = scorer_for(path)
    try:
        scorer.begin(PROMPT, None, len(ANSWERS))
        got = scorer.score(list(range(len(ANSWERS))), ANSWERS)
        want = np.array([reference_scores(w, c, fed_ids(scorer, t))[0] for t in ANSWERS])
    finally:
        scorer.close()
    err = relative_error(got, want)
    print(f"qwen3 {out_type}: |llama.cpp - numpy| / max|score| = {err:.2e}")
    assert err < tol


def test_the_head_is_stored_exactly_and_read_fast(tiny):
    for name, (folder, w, c, tok, path) in tiny.items():
        weight, bias = read_score_head(path)
        np.testing.assert_array_equal(weight, w["score.weight"])
        assert (bias is None) == ("score.bias" not in w)
        if bias is not None:
            np.testing.assert_array_equal(bias, w["score.bias"])
    started = time.perf_counter()
    for _ in range(10):
        read_score_head(tiny["qwen3"][4])
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("name", list(ARCHS))
def test_llama_cpp_tokenizes_like_the_hf_tokenizer(tiny, name):
    folder, w, c, tok, path = tiny[name]
    model = Model(path)
    try:
        for text in CORPUS + ANSWERS + ["", " ", "a", "  two  spaces", "x\n\n\ny", "12345678 1.5e-3",
                                        "日本語 🙂 ünïcödé", "it's THEY'RE 'quoted'", "tabs\t\tand\r\nCRLF",
                                        "<think> is an added token",
                                        "decomposed: cafe\u0301 nai\u0308ve A\u030a \u1100\u1161"]:
            assert model.tokenize(text, add_special=False, parse_special=False) == \
                tok.encode(text, add_special_tokens=False).ids, text
        special = f"{ARCHS[name]['specials'][-1]}user\nhi there{ARCHS[name]['eos']}"
        assert model.tokenize(special, parse_special=True) == tok.encode(special, add_special_tokens=False).ids
        assert model.adds_bos == (ARCHS[name]["bos"] is not None)
        assert model.meta("specrej.tokenizer.normalizer") == ("NFC" if ARCHS[name]["split"] == QWEN_SPLIT else None)
        assert model.meta("tokenizer.chat_template") == ARCHS[name]["template"]
    finally:
        model.close()


# Incremental vs from-scratch scores (same measure as above). Without flash attention they agree to
# <= 1e-5 here, so the 1e-3 bound holds with a wide margin. With flash attention (the scorers'
# default) they agree exactly as long as no candidate is dropped, but a drop frees cells that the
# other candidates' later tokens then fill, so their cells no longer lie in position order, and
# llama.cpp's CPU flash-attention kernel (which walks the cells in storage order) rounds
# differently: measured 6e-4 to 1.3e-3 after the drop in this test, so 1e-3 cannot be promised
# with flash attention on; its bound is 5e-3.
INCREMENTAL_TOL = {False: 1e-3, True: 5e-3}


@pytest.mark.parametrize("flash_attn", [False, True], ids=["no-flash-attn", "flash-attn"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_incremental_scoring_equals_scoring_from_scratch(tiny, name, flash_attn):
    """Score growing prefixes of the answers (cuts inside words), dropping one candidate midway as
    Speculative Rejection does; the last scores must equal a fresh scorer's on the final texts, and
    the RM must not be fed much more than the prompt and each answer once."""
    path = tiny[name][4]
    ids = list(range(len(ANSWERS)))
    scorer, fresh = scorer_for(path, flash_attn=flash_attn), scorer_for(path, flash_attn=flash_attn)
    try:
        scorer.begin(PROMPT, None, len(ANSWERS))
        live, last = list(ids), {}
        for cut in (0.23, 0.41, 0.67, 0.88, 1.0):
            texts = [ANSWERS[i][:round(cut * len(ANSWERS[i]))] for i in live]
            last.update(zip(live, scorer.score(live, texts)))
            if cut == 0.41:
                scorer.drop([2])
                live.remove(2)
        fresh.begin(PROMPT, None, len(live))
        final = fresh.score(list(range(len(live))), [ANSWERS[i] for i in live])
        answer_tokens = [len(scorer.model.tokenize(ANSWERS[i], parse_special=False)) for i in live]
        answer_tokens.append(len(scorer.model.tokenize(ANSWERS[2][:round(0.41 * len(ANSWERS[2]))],
                                                       parse_special=False)))
        budget = 1.15 * (len(scorer.prefix) + sum(answer_tokens))
        fed = scorer.tokens_fed
    finally:
        scorer.close()
        fresh.close()
    incremental = np.array([last[i] for i in live])
    err = relative_error(incremental, final)
    print(f"{name} flash_attn={flash_attn}: incremental vs from scratch, max relative difference {err:.1e}; "
          f"tokens fed {fed} <= {budget:.0f}")
    assert err <= INCREMENTAL_TOL[flash_attn], (incremental, final)
    assert fed <= budget


# Answers the chat templates rewrite: whitespace around them (Llama 3 trims it, Qwen3 strips
# leading newlines), think blocks (Qwen3 moves them into a block of their own), decomposed Unicode
# (Qwen's tokenizer composes it first).
REWRITTEN = [
    "  \n Paris is the capital of France, because the government sits there.  \n\n",
    "\n\nThe capital of France is Paris; Berlin is the capital of Germany.\n",
    "<think>\nThe user asks about France. Paris, not Lyon.\n</think>\n\nParis is the capital, it's 12345 times so.",
    "Cafe\u0301 au lait in Paris, nai\u0308ve but true: the capital of France.",
]


def reference_for(name, w, c, tok, text) -> tuple:
    """(token ids, reward) the reference gives for PROMPT answered with `text`."""
    rendered = hf_render(ARCHS[name]["template"], [{"role": "user", "content": PROMPT},
                                                    {"role": "assistant", "content": text}],
                         bos_token=ARCHS[name]["bos"] or "", add_generation_prompt=False)
    ids = tok.encode(rendered, add_special_tokens=False).ids
    return ids, reference_scores(w, c, ids)[0]


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_answers_the_template_rewrites_are_scored_as_rendered(tiny, name):
    """Partial answers, cut as Speculative Rejection cuts them (growing, one dropped), get the token
    ids and scores the reference gives for the conversation the template renders at each cut."""
    folder, w, c, tok, path = tiny[name]
    scorer = scorer_for(path, flash_attn=False)
    live = list(range(len(REWRITTEN)))
    try:
        scorer.begin(PROMPT, None, len(REWRITTEN))
        for cut in (0.1, 0.35, 0.6, 1.0):
            texts = [REWRITTEN[i][:round(cut * len(REWRITTEN[i]))] for i in live]
            got = scorer.score(live, texts)
            want = []
            for i, text in zip(live, texts):
                ids, reward = reference_for(name, w, c, tok, text)
                assert scorer.held[i] == ids, (cut, text)
                assert scorer.ctx.pos_max(i) == len(ids) - 1
                want.append(reward)
            assert relative_error(got, want) < TOL_F32, (cut, got, want)
            if cut == 0.35:
                scorer.drop([1])
                live.remove(1)
    finally:
        scorer.close()


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_a_judge_reads_the_rewritten_answer_and_then_its_question(tiny, name):
    """An LLM judge (its question is a user turn after the answer) is fed what the template renders
    too, cut by cut, and reads the same odds as a judge fed each conversation from scratch."""
    path = tiny[name][4]
    tok = tiny[name][3]
    model = Model(path)
    question = "Is the answer above correct?"
    inc = AnswerScorer(model, yes_no_readout(model), follow_up=question, n_threads=1, flash_attn=False)
    try:
        inc.begin(PROMPT, None, len(REWRITTEN))
        ids = list(range(len(REWRITTEN)))
        for cut in (0.2, 0.5, 1.0):
            texts = [t[:round(cut * len(t))] for t in REWRITTEN]
            got = inc.score(ids, texts)
            for i, text in zip(ids, texts):
                rendered = hf_render(ARCHS[name]["template"], [
                    {"role": "user", "content": PROMPT}, {"role": "assistant", "content": text},
                    {"role": "user", "content": question}], bos_token=ARCHS[name]["bos"] or "",
                    add_generation_prompt=True)
                assert inc.held[i] == tok.encode(rendered, add_special_tokens=False).ids
        fresh = inc.fresh()
        fresh.begin(PROMPT, None, len(REWRITTEN))
        want = fresh.score(ids, texts)
        fresh.close()
    finally:
        inc.close()
        model.close()
    np.testing.assert_allclose(got, want, atol=1e-3)


# --- errors ---------------------------------------------------------------------------------------
def test_a_gguf_without_score_head_is_a_reward_error(tiny_gguf):
    assert read_score_head(tiny_gguf) == (None, None)
    with pytest.raises(RewardError) as caught:
        load_reward_model(tiny_gguf)
    message = str(caught.value)
    assert "\n" not in message and "no score head" in message and f"judge:{tiny_gguf}" in message


def test_unsupported_architecture_is_bad_input(tiny, tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny["qwen2"][0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, architectures=["GPT2ForSequenceClassification"])))
    with pytest.raises(BadInput) as caught:
        conv.convert(folder, tmp_path / "out.gguf")
    assert "GPT2ForSequenceClassification" in str(caught.value)
    assert all(a in str(caught.value) for a in conv.ARCHITECTURES)
    assert not (tmp_path / "out.gguf").exists()


def test_an_unknown_pre_tokenizer_is_bad_input(tiny, tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny["qwen2"][0], folder)
    text = (folder / "tokenizer.json").read_text().replace(r"\\p{N}|", r"\\p{N}{1,2}|")
    (folder / "tokenizer.json").write_text(text)
    with pytest.raises(BadInput, match="pre-tokenizer"):
        conv.convert(folder, tmp_path / "out.gguf")


def test_a_failed_conversion_leaves_no_file(tiny, tmp_path):
    folder = tmp_path / "huge"
    shutil.copytree(tiny["qwen2"][0], folder)
    w = {k: v.copy() for k, v in tiny["qwen2"][1].items()}
    w["model.layers.1.mlp.up_proj.weight"][0, 0] = 1e6  # too large for float16, fine in f32
    save_file(w, str(folder / "model.safetensors"))
    with pytest.raises(BadInput, match="float16"):
        conv.convert(folder, tmp_path / "out" / "rm.gguf", "f16")
    assert list((tmp_path / "out").iterdir()) == []


# --- RoPE and config settings -----------------------------------------------------------------------
def transformers5_config(config: dict) -> dict:
    """The same settings as transformers >= 5 writes them: RoPE under `rope_parameters`."""
    c = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
    c["rope_parameters"] = dict(config.get("rope_scaling") or {"rope_type": "default"},
                                rope_theta=config["rope_theta"])
    return c


def copy_with_config(tiny, name, tmp_path, edit) -> Path:
    folder = tmp_path / f"{name}-edited"
    shutil.copytree(tiny[name][0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(config)))
    return folder


@pytest.mark.parametrize("name", list(ARCHS))
def test_rope_parameters_convert_like_top_level_rope_theta(tiny, tmp_path, name):
    """transformers 5 writes RoPE as rope_parameters; the file must be the one the older layout gives
    (same RoPE base, and Llama keeps its llama3 scaling factors)."""
    folder = copy_with_config(tiny, name, tmp_path, transformers5_config)
    new = conv.convert(folder, tmp_path / "new.gguf", "f32", name=tiny[name][0].name)
    assert new.read_bytes() == tiny[name][4].read_bytes()
    model = Model(new)
    try:
        assert float(model.meta(f"{model.meta('general.architecture')}.rope.freq_base")) == ARCHS[name]["config"]["rope_theta"]
    finally:
        model.close()


@pytest.mark.parametrize("edit, named", [
    (lambda c: dict(c, rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
    (lambda c: dict(transformers5_config(c), rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     "longrope"),
    (lambda c: dict(c, rope_scaling={"rope_type": "linear", "factor": 2.0, "mystery": 1}), "mystery"),
    (lambda c: dict(c, sliding_attention_stride=4), "sliding_attention_stride"),
    (lambda c: dict(c, quantization_config={"quant_method": "awq"}), "quantization_config"),
    (lambda c: dict(c, hidden_act="gelu"), "hidden_act"),
    (lambda c: dict(c, use_sliding_window=True), "use_sliding_window"),
    (lambda c: dict(transformers5_config(c), rope_theta=5.0), "two RoPE bases"),
    (lambda c: {k: v for k, v in c.items() if k != "rope_theta"}, "no RoPE base"),
], ids=["dynamic", "longrope", "rope-key", "config-key", "quantized", "activation", "sliding", "two-bases",
        "no-base"])
def test_settings_the_converter_does_not_understand_are_refused_by_name(tiny, tmp_path, edit, named):
    folder = copy_with_config(tiny, "qwen2", tmp_path, edit)
    with pytest.raises(BadInput) as caught:
        conv.convert(folder, tmp_path / "out" / "rm.gguf", "f32")
    assert named in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_normalizer_other_than_unicode_forms_is_refused(tiny, tmp_path):
    folder = tmp_path / "lower"
    shutil.copytree(tiny["qwen2"][0], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(BadInput, match="Lowercase"):
        conv.convert(folder, tmp_path / "out.gguf", "f32")


def test_a_converted_file_gets_the_umask_mode(tiny, tmp_path):
    old = os.umask(0o022)
    try:
        path = conv.convert(tiny["qwen2"][0], tmp_path / "rm.gguf", "f32")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# --- CLI and the registry's convert: entries ------------------------------------------------------
def test_cli_convert_reward(tiny, tmp_path):
    folder = tiny["llama"][0]
    out = tmp_path / "rm.gguf"
    result = CliRunner().invoke(cli, ["convert-reward", str(folder), "-o", str(out), "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    np.testing.assert_array_equal(read_score_head(out)[0], tiny["llama"][1]["score.weight"])

    assert_one_line_error(CliRunner().invoke(cli, ["convert-reward", str(tmp_path / "absent"), "-o", str(out)]),
                          "absent")
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert_one_line_error(CliRunner().invoke(cli, ["convert-reward", str(bad), "-o", str(out)]),
                          "BertForSequenceClassification", "Qwen3ForSequenceClassification")


class RepoHubHandler(FakeHubHandler):
    """The fake hub of test_registry, plus the two listing calls snapshot_download makes."""

    def do_GET(self):
        path, _, _ = self.path.partition("?")
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "models"]:
            return super().do_GET()
        self.server.requests.append((self.command, self.path))
        repo = "/".join(parts[2:4])
        files = {k[len(repo) + 1:]: v for k, v in self.server.files.items() if k.startswith(repo + "/")}
        if parts[4] == "revision":
            body = {"id": repo, "sha": hashlib.sha1(repo.encode()).hexdigest()}  # FakeHubHandler's commit
        else:  # tree
            body = [{"type": "file", "path": p, "size": len(data), "oid": "%040x" % i}
                    for i, (p, data) in enumerate(sorted(files.items()))]
        raw = json.dumps(body).encode()
        self.send_response(200 if files else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def test_a_convert_entry_is_downloaded_and_converted_once(tiny, tmp_path, isolated_cache):
    folder = tiny["qwen3"][0]
    files = {f"acme/tiny-rm/{p.name}": p.read_bytes() for p in folder.iterdir()}
    files["acme/tiny-rm/pytorch_model.bin"] = b"not needed"
    hub = FakeHub(files)
    hub.RequestHandlerClass = RepoHubHandler
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        add_user_models(isolated_cache, "tiny-rm reward convert:hf:acme/tiny-rm - - mit test reward model")
        first = run_cli_process("models", "pull", "tiny-rm", hub=hub, hf_cache=tmp_path / "hf-cache")
        assert first.returncode == 0, first.stderr
        path = Path(first.stdout.strip())
        assert path == isolated_cache / "converted" / "acme" / "tiny-rm.gguf"
        assert path.read_bytes() == conv.convert(folder, tmp_path / "local.gguf", "f16", name="tiny-rm").read_bytes()
        assert not any("pytorch_model.bin" in p for _, p in hub.requests)
        assert [p.name for p in path.parent.iterdir()] == ["tiny-rm.gguf"]  # no temporary file left

        hub.requests.clear()
        again = run_cli_process("models", "pull", "tiny-rm", hub=hub, hf_cache=tmp_path / "hf-cache")
        assert again.returncode == 0 and again.stdout.strip() == str(path) and hub.requests == []
        assert registry.is_downloaded(registry.load_registry()["tiny-rm"])
    finally:
        hub.shutdown()
        hub.server_close()


# --- outputs: never over an input, a device, a FIFO or a symlink ------------------------------------
def cli_convert(folder, out, *extra):
    return CliRunner().invoke(cli, ["convert-reward", str(folder), "-o", str(out), "--type", "f32", *extra])


def test_the_output_cannot_be_one_of_the_inputs(tiny, tmp_path):
    """-o CK/model.safetensors once replaced the weights it had just read; under another name (a
    hard link) it is the same file too."""
    folder = tmp_path / "ck"
    shutil.copytree(tiny["qwen2"][0], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    os.link(folder / "config.json", tmp_path / "linked.json")
    for out in (folder / "model.safetensors", folder / "tokenizer.json", tmp_path / "linked.json"):
        assert_one_line_error(cli_convert(folder, out), "is the input file", out.name)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "linked.json"]
    # a new file inside the checkpoint's folder is fine, and so is converting again over it
    for _ in range(2):
        assert cli_convert(folder, folder / "rm.gguf").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "rm.gguf"])


def special_output(kind: str, tmp_path: Path) -> Path:
    """An existing -o that is not a regular file."""
    path = tmp_path / f"out-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":  # what /dev/full or /dev/null is: only root may make one
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    elif kind == "symlink":
        (tmp_path / "target.gguf").write_bytes(b"keep me")
        path.symlink_to(tmp_path / "target.gguf")
    elif kind == "dangling-symlink":
        path.symlink_to(tmp_path / "nowhere.gguf")
    elif kind == "folder":
        path.mkdir()
    return path


SPECIAL = ["fifo", "device", "symlink", "dangling-symlink", "folder"]


def file_kind(path: Path) -> str:
    mode = os.lstat(path).st_mode
    return ("fifo" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) else "symlink" if stat.S_ISLNK(mode)
            else "folder" if stat.S_ISDIR(mode) else "file")


@pytest.mark.parametrize("kind", SPECIAL)
def test_an_output_that_is_not_a_regular_file_is_refused_and_kept(tiny, tmp_path, kind):
    out = special_output(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli_convert(tiny["qwen2"][0], out)
    assert_one_line_error(result, out.name)
    assert "not a regular file" in result.stderr
    assert file_kind(out) == kind.replace("dangling-", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left either
    if kind == "symlink":
        assert (tmp_path / "target.gguf").read_bytes() == b"keep me"


@pytest.mark.parametrize("kind", SPECIAL)
def test_the_api_refuses_special_outputs_with_a_typed_error(tiny, tmp_path, kind):
    out = special_output(kind, tmp_path)
    with pytest.raises(OutputFileError, match="not a regular file"):
        conv.convert(tiny["qwen2"][0], out, "f32")
    assert file_kind(out) == kind.replace("dangling-", "")


def test_an_output_folder_that_cannot_be_made_is_refused_before_reading(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(cli_convert(tiny["qwen2"][0], tmp_path / "afile" / "sub" / "rm.gguf"), "afile")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_conversion_leaves_the_old_output_and_no_temporary_file(tiny, tmp_path, monkeypatch, stop):
    out = tmp_path / "rm.gguf"
    out.write_bytes(b"the previous model")
    real_encode, calls = conv._encode, []

    def encode_then_stop(data, qtype):  # the user's Ctrl-C (or a failure) after some tensors are written
        calls.append(1)
        if len(calls) == 3:
            raise stop()
        return real_encode(data, qtype)

    monkeypatch.setattr(conv, "_encode", encode_then_stop)
    with pytest.raises(stop):
        conv.convert(tiny["qwen2"][0], out, "f32")
    assert len(calls) == 3
    assert out.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["rm.gguf"]


# --- damaged inputs: one line, exit 2, nothing written -----------------------------------------------
def edit_header(edit):
    """A damage that rewrites the safetensors header (the data stays where it was)."""
    def damage(path: Path):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        new = json.dumps(edit(header, len(raw) - 8 - n)).encode()
        new += b" " * (n - len(new)) if len(new) <= n else b""
        path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return damage


def first_tensor(header: dict) -> dict:
    return next(v for k, v in header.items() if k != "__metadata__")


def set_first(key, value):
    def edit(header, data_size):
        first_tensor(header)[key] = value(data_size) if callable(value) else value
        return header
    return edit


def drop_dtype(header, data_size):
    del first_tensor(header)["dtype"]
    return header


DAMAGED_SAFETENSORS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "shorter-than-its-length-field": lambda p: p.write_bytes(b"\x10\x00\x00"),
    "header-length-2^62": lambda p: p.write_bytes(struct.pack("<Q", 2**62) + p.read_bytes()[8:]),
    "header-not-json": lambda p: p.write_bytes(struct.pack("<Q", 4) + b"\xff{[x" + p.read_bytes()[12:]),
    "header-is-a-list": edit_header(lambda header, data_size: [header]),
    "tensor-without-dtype": edit_header(drop_dtype),
    "offsets-past-the-end": edit_header(set_first("data_offsets", lambda size: [size, size + 256])),
    "offsets-reversed": edit_header(set_first("data_offsets", [256, 0])),
    "offsets-not-numbers": edit_header(set_first("data_offsets", ["0", "256"])),
    "shape-not-the-bytes": edit_header(set_first("shape", [3, 5])),
    "huge-shape": edit_header(set_first("shape", [2**40, 2**40])),
    "negative-shape": edit_header(set_first("shape", [-1, 64])),
    "tensor-not-a-dict": edit_header(lambda header, data_size: dict(header, extra=5)),
}


@pytest.mark.parametrize("damage", list(DAMAGED_SAFETENSORS))
def test_a_damaged_safetensors_file_is_one_line_naming_it(tiny, tmp_path, damage):
    folder = tmp_path / "ck"
    shutil.copytree(tiny["qwen2"][0], folder)
    DAMAGED_SAFETENSORS[damage](folder / "model.safetensors")
    assert_one_line_error(cli_convert(folder, tmp_path / "out" / "rm.gguf"), "model.safetensors")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# (edit of the qwen2 config: 64 wide, 2 layers, 4 heads of 16, 2 KV heads, 96 MLP; what the error names)
BAD_CONFIGS = {
    "config-is-a-list": (lambda c: [c], "config.json"),
    "eps-a-string": (lambda c: dict(c, rms_norm_eps="x"), "rms_norm_eps"),
    "eps-negative": (lambda c: dict(c, rms_norm_eps=-1.0), "rms_norm_eps"),
    "eps-nan": (lambda c: dict(c, rms_norm_eps=float("nan")), "rms_norm_eps"),
    "layers-fractional": (lambda c: dict(c, num_hidden_layers=2.5), "num_hidden_layers"),
    "layers-a-billion": (lambda c: dict(c, num_hidden_layers=10**9), "num_hidden_layers"),
    "layers-more-than-stored": (lambda c: dict(c, num_hidden_layers=3), "num_hidden_layers"),
    "layers-fewer-than-stored": (lambda c: dict(c, num_hidden_layers=1), "num_hidden_layers"),
    "layers-zero": (lambda c: dict(c, num_hidden_layers=0), "num_hidden_layers"),
    "hidden-size-10^12": (lambda c: dict(c, hidden_size=10**12), "hidden_size"),
    "hidden-size-not-the-weights": (lambda c: dict(c, hidden_size=32), "hidden_size"),
    "head-dim-2^40": (lambda c: dict(c, head_dim=2**40), "head_dim"),
    "head-dim-not-the-weights": (lambda c: dict(c, head_dim=8), "head_dim"),
    "heads-zero": (lambda c: dict(c, num_attention_heads=0), "num_attention_heads"),
    "heads-not-dividing-hidden-size": (lambda c: dict(c, num_attention_heads=3), "num_attention_heads"),
    "kv-heads-not-dividing-heads": (lambda c: dict(c, num_key_value_heads=3), "num_key_value_heads"),
    "kv-heads-a-bool": (lambda c: dict(c, num_key_value_heads=True), "num_key_value_heads"),
    "mlp-not-the-weights": (lambda c: dict(c, intermediate_size=100), "intermediate_size"),
    "context-negative": (lambda c: dict(c, max_position_embeddings=-1), "max_position_embeddings"),
    "vocab-size-a-string": (lambda c: dict(c, vocab_size="many"), "vocab_size"),
    "architectures-a-string": (lambda c: dict(c, architectures=c["architectures"][0]), "architectures"),
    "architectures-of-dicts": (lambda c: dict(c, architectures=[{}]), "architectures"),
    "rope-theta-a-string": (lambda c: dict(c, rope_theta="x"), "rope_theta"),
    "rope-theta-zero": (lambda c: dict(c, rope_theta=0), "rope_theta"),
    "rope-scaling-a-string": (lambda c: dict(c, rope_scaling="linear"), "rope_scaling"),
    "rope-factor-a-string": (lambda c: dict(c, rope_scaling={"rope_type": "linear", "factor": "2"}), "factor"),
    "yarn-context-fractional": (lambda c: dict(c, rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                              "original_max_position_embeddings": 1.5}),
                                "original_max_position_embeddings"),
    "layer-types-a-number": (lambda c: dict(c, layer_types=5), "layer_types"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_config_llama_cpp_could_not_load_is_refused_naming_the_field(tiny, tmp_path, case):
    edit, named = BAD_CONFIGS[case]
    folder = copy_with_config(tiny, "qwen2", tmp_path, edit)
    result = cli_convert(folder, tmp_path / "out" / "rm.gguf")
    assert_one_line_error(result, named)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_llama3_rope_with_equal_frequency_factors_is_refused(tiny, tmp_path):
    """high_freq_factor == low_freq_factor would divide by zero in the RoPE factors."""
    def edit(c):
        return dict(c, rope_scaling=dict(c["rope_scaling"], high_freq_factor=1.0))
    folder = copy_with_config(tiny, "llama", tmp_path, edit)
    assert_one_line_error(cli_convert(folder, tmp_path / "rm.gguf"), "high_freq_factor")
    assert not (tmp_path / "rm.gguf").exists()


def test_a_missing_layer_tensor_is_refused_at_conversion(tiny, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(tiny["qwen3"][0], folder)
    w = {k: v for k, v in tiny["qwen3"][1].items() if k != "model.layers.1.self_attn.k_norm.weight"}
    save_file(w, str(folder / "model.safetensors"))
    assert_one_line_error(cli_convert(folder, tmp_path / "rm.gguf"), "model.layers.1.self_attn.k_norm.weight")
    assert not (tmp_path / "rm.gguf").exists()


def edit_tokenizer(edit):
    def damage(folder: Path):
        tok = json.loads((folder / "tokenizer.json").read_text())
        (folder / "tokenizer.json").write_text(json.dumps(edit(tok)))
    return damage


def set_model(key, value):
    return edit_tokenizer(lambda tok: dict(tok, model=dict(tok["model"], **{key: value})))


def fifo_instead_of(name):
    def damage(folder: Path):
        (folder / name).unlink()
        os.mkfifo(folder / name)
    return damage


# (damage of a qwen2 checkpoint folder, what the one-line error names)
DAMAGED_FOLDERS = {
    "vocab-a-list": (set_model("vocab", [1, 2]), "model.vocab"),
    "id-a-string": (set_model("vocab", {"a": "1"}), "'a'"),
    "id-negative": (set_model("vocab", {"a": -5}), "'a'"),
    "merges-a-number": (set_model("merges", 5), "merges"),
    "added-tokens-a-number": (edit_tokenizer(lambda tok: dict(tok, added_tokens=5)), "added_tokens"),
    "added-token-without-text": (edit_tokenizer(lambda tok: dict(tok, added_tokens=[{"id": 3}])), "content"),
    "pre-tokenizer-a-string": (edit_tokenizer(lambda tok: dict(tok, pre_tokenizer="x")), "pre_tokenizer"),
    "split-pattern-a-string": (edit_tokenizer(lambda tok: dict(tok, pre_tokenizer={"type": "Split", "pattern": "x"})),
                               "pattern"),
    "normalizer-a-list": (edit_tokenizer(lambda tok: dict(tok, normalizer=[1])), "normalizer"),
    "decoder-a-list": (edit_tokenizer(lambda tok: dict(tok, decoder=[1])), "decoder"),
    "tokenizer-config-a-list": (lambda folder: (folder / "tokenizer_config.json").write_text("[1]"), "chat template"),
    "tokenizer-config-not-json": (lambda folder: (folder / "tokenizer_config.json").write_text("{"), "chat template"),
    "config-nested-deeply": (lambda folder: (folder / "config.json").write_text("[" * 10**5 + "]" * 10**5),
                             "config.json"),
    "weights-a-fifo": (fifo_instead_of("model.safetensors"), "not a regular file"),
    "tokenizer-a-fifo": (fifo_instead_of("tokenizer.json"), "not a regular file"),
    "tensor-stored-twice": (lambda folder: shutil.copy(folder / "model.safetensors", folder / "more.safetensors"),
                            "stored twice"),
    "weights-from-dev-zero": (lambda folder: ((folder / "model.safetensors").unlink(),
                                              (folder / "model.safetensors").symlink_to("/dev/zero")),
                              "not a regular file"),
}


@pytest.mark.parametrize("case", list(DAMAGED_FOLDERS))
def test_a_damaged_tokenizer_or_an_input_that_is_not_a_file_is_one_line(tiny, tmp_path, case):
    """Each of these was a traceback (or, for a FIFO, a wait forever) before the tokenizer's parts
    and the input files were checked."""
    damage, named = DAMAGED_FOLDERS[case]
    folder = tmp_path / "ck"
    shutil.copytree(tiny["qwen2"][0], folder)
    damage(folder)
    assert_one_line_error(cli_convert(folder, tmp_path / "rm.gguf"), named)
    assert not (tmp_path / "rm.gguf").exists()


@pytest.mark.parametrize("tensor, shape", [("model.embed_tokens.weight", ()), ("score.weight", ()),
                                           ("score.weight", (64,)), ("score.weight", (0, 64)),
                                           ("model.norm.weight", (64, 1))])
def test_a_weight_of_the_wrong_rank_or_empty_is_refused(tiny, tmp_path, tensor, shape):
    folder = tmp_path / "ck"
    shutil.copytree(tiny["qwen2"][0], folder)
    w = dict(tiny["qwen2"][1], **{tensor: np.zeros(shape, np.float32)})
    save_file(w, str(folder / "model.safetensors"))
    assert_one_line_error(cli_convert(folder, tmp_path / "rm.gguf"), tensor)
    assert not (tmp_path / "rm.gguf").exists()

"""Convert a Hugging Face sequence-classification reward model into one GGUF file.

llama.cpp's own converter drops the `score` head of `*ForSequenceClassification` checkpoints.
Here the backbone is written as a plain llama.cpp model of the same architecture (run as an
embedding model by `llama/reward_model.py`) and the head goes into the file's metadata, so the result is
one self-contained reward model:

    specrej-local convert-reward hf:Skywork/Skywork-Reward-V2-Qwen3-0.6B -o skywork.gguf

Names and constants come from the `gguf` package (tensor name maps, metadata keys, token types,
and `SpecialVocab` for merges, special token ids, add-BOS and the chat template). Weights are read
from safetensors files with numpy alone (safetensors_file.py), one tensor at a time, so converting
needs about one tensor's worth of memory beyond the page cache. The config and the stored shapes
are checked first (hf_config.py), and the output is written through files.atomic_output.
"""
import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from . import hf_config, registry
from ..errors import BadInput, DownloadError
from ..files import atomic_output, check_output_path
from .safetensors_file import Checkpoint, is_regular
from .score_head import HEAD_BIAS, HEAD_SHAPE, HEAD_WEIGHT
from .text_normalizer import NORMALIZER_KEY, forms_of

ARCHITECTURES = {  # HF `architectures[0]` -> llama.cpp architecture of the backbone
    "Qwen2ForSequenceClassification": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForSequenceClassification": gguf.MODEL_ARCH.QWEN3,
    "LlamaForSequenceClassification": gguf.MODEL_ARCH.LLAMA,
}
OUT_TYPES = {  # --type -> (type of 2-D weights, general.file_type)
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# llama.cpp picks its pre-tokenizer by name (tokenizer.ggml.pre); each name stands for one split
# regex, which is what the HF tokenizer.json states. The gguf package has no such table.
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+",  # Qwen2, Qwen2.5, Qwen3
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+",  # Llama 3.x
}
DOWNLOAD_PATTERNS = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "chat_template.json", "chat_template.jinja", "*.safetensors", "*.safetensors.index.json"]
_READ_PATTERNS = DOWNLOAD_PATTERNS + ["merges.txt", "added_tokens.json"]  # gguf's SpecialVocab may read these too
_SKIPPED = ("rotary_emb.inv_freq",)  # buffers some checkpoints store; llama.cpp computes them
_F16_MAX = float(np.finfo(np.float16).max)


# --- the pieces of the GGUF -------------------------------------------------------------------
def _inputs(src: Path) -> list:
    """The files of checkpoint folder `src` that conversion reads."""
    try:
        return [p for p in src.iterdir() if any(fnmatch.fnmatch(p.name, pattern) for pattern in _READ_PATTERNS)]
    except OSError as exc:
        raise BadInput(f"cannot read {src}: {exc.strerror or exc}") from None


def _read_json(path: Path):
    if not path.exists():
        raise BadInput(f"{path.parent} is not a Hugging Face checkpoint: {path.name} is missing")
    if not is_regular(path):
        raise BadInput(f"{path} is not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInput(f"cannot read {path}: {str(exc)[:120]}") from None


def _part(value, what: str, where: Path, kind=dict):
    """A part of tokenizer.json that must be a JSON object (or list), empty when absent."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise BadInput(f"{where}: {what} must be a JSON {'object' if kind is dict else 'list'}, "
                       f"not a {type(value).__name__}")
    return value


def _pre_tokenizer(tok: dict, where: Path) -> str:
    """The llama.cpp pre-tokenizer name whose regex the HF tokenizer uses."""
    pre = _part(tok.get("pre_tokenizer"), "pre_tokenizer", where)
    steps = _part(pre.get("pretokenizers"), "pre_tokenizer.pretokenizers", where, list) \
        if pre.get("type") == "Sequence" else [pre]
    steps = [_part(step, "a pre-tokenizer step", where) for step in steps]
    regexes = [_part(s.get("pattern"), "a Split pattern", where).get("Regex") for s in steps if s.get("type") == "Split"]
    for name, regex in PRE_TOKENIZERS.items():
        if regexes == [regex]:
            return name
    raise BadInput(f"{where}: the tokenizer's pre-tokenizer split {str(regexes or '(none)')[:200]} is not one "
                   f"llama.cpp knows by name; supported: {', '.join(PRE_TOKENIZERS)}")


def _token_id(value, text, where: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput(f"{where}: token {str(text)[:40]!r} has id {value!r:.40}, not a whole number >= 0")
    return value


def _vocab(tok: dict, n_rows: int, where: Path):
    """Token texts and types for `n_rows` embedding rows (ids the tokenizer lacks become unused)."""
    model = _part(tok.get("model"), "model", where)
    byte_level = _part(tok.get("decoder"), "decoder", where).get("type") == "ByteLevel"
    if model.get("type") != "BPE" or model.get("byte_fallback") or not byte_level:
        raise BadInput(f"{where}: only byte-level BPE tokenizers (GPT-2 style) can be converted")
    if not _part(model.get("merges"), "model.merges", where, list):
        raise BadInput(f"{where}: the BPE model has no merges")
    ids = {text: _token_id(i, text, where) for text, i in _part(model.get("vocab"), "model.vocab", where).items()}
    types = {}
    for t in _part(tok.get("added_tokens"), "added_tokens", where, list):
        t = _part(t, "an added token", where)
        if not isinstance(t.get("content"), str):
            raise BadInput(f"{where}: an added token has no text (content)")
        i = ids[t["content"]] = _token_id(t.get("id"), t["content"], where)
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    if not ids:
        raise BadInput(f"{where}: the tokenizer has no tokens")
    if max(ids.values()) >= n_rows:
        raise BadInput(f"{where}: token id {max(ids.values())} has no row in the embedding matrix ({n_rows} rows)")
    tokens = [f"[PAD{i}]" for i in range(n_rows)]
    kinds = [gguf.TokenType.UNUSED] * n_rows
    for text, i in ids.items():
        tokens[i], kinds[i] = text, types.get(i, gguf.TokenType.NORMAL)
    return tokens, kinds


def _llama3_rope_factors(head_dim: int, theta: float, s: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3's long-context RoPE (llama.cpp reads them as rope_freqs)."""
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)  # 1: keep, 0: stretch by factor
    return (1.0 / ((1 - smooth) / factor + smooth)).astype(np.float32)


def _unrotate(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's q/k rows as [first halves | second halves] of the rotated pairs;
    llama.cpp's `llama` RoPE rotates adjacent rows, so interleave the two halves."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class _Tensor:
    name: str  # GGUF name
    shape: tuple  # numpy order (GGUF reverses it)
    qtype: gguf.GGMLQuantizationType
    load: object  # () -> float32 array of `shape`


def _storage_type(data_shape: tuple, want) -> gguf.GGMLQuantizationType:
    if len(data_shape) < 2:
        return gguf.GGMLQuantizationType.F32  # norms and biases: small, and precision-sensitive
    if want == gguf.GGMLQuantizationType.Q8_0:
        block = gguf.GGML_QUANT_SIZES[want][0]
        return want if data_shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16
    return want


def _nbytes(shape: tuple, qtype) -> int:
    if qtype == gguf.GGMLQuantizationType.F32:
        return 4 * int(np.prod(shape))
    if qtype == gguf.GGMLQuantizationType.F16:
        return 2 * int(np.prod(shape))
    return int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, qtype)))


def _encode(data: np.ndarray, qtype) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F32:
        return data.astype(np.float32, copy=False)
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _plan(ckpt: Checkpoint, arch, hp: hf_config.Hyper, want, src: Path) -> list:
    """The backbone's tensors under llama.cpp's names, in writing order (the score head is not one)."""
    n_head, n_head_kv = hp.n_head, hp.n_head_kv
    names = gguf.get_tensor_name_map(arch, hp.n_layer)
    q_role, k_role = (gguf.TENSOR_NAMES[t].split(".")[-1]
                      for t in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K))  # "attn_q", "attn_k"
    plan = []
    for hf_name in ckpt.tensors:
        if hf_name.startswith("score.") or hf_name.endswith(_SKIPPED):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise BadInput(f"{src}: tensor {hf_name} has no counterpart in llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]}")
        load = (lambda n=hf_name: ckpt.load(n))
        role = name.split(".")[-2]
        if arch == gguf.MODEL_ARCH.LLAMA and role in (q_role, k_role):
            heads = n_head if role == q_role else n_head_kv
            load = (lambda n=hf_name, h=heads: _unrotate(ckpt.load(n), h))
        shape = ckpt.shape(hf_name)
        plan.append(_Tensor(name, shape, _storage_type(shape, want), load))
    return plan


def _rope_freqs_tensor(theta: float, kind: str, settings: dict, head_dim: int):
    """Llama 3's per-frequency divisors as the rope_freqs tensor, or None for other RoPE types."""
    if kind != "llama3":
        return None
    factors = _llama3_rope_factors(head_dim, theta, settings)
    return _Tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.shape,
                   gguf.GGMLQuantizationType.F32, lambda: factors)


def _special_vocab(src: Path, n_vocab: int) -> gguf.SpecialVocab:
    """Merges, special token ids, add-BOS/EOS flags and the chat template, read by gguf's own code."""
    log = logging.getLogger("gguf.vocab")  # it warns about Llama 3's own post-processor: keep users' stderr clean
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(src, load_merges=True, n_vocab=n_vocab)
    except Exception as exc:  # gguf's reader of tokenizer_config.json and friends: any damage lands here
        raise BadInput(f"{src}: cannot read the special tokens or chat template ({type(exc).__name__}: "
                       f"{str(exc)[:120]})") from None
    finally:
        log.setLevel(level)
    special.add_special_token.setdefault("bos", False)  # HF adds no BOS unless its post-processor says so
    special.add_special_token.setdefault("eos", False)
    return special


def _add_tensor_info(w: gguf.GGUFWriter, t: _Tensor):
    nbytes = _nbytes(t.shape, t.qtype)
    if t.qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes)
    elif t.qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float16), nbytes)
    else:
        byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype)
        w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=t.qtype)


def convert(src_dir, out_path, out_type: str = "f16", name=None) -> Path:
    """Write the reward model in HF checkpoint folder `src_dir` as one GGUF file at `out_path`.

    `name` (general.name) defaults to the folder's name. The file is written under a temporary name
    beside `out_path` and renamed when complete (see files.atomic_output). Raises OutputFileError
    for an output that is a special file, a symlink or one of the checkpoint's files; BadInput for
    an unsupported architecture, tokenizer or config, or one that disagrees with the weights;
    ModelFileError for a damaged safetensors file. All of these come before anything is written.
    """
    src = Path(src_dir)
    if out_type not in OUT_TYPES:
        raise BadInput(f"unknown output type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    if not src.is_dir():
        raise BadInput(f"{src} is not a folder holding a Hugging Face checkpoint")
    out = check_output_path(out_path, inputs=_inputs(src))
    want, file_type = OUT_TYPES[out_type]

    # read and check everything before writing anything
    config = _read_json(src / "config.json")
    hp = hf_config.read(config, src, ARCHITECTURES)
    arch = ARCHITECTURES[hp.architecture]
    tok = _read_json(src / "tokenizer.json")
    if not isinstance(tok, dict):
        raise BadInput(f"{src / 'tokenizer.json'} must hold a JSON object, not a {type(tok).__name__}")
    pre = _pre_tokenizer(tok, src / "tokenizer.json")
    unicode_forms = forms_of(tok.get("normalizer"), src / "tokenizer.json")
    ckpt = Checkpoint(src)
    if "score.weight" not in ckpt.tensors:
        raise BadInput(f"{src} has no score.weight: not a sequence-classification checkpoint")
    hf_config.check_shapes(hp, ckpt.shapes(), src)
    plan = _plan(ckpt, arch, hp, want, src)
    rope_freqs = _rope_freqs_tensor(hp.rope_theta, hp.rope_kind, hp.rope, hp.head_dim)
    if rope_freqs is not None:
        plan.append(rope_freqs)
    embd = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    rows = next(t.shape[0] for t in plan if t.name == embd)
    tokens, token_types = _vocab(tok, rows, src / "tokenizer.json")
    special = _special_vocab(src, len(tokens))
    W = ckpt.load("score.weight")
    b = ckpt.load("score.bias") if "score.bias" in ckpt.tensors else None

    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        try:
            # the head first, right after general.architecture: score_head finds it in the first kilobytes
            f32, u32, array = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.ARRAY
            w.add_key_value(HEAD_SHAPE, list(W.shape), array, sub_type=u32)
            w.add_key_value(HEAD_WEIGHT, W.ravel().tolist(), array, sub_type=f32)
            if b is not None:
                w.add_key_value(HEAD_BIAS, b.ravel().tolist(), array, sub_type=f32)
            w.add_name(name or src.resolve().name)
            w.add_file_type(file_type)
            if want == gguf.GGMLQuantizationType.Q8_0:
                w.add_quantization_version(gguf.GGML_QUANT_VERSION)

            # hyperparameters, with HF's defaults for keys a config may leave out (hf_config fills them in)
            w.add_context_length(hp.n_ctx)
            w.add_embedding_length(hp.n_embd)
            w.add_block_count(hp.n_layer)
            w.add_feed_forward_length(hp.n_ff)
            w.add_head_count(hp.n_head)
            w.add_head_count_kv(hp.n_head_kv)
            w.add_key_length(hp.head_dim)
            w.add_value_length(hp.head_dim)
            w.add_rope_dimension_count(hp.head_dim)
            w.add_rope_freq_base(hp.rope_theta)
            w.add_layer_norm_rms_eps(hp.eps)
            if hp.rope_kind in ("linear", "yarn"):
                linear = hp.rope_kind == "linear"
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if linear else gguf.RopeScalingType.YARN)
                w.add_rope_scaling_factor(hp.rope["factor"])
                if not linear:
                    w.add_rope_scaling_orig_ctx_len(hp.rope["original_max_position_embeddings"])

            # tokenizer and chat template
            w.add_vocab_size(len(tokens))
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(pre)
            if unicode_forms:
                w.add_string(NORMALIZER_KEY, ",".join(unicode_forms))
            w.add_token_list(tokens)
            w.add_token_types(token_types)
            special.add_to_gguf(w, quiet=True)

            # tensors: all their descriptions first, then their data one at a time
            for t in plan:
                _add_tensor_info(w, t)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in plan:
                data = t.load()
                if t.qtype == gguf.GGMLQuantizationType.F16 and np.abs(data).max(initial=0) > _F16_MAX:
                    raise BadInput(f"{src}: tensor {t.name} has values beyond float16's range; convert with --type f32")
                w.write_tensor_data(_encode(data, t.qtype))
        finally:
            w.close()
    return out


# --- hf: sources and the registry's convert: entries --------------------------------------------
def download(repo: str) -> Path:
    """The folder of HF checkpoint `repo` (owner/name) in the Hugging Face cache, fetching only the
    files conversion reads."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as exc:  # network, auth, missing repo: all mean "could not fetch"
        raise DownloadError(f"could not download hf:{repo}: {type(exc).__name__}: "
                            f"{registry._first_line(exc)}") from None


def convert_source(src: str, out_path, out_type: str = "f16") -> Path:
    """`convert` for SRC given as a checkpoint folder or as `hf:owner/repo` (downloaded first)."""
    if not src.startswith("hf:"):
        if not Path(src).expanduser().is_dir():
            raise BadInput(f"{src} is neither a checkpoint folder nor hf:owner/repo")
        return convert(Path(src).expanduser(), out_path, out_type)
    repo = src[3:].strip("/")
    if repo.count("/") != 1:
        raise BadInput(f"malformed source {src!r}; expected hf:owner/repo")
    check_output_path(out_path)  # before the download; the checkpoint's own files are checked after it
    return convert(download(repo), out_path, out_type, name=repo.split("/")[1])


def cached_path(entry) -> Path:
    """Where the converted GGUF of a registry `convert:hf:owner/repo` entry lives (it may not exist yet)."""
    return registry.cache_dir() / "converted" / f"{entry.source_parts()['repo']}.gguf"


def convert_cached(entry) -> Path:
    """The converted GGUF of a `convert:hf:` entry, downloading and converting it (f16) on first use."""
    out = cached_path(entry)
    if not out.is_file():
        convert_source("hf:" + entry.source_parts()["repo"], out, "f16")
    return out

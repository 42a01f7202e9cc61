"""Convert a Hugging Face sequence-classification reward model into one GGUF file.

llama.cpp's own converter drops the `score` head of `*ForSequenceClassification` checkpoints.
Here the backbone is written as a plain llama.cpp model of the same architecture (run as an
embedding model by `llama/reward_model.py`) and the head goes into the file's metadata, so the result is
one self-contained reward model:

    specrej-local convert-reward hf:Skywork/Skywork-Reward-V2-Qwen3-0.6B -o skywork.gguf

Names and constants come from the `gguf` package (tensor name maps, metadata keys, token types,
and `SpecialVocab` for merges, special token ids, add-BOS and the chat template). Weights are read
from safetensors files with numpy alone (bf16 is widened to float32 by a bit shift), one tensor at
a time, so converting needs about one tensor's worth of memory beyond the page cache.
"""
import json
import logging
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from . import registry
from ..errors import BadInput, DownloadError, ModelFileError
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
_SKIPPED = ("rotary_emb.inv_freq",)  # buffers some checkpoints store; llama.cpp computes them
_F16_MAX = float(np.finfo(np.float16).max)


# --- safetensors, read with numpy -------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


@dataclass
class _Stored:
    file: Path
    dtype: str
    shape: tuple
    start: int  # absolute offset of the data in the file
    nbytes: int


class Checkpoint:
    """The tensors of every *.safetensors file in a folder, loaded one at a time as float32."""

    def __init__(self, folder: Path):
        self.tensors = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise BadInput(f"{folder} holds no .safetensors files (only safetensors checkpoints can be converted)")
        for file in files:
            try:
                with open(file, "rb") as f:
                    (n,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(n))
            except (OSError, struct.error, ValueError) as exc:
                raise ModelFileError(f"{file} is not a readable safetensors file ({exc})") from None
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in _SAFETENSORS_DTYPES:
                    raise BadInput(f"{file}: tensor {name} has dtype {info['dtype']}; "
                                   f"supported: {', '.join(_SAFETENSORS_DTYPES)}")
                begin, end = info["data_offsets"]
                self.tensors[name] = _Stored(file, info["dtype"], tuple(info["shape"]), 8 + n + begin, end - begin)

    def shape(self, name: str) -> tuple:
        return self.tensors[name].shape

    def load(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        dtype = np.dtype(_SAFETENSORS_DTYPES[t.dtype])
        raw = np.memmap(t.file, dtype=dtype, mode="r", offset=t.start, shape=(t.nbytes // dtype.itemsize,))
        if t.dtype == "BF16":  # bf16 is the top half of a float32
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        return out.reshape(t.shape)


# --- the pieces of the GGUF -------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BadInput(f"{path.parent} is not a Hugging Face checkpoint: {path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None


def _architecture(config: dict):
    names = config.get("architectures") or ["(none given)"]
    arch = ARCHITECTURES.get(names[0])
    if arch is None:
        raise BadInput(f"cannot convert architecture {names[0]}; supported: {', '.join(ARCHITECTURES)}")
    return arch


def _pre_tokenizer(tok: dict, where: Path) -> str:
    """The llama.cpp pre-tokenizer name whose regex the HF tokenizer uses."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    for name, regex in PRE_TOKENIZERS.items():
        if regexes == [regex]:
            return name
    raise BadInput(f"{where}: the tokenizer's pre-tokenizer split {regexes or '(none)'} is not one llama.cpp "
                   f"knows by name; supported: {', '.join(PRE_TOKENIZERS)}")


def _vocab(tok: dict, n_rows: int, where: Path):
    """Token texts and types for `n_rows` embedding rows (ids the tokenizer lacks become unused)."""
    model = tok.get("model") or {}
    byte_level = (tok.get("decoder") or {}).get("type") == "ByteLevel"
    if model.get("type") != "BPE" or model.get("byte_fallback") or not byte_level:
        raise BadInput(f"{where}: only byte-level BPE tokenizers (GPT-2 style) can be converted")
    ids = dict(model["vocab"])
    types = {}
    for t in tok.get("added_tokens", []):
        ids[t["content"]] = t["id"]
        types[t["id"]] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
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


def _plan(ckpt: Checkpoint, arch, config: dict, want, src: Path) -> list:
    """The backbone's tensors under llama.cpp's names, in writing order (the score head is not one)."""
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
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


# Config keys that change nothing at inference, or that the converter reads; anything else in a
# config is refused by name, since a setting nobody handles would be silently wrong in the file.
_CONFIG_READ = {"architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias"}
_CONFIG_HARMLESS = {"_name_or_path", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
                    "initializer_range", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
                    "tie_word_embeddings", "num_labels", "id2label", "label2id", "problem_type", "pretraining_tp",
                    "max_window_layers", "return_dict", "output_attentions", "output_hidden_states",
                    "torchscript", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
                    "_attn_implementation_autoset", "finetuning_task", "keys_to_ignore_at_inference",
                    "sliding_window"}  # read only when use_sliding_window is set, which is refused
# Keys whose value must be the one llama.cpp's architecture implements.
_CONFIG_FIXED = {"hidden_act": lambda v: v == "silu",
                 "use_sliding_window": lambda v: not v,
                 "layer_types": lambda v: all(t == "full_attention" for t in v or [])}
# RoPE types and the settings each may carry (rope_theta and the type's own name are always allowed).
_ROPE_KEYS = {"default": set(), "linear": {"factor"},
              "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
              "yarn": {"factor", "original_max_position_embeddings"}}


def _check_config(config: dict, src: Path):
    unknown = sorted(k for k in config if k not in _CONFIG_READ | _CONFIG_HARMLESS | set(_CONFIG_FIXED))
    if unknown:
        raise BadInput(f"{src}: config.json has settings the converter does not understand: {', '.join(unknown)}")
    for key, fine in _CONFIG_FIXED.items():
        if key in config and not fine(config[key]):
            raise BadInput(f"{src}: config.json sets {key} = {config[key]!r}, which the converter cannot carry "
                           f"into a llama.cpp {config['architectures'][0]}")


def _rope(config: dict, src: Path):
    """(theta, kind, settings) of the config's RoPE, read from transformers 5's `rope_parameters`
    or from the older top-level `rope_theta` / `rope_scaling`; never a silent default."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    if "rope_theta" in scaling:  # some transformers 5 configs keep rope_parameters under the old name
        params, scaling = {**scaling, **params}, {}
    theta_top, theta_params = config.get("rope_theta"), params.get("rope_theta")
    if theta_top is not None and theta_params is not None and float(theta_top) != float(theta_params):
        raise BadInput(f"{src}: config.json gives two RoPE bases, rope_theta {theta_top} and "
                       f"rope_parameters.rope_theta {theta_params}")
    if params and scaling:
        raise BadInput(f"{src}: config.json has both rope_parameters and rope_scaling; expected one")
    settings = params or scaling
    theta = theta_params if theta_params is not None else theta_top
    if theta is None:
        raise BadInput(f"{src}: config.json gives no RoPE base (rope_theta or rope_parameters.rope_theta)")
    kind = settings.get("rope_type", settings.get("type", "default"))
    if kind not in _ROPE_KEYS:
        raise BadInput(f"{src}: RoPE type {kind!r} is not supported; supported: {', '.join(_ROPE_KEYS)}")
    unknown = sorted(set(settings) - _ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"})
    if unknown:
        raise BadInput(f"{src}: RoPE type {kind!r} with settings the converter does not understand: "
                       f"{', '.join(unknown)}")
    missing = sorted(k for k in _ROPE_KEYS[kind] - {"low_freq_factor", "high_freq_factor"} if k not in settings)
    if missing:
        raise BadInput(f"{src}: RoPE type {kind!r} needs {', '.join(missing)}")
    return float(theta), kind, settings


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


def _new_file(out: Path) -> str:
    """An empty file beside `out` under a fresh temporary name, with the mode the umask gives any
    new file (mkstemp would make it 0600, and the rename would keep that)."""
    while True:
        tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.part"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def convert(src_dir, out_path, out_type: str = "f16", name=None) -> Path:
    """Write the reward model in HF checkpoint folder `src_dir` as one GGUF file at `out_path`.

    `name` (general.name) defaults to the folder's name. The file is written under a temporary name
    beside `out_path` and renamed when complete. Raises BadInput for an unsupported architecture,
    tokenizer or checkpoint layout.
    """
    src, out = Path(src_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise BadInput(f"unknown output type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    if not src.is_dir():
        raise BadInput(f"{src} is not a folder holding a Hugging Face checkpoint")
    want, file_type = OUT_TYPES[out_type]

    # read and check everything before writing anything
    config = _read_json(src / "config.json")
    arch = _architecture(config)
    _check_config(config, src)
    tok = _read_json(src / "tokenizer.json")
    pre = _pre_tokenizer(tok, src / "tokenizer.json")
    unicode_forms = forms_of(tok.get("normalizer"), src / "tokenizer.json")
    ckpt = Checkpoint(src)
    if "score.weight" not in ckpt.tensors:
        raise BadInput(f"{src} has no score.weight: not a sequence-classification checkpoint")
    W = ckpt.load("score.weight")
    b = ckpt.load("score.bias") if "score.bias" in ckpt.tensors else None
    n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or n_embd // n_head
    plan = _plan(ckpt, arch, config, want, src)
    theta, kind, scaling = _rope(config, src)
    rope_freqs = _rope_freqs_tensor(theta, kind, scaling, head_dim)
    if rope_freqs is not None:
        plan.append(rope_freqs)
    embd = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    rows = next((t.shape[0] for t in plan if t.name == embd), None)
    if rows is None:
        raise BadInput(f"{src} has no token embedding (model.embed_tokens.weight)")
    tokens, token_types = _vocab(tok, rows, src / "tokenizer.json")
    special = _special_vocab(src, len(tokens))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(out)
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

        # hyperparameters, with HF's defaults for keys a config may leave out
        w.add_context_length(config.get("max_position_embeddings", 4096))
        w.add_embedding_length(n_embd)
        w.add_block_count(config["num_hidden_layers"])
        w.add_feed_forward_length(config["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(config.get("num_key_value_heads") or n_head)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(theta)
        w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
        if kind in ("linear", "yarn"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(scaling["factor"])
            if kind == "yarn":
                w.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])

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
        w.close()
        os.replace(tmp, out)
    finally:
        w.close()
        Path(tmp).unlink(missing_ok=True)
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

"""A Hugging Face config.json read for conversion, and the tensor shapes it implies.

Everything llama.cpp would refuse when loading the converted file, or compute nonsense from, is
refused here with a one-line BadInput naming the config field: a wrong type, a value out of
range, a count that disagrees with the stored layers, a shape that disagrees with the weights.
The checks run on the safetensors headers only, before any weight is read.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks
from ..errors import BadInput

_LARGEST = 2**31 - 1  # llama.cpp keeps sizes and counts in 32-bit ints

# Config keys that change nothing at inference, or that the converter reads; anything else in a
# config is refused by name, since a setting nobody handles would be silently wrong in the file.
_READ = {"architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
         "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "mlp_bias"}
_HARMLESS = {"_name_or_path", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
             "initializer_range", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
             "tie_word_embeddings", "num_labels", "id2label", "label2id", "problem_type", "pretraining_tp",
             "max_window_layers", "return_dict", "output_attentions", "output_hidden_states",
             "torchscript", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
             "_attn_implementation_autoset", "finetuning_task", "keys_to_ignore_at_inference",
             "sliding_window"}  # read only when use_sliding_window is set, which is refused
# Keys whose value must be the one llama.cpp's architecture implements.
_FIXED = {"hidden_act": lambda v: v == "silu",
          "use_sliding_window": lambda v: not v,
          "layer_types": lambda v: v is None or (isinstance(v, list) and all(t == "full_attention" for t in v))}
# RoPE types and the settings each may carry (rope_theta and the type's own name are always allowed).
ROPE_KEYS = {"default": set(), "linear": {"factor"},
             "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
             "yarn": {"factor", "original_max_position_embeddings"}}


@dataclass
class Hyper:
    """The hyperparameters a converted file carries, checked."""
    architecture: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_given: bool
    n_ctx: int
    eps: float
    rope_theta: float
    rope_kind: str
    rope: dict = field(default_factory=dict)  # the RoPE type's own settings, checked


def _show(value) -> str:
    return f"{value!r:.40}"


def _count(where: str, config: dict, key: str, default=None, section="") -> int:
    """A whole number from 1 to 2**31 - 1 (or `default` when the key is absent or null)."""
    value = config.get(key)
    if value is None and default is not None:
        return default
    if value is None:
        raise BadInput(f"{where} has no {section}{key}")
    value = checks.whole(f"{where}: {section}{key}", value)
    if not 1 <= value <= _LARGEST:
        raise BadInput(f"{where}: {section}{key} must be between 1 and {_LARGEST}, got {value}")
    return value


def _positive(where: str, settings: dict, key: str, default=None, section="") -> float:
    """A finite number above zero (or `default` when the key is absent)."""
    value = settings.get(key, default)
    if value is None:
        raise BadInput(f"{where} has no {section}{key}")
    value = checks.real(f"{where}: {section}{key}", value)
    if value <= 0:
        raise BadInput(f"{where}: {section}{key} must be positive, got {value}")
    return value


def _mapping(where: str, config: dict, key: str) -> dict:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{where}: {key} must be an object, got {type(value).__name__}")
    return dict(value)


def architecture(config, where, supported) -> str:
    """The HF architecture name of a config, if it is one of `supported`."""
    if not isinstance(config, dict):
        raise BadInput(f"{where} must hold a JSON object, not a {type(config).__name__}")
    names = config.get("architectures")
    if names is None or names == []:
        names = ["(none given)"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadInput(f"{where}: architectures must be a list of names, got {_show(names)}")
    if names[0] not in supported:
        raise BadInput(f"cannot convert architecture {names[0]}; supported: {', '.join(supported)}")
    return names[0]


def read(config, src: Path, supported) -> Hyper:
    """The hyperparameters of `config` (config.json of `src`, an architecture among `supported`),
    or BadInput naming what is wrong."""
    where = f"{src / 'config.json'}"
    arch = architecture(config, where, supported)
    unknown = sorted(k for k in config if k not in _READ | _HARMLESS | set(_FIXED))
    if unknown:
        raise BadInput(f"{src}: config.json has settings the converter does not understand: {', '.join(unknown)}")
    for key, fine in _FIXED.items():
        if key in config and not fine(config[key]):
            raise BadInput(f"{src}: config.json sets {key} = {_show(config[key])}, which the converter "
                           f"cannot carry into a llama.cpp {arch}")
    n_embd = _count(where, config, "hidden_size")
    n_head = _count(where, config, "num_attention_heads")
    n_head_kv = _count(where, config, "num_key_value_heads", default=n_head)
    if n_head % n_head_kv:
        raise BadInput(f"{where}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}")
    head_dim_given = config.get("head_dim") is not None
    if not head_dim_given and n_embd % n_head:
        raise BadInput(f"{where}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head} "
                       "(and no head_dim is given)")
    head_dim = _count(where, config, "head_dim", default=n_embd // n_head)
    if head_dim % 2:
        raise BadInput(f"{where}: head_dim {head_dim} must be even (RoPE rotates pairs)")
    if "vocab_size" in config:
        _count(where, config, "vocab_size")
    theta, kind, settings = _rope(config, src, where, head_dim)
    return Hyper(architecture=arch, n_embd=n_embd, n_ff=_count(where, config, "intermediate_size"),
                 n_layer=_count(where, config, "num_hidden_layers"), n_head=n_head, n_head_kv=n_head_kv,
                 head_dim=head_dim, head_dim_given=head_dim_given,
                 n_ctx=_count(where, config, "max_position_embeddings", default=4096),
                 eps=_positive(where, config, "rms_norm_eps", default=1e-6),
                 rope_theta=theta, rope_kind=kind, rope=settings)


def _rope(config: dict, src: Path, where: str, head_dim: int):
    """(theta, kind, settings) of the config's RoPE, read from transformers 5's `rope_parameters`
    or from the older top-level `rope_theta` / `rope_scaling`; never a silent default."""
    params, scaling = _mapping(where, config, "rope_parameters"), _mapping(where, config, "rope_scaling")
    if "rope_theta" in scaling:  # some transformers 5 configs keep rope_parameters under the old name
        params, scaling = {**scaling, **params}, {}
    theta_top, theta_params = config.get("rope_theta"), params.get("rope_theta")
    if theta_top is not None:
        theta_top = _positive(where, config, "rope_theta")
    if theta_params is not None:
        theta_params = _positive(where, params, "rope_theta", section="rope_parameters.")
    if theta_top is not None and theta_params is not None and theta_top != theta_params:
        raise BadInput(f"{src}: config.json gives two RoPE bases, rope_theta {theta_top} and "
                       f"rope_parameters.rope_theta {theta_params}")
    if params and scaling:
        raise BadInput(f"{src}: config.json has both rope_parameters and rope_scaling; expected one")
    settings = params or scaling
    section = "rope_parameters." if params else "rope_scaling."
    theta = theta_params if theta_params is not None else theta_top
    if theta is None:
        raise BadInput(f"{src}: config.json gives no RoPE base (rope_theta or rope_parameters.rope_theta)")
    kind = settings.get("rope_type", settings.get("type", "default"))
    if not isinstance(kind, str) or kind not in ROPE_KEYS:
        raise BadInput(f"{src}: RoPE type {_show(kind)} is not supported; supported: {', '.join(ROPE_KEYS)}")
    unknown = sorted(set(settings) - ROPE_KEYS[kind] - {"rope_type", "type", "rope_theta"})
    if unknown:
        raise BadInput(f"{src}: RoPE type {kind!r} with settings the converter does not understand: "
                       f"{', '.join(unknown)}")
    missing = sorted(k for k in ROPE_KEYS[kind] - {"low_freq_factor", "high_freq_factor"} if k not in settings)
    if missing:
        raise BadInput(f"{src}: RoPE type {kind!r} needs {', '.join(missing)}")
    checked = {}
    if "factor" in ROPE_KEYS[kind]:
        checked["factor"] = _positive(where, settings, "factor", section=section)
    if "original_max_position_embeddings" in ROPE_KEYS[kind]:
        checked["original_max_position_embeddings"] = _count(where, settings, "original_max_position_embeddings",
                                                             section=section)
    if kind == "llama3":
        low = _positive(where, settings, "low_freq_factor", default=1.0, section=section)
        high = _positive(where, settings, "high_freq_factor", default=4.0, section=section)
        if high <= low:
            raise BadInput(f"{where}: {section}high_freq_factor {high} must be above low_freq_factor {low}")
        checked.update(low_freq_factor=low, high_freq_factor=high)
    return theta, kind, checked


# --- the weights' shapes against the config -----------------------------------------------------
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def check_shapes(hp: Hyper, shapes: dict, src: Path):
    """Refuse a checkpoint whose stored tensors (name -> shape) are not the ones the config
    describes: llama.cpp would fail to load the converted file, or read the wrong numbers."""
    where = f"{src / 'config.json'}"
    layers = {int(m.group(1)) for m in map(_LAYER.match, shapes) if m}
    if len(layers) != hp.n_layer or layers != set(range(hp.n_layer)):  # the length first: never a huge range
        numbers = sorted(layers)
        held = (f"{len(numbers)} layers, numbered {', '.join(map(str, numbers[:6]))}{', ...' if len(numbers) > 6 else ''}"
                if numbers else "no layers")
        raise BadInput(f"{where}: num_hidden_layers is {hp.n_layer}, but the checkpoint holds {held}")

    # each dimension: (size, the config fields it comes from)
    d = f"head_dim {hp.head_dim}" + ("" if hp.head_dim_given else " (hidden_size / num_attention_heads)")
    E, F, D = (hp.n_embd, f"hidden_size {hp.n_embd}"), (hp.n_ff, f"intermediate_size {hp.n_ff}"), (hp.head_dim, d)
    Q = (hp.n_head * hp.head_dim, f"num_attention_heads {hp.n_head} x {d}")
    KV = (hp.n_head_kv * hp.head_dim, f"num_key_value_heads {hp.n_head_kv} x {d}")
    V = ((shapes.get("model.embed_tokens.weight") or (0,))[0], "the embedding's rows")
    want, optional = {"model.embed_tokens.weight": (V, E), "model.norm.weight": (E,)}, {"lm_head.weight": (V, E)}
    for i in range(hp.n_layer):
        p = f"model.layers.{i}."
        want.update({p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
                     p + "self_attn.q_proj.weight": (Q, E), p + "self_attn.k_proj.weight": (KV, E),
                     p + "self_attn.v_proj.weight": (KV, E), p + "self_attn.o_proj.weight": (E, Q),
                     p + "mlp.gate_proj.weight": (F, E), p + "mlp.up_proj.weight": (F, E),
                     p + "mlp.down_proj.weight": (E, F)})
        optional.update({p + "self_attn.q_proj.bias": (Q,), p + "self_attn.k_proj.bias": (KV,),
                         p + "self_attn.v_proj.bias": (KV,), p + "self_attn.o_proj.bias": (E,),
                         p + "mlp.gate_proj.bias": (F,), p + "mlp.up_proj.bias": (F,), p + "mlp.down_proj.bias": (E,),
                         p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)})
        if hp.architecture.startswith("Qwen3"):  # llama.cpp's qwen3 needs both norms
            want.update({p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)})
    labels = (shapes.get("score.weight") or (0,))[0]
    want["score.weight"] = ((labels, "the score head's rows"), E)
    optional["score.bias"] = ((labels, "the score head's rows"),)

    for name, dims in want.items():
        if name not in shapes:
            raise BadInput(f"{src}: tensor {name} is missing from the checkpoint")
    for name, dims in {**want, **optional}.items():
        got = shapes.get(name)
        if got is None:
            continue
        if len(got) != len(dims) or any(g != n for g, (n, _) in zip(got, dims)) or 0 in got:
            expected = " x ".join(f"{n} ({why})" for n, why in dims)
            raise BadInput(f"{src}: tensor {name} is {' x '.join(map(str, got)) or 'a scalar'}, but config.json "
                           f"makes it {expected}")

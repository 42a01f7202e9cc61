"""Sequence-classification reward models (e.g. Skywork-Reward-V2) stored as one GGUF file.

llama.cpp has no sequence-classification head for decoder models, so the backbone runs as an
embedding model (one output row: the final normed hidden state at the last token) and the linear
`score` head is applied here, in numpy. The head travels in the same GGUF as metadata, so one file
is one reward model:

    specrej.score.shape   [num_labels, hidden]      integer array
    specrej.score.weight  num_labels * hidden floats float32 array, row-major
    specrej.score.bias    num_labels floats          optional

`convert.py` writes these keys right after `general.architecture`, so reading them touches only
the first few kilobytes of a file that may be gigabytes long.
"""
import mmap
import struct
from pathlib import Path

import gguf
import numpy as np

from .errors import ModelFileError, RewardError
from .llama import Model
from .llama_scorers import AnswerScorer

HEAD_SHAPE = "specrej.score.shape"
HEAD_WEIGHT = "specrej.score.weight"
HEAD_BIAS = "specrej.score.bias"

# the numeric GGUF value types a head array may hold, as numpy dtypes
_ELEMENT_DTYPES = {int(t): d for t, d in gguf.GGUFReader.gguf_scalar_to_np.items() if t != gguf.GGUFValueType.BOOL}


def _read_arrays(path, keys) -> dict:
    """The numeric metadata arrays stored under `keys` (absent keys are left out; when the first
    one is absent the others are not looked for, which spares a file without a head more scans).

    A GGUF key is stored as its length (u64), its bytes and its value type (u32), a byte pattern
    that cannot occur by accident in a header. Searching for it finds a key without decoding the
    header, whose tokenizer arrays make gguf.GGUFReader take seconds on large vocabularies.
    """
    path = Path(path)
    found = {}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ModelFileError(f"{path} is not a GGUF file")
            order = "<" if buf[4:6] != b"\0\0" else ">"  # a small version number reveals the byte order
            array = struct.pack(order + "I", gguf.GGUFValueType.ARRAY)
            for key in keys:
                name = key.encode()
                at = buf.find(struct.pack(order + "Q", len(name)) + name + array)
                if at < 0:
                    if key == keys[0]:
                        break
                    continue
                at += 8 + len(name) + 4
                etype, count = struct.unpack_from(order + "IQ", buf, at)
                if etype not in _ELEMENT_DTYPES:
                    raise ModelFileError(f"{path}: metadata {key} is not a numeric array")
                dtype = np.dtype(_ELEMENT_DTYPES[etype]).newbyteorder(order)
                if at + 12 + count * dtype.itemsize > len(buf):
                    raise ModelFileError(f"{path} is truncated inside its metadata {key}")
                found[key] = np.frombuffer(buf, dtype, count, at + 12).copy()
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from None
    return found


def read_score_head(path):
    """(weight [num_labels, hidden], bias [num_labels] or None), or (None, None) without a head."""
    arrays = _read_arrays(path, (HEAD_WEIGHT, HEAD_SHAPE, HEAD_BIAS))
    if HEAD_WEIGHT not in arrays:
        return None, None
    shape = tuple(int(d) for d in arrays.get(HEAD_SHAPE, [1, len(arrays[HEAD_WEIGHT])]))
    if len(shape) != 2 or int(np.prod(shape)) != len(arrays[HEAD_WEIGHT]):
        raise ModelFileError(f"{path}: score head of {len(arrays[HEAD_WEIGHT])} values does not fit "
                             f"its shape {list(shape)}")
    W = arrays[HEAD_WEIGHT].astype(np.float32).reshape(shape)
    b = arrays.get(HEAD_BIAS)
    if b is not None and len(b) != shape[0]:
        raise ModelFileError(f"{path}: score bias has {len(b)} values for {shape[0]} labels")
    return W, None if b is None else b.astype(np.float32)


def head_readout(W, bias=None):
    """rows (final hidden states at the last token) -> reward: the first label's logit, which is
    what Skywork-Reward-V2 and other single-logit reward models report."""
    w = np.asarray(W, dtype=np.float64).reshape(-1, np.shape(W)[-1])[0]
    b = 0.0 if bias is None else float(np.asarray(bias).reshape(-1)[0])

    def read(rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.float64) @ w + b

    return read


def load_reward_model(path, n_gpu_layers: int = 0, **context_opts) -> AnswerScorer:
    """An incremental scorer for the reward model in `path` (a GGUF written by `convert-reward`).

    `context_opts` go to AnswerScorer (n_threads, flash_attn, n_batch, raw).
    """
    W, b = read_score_head(path)
    if W is None:
        raise RewardError(f"{path} has no score head ({HEAD_WEIGHT}), so it is not a reward model; "
                          f"to use it as an LLM judge, pass judge:{path}")
    model = Model(path, n_gpu_layers=n_gpu_layers)
    if W.shape[1] != model.n_embd:
        model.close()
        raise RewardError(f"{path}: the score head reads {W.shape[1]} values but the model's hidden size is "
                          f"{model.n_embd}")
    return AnswerScorer(model, head_readout(W, b), follow_up=None, embeddings=True, **context_opts)

"""Sequence-classification reward models (e.g. Skywork-Reward-V2) stored as one GGUF file.

llama.cpp has no sequence-classification head for decoder models, so the backbone runs as an
embedding model (one output row: the final normed hidden state at the last token) and the linear
`score` head is applied here, in numpy. The head travels in the same GGUF as metadata, so one file
is one reward model:

    specrej.score.shape   [num_labels, hidden]      integer array
    specrej.score.weight  num_labels * hidden floats float32 array, row-major
    specrej.score.bias    num_labels floats          optional

The header is read by gguf_file, which skips the tokenizer's big arrays instead of decoding them.
"""
import math

import numpy as np

from .errors import ModelFileError, RewardError
from .gguf_file import read_header
from .llama import Model
from .llama_scorers import AnswerScorer

HEAD_SHAPE = "specrej.score.shape"
HEAD_WEIGHT = "specrej.score.weight"
HEAD_BIAS = "specrej.score.bias"


def read_score_head(path):
    """(weight [num_labels, hidden], bias [num_labels] or None), or (None, None) without a head."""
    arrays = read_header(path, (HEAD_WEIGHT, HEAD_SHAPE, HEAD_BIAS)).values
    if HEAD_WEIGHT not in arrays:
        return None, None
    for key, array in arrays.items():
        kinds = "iu" if key == HEAD_SHAPE else "iuf"
        if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds:
            raise ModelFileError(f"{path}: metadata {key} is not an array of {'integers' if kinds == 'iu' else 'numbers'}")
    weight = arrays[HEAD_WEIGHT]
    shape = [int(d) for d in arrays.get(HEAD_SHAPE, [1, len(weight)])]
    if len(shape) != 2 or min(shape) <= 0 or math.prod(shape) != len(weight):
        raise ModelFileError(f"{path}: score head of {len(weight)} values does not fit its shape {shape}")
    W = weight.astype(np.float32).reshape(shape)
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

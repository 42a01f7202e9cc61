"""Sequence-classification reward models (e.g. Skywork-Reward-V2) stored as one GGUF file.

llama.cpp has no sequence-classification head for decoder models, so the backbone runs as an
embedding model (one output row: the final normed hidden state at the last token) and the linear
`score` head (`models.score_head`, stored in the same GGUF as metadata) is applied here, in numpy.
"""
import numpy as np

from ..errors import RewardError
from ..models.score_head import HEAD_WEIGHT, read_score_head
from .context import Model
from .scorers import AnswerScorer


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

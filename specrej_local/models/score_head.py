"""The score head of a sequence-classification reward model, stored as GGUF metadata.

llama.cpp has no sequence-classification head for decoder models, so `convert-reward` writes the
linear `score` head beside the backbone as metadata, and the reward scorer applies it in numpy:

    specrej.score.shape   [num_labels, hidden]      integer array
    specrej.score.weight  num_labels * hidden floats float32 array, row-major
    specrej.score.bias    num_labels floats          optional

The header is read by gguf_file, which skips the tokenizer's big arrays instead of decoding them.
"""
import math

import numpy as np

from ..errors import ModelFileError
from .gguf_file import read_header

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

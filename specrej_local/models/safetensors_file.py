"""The tensors of a folder's *.safetensors files, read with numpy one at a time as float32.

Headers are checked against the file before anything is allocated: the header length against
the file's size, every tensor's dtype, shape and data offsets against each other and against the
bytes that follow the header. A damaged file is a one-line ModelFileError naming it and the
tensor, never an allocation sized by a number read from the file.
"""
import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput, ModelFileError

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}  # BF16 is widened by a bit shift
_MAX_HEADER = 100_000_000  # the bound the safetensors format itself sets


@dataclass
class Stored:
    file: Path
    dtype: str
    shape: tuple
    start: int  # absolute offset of the data in the file
    nbytes: int


def is_regular(path: Path) -> bool:
    """A regular file, or a symlink to one (the Hugging Face cache links every file)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _sizes(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _header(file: Path):
    """(header, offset of the data, bytes of data) of one file."""
    if not is_regular(file):
        raise ModelFileError(f"{file} is not a regular file")
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ModelFileError(f"{file} is not a safetensors file: {size} bytes, shorter than its header length")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, _MAX_HEADER):
                raise ModelFileError(f"{file} is damaged: its header would be {n} bytes, and the file is {size}")
            raw = f.read(n)
    except OSError as exc:
        raise ModelFileError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{file} is damaged: its header is not JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{file} is damaged: its header is a JSON {type(header).__name__}, not an object")
    return header, 8 + n, size - 8 - n


def _tensor(file: Path, name: str, info, data_start: int, data_size: int) -> Stored:
    """One header entry, checked: a known dtype, a shape whose bytes are its data offsets' span,
    and offsets inside the file."""
    def damaged(why):
        return ModelFileError(f"{file} is damaged: tensor {name} {why}")

    if not isinstance(info, dict):
        raise damaged("is not described by a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise damaged("has no dtype")
    if dtype not in DTYPES:
        raise BadInput(f"{file}: tensor {name} has dtype {dtype[:20]}; supported: {', '.join(DTYPES)}")
    if not _sizes(shape):
        raise damaged(f"has no valid shape ({str(shape)[:40]})")
    if not _sizes(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise damaged(f"has no valid data_offsets ({str(offsets)[:40]})")
    begin, end = offsets
    if end > data_size:
        raise damaged(f"ends at byte {end} of the data, which holds {data_size} bytes (a truncated file?)")
    need = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if end - begin != need:
        raise damaged(f"spans {end - begin} bytes, but {dtype} of shape {shape} needs {need}")
    return Stored(file, dtype, tuple(shape), data_start + begin, need)


class Checkpoint:
    """The tensors of every *.safetensors file in a folder, loaded one at a time as float32."""

    def __init__(self, folder: Path):
        self.tensors = {}
        self.files = sorted(folder.glob("*.safetensors"))
        if not self.files:
            raise BadInput(f"{folder} holds no .safetensors files (only safetensors checkpoints can be converted)")
        for file in self.files:
            header, data_start, data_size = _header(file)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if name in self.tensors:
                    raise ModelFileError(f"tensor {name} is stored twice: in {self.tensors[name].file} and {file}")
                self.tensors[name] = _tensor(file, name, info, data_start, data_size)

    def shapes(self) -> dict:
        return {name: t.shape for name, t in self.tensors.items()}

    def shape(self, name: str) -> tuple:
        return self.tensors[name].shape

    def load(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if t.nbytes == 0:
            return np.zeros(t.shape, np.float32)
        dtype = np.dtype(DTYPES[t.dtype])
        try:
            raw = np.memmap(t.file, dtype=dtype, mode="r", offset=t.start, shape=(t.nbytes // dtype.itemsize,))
        except (OSError, ValueError) as exc:  # changed since its header was read
            raise ModelFileError(f"cannot read tensor {name} from {t.file}: {exc}") from None
        if t.dtype == "BF16":  # bf16 is the top half of a float32
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        return out.reshape(t.shape)

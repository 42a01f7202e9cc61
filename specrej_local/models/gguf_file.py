"""The one GGUF header reader: the metadata values asked for, and where the tensor data ends.

A header is walked once, front to back. Values nobody asked for are skipped, not decoded: a
tokenizer's vocabulary is an array of tens of thousands of strings, and decoding it (as
gguf.GGUFReader does, building numpy views for every string) takes seconds where a skip takes
milliseconds. The tensor table gives the end of the last tensor's data, which a complete file
reaches; a shorter file is a truncated download.

Any problem with the file is a ModelFileError with a one-line message.
"""
from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Union

import numpy as np

from ..errors import ModelFileError

# GGUF metadata value types (the spec's numbering)
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class Header:
    """What `read_header` found. `values` holds only the keys asked for: scalars as Python values,
    strings as str, numeric arrays as numpy arrays (native byte order), string arrays as lists."""

    values: dict
    types: dict  # key -> (value type, element type of an array or None), as GGUF numbers them
    data_end: int  # offset just past the last tensor's data
    byte_order: str  # "<" or ">"


Wanted = Union[Collection[str], Callable[[str], bool]]


def read_header(path, want: Wanted = ()) -> Header:
    """Walk the GGUF header of `path` (v2 or v3, either byte order) and return the metadata whose
    keys are in `want` (or for which `want(key)` is true)."""
    path = Path(path)
    wanted = want if callable(want) else frozenset(want).__contains__
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _Walk(buf).header(wanted)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    except (ValueError, struct.error, RecursionError) as exc:
        raise ModelFileError(f"{path} is a damaged GGUF file ({exc}); delete it and download it again") from None


class _Walk:
    """A cursor over the header bytes; every read checks that it stays inside the file."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 4
        self.order = "<" if buf[4:6] != b"\0\0" else ">"  # a small version number reveals the byte order

    def skip(self, n: int) -> int:
        """Advance by n bytes; returns where they start."""
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise ValueError("its header runs past the end of the file")
        self.pos += n
        return start

    def read(self, fmt: str):
        return self._unpack(fmt, self.skip(struct.calcsize(fmt)))

    def _unpack(self, fmt: str, at: int):
        return struct.unpack_from(self.order + fmt, self.buf, at)[0]

    def string(self) -> bytes:
        n = self.read("Q")
        start = self.skip(n)
        return self.buf[start:start + n]

    def value(self, vtype: int, keep: bool):
        """The value of type `vtype` at the cursor, or None with `keep` false (then only skipped)."""
        if vtype in SCALAR_FORMATS:
            return self.read(SCALAR_FORMATS[vtype])
        if vtype == STRING:
            text = self.string()
            return text.decode("utf-8", errors="replace") if keep else None
        if vtype != ARRAY:
            raise ValueError(f"unknown metadata type {vtype}")
        etype, count = self.read("I"), self.read("Q")
        if etype in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[etype]).newbyteorder(self.order)
            start = self.skip(count * dtype.itemsize)
            return np.frombuffer(self.buf, dtype, count, start).astype(dtype.newbyteorder("=")) if keep else None
        if etype == STRING and not keep:  # the vocabulary: the one loop that must be tight
            buf, pos, end, unpack = self.buf, self.pos, len(self.buf), struct.Struct(self.order + "Q").unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    raise ValueError("its header runs past the end of the file")
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
            self.skip(0)  # the last string's length may point past the end
            return None
        items = [self.value(etype, keep) for _ in range(count)]
        return items if keep else None

    def header(self, wanted: Callable[[str], bool]) -> Header:
        version = self.read("I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self.read("Q"), self.read("Q")
        values, types, alignment = {}, {}, DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = self.string().decode("utf-8", errors="replace")
            vtype, at = self.read("I"), self.pos
            asked = wanted(key)
            value = self.value(vtype, asked or key == "general.alignment")
            if key == "general.alignment":
                alignment = value
            if asked:
                values[key] = value
                types[key] = (vtype, self._unpack("I", at) if vtype == ARRAY else None)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ValueError(f"invalid alignment {alignment}")
        return Header(values, types, self._data_end(n_tensors, alignment), self.order)

    def _data_end(self, n_tensors: int, alignment: int) -> int:
        """Read the tensor table (at the cursor) and return the end of the last tensor's data."""
        import gguf  # its table of block sizes per tensor type

        sizes = {int(t): s for t, s in gguf.GGML_QUANT_SIZES.items()}  # type -> (block size, bytes per block)
        tensors = []
        for _ in range(n_tensors):
            self.string()
            dims = [self.read("Q") for _ in range(self.read("I"))]
            tensors.append((self.read("I"), self.read("Q"), math.prod(dims)))
        data_start = -(-self.pos // alignment) * alignment
        ends = [data_start + offset + (n // sizes[t][0] * sizes[t][1] if t in sizes else 0)
                for t, offset, n in tensors]
        return max(ends, default=data_start)

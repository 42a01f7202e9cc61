"""gguf_file.read_header, the one GGUF header reader: values back as written, in either byte order,
and a damaged file is always a one-line ModelFileError, never another exception."""
import struct

import numpy as np
import pytest

from specrej_local.errors import ModelFileError
from specrej_local.models.gguf_file import ARRAY, STRING, read_header


def write_gguf(path, endian):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama", endianess=endian)
    writer.add_uint32("t.count", 7)
    writer.add_float32("t.scale", 0.5)
    writer.add_string("t.name", "héllo")
    writer.add_array("t.shape", [3, 4])
    writer.add_array("t.weights", [0.25, -1.5, 2.0])
    writer.add_array("t.words", ["alpha", "beta", "gamma", "delta"])
    data = np.arange(64, dtype=np.float32)
    writer.add_tensor("w", data if endian == gguf.GGUFEndian.LITTLE else data.byteswap())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(params=["LITTLE", "BIG"])
def gguf_path(request, tmp_path):
    import gguf

    return write_gguf(tmp_path / f"{request.param.lower()}.gguf", getattr(gguf.GGUFEndian, request.param))


def test_the_values_asked_for_come_back_as_written(gguf_path):
    header = read_header(gguf_path, ("t.count", "t.scale", "t.name", "t.shape", "t.weights", "t.words", "absent"))
    values = header.values
    assert (values["t.count"], values["t.scale"], values["t.name"]) == (7, 0.5, "héllo")
    np.testing.assert_array_equal(values["t.shape"], [3, 4])
    np.testing.assert_array_equal(values["t.weights"], np.array([0.25, -1.5, 2.0], dtype=np.float32))
    assert values["t.weights"].dtype.isnative and values["t.words"][:4] == ["alpha", "beta", "gamma", "delta"]
    assert "absent" not in values and header.types["t.words"] == (ARRAY, STRING)
    assert header.byte_order == ("<" if "little" in gguf_path.name else ">")
    assert header.data_end == gguf_path.stat().st_size


def test_only_the_keys_asked_for_are_returned(gguf_path):
    assert read_header(gguf_path).values == {}
    assert set(read_header(gguf_path, lambda key: key.startswith("t.w")).values) == {"t.weights", "t.words"}


def test_every_cut_is_a_model_file_error_and_a_short_file_has_a_short_data_end(gguf_path, tmp_path):
    data = gguf_path.read_bytes()
    header_end = len(data) - 64 * 4
    cut = tmp_path / "cut.gguf"
    for size in range(4, len(data)):
        cut.write_bytes(data[:size])
        try:
            end = read_header(cut, ("t.words",)).data_end
        except ModelFileError as exc:
            assert "\n" not in str(exc) and "damaged" in str(exc)
            assert size < header_end
        else:
            assert end == len(data) > size


def test_a_count_that_runs_past_the_end_is_damage_not_a_hang(tmp_path):
    body = struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", ARRAY, STRING, 2**62)
    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + body + struct.pack("<Q", 3) + b"abc")
    with pytest.raises(ModelFileError, match="damaged GGUF file .*past the end"):
        read_header(path)


def test_a_file_that_is_not_gguf_says_what_it_starts_with(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file .*b'hell'"):
        read_header(path)

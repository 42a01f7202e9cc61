"""read_score_head: a reward GGUF whose head metadata is inconsistent is a one-line ModelFileError
(a negative shape once reached numpy's reshape and ended in a traceback)."""
import numpy as np
import pytest
from click.testing import CliRunner

from specrej_local.frontends.cli import cli
from specrej_local.errors import ModelFileError
from specrej_local.models.score_head import HEAD_BIAS, HEAD_SHAPE, HEAD_WEIGHT, read_score_head


def write_head(path, shape, weight, bias=None):
    """A small GGUF holding only a score head (enough for read_score_head)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    if shape is not None:
        writer.add_array(HEAD_SHAPE, shape)
    writer.add_array(HEAD_WEIGHT, weight)
    if bias is not None:
        writer.add_array(HEAD_BIAS, bias)
    writer.add_tensor("w", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_consistent_head_is_read_back(tmp_path):
    weight, bias = read_score_head(write_head(tmp_path / "rm.gguf", [2, 3], [0.5, 1.0, 2.0, 3.0, 4.0, 5.0], [0.25, -1.0]))
    np.testing.assert_array_equal(weight, [[0.5, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(bias, [0.25, -1.0])
    weight, bias = read_score_head(write_head(tmp_path / "flat.gguf", None, [1.0, 2.0]))  # no shape: one label
    assert weight.shape == (1, 2) and bias is None


@pytest.mark.parametrize("shape, weight, bias, complaint", [
    ([-2, -3], [1.0] * 6, None, "does not fit its shape [-2, -3]"),
    ([0, 6], [1.0] * 6, None, "does not fit its shape [0, 6]"),
    ([6], [1.0] * 6, None, "does not fit its shape [6]"),
    ([2, 3, 1], [1.0] * 6, None, "does not fit its shape [2, 3, 1]"),
    ([2**31 - 1, 2**31 - 1], [1.0] * 6, None, "does not fit"),  # overflows a 32-bit product
    ([2.0, 3.0], [1.0] * 6, None, "specrej.score.shape is not an array of integers"),
    ([2, 3], ["a", "b"], None, "specrej.score.weight is not an array of numbers"),
    ([2, 3], [1.0] * 6, [1.0], "score bias has 1 values for 2 labels"),
])
def test_an_inconsistent_head_is_a_one_line_model_file_error(tmp_path, shape, weight, bias, complaint):
    path = write_head(tmp_path / "rm.gguf", shape, weight, bias)
    with pytest.raises(ModelFileError) as caught:
        read_score_head(path)
    assert complaint in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_reports_a_negative_head_shape_in_one_line(tmp_path, default_model):
    path = write_head(tmp_path / "rm.gguf", [-1, -6], [1.0] * 6)
    result = CliRunner().invoke(cli, ["-g", str(default_model), "-r", str(path), "-n", "2", "--max-tokens", "2",
                                      "-t", "1", "-q", "Say hi"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.strip().splitlines() == [f"Error: {path}: score head of 6 values does not fit its "
                                                  "shape [-1, -6]"]

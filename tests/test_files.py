"""files.py: outputs written whole or not at all, never over an input, a device, a FIFO or a symlink."""
import os
import stat

import pytest

from specrej_local.errors import OutputFileError
from specrej_local.files import atomic_output, check_output_dir, check_output_path


def test_a_new_or_regular_output_is_accepted_and_its_folder_may_not_exist_yet(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    assert check_output_path(tmp_path / "old.txt") == tmp_path / "old.txt"
    assert check_output_path(str(tmp_path / "new" / "deeper" / "out.txt")) == tmp_path / "new" / "deeper" / "out.txt"
    assert not (tmp_path / "new").exists()  # checking makes nothing


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.mkdir(), "a folder"),
    (lambda p: p.symlink_to(p.parent / "target"), "a symlink"),
])
def test_an_existing_output_that_is_not_a_regular_file_is_refused(tmp_path, make, kind):
    (tmp_path / "target").write_text("keep")
    make(tmp_path / "out")
    with pytest.raises(OutputFileError, match=f"is {kind}, not a regular file"):
        check_output_path(tmp_path / "out")
    with pytest.raises(OutputFileError, match=f"is {kind}"):  # and at the rename, if it appeared meanwhile
        with atomic_output(tmp_path / "out") as tmp:
            tmp.write_text("new")
    assert (tmp_path / "target").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]


def test_an_input_under_any_name_is_refused(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("data")
    os.link(src, tmp_path / "hard.txt")
    for out in (src, tmp_path / "hard.txt", tmp_path / "." / "in.txt"):
        with pytest.raises(OutputFileError, match="is the input file"):
            check_output_path(out, inputs=[src])
    check_output_path(tmp_path / "other.txt", inputs=[src, tmp_path / "missing"])


def test_an_empty_name_is_not_taken_for_the_current_folder():
    with pytest.raises(OutputFileError, match="name is empty"):
        check_output_path("")


def test_a_folder_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputFileError, match="afile is not a folder"):
        check_output_path(tmp_path / "afile" / "sub" / "out.txt")
    with pytest.raises(OutputFileError, match="cannot write"):
        with atomic_output(tmp_path / "afile" / "sub" / "out.txt"):
            pass


def test_the_output_appears_whole_with_the_umask_mode(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    old = os.umask(0o022)
    try:
        with atomic_output(out) as tmp:
            assert tmp.parent == tmp_path and tmp != out
            tmp.write_text("new")
            assert out.read_text() == "old"  # nothing changes until the block ends
    finally:
        os.umask(old)
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
def test_an_interrupted_or_failed_block_leaves_the_old_file_and_no_temporary_one(tmp_path, stop):
    out = tmp_path / "out.txt"
    out.write_text("old")
    with pytest.raises(stop):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise stop()
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_write_error_in_the_block_is_one_typed_line(tmp_path):
    with pytest.raises(OutputFileError, match="cannot write .*out.txt: no space left on the device$"):
        with atomic_output(tmp_path / "out.txt") as tmp:
            raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x" * 255, "\u00e9" * 127], ids=["ascii", "two-byte"])
def test_an_output_with_the_longest_name_a_folder_allows_is_written(tmp_path, name):
    out = tmp_path / name  # 255 and 254 bytes: the temporary name must not be longer
    with atomic_output(out) as tmp:
        tmp.write_text("data")
    assert out.read_text() == "data"


@pytest.mark.parametrize("make, kind", [(os.mkfifo, "a FIFO"), (lambda p: p.write_text("x"), "a file")])
def test_an_output_folder_that_is_something_else_says_what_it_is(tmp_path, make, kind):
    make(tmp_path / "out")
    with pytest.raises(OutputFileError, match=f"^the output folder .*out exists and is {kind}, not a folder"):
        check_output_dir(tmp_path / "out")

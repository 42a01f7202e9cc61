"""Reading inputs and writing outputs without harm: only regular files are read, and only up to a
bound; an output is checked before any work, written to a temporary file in its own folder and
renamed into place, so it is whole or absent, and never written over an input, a device or a FIFO."""
import os
import stat
import tempfile
from pathlib import Path

from .errors import BadInput

MB = 1 << 20

# new files get the mode a plain open() would give them (mkstemp's are private)
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_regular_file(path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes. `what` names it in errors ("the prompts
    file"). A FIFO, a device or a folder is refused without reading from it (opening a FIFO does not
    wait for a writer), and so is a file that is, or grows, larger than the bound."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BadInput(f"{what} {path} does not exist") from None
    except OSError as e:
        raise BadInput(f"cannot read {what} {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{what} {path} is a folder: give a file")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{what} {path} is not a regular file (a device or a pipe): give a file")
        too_big = BadInput(f"{what} {path} is larger than {max_bytes / MB:g} MB, more than it can sensibly hold")
        if st.st_size > max_bytes:
            raise too_big
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise BadInput(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise too_big
    return data


def read_regular_text(path, what: str, max_bytes: int) -> str:
    """read_regular_file, as UTF-8 text."""
    try:
        return read_regular_file(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def check_output_dir(path) -> Path:
    """The output folder, created if needed and proved writable (a file made and removed in it), or
    a BadInput that says why not: to be called before any work whose results would go there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise BadInput(f"cannot write to the output folder {path}: {e.strerror or e}") from None
    return path


def check_output_file(path, inputs=()):
    """BadInput unless `path` may be written: absent or a regular file, and none of `inputs` (the
    files this run reads, by any name: a symlink or a hard link is the same file)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise BadInput(f"{path} exists and is not a regular file: it is not written over")
    for other in inputs:
        if path.exists() and os.path.exists(other) and os.path.samefile(path, other):
            raise BadInput(f"{path} is {other}, which this run reads: it is not written over (choose another "
                           "output folder)")


def atomic_write_bytes(path, data: bytes):
    """Write `data` to a temporary file in path's folder, flush it to disk, and rename it onto path:
    readers see the old file or the new one, never half of one. Nothing is left behind on failure."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise BadInput(f"{path} exists and is not a regular file: it is not written over")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str):
    """atomic_write_bytes of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
